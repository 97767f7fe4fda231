"""Rollback, suspend, resume, abort and deadlines, on memory and SQLite."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    InvalidTransitionError,
    Message,
    Retry,
    SleepStep,
    Status,
    Step,
    StepError,
    WaitStep,
)
from microsaga.stores.base import Abort
from tests.helpers import eventually


class Ledger:
    """Steps that log what they do; compensations log too."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.comp_inputs: dict[str, Any] = {}

    def gate(self, sid: str) -> asyncio.Event:
        return self.gates.setdefault(sid, asyncio.Event())

    def step(
        self,
        sid: str,
        *requires: Step,
        fail: bool = False,
        wait: bool = False,
        comp: bool = True,
        comp_fails: int = 0,
        **opts: Any,
    ) -> FunctionStep:
        async def forward(msg: Message) -> Any:
            self.log.append(f"start {sid}")
            if wait:
                await asyncio.wait_for(self.gate(sid).wait(), 10)
            if fail:
                self.log.append(f"fail {sid}")
                raise StepError(f"{sid} broke", retryable=False)
            self.log.append(f"done {sid}")
            return {"did": sid}

        failures = comp_fails

        async def undo(msg: Message) -> None:
            nonlocal failures
            self.log.append(f"undo {sid}")
            self.comp_inputs[sid] = msg
            if failures:
                failures -= 1
                raise RuntimeError(f"cannot undo {sid}")
            await asyncio.sleep(0.01)
            self.log.append(f"undone {sid}")

        compensate = (
            FunctionStep(undo, id=f"undo-{sid}", retry=Retry(max_attempts=2, initial_interval=0.01))
            if comp
            else None
        )
        return FunctionStep(forward, id=sid, requires=list(requires), compensate=compensate, **opts)

    def before(self, a: str, b: str) -> bool:
        return self.log.index(a) < self.log.index(b)


async def test_failure_compensates_in_reverse_order(flow: Flow) -> None:
    ledger = Ledger()
    a = ledger.step("a")
    b = ledger.step("b", a)
    c = ledger.step("c", b, fail=True)
    d = ledger.step("d", c)
    wf = await flow.workflow_create("rollback", a, b, c, d)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute({"order": 1})
    assert err.value.step_id == "c"
    assert err.value.compensated is True
    assert "c broke" in err.value.error
    assert ledger.before("undone b", "undo a")
    assert "undo c" not in ledger.log
    assert "start d" not in ledger.log
    info = await flow.execution(err.value.execution_id)
    assert info.status is Status.FAILURE
    assert info.steps["a"].status is Status.COMPENSATED
    assert info.steps["b"].status is Status.COMPENSATED
    assert info.steps["b"].compensation is not None
    assert info.steps["b"].compensation.status is Status.SUCCESS
    assert info.steps["c"].status is Status.FAILURE
    assert info.steps["d"].status is Status.PENDING
    assert info.steps["d"].compensation is None
    assert info.error is not None
    assert "c broke" in info.error
    assert wf.status is Status.FAILURE


async def test_independent_compensations_run_in_parallel(flow: Flow) -> None:
    # a -> (b, c) -> d fails: b and c are undone together, a after both
    ledger = Ledger()
    a = ledger.step("a")
    b = ledger.step("b", a)
    c = ledger.step("c", a)
    d = ledger.step("d", b, c, fail=True)
    wf = await flow.workflow_create("diamond", a, b, c, d)
    with pytest.raises(ExecutionFailedError):
        await wf.execute()
    assert ledger.before("undo b", "undone c")
    assert ledger.before("undo c", "undone b")
    assert ledger.before("undone b", "undo a")
    assert ledger.before("undone c", "undo a")


