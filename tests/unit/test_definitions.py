"""Definitions as data: parsing, validation with paths, round trips, custom kinds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microsaga import (
    CallStep,
    CycleError,
    DefinitionError,
    DuplicateStepError,
    FunctionStep,
    Message,
    PublishStep,
    Retry,
    Step,
    StepContext,
    StepNotExistsError,
    Workflow,
    load_definition,
    register_step,
)

ORDER = """
id: order
services: {inventory: "http://127.0.0.1:8001", payments: "http://127.0.0.1:8002"}
steps:
  - call: inventory.Inventory.Reserve
    retry: {max_attempts: 5, initial_interval: 0.2}
    timeout: 2
    compensate: {call: inventory.Inventory.Release}
  - call: payments.Payments.Charge
    requires: [inventory.Inventory.Reserve]
    compensate: {call: payments.Payments.Refund, input: response}
  - publish: shipping.requested
    requires: [payments.Payments.Charge]
  - function: tests.unit.steps_for_tests:reserve
    id: notify
    requires: [shipping.requested]
"""


def test_the_spec_example_loads() -> None:
    wf = load_definition(ORDER)
    assert wf.id == "order"
    assert wf.services == {
        "inventory": "http://127.0.0.1:8001",
        "payments": "http://127.0.0.1:8002",
    }
    reserve = wf.step("inventory.Inventory.Reserve")
    assert isinstance(reserve, CallStep)
    assert reserve.options.retry == Retry(max_attempts=5, initial_interval=0.2)
    assert reserve.options.timeout == 2
    assert isinstance(reserve.options.compensate, CallStep)
    assert reserve.options.compensate.id == "inventory.Inventory.Release"
    charge = wf.step("payments.Payments.Charge")
    assert charge.options.compensate_input == "response"
    assert isinstance(wf.step("shipping.requested"), PublishStep)
    notify = wf.step("notify")
    assert isinstance(notify, FunctionStep)
    assert notify.endpoint.endswith(":reserve")
    assert [[s.id for s in lvl] for lvl in wf.steps()] == [
        ["inventory.Inventory.Reserve"],
        ["payments.Payments.Charge"],
        ["shipping.requested"],
        ["notify"],
    ]


def test_json_text_path_and_dict_give_the_same_workflow(tmp_path: Path) -> None:
    data = load_definition(ORDER).to_dict()
    text = json.dumps(data)
    path = tmp_path / "order.json"
    path.write_text(text)
    yaml_path = tmp_path / "order.yaml"
    yaml_path.write_text(ORDER)
    for source in (text, str(path), path, data, str(yaml_path)):
        assert load_definition(source).to_dict() == data  # type: ignore[arg-type]


def test_to_dict_round_trips() -> None:
    wf = load_definition(ORDER)
    again = load_definition(wf.to_dict())
    assert again.to_dict() == wf.to_dict()
    assert wf.to_dict()["steps"][1]["compensate"] == {
        "call": "payments.Payments.Refund",
        "input": "response",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "id: x\nsteps: [{call: a.B.C, retry: {max_attempts: 0}}]",
            "steps[0].retry.max_attempts: must be at least 1",
        ),
        (
            "id: x\nsteps: [{call: a.B.C}, {call: a.B.D, retry: {max_attempts: two}}]",
            "steps[1].retry.max_attempts: must be an integer",
        ),
        ("id: x\nsteps: [{call: a.B.C, retry: {tries: 3}}]", "steps[0].retry.tries: unknown field"),
        ("id: x\nsteps: [{call: a.B.C, timeout: -1}]", "steps[0].timeout: must be at least 0"),
        ("id: x\nsteps: [{call: a.B.C, timeout: soon}]", "steps[0].timeout: must be a number"),
        ("id: x\nsteps: [{call: a.B}]", "steps[0].call: must be 'service.Name.Method'"),
        ("id: x\nsteps: [{teleport: a}]", "steps[0]: unknown step kind 'teleport'"),
        ("id: x\nsteps: [{call: a.B.C, publish: t}]", "steps[0]: a step has one kind"),
        ("id: x\nsteps: [{call: a.B.C, colour: red}]", "steps[0].colour: unknown field"),
        (
            "id: x\nsteps: [{call: a.B.C, compensate: {call: a.B.D, input: everything}}]",
            "steps[0].compensate.input: must be one of",
        ),
        (
            "id: x\nsteps: [{call: a.B.C, input: 'request.['}]",
            "steps[0].input: not a valid JMESPath expression 'request.['",
        ),
        (
            "id: x\nsteps: [{call: a.B.C, when: '== 1'}]",
            "steps[0].when: not a valid JMESPath expression",
        ),
        (
            "id: x\non_failure: retry\nsteps: [{call: a.B.C}]",
            "on_failure: must be 'compensate' or 'suspend'",
        ),
        ("id: x\nsteps: [{call: a.B.C, requires: 3}]", "steps[0].requires: must be a list"),
        (
            "id: x\nsteps: [{call: a.B.C, compensate: {call: nope}}]",
            "steps[0].compensate.call: must be 'service.Name.Method'",
        ),
        (
            "id: x\nsteps: [{function: 'no_such_module_xyz:f'}]",
            "steps[0].function: cannot import no_such_module_xyz:f",
        ),
        (
            "id: x\nsteps: [{function: 'tests.unit.steps_for_tests:reserve',"
            " retry: {non_retryable: ['tests.unit.steps_for_tests:NotAnError']}}]",
            "is not an exception class",
        ),
        ("id: x\nsteps: []", "steps: must be a non-empty list"),
        ("steps: [{call: a.B.C}]\n", "id: must be a non-empty string"),
        ("id: x\nstep: []", "step: unknown field"),
        ("id: x\nservices: {a: 'ftp://x'}\nsteps: [{call: a.B.C}]", "services.a: must be an http"),
        ("id: x\nsteps:\n  - call: a.B.C\n   bad: indent", "invalid YAML at line 4"),
        ('{"id": "x", "steps": [}', "invalid JSON at line 1"),
        ("- just\n- a list\n", "must be a mapping"),
        (
            "id: x\nsteps: [{publish: a, compensate: {publish: b, requires: [a]}}]",
            "steps[0].compensate.requires: a compensate step takes no requires",
        ),
        (
            "id: x\nsteps: [{publish: a, fallback: {publish: b, compensate: {publish: c}}}]",
            "steps[0].fallback.compensate: a fallback step takes no compensate",
        ),
        ("id: x\nsteps: [{function: 5}]", "steps[0].function: must be 'module:function', not 5"),
        ("id: x\nservices: {1: 'http://x'}\nsteps: [{call: a.B.C}]", "services: service names"),
    ],
)
def test_errors_name_the_bad_field(text: str, message: str) -> None:
    with pytest.raises(DefinitionError) as err:
        load_definition(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_an_optional_field_left_empty_in_yaml_is_a_field_not_given() -> None:
    empty = load_definition(
        "id: t\nsteps:\n"
        "  - publish: orders.placed\n    id: placed\n    reply:\n    retry:\n"
        "  - publish: orders.shipped\n    requires:\n    timeout:\n"
    )
    plain = load_definition(
        "id: t\nsteps:\n  - publish: orders.placed\n    id: placed\n  - publish: orders.shipped\n"
    )
    assert empty.to_dict() == plain.to_dict()
    assert [s.requires for s in empty.step_list] == [[], []]


def test_an_error_of_the_step_itself_names_the_field() -> None:
    with pytest.raises(DefinitionError) as err:
        load_definition('{"id": "x", "steps": [{"publish": 5}]}')
    assert str(err.value) == "steps[0].publish: must be a non-empty string, not 5"
    with pytest.raises(DefinitionError) as err:
        load_definition('{"id": "x", "steps": [{"function": "os:sep"}]}')
    assert str(err.value) == "steps[0].function: os:sep is not callable"
    with pytest.raises(DefinitionError) as err:
        load_definition(
            '{"id": "x", "steps": [{"function": "tests.unit.steps_for_tests:Message"}]}'
        )
    assert str(err.value).startswith("steps[0].function: microsaga.message:Message is a class")


def test_flow_style_yaml_is_yaml(tmp_path: Path) -> None:
    text = "{id: x, steps: [{publish: a}, {publish: b, requires: [a]}]}"
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    for source in (text, str(path)):
        wf = load_definition(source)
        assert [[s.id for s in level] for level in wf.steps()] == [["a"], ["b"]]


def test_broken_json_gets_a_json_error_and_broken_yaml_a_yaml_one(tmp_path: Path) -> None:
    broken = '{"id": "x", "steps": ['
    (tmp_path / "bad.json").write_text(broken)
    (tmp_path / "bad.yaml").write_text(broken)
    (tmp_path / "yaml.json").write_text("{id: x, steps: [{publish: a}]}")
    cases = [
        (broken, "definition: invalid JSON at line 1 column 23"),
        (str(tmp_path / "bad.json"), "bad.json: invalid JSON at line 1 column 23"),
        (str(tmp_path / "bad.yaml"), "bad.yaml: invalid YAML at line 1 column 23"),
        (str(tmp_path / "yaml.json"), "yaml.json: invalid JSON at line 1 column 2"),
    ]
    for source, message in cases:
        with pytest.raises(DefinitionError) as err:
            load_definition(source)
        assert message in str(err.value)


def test_a_module_that_fails_on_import_is_a_definition_error(tmp_path: Path) -> None:
    import sys

    (tmp_path / "core_broken_module.py").write_text("raise RuntimeError('no config')\n")
    (tmp_path / "core_bad_syntax.py").write_text("def f(:\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for module, cause in (
            ("core_broken_module", "RuntimeError: no config"),
            ("core_bad_syntax", "SyntaxError"),
        ):
            with pytest.raises(DefinitionError) as err:
                load_definition(f"id: x\nsteps: [{{function: '{module}:f'}}]")
            message = str(err.value)
            assert message.startswith(f"steps[0].function: cannot import {module}:f"), message
            assert cause in message
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("core_broken_module", None)
        sys.modules.pop("core_bad_syntax", None)


def test_nested_steps_keep_their_own_options() -> None:
    undo = PublishStep("undo", retry=Retry(max_attempts=3))
    step = PublishStep("b", compensate=undo, fallback=PublishStep("plan-b"))
    wf = Workflow("x", [PublishStep("a"), step])
    entry = wf.to_dict()["steps"][1]
    assert entry["compensate"] == {"publish": "undo", "retry": {"max_attempts": 3}}
    assert entry["fallback"] == {"publish": "plan-b"}
    assert load_definition(wf.to_dict()).to_dict() == wf.to_dict()


def test_a_description_is_kept() -> None:
    wf = load_definition("id: x\ndescription: takes orders\nsteps: [{publish: a}]")
    assert wf.description == "takes orders"
    assert load_definition(wf.to_dict()).to_dict()["description"] == "takes orders"
    with pytest.raises(DefinitionError, match="description: must be a string"):
        load_definition("id: x\ndescription: [a]\nsteps: [{publish: a}]")


def test_graph_errors_from_definitions() -> None:
    with pytest.raises(CycleError, match=r"a -> b -> a|b -> a -> b"):
        load_definition(
            "id: x\nsteps:\n  - {publish: a, requires: [b]}\n  - {publish: b, requires: [a]}\n"
        )
    with pytest.raises(StepNotExistsError) as missing:
        load_definition("id: x\nsteps:\n  - {publish: a}\n  - {publish: b, requires: [ghost]}\n")
    assert str(missing.value) == "step not exists: ghost (required by b, at steps[1].requires)"
    with pytest.raises(DuplicateStepError) as duplicate:
        load_definition("id: x\nsteps:\n  - {publish: a}\n  - {publish: a}\n")
    assert str(duplicate.value) == "steps[1]: duplicate step id: a"


def test_a_missing_file_is_a_definition_error(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="cannot read definition file"):
        load_definition(str(tmp_path / "missing.yaml"))


class Sleep(Step):
    kind = "sleep_test"

    def __init__(self, seconds: float, **options: Any) -> None:
        self.seconds = seconds
        super().__init__(**options)

    @property
    def endpoint(self) -> str:
        return f"sleep:{self.seconds}"

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        return Message({"slept": self.seconds})

    def to_config(self) -> dict[str, Any]:
        return {"seconds": self.seconds}  # knows nothing of its kind (SPEC 4b)

    @classmethod
    def from_config(cls, config: Any) -> Step:
        seconds = config["seconds"]
        if not isinstance(seconds, int | float):
            raise DefinitionError("must be a number", path="seconds")
        return cls(seconds)


def test_custom_kinds_through_register_step() -> None:
    register_step(Sleep)
    wf = load_definition(
        "id: x\nsteps:\n  - {sleep_test: {seconds: 0.5}, id: nap, retry: {max_attempts: 3}}\n"
    )
    nap = wf.step("nap")
    assert isinstance(nap, Sleep)
    assert nap.seconds == 0.5
    assert nap.options.retry is not None
    assert nap.options.retry.max_attempts == 3
    written = wf.to_dict()["steps"]
    assert written == [{"sleep_test": {"seconds": 0.5}, "id": "nap", "retry": {"max_attempts": 3}}]
    assert load_definition(wf.to_dict()).to_dict() == wf.to_dict()  # round trip
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.seconds: must be a number"):
        load_definition("id: x\nsteps:\n  - {sleep_test: {seconds: long}}\n")
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.sleep_test: must be a mapping"):
        load_definition("id: x\nsteps:\n  - {sleep_test: 3}\n")


class Shout(Step):
    """The issue's example: a step registered under a kind its class does not name."""

    def __init__(self, suffix: str, **options: Any) -> None:
        self.suffix = suffix
        super().__init__(**options)

    @property
    def endpoint(self) -> str:
        return "shout"

    def to_config(self) -> dict[str, Any]:
        return {"suffix": self.suffix}

    @classmethod
    def from_config(cls, config: Any) -> Step:
        return cls(config["suffix"])


