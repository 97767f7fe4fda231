"""A workflow built in code has its expressions checked when it is made, as one loaded
from a definition: an expression reading what its step's context document never holds
(null on every run) was accepted in code and only misbehaved when the step ran."""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import (
    DefinitionError,
    Flow,
    FunctionStep,
    MapStep,
    Message,
    Saga,
    Workflow,
    load_definition,
)


async def reserve(msg: Message) -> dict[str, str]:
    return {"id": "R1"}


async def charge(msg: Message) -> dict[str, bool]:
    return {"charged": True}


CASES = [
    ({"when": "requets.amount"}, "'requets.amount' reads requets, which is null on every run"),
    ({"input": "steps.reserv"}, "'steps.reserv' reads steps.reserv, which is null on every run"),
    ({"when": "true"}, "the literal true is written `true` (in backticks)"),
]


def _refusal_of_the_file(options: dict[str, Any]) -> str:
    definition = {
        "id": "order",
        "steps": [
            {"function": f"{__name__}:reserve", "id": "reserve"},
            {"function": f"{__name__}:charge", "id": "charge", "requires": ["reserve"]} | options,
        ],
    }
    with pytest.raises(DefinitionError) as refused:
        load_definition(definition)
    return str(refused.value)


@pytest.mark.parametrize(("options", "what"), CASES)
async def test_workflow_create_refuses_what_a_definition_file_refuses(
    options: dict[str, Any], what: str
) -> None:
    said = _refusal_of_the_file(options)
    assert said.startswith(f"steps[1].{next(iter(options))}: ")
    assert what in said
    async with Flow("memory://") as flow:
        with pytest.raises(DefinitionError) as refused:
            await flow.workflow_create(
                "order",
                FunctionStep(reserve, id="reserve"),
                FunctionStep(charge, id="charge", requires=["reserve"], **options),
            )
    assert str(refused.value) == said


async def test_the_workflow_constructor_and_appended_steps_are_checked() -> None:
    with pytest.raises(
        DefinitionError, match=r"^steps\[0\]\.when: 'requets.amount' reads requets, which is null"
    ):
        Workflow("order", [FunctionStep(charge, id="charge", when="requets.amount")])
    over = MapStep(FunctionStep(charge), over="steps.reserve.lines", id="lines")
    with pytest.raises(
        DefinitionError, match=r"^steps\[1\]\.map\.over: .* reads steps\.reserve, which is null"
    ):
        Workflow("order", [FunctionStep(reserve, id="reserve"), over])
    lines = MapStep(FunctionStep(charge), over="request.lines", id="lines")
    with pytest.raises(DefinitionError, match=r"^steps\[1\]\.id: 'lines\[0\]' is the id of a"):
        Workflow("order", [lines, FunctionStep(charge, id="lines[0]")])
    wf = Workflow("order", [FunctionStep(reserve, id="reserve")])
    late = FunctionStep(charge, id="charge", requires=["reserve"], input="steps.reserv")
    with pytest.raises(
        DefinitionError, match=r"^steps\[1\]\.input: 'steps.reserv' reads steps\.reserv, which"
    ):
        await wf.append_steps(late)
    assert [s.id for s in wf.step_list] == ["reserve"]  # unchanged


def test_a_decorated_saga_is_checked_when_bound() -> None:
    saga = Saga("order")

    @saga.step
    async def reserve_stock(msg: Message) -> dict[str, str]:
        return {"id": "R1"}

    @saga.step(requires=[reserve_stock], input="steps.reserve.id")  # the id is reserve_stock
    async def ship(msg: Message) -> None:
        return None

    with pytest.raises(
        DefinitionError, match=r"^steps\[1\]\.input: 'steps.reserve.id' reads steps\.reserve, which"
    ):
        saga.workflow  # noqa: B018 - what workflow_add binds