async def test_running_steps_finish_before_the_rollback(flow: Flow) -> None:
    ledger = Ledger()
    slow = ledger.step("slow", wait=True)
    bad = ledger.step("bad", fail=True)

    async def release_slow_after_failure() -> None:
        await eventually(lambda: "fail bad" in ledger.log)
        ledger.gate("slow").set()

    helper = asyncio.create_task(release_slow_after_failure())
    wf = await flow.workflow_create("race", slow, bad)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute()
    await helper
    # slow was running when bad failed: it finished, was recorded, then compensated
    assert ledger.before("done slow", "undo slow")
    info = await flow.execution(err.value.execution_id)
    assert info.steps["slow"].status is Status.COMPENSATED
    assert info.steps["slow"].response is not None


async def test_compensation_inputs(flow: Flow) -> None:
    ledger = Ledger()
    both = ledger.step("both")
    req = ledger.step("req", compensate_input="request")
    resp = ledger.step("resp", compensate_input="response")
    boom = ledger.step("boom", both, req, resp, fail=True)
    wf = await flow.workflow_create("inputs", both, req, resp, boom)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute({"order": 9})
    eid = err.value.execution_id
    assert ledger.comp_inputs["both"].json() == {
        "request": {"order": 9},
        "response": {"did": "both"},
    }
    assert ledger.comp_inputs["req"].json() == {"order": 9}
    assert ledger.comp_inputs["resp"].json() == {"did": "resp"}
    key = ledger.comp_inputs["both"].header["Idempotency-Key"]
    assert key == f"{eid}:both:compensate"


async def test_failed_compensation_stops_its_branch_and_resume_retries_it(flow: Flow) -> None:
    ledger = Ledger()
    root = ledger.step("root")
    stuck = ledger.step("stuck", root, comp_fails=2)  # 2 attempts allowed: exhausted
    side = ledger.step("side")
    boom = ledger.step("boom", stuck, side, fail=True)
    wf = await flow.workflow_create("stuck", root, stuck, side, boom)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute()
    assert err.value.compensated is False
    eid = err.value.execution_id
    info = await flow.execution(eid)
    assert info.status is Status.FAILURE
    assert not info.compensated
    assert info.steps["stuck"].status is Status.SUCCESS
    assert info.steps["stuck"].compensation.status is Status.FAILURE  # type: ignore[union-attr]
    assert info.steps["stuck"].compensation.attempts == 2  # type: ignore[union-attr]
    assert "cannot undo stuck" in (info.error or "")
    assert info.steps["root"].status is Status.SUCCESS  # not undone before what requires it
    assert info.steps["side"].status is Status.COMPENSATED  # independent branch undone
    await flow.resume(eid)
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.FAILURE
    assert info.steps["stuck"].status is Status.COMPENSATED
    assert info.steps["root"].status is Status.COMPENSATED
    assert info.compensated


async def test_suspend_then_resume(flow: Flow) -> None:
    ledger = Ledger()
    first = ledger.step("first", wait=True)
    second = ledger.step("second", first)
    wf = await flow.workflow_create("pause", first, second)
    eid = await wf.execute(async_=True)
    await eventually(lambda: "start first" in ledger.log)
    await flow.suspend(eid)
    assert (await flow.execution(eid)).status is Status.SUSPEND  # at once
    ledger.gate("first").set()
    info = await flow.wait(eid, timeout=5)
    assert info.status is Status.SUSPEND
    # the running step finished and was recorded; nothing new started
    await eventually(async_status(flow, eid, "first", Status.SUCCESS))
    assert "start second" not in ledger.log
    await flow.resume(eid)
    assert (await flow.execution(eid)).status is Status.RUNNING  # at once
    info = await flow.wait(eid, timeout=5)
    assert info.status is Status.SUCCESS
    assert ledger.log.count("start first") == 1  # finished steps are not run again
    assert info.steps["second"].status is Status.SUCCESS


def async_status(flow: Flow, eid: str, sid: str, status: Status) -> Any:
    async def check() -> bool:
        return (await flow.execution(eid)).steps[sid].status is status

    return check


