"""A redrive of a finished execution whose rollback failed starts a new execution that
runs every step again (as it should), while the old one still holds the effects of the
steps it did not undo: ``microsaga redrive`` says which, in one line on stderr."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    Flow,
    FunctionStep,
    MapStep,
    Message,
    Retry,
    Status,
    StepError,
    SubflowStep,
    WaitStep,
)
from microsaga.cli import main
from microsaga.flow import left_by_rollback
from tests.helpers import eventually

NO_RETRY = Retry(max_attempts=1)


async def done(msg: Message) -> dict[str, bool]:
    return {"ok": True}


async def declined(msg: Message) -> None:
    raise StepError("declined", retryable=False)


async def item(msg: Message) -> Any:
    if msg.json() == 2:
        raise StepError("item 2 declined", retryable=False)
    return msg.json()


def _steps(comp_fails: bool) -> list[Any]:
    """reserve (undone) -> charge (its refund fails when ``comp_fails``) -> ship (fails);
    notify, beside, has nothing to undo."""
    refund = declined if comp_fails else done
    return [
        FunctionStep(done, id="reserve", compensate=FunctionStep(done)),
        FunctionStep(done, id="notify"),
        FunctionStep(
            done,
            id="charge",
            requires=["reserve"],
            compensate=FunctionStep(refund, retry=NO_RETRY),
        ),
        FunctionStep(declined, id="ship", requires=["charge", "notify"]),
    ]


async def _failed(flow: Flow, *steps: Any, request: Any = None) -> str:
    wf = await flow.workflow_create("order", *steps)
    eid: str = await wf.execute(request or {"order": 1}, async_=True)
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.FAILURE
    return eid


def _redrive(store: str, eid: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """``microsaga redrive EID``: its stdout and stderr (only its own: what the flow
    before it logged, through a CLI's logging set up by an earlier test, is left out)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "redrive", eid])
    assert exited.value.code == 0
    out = capsys.readouterr()
    return out.out, out.err


def test_the_cli_names_the_steps_the_failed_rollback_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"

    async def failed() -> tuple[str, dict[str, Any]]:
        async with Flow(store, poll_interval=0.05) as flow:
            eid = await _failed(flow, *_steps(comp_fails=True))
            info = await flow.execution(eid)
            return eid, {
                sid: (run.status, run.compensation and run.compensation.status)
                for sid, run in info.steps.items()
            }

    eid, steps = asyncio.run(failed())
    # charge's refund failed and the rollback stopped there: reserve is not undone either
    assert steps["charge"] == (Status.SUCCESS, Status.FAILURE)
    assert steps["reserve"] == (Status.SUCCESS, None)
    out, err = _redrive(store, eid, capsys)
    new = out.split()[0]
    assert err.splitlines() == [
        f"note: {eid} was not fully rolled back: steps reserve, charge were not undone, "
        f"their effects stay; {new} runs every step again"
    ]


def test_nothing_is_said_of_an_execution_rolled_back_in_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"

    async def failed() -> str:
        async with Flow(store, poll_interval=0.05) as flow:
            return await _failed(flow, *_steps(comp_fails=False))

    eid = asyncio.run(failed())
    out, err = _redrive(store, eid, capsys)
    assert len(out.split()) == 2
    assert err == ""


async def test_a_map_counts_its_runs_not_undone(flow: Flow) -> None:
    eid = await _failed(
        flow,
        FunctionStep(done, id="reserve", compensate=FunctionStep(declined, retry=NO_RETRY)),
        MapStep(
            FunctionStep(item, id="one", compensate=FunctionStep(done)),
            over="request",
            concurrency=1,
            id="each",
            requires=["reserve"],
        ),
        request=[0, 1, 2],
    )
    assert await left_by_rollback(flow, eid) == ["reserve"]  # the runs of each were undone
    # aborted without a rollback: every step with a compensation is named
    wf = await flow.workflow_create(
        "order",
        FunctionStep(done, id="reserve", compensate=FunctionStep(done)),
        MapStep(
            FunctionStep(item, id="one", compensate=FunctionStep(done)), over="request", id="each"
        ),
        WaitStep("go", requires=["reserve", "each"]),
    )
    eid = await wf.execute([0, 1], async_=True)

    async def waiting() -> bool:
        return (await flow.execution(eid)).steps["go"].status is Status.WAITING

    await eventually(waiting)
    await flow.abort(eid, compensate=False)
    assert (await flow.wait(eid, timeout=10)).status is Status.ABORTED
    assert await left_by_rollback(flow, eid) == ["reserve", "each (2 runs)"]


async def test_a_sub_workflow_whose_child_was_not_rolled_back_is_named(flow: Flow) -> None:
    payment = await flow.workflow_create(
        "payment",
        FunctionStep(done, id="charge", compensate=FunctionStep(declined, retry=NO_RETRY)),
    )
    await flow.workflow_save(payment)
    eid = await _failed(
        flow,
        SubflowStep("payment", id="pay"),
        FunctionStep(declined, id="ship", requires=["pay"]),
    )
    info = await flow.execution(eid)
    assert info.steps["pay"].compensation is not None
    assert info.steps["pay"].compensation.status is Status.FAILURE
    assert await left_by_rollback(flow, eid) == ["pay"]
