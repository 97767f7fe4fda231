"""``microsaga show`` says where an execution came from (its parent, the execution it
redrives) and what it was asked (its request), beside its steps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from microsaga import ExecutionFailedError, Flow, FunctionStep, Message, StepError, SubflowStep
from microsaga.cli import main
from tests.unit.steps_for_tests import reserve

declined: list[int] = []


async def decline_once(msg: Message) -> dict[str, int]:
    declined.append(1)
    if len(declined) == 1:
        raise StepError("card declined", retryable=False)
    return {"paid": 1}


def _show(store: str, eid: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "show", eid])
    assert exited.value.code == 0
    return capsys.readouterr().out.splitlines()


def test_show_names_the_parent_the_redriven_execution_and_the_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    declined.clear()

    async def run() -> tuple[str, str, str]:
        async with Flow(store) as flow:
            await flow.workflow_save(
                await flow.workflow_create("payment", FunctionStep(reserve, id="charge"))
            )
            order = await flow.workflow_create("order", SubflowStep("payment", id="pay"))
            parent = await order.execute({"order_id": 7})
            failing = await flow.workflow_create("retry", FunctionStep(decline_once, id="pay"))
            with pytest.raises(ExecutionFailedError) as failed:
                await failing.execute({"card": "old"})
            again = await flow.redrive(failed.value.execution_id, input={"card": "new"})
            await flow.wait(again, timeout=10)
            return parent, failed.value.execution_id, again

    parent, old, again = asyncio.run(run())
    child = _show(store, f"{parent}:pay", capsys)
    assert f"parent     {parent}" in child
    assert 'request    {"order_id":7}' in child
    redriven = _show(store, again, capsys)
    assert f"redrive of {old}" in redriven
    assert 'request    {"card":"new"}' in redriven
    assert not [line for line in redriven if line.startswith("redriven by ")]
    # and the one it redrives links forward to it
    assert f"redriven by {again}" in _show(store, old, capsys)
    top = _show(store, parent, capsys)
    assert not [line for line in top if line.startswith(("parent ", "redrive of ", "redriven by "))]