async def test_sync_execute_returns_on_suspend(flow: Flow) -> None:
    ledger = Ledger()
    first = ledger.step("first", wait=True)
    wf = await flow.workflow_create("pause", first, ledger.step("second", first))

    async def suspend_soon() -> None:
        await eventually(lambda: "start first" in ledger.log)
        assert wf.last_execution is not None
        await wf.suspend(wf.last_execution)
        ledger.gate("first").set()

    task = asyncio.create_task(suspend_soon())
    eid = await asyncio.wait_for(wf.execute(), 10)
    await task
    assert (await flow.execution(eid)).status is Status.SUSPEND
    assert wf.status is Status.SUSPEND


async def test_abort_compensates_and_ends_aborted(flow: Flow) -> None:
    ledger = Ledger()
    a = ledger.step("a")
    b = ledger.step("b", a, wait=True)
    c = ledger.step("c", b)
    wf = await flow.workflow_create("abort", a, b, c)
    eid = await wf.execute(async_=True)
    await eventually(lambda: "start b" in ledger.log)
    await flow.abort(eid)
    ledger.gate("b").set()
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.ABORTED
    assert info.steps["a"].status is Status.COMPENSATED
    assert info.steps["b"].status is Status.COMPENSATED  # it was running: finished, undone
    assert info.steps["c"].status is Status.PENDING
    assert ledger.before("undone b", "undo a")


async def test_sync_execute_returns_the_id_when_aborted(flow: Flow) -> None:
    ledger = Ledger()
    a = ledger.step("a", wait=True)
    wf = await flow.workflow_create("abort2", a)

    async def abort_soon() -> None:
        await eventually(lambda: "start a" in ledger.log)
        assert wf.last_execution is not None
        await flow.abort(wf.last_execution, compensate=False)
        ledger.gate("a").set()

    task = asyncio.create_task(abort_soon())
    eid = await asyncio.wait_for(wf.execute(), 10)
    await task
    info = await flow.execution(eid)
    assert info.status is Status.ABORTED
    assert info.steps["a"].status is Status.SUCCESS  # not compensated
    assert "undo a" not in ledger.log


async def test_an_abort_without_compensation_wins_over_the_decision_in_flight(
    flow: Flow,
) -> None:
    """The abort is stored while the step that makes ``b`` ready returns: the run's
    next commit (``a`` done, ``b`` started) was decided without it. Found by
    test_run_control_properties on SQLite, where that commit used to be applied (an
    abort without compensation leaves the status RUNNING): ``b`` ran after the abort
    returned, and a last step's SUCCESS ended the execution SUCCESS."""
    aborting: list[asyncio.Task[None]] = []

    async def a(msg: Message) -> None:
        aborting.append(asyncio.create_task(flow.abort(eid, compensate=False)))
        while (found := await flow.store.get_status(eid)) and found[1] is Abort.NONE:
            await asyncio.sleep(0)  # until the abort is stored, not yet known to the run

    ran: list[str] = []

    async def b(msg: Message) -> None:
        ran.append("b")

    wf = await flow.workflow_create(
        "abort-in-flight", FunctionStep(a, id="a"), FunctionStep(b, id="b", requires=["a"])
    )
    eid = await wf.execute(async_=True)
    info = await flow.wait(eid, timeout=10)
    await asyncio.wait_for(aborting[0], 10)  # accepted: the execution had not ended
    assert info.status is Status.ABORTED
    assert info.steps["a"].status is Status.SUCCESS
    assert info.steps["b"].status is Status.PENDING
    assert ran == []


