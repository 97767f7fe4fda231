"""A failed SubflowStep tried again (the failure policy "suspend", then resume or
redrive): each try runs a child of its own, ``<eid>:<step id>`` for the first and
``<eid>:<step id>::<n>`` for the n-th, on the memory and SQLite stores."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    ExecutionNotFoundError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    Status,
    StepError,
    SubflowStep,
    WaitStep,
)
from tests.helpers import eventually

LOG: list[tuple[str, Any]] = []  # what the module-level steps below were called with
BROKEN = [False]  # charge declines every card while set


async def charge(msg: Message) -> dict[str, Any]:
    LOG.append(("charge", msg.json()))
    if BROKEN[0] or msg.json().get("card") == "expired":
        raise StepError("card declined")
    return {"charged": msg.json()}


async def refund(msg: Message) -> None:
    LOG.append(("refund", msg.json()))


async def ship(msg: Message) -> None:
    LOG.append(("ship", msg.json()))
    raise StepError("no courier")


@pytest.fixture(autouse=True)
def _clear() -> None:
    LOG.clear()
    BROKEN[0] = False


def calls(name: str) -> list[Any]:
    return [got for step, got in LOG if step == name]


async def _order(flow: Flow, *after: Any, waits: bool = False) -> Any:
    """Save the child workflow "payment" (charge, then a wait for "go" when
    ``waits``), and make "order", whose step "pay" runs it, suspended on failure."""
    steps: list[Any] = [FunctionStep(charge, id="charge", compensate=FunctionStep(refund))]
    if waits:
        steps.append(WaitStep("go", requires=["charge"]))
    await flow.workflow_save(await flow.workflow_create("payment", *steps))
    return await flow.workflow_create(
        "order",
        # a retry policy does not apply: one child a try, failing the step at once
        SubflowStep("payment", id="pay", retry=Retry(max_attempts=3, initial_interval=0)),
        *after,
        on_failure="suspend",
    )


async def _failed_once(flow: Flow, wf: Any, request: Any) -> str:
    eid: str = await wf.execute(request)
    info = await flow.execution(eid)
    assert info.status is Status.SUSPEND
    assert info.steps["pay"].status is Status.FAILURE
    assert (await flow.execution(f"{eid}:pay")).status is Status.FAILURE
    return eid


async def test_resume_runs_a_new_child_and_the_old_one_stays_failed(flow: Flow) -> None:
    wf = await _order(flow)
    BROKEN[0] = True
    eid = await _failed_once(flow, wf, {"card": "visa"})
    BROKEN[0] = False
    await flow.resume(eid)
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert done.response is not None
    assert done.response.json() == {"charged": {"card": "visa"}}
    assert done.steps["pay"].attempts == 2  # the second try: its child is <eid>:pay::2
    second = await flow.execution(f"{eid}:pay::2")
    assert second.status is Status.SUCCESS
    assert second.parent_id == eid
    assert second.request.json() == {"card": "visa"}
    first = await flow.execution(f"{eid}:pay")
    assert first.status is Status.FAILURE
    assert "card declined" in (first.error or "")
    children = await flow.executions(workflow_id="payment")
    assert sorted(c.id for c in children) == [f"{eid}:pay", f"{eid}:pay::2"]
    assert {c.parent_id for c in children} == {eid}
    assert calls("charge") == [{"card": "visa"}, {"card": "visa"}]


async def test_each_redrive_runs_a_new_child_with_the_new_input(flow: Flow) -> None:
    wf = await _order(flow)
    eid = await _failed_once(flow, wf, {"card": "expired"})
    assert await flow.redrive(eid, input={"card": "expired", "again": True}) == eid
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.SUSPEND  # the second child failed too
    assert info.steps["pay"].attempts == 2
    assert (await flow.execution(f"{eid}:pay::2")).status is Status.FAILURE
    assert await flow.redrive(eid, step="pay", input={"card": "new"}) == eid
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert done.steps["pay"].attempts == 3
    third = await flow.execution(f"{eid}:pay::3")
    assert third.status is Status.SUCCESS
    assert third.request.json() == {"card": "new"}
    assert done.steps["pay"].response is not None
    assert done.steps["pay"].response.json() == {"charged": {"card": "new"}}
    for cid, status in ((f"{eid}:pay", Status.FAILURE), (f"{eid}:pay::2", Status.FAILURE)):
        assert (await flow.execution(cid)).status is status
    assert calls("charge") == [
        {"card": "expired"},
        {"card": "expired", "again": True},
        {"card": "new"},
    ]


async def test_a_resume_while_a_step_beside_still_runs_runs_a_new_child(flow: Flow) -> None:
    """The parent is SUSPEND while a step beside the failed one still runs (its run
    holds it): the resume reaches that run, which starts the second try's child."""
    gate = asyncio.Event()

    async def pack(msg: Message) -> dict[str, Any]:
        await gate.wait()
        return {"packed": True}

    # two steps beside: a lone one would run in the run's own task, and the child
    # start only once it ended
    wf = await _order(flow, FunctionStep(pack, id="pack"), FunctionStep(pack, id="label"))
    eid = await wf.execute({"card": "expired"}, async_=True)
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.SUSPEND
    assert info.steps["pay"].status is Status.FAILURE
    assert info.steps["pack"].status is Status.RUNNING
    await flow.redrive(eid, step="pay", input={"card": "new"})
    gate.set()
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS, done.error
    assert done.steps["pay"].attempts == 2
    assert (await flow.execution(f"{eid}:pay::2")).status is Status.SUCCESS
    assert (await flow.execution(f"{eid}:pay")).status is Status.FAILURE
    assert calls("charge") == [{"card": "expired"}, {"card": "new"}]