def test_a_custom_kind_is_saved_under_its_registered_kind() -> None:
    register_step(Shout, kind="shout")
    wf = Workflow("w", [Shout("?")])
    assert wf.to_dict()["steps"] == [{"shout": {"suffix": "?"}}]
    again = load_definition(wf.to_dict())
    step = again.step("shout")
    assert isinstance(step, Shout)
    assert step.suffix == "?"


_ids = st.text(alphabet="abcdefghij", min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ids, inner, max_size=3),
        max_leaves=12,
    )
)
def test_arbitrary_data_gives_a_definition_error_or_a_workflow(data: Any) -> None:
    for doc in (data, {"id": "x", "steps": data}, {"id": "x", "steps": [data]}):
        try:
            load_definition(doc) if isinstance(doc, dict) else load_definition(json.dumps(doc))
        except DefinitionError as exc:
            assert str(exc)
            assert "\n" not in str(exc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "id: x\nsteps:\n  - publish: a\n    retry: {max_attempts: 2}\n"
            "    retry: {max_attempts: 3}\n",
            "definition: invalid YAML at line 5 column 5: key 'retry' appears twice",
        ),
        (
            '{"id": "x", "steps": [{"publish": "a", "publish": "b"}]}',
            "definition: key 'publish' appears twice in one object",
        ),
    ],
)
def test_a_key_given_twice_is_refused(text: str, message: str) -> None:
    # JSON and YAML parsers keep the last value without a word: a typo would vanish
    with pytest.raises(DefinitionError) as err:
        load_definition(text)
    assert str(err.value).startswith(message)


def test_yaml_merge_keys_may_be_overridden() -> None:
    text = "id: x\nsteps:\n  - &a {publish: a, timeout: 2}\n  - <<: *a\n    publish: c\n"
    assert [s["publish"] for s in load_definition(text).to_dict()["steps"]] == ["a", "c"]
