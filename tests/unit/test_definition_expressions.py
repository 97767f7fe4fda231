"""A definition's expressions read only what their step's context document holds.

``input``, ``when`` and a map's ``over`` read ``{"request": ..., "steps": {<id>: ...}}``
over the steps their step requires, directly or not. A name outside it is null on every
run: a typo, a step not required, an id with dots left unquoted, ``true`` without
backticks. ``load_definition`` refuses such a definition, naming the field.
"""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import DefinitionError, load_definition


def _definition(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"id": "exprs", "steps": list(steps)}


FIRST = {"publish": "orders.first", "id": "first.step"}
SECOND = {"publish": "orders.second", "id": "second", "requires": ["first.step"]}


@pytest.mark.parametrize(
    ("step", "path", "said"),
    [
        (  # an id with dots, unquoted: steps.first, then .step of it
            {**SECOND, "input": "{a: steps.first.step}"},
            "steps[1].input",
            'an id with dots is quoted: steps."first.step"',
        ),
        (  # a typo in a step id
            {**SECOND, "input": "steps.frist"},
            "steps[1].input",
            "no step has id 'frist' (the steps second requires: first.step)",
        ),
        (  # `request.` forgotten
            {**SECOND, "when": "order.total > `5`"},
            "steps[1].when",
            "did you mean request.order?",
        ),
        (  # a compensate's input on a forward step
            {**SECOND, "input": "response"},
            "steps[1].input",
            "input: response is for a compensate step",
        ),
        (  # a literal without backticks is a field
            {**SECOND, "when": "true"},
            "steps[1].when",
            "the literal true is written `true` (in backticks)",
        ),
        (  # its own response
            {**SECOND, "when": "steps.second.ok"},
            "steps[1].when",
            "'steps.second.ok' reads steps.second, which is null on every run: it is the "
            "response of second itself",
        ),
        (  # an id that is quoted is named quoted
            {**SECOND, "when": 'steps."cool-off".ok'},
            "steps[1].when",
            """reads steps."cool-off", which is null on every run: no step has id 'cool-off'""",
        ),
        (  # a step that exists but is not required
            {"publish": "orders.third", "id": "third", "when": "steps.second.ok"},
            "steps[2].when",
            "third does not require second (directly or not): add it to requires",
        ),
        (
            {
                "map": {"over": "steps.secnod.items", "step": {"publish": "orders.item"}},
                "id": "each",
                "requires": ["second"],
            },
            "steps[2].map.over",
            "no step has id 'secnod' (the steps each requires: first.step, second)",
        ),
    ],
)
def test_an_expression_reading_what_is_never_there_is_refused(
    step: dict[str, Any], path: str, said: str
) -> None:
    steps = [FIRST, step] if step.get("id") == "second" else [FIRST, SECOND, step]
    with pytest.raises(DefinitionError) as caught:
        load_definition(_definition(*steps))
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_yaml_file_names_the_field(tmp_path: Any) -> None:
    source = tmp_path / "order.yaml"
    source.write_text(
        "id: order\n"
        "steps:\n"
        "  - publish: orders.reserve\n"
        "    id: inventory.Inventory.Reserve\n"
        "  - publish: orders.charge\n"
        "    requires: [inventory.Inventory.Reserve]\n"
        "    input: '{order: request, reserved: steps.inventory.Inventory.Reserve}'\n"
    )
    with pytest.raises(DefinitionError, match=r"^steps\[1\]\.input: .*steps\.\"inventory"):
        load_definition(str(source))


@pytest.mark.parametrize(
    "expression",
    [
        "request",
        "steps",
        "steps.second",
        'steps."first.step".total',
        '{order: request, first: steps."first.step", second: steps.second}',
        "steps.second[*].id",
        "steps.second.items[?price > `1`].id",
        "request.items[?steps.nothing]",  # inside a filter: a field of each item
        "sort_by(request.items, &price)",
        "length(request.items) > `1` && steps.second.ok",
        "request | order",  # after a pipe: a field of the request
        "steps.*",
        "@",
        "`true`",
        "[request.a, steps.second]",
        "to_string(steps.second)",
    ],
)
def test_an_expression_over_the_document_is_accepted(expression: str) -> None:
    third = {"publish": "orders.third", "id": "third", "requires": ["second"]}
    wf = load_definition(_definition(FIRST, SECOND, {**third, "input": expression}))
    assert [s.id for s in wf.step_list] == ["first.step", "second", "third"]
    wf = load_definition(_definition(FIRST, SECOND, {**third, "when": expression}))
    assert wf.step_list[2].options.when == expression


def test_a_step_id_with_a_dash_unquoted_is_told_to_quote_it() -> None:
    """JMESPath has no '-' in a name: a step such as cool-off, or a map whose default id
    is map-<its step's id>, is read as steps."cool-off", which the error says."""
    pause = {"sleep": 1, "id": "cool-off"}
    each = {"map": {"over": "request.lines", "step": {"publish": "orders.line", "id": "line"}}}
    for expression, quoted in [
        ("steps.cool-off.until", 'steps."cool-off".until'),
        ("{lines: steps.map-line[*].sku}", '{lines: steps."map-line"[*].sku}'),
    ]:
        last = {"publish": "orders.done", "requires": ["cool-off", "map-line"]}
        with pytest.raises(DefinitionError) as err:
            load_definition(_definition(pause, each, {**last, "input": expression}))
        assert str(err.value).startswith("steps[2].input: not a valid JMESPath expression")
        assert str(err.value).endswith(f"; an id with '-' is quoted: {quoted}")
        load_definition(_definition(pause, each, {**last, "input": quoted}))