async def test_a_rollback_compensates_the_child_of_the_last_try(flow: Flow) -> None:
    wf = await _order(flow, FunctionStep(ship, id="ship", requires=["pay"]))
    eid = await _failed_once(flow, wf, {"card": "expired"})
    await flow.redrive(eid, input={"card": "new"})
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.SUSPEND  # ship failed
    assert info.steps["pay"].status is Status.SUCCESS
    await flow.abort(eid)
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.ABORTED
    assert done.steps["pay"].status is Status.COMPENSATED
    assert (await flow.execution(f"{eid}:pay::2")).status is Status.ABORTED
    assert (await flow.execution(f"{eid}:pay")).status is Status.FAILURE
    assert calls("refund") == [
        {"request": {"card": "new"}, "response": {"charged": {"card": "new"}}}
    ]


async def test_suspend_and_abort_of_the_parent_reach_the_child_of_the_last_try(
    flow: Flow,
) -> None:
    wf = await _order(flow, waits=True)
    eid = await _failed_once(flow, wf, {"card": "expired"})
    await flow.redrive(eid, input={"card": "new"})
    second = f"{eid}:pay::2"
    await eventually(lambda: _status_is(flow, second, Status.RUNNING))
    await flow.suspend(eid)
    assert (await flow.execution(second)).status is Status.SUSPEND
    await flow.resume(eid)
    assert (await flow.execution(second)).status is Status.RUNNING
    await flow.abort(eid)
    assert (await flow.wait(eid, timeout=10)).status is Status.ABORTED
    assert (await flow.wait(second, timeout=10)).status is Status.ABORTED
    assert (await flow.execution(f"{eid}:pay")).status is Status.FAILURE


async def _status_is(flow: Flow, eid: str, status: Status) -> bool:
    try:
        return (await flow.execution(eid)).status is status
    except ExecutionNotFoundError:
        return False


@pytest.mark.parametrize("crash", ["before", "after"])
async def test_a_parent_taken_over_while_waiting_on_a_later_try_finds_its_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    """The run of the parent stops by an error right before (or right after) it
    starts the child of the second try, its WAITING record committed: the parent,
    taken over by another flow on the same file once its lease ran out, runs that
    try's child, once."""
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    options: dict[str, Any] = {"poll_interval": 0.05, "lease_ttl": 5.0}
    async with Flow(url, **options) as first:
        wf = await _order(first, waits=True)
        eid = await _failed_once(first, wf, {"card": "expired"})
        start_child = first.start_child
        crashed: list[int] = []

        async def crashing(
            parent_id: str, node: Any, request: Message, *, attempt: int = 1
        ) -> None:
            if crash == "after":
                await start_child(parent_id, node, request, attempt=attempt)
            crashed.append(attempt)
            raise RuntimeError("the worker crashed")

        monkeypatch.setattr(first, "start_child", crashing)
        await first.redrive(eid, input={"card": "new"})
        await eventually(lambda: crashed)
        assert crashed[0] == 2
        info = await first.execution(eid)
        assert info.steps["pay"].status is Status.WAITING
        assert info.steps["pay"].attempts == 2
    second = f"{eid}:pay::2"
    # an hour later by its clock: the lease of the crashed run has run out
    async with Flow(url, clock=lambda: time.time() + 3600, **options) as other:
        await eventually(lambda: _status_is(other, second, Status.RUNNING))
        await other.signal(second, "go", {"ok": 1})
        done = await other.wait(eid, timeout=10)
        assert done.status is Status.SUCCESS
        assert done.steps["pay"].attempts == 2
        with pytest.raises(ExecutionNotFoundError):
            await other.execution(f"{eid}:pay::3")
        children = await other.executions(workflow_id="payment")
        assert sorted(c.id for c in children) == [f"{eid}:pay", second]
    assert calls("charge") == [{"card": "expired"}, {"card": "new"}]