async def test_an_abort_during_the_last_compensation_ends_the_execution_aborted(
    flow: Flow,
) -> None:
    """As above, during a rollback (the status stays COMPENSATING): the run's commit
    of FAILURE, decided without the abort, used to be applied on SQLite."""
    aborting: list[asyncio.Task[None]] = []

    async def a(msg: Message) -> dict[str, int]:
        return {"a": 1}

    async def undo_a(msg: Message) -> None:
        aborting.append(asyncio.create_task(flow.abort(eid)))
        while (found := await flow.store.get_status(eid)) and found[1] is Abort.NONE:
            await asyncio.sleep(0)  # until the abort is stored, not yet known to the run

    async def b(msg: Message) -> None:
        raise StepError("declined", retryable=False)

    wf = await flow.workflow_create(
        "abort-rollback",
        FunctionStep(a, id="a", compensate=FunctionStep(undo_a, id="undo-a")),
        FunctionStep(b, id="b", requires=["a"]),
    )
    eid = await wf.execute(async_=True)
    info = await flow.wait(eid, timeout=10)
    await asyncio.wait_for(aborting[0], 10)  # accepted: the rollback was in progress
    assert info.status is Status.ABORTED
    assert info.steps["a"].status is Status.COMPENSATED


async def test_abort_a_suspended_execution(flow: Flow) -> None:
    ledger = Ledger()
    a = ledger.step("a", wait=True)
    b = ledger.step("b", a)
    wf = await flow.workflow_create("s-then-a", a, b)
    eid = await wf.execute(async_=True)
    await eventually(lambda: "start a" in ledger.log)
    await flow.suspend(eid)
    ledger.gate("a").set()
    await eventually(async_status(flow, eid, "a", Status.SUCCESS))
    await flow.abort(eid)
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.ABORTED
    assert info.steps["a"].status is Status.COMPENSATED
    assert "start b" not in ledger.log


async def test_transitions_that_make_no_sense_are_refused(flow: Flow) -> None:
    ledger = Ledger()
    wf = await flow.workflow_create("done", ledger.step("a"))
    eid = await wf.execute()
    with pytest.raises(InvalidTransitionError, match="cannot resume an execution that is SUCCESS"):
        await flow.resume(eid)
    with pytest.raises(InvalidTransitionError, match="cannot suspend"):
        await flow.suspend(eid)
    with pytest.raises(InvalidTransitionError, match="cannot abort"):
        await flow.abort(eid)


