"""A step id that another run of the execution also has is refused: a map's runs are
recorded as ``<map id>[<i>]`` (a step ``m[0]`` beside a map ``m`` shared its record,
one overwriting the other, and its idempotency key), and a compensation's or a
fallback's key is ``<execution id>:<step id>:compensate`` (``:fallback``)."""

from __future__ import annotations

import pytest

from microsaga import DefinitionError, load_definition

MAP = "  - map: {over: request, step: {publish: orders.item}}\n    id: m\n"


@pytest.mark.parametrize(
    ("steps", "said"),
    [
        (
            MAP + "  - publish: orders.other\n    id: 'm[0]'\n",
            "steps[1].id: 'm[0]' is the id of a run of map m (its runs are m[0], ...)",
        ),
        (
            "  - publish: orders.x\n    id: x\n  - publish: orders.y\n    id: 'x:compensate'\n",
            "steps[1].id: 'x:compensate' is the idempotency key of the compensation of x",
        ),
        (
            "  - publish: orders.y\n    id: 'x:fallback'\n  - publish: orders.x\n    id: x\n",
            "steps[0].id: 'x:fallback' is the idempotency key of the fallback of x",
        ),
        (
            MAP + "  - publish: orders.other\n    id: 'm[12]:compensate'\n",
            "steps[1].id: 'm[12]:compensate' is the idempotency key of the compensation of m[12]",
        ),
    ],
)
def test_an_id_of_another_run_is_refused(steps: str, said: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition(f"id: clash\nsteps:\n{steps}")
    assert str(caught.value).startswith(said)


def test_ids_alike_but_distinct_are_kept() -> None:
    steps = (
        MAP
        + "  - publish: 'orders:created'\n"  # a Redis-style topic is its id
        + "  - publish: orders.a\n    id: 'm[x]'\n"
        + "  - publish: orders.b\n    id: 'n[0]'\n"
        + "  - publish: orders.c\n    id: 'y:compensate'\n"
    )
    wf = load_definition(f"id: fine\nsteps:\n{steps}")
    assert [s.id for s in wf.step_list] == ["m", "orders:created", "m[x]", "n[0]", "y:compensate"]