class Clock:
    """The flow's clock, moved by the test (``Flow(clock=...)``)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_deadline_aborts_with_compensation(store_url: str) -> None:
    clock = Clock()
    ledger = Ledger()
    a = ledger.step("a")
    b = ledger.step("b", a, wait=True)
    # leases long enough that moving the clock does not let them expire
    async with Flow(store_url, poll_interval=0.05, clock=clock, lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("deadline", a, b)
        running = asyncio.create_task(wf.execute(deadline=3600))
        await eventually(lambda: "start b" in ledger.log)
        clock.now += 3601  # past the deadline, by the flow's clock: the abort comes
        await eventually(async_execution_status(flow, Status.COMPENSATING))
        ledger.gate("b").set()  # b finishes after the abort, and is compensated too
        eid = await asyncio.wait_for(running, 10)  # returns the id: no raise
        info = await flow.execution(eid)
    assert info.status is Status.ABORTED
    assert info.steps["a"].status is Status.COMPENSATED
    assert info.error is not None
    assert "deadline" in info.error


async def test_no_step_starts_after_the_deadline_passed_while_suspended(store_url: str) -> None:
    clock = Clock()
    ledger = Ledger()
    a = ledger.step("a", wait=True)
    b = ledger.step("b", a)
    # leases long enough that moving the clock does not let them expire
    async with Flow(store_url, poll_interval=0.05, clock=clock, lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("deadline-suspended", a, b)
        eid = await wf.execute(async_=True, deadline=60)
        await eventually(lambda: "start a" in ledger.log)
        await flow.suspend(eid)
        ledger.gate("a").set()
        await flow.settle(eid)  # a finished and was recorded; nothing else starts
        clock.now += 61  # the deadline is behind us now
        await flow.resume(eid)
        info = await flow.wait(eid, timeout=10)
    assert info.status is Status.ABORTED
    assert "start b" not in ledger.log
    assert info.steps["b"].status is Status.PENDING
    assert info.steps["a"].status is Status.COMPENSATED
    assert info.error is not None
    assert "deadline" in info.error


@pytest.mark.parametrize("waiting", ["wait", "sleep"])
async def test_the_deadline_of_a_parked_execution_aborts_it(store_url: str, waiting: str) -> None:
    clock = Clock()
    ledger = Ledger()
    a = ledger.step("a")
    if waiting == "wait":  # a signal that never comes
        later: Step = WaitStep("paid", requires=[a])
    else:  # a sleep longer than the deadline
        later = SleepStep(86400, id="nap", requires=[a])
    async with Flow(store_url, poll_interval=0.02, clock=clock, lease_ttl=10**6) as flow:
        wf = await flow.workflow_create(f"deadline-{waiting}", a, later)
        eid = await wf.execute(async_=True, deadline=60)
        await eventually(lambda: parked(flow, eid))
        clock.now += 61  # the deadline passes while the execution waits in the store
        info = await flow.wait(eid, timeout=10)
    assert info.status is Status.ABORTED
    assert info.steps["a"].status is Status.COMPENSATED
    assert info.steps[later.id].status is Status.PENDING  # the wait given up
    assert info.error is not None
    assert "deadline" in info.error


async def parked(flow: Flow, eid: str) -> bool:
    """The execution waits in the store, held by no run of this worker."""
    info = await flow.execution(eid)
    return info.status is Status.RUNNING and eid not in flow._running().runs and bool(info.note)


def async_execution_status(flow: Flow, status: Status) -> Any:
    async def check() -> bool:
        found = await flow.executions(status=status)
        return bool(found)

    return check


async def test_abort_of_a_queued_execution_ends_it_without_a_worker(store_url: str) -> None:
    ledger = Ledger()
    async with Flow(store_url, worker=False) as flow:  # nobody will run it
        wf = await flow.workflow_create("queued", ledger.step("a"))
        eid = await wf.execute(async_=True)
        assert (await flow.execution(eid)).status is Status.PENDING
        await flow.abort(eid)
        info = await flow.wait(eid, timeout=5)
    assert info.status is Status.ABORTED
    assert info.steps["a"].status is Status.PENDING
    assert ledger.log == []


async def test_execution_id_is_an_idempotency_key(flow: Flow) -> None:
    ledger = Ledger()
    wf = await flow.workflow_create("idem", ledger.step("a"))
    first = await wf.execute({"n": 1}, execution_id="order-42")
    second = await wf.execute({"n": 2}, execution_id="order-42")
    assert first == second == "order-42"
    assert ledger.log.count("start a") == 1
    info = await flow.execution("order-42")
    assert info.request.json() == {"n": 1}
    failing = await flow.workflow_create("idem-fail", ledger.step("bad", fail=True))
    for _ in range(2):
        with pytest.raises(ExecutionFailedError) as err:
            await failing.execute(execution_id="order-43")
        assert err.value.execution_id == "order-43"
        assert failing.status is Status.FAILURE
    assert ledger.log.count("start bad") == 1


async def test_concurrent_calls_with_the_same_id_start_one_execution(flow: Flow) -> None:
    ledger = Ledger()
    wf = await flow.workflow_create("idem2", ledger.step("a"))
    ids = await asyncio.gather(*(wf.execute(execution_id="same") for _ in range(5)))
    assert ids == ["same"] * 5
    assert ledger.log.count("start a") == 1


async def test_cancelling_the_wait_does_not_stop_the_execution(flow: Flow) -> None:
    ledger = Ledger()
    a = ledger.step("a", wait=True)
    wf = await flow.workflow_create("cancel", a, ledger.step("b", a))
    task = asyncio.create_task(wf.execute(execution_id="keep-going"))
    await eventually(lambda: "start a" in ledger.log)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ledger.gate("a").set()
    info = await flow.wait("keep-going", timeout=5)
    assert info.status is Status.SUCCESS
