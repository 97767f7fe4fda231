"""Steps that wait holding nothing (SPEC section 8): signals, timers, sub-workflows and
map, on the memory and SQLite stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    ConfigurationError,
    CycleError,
    DefinitionError,
    ExecutionFailedError,
    ExecutionNotFoundError,
    Flow,
    FunctionStep,
    InvalidTransitionError,
    MapStep,
    Message,
    Retry,
    SleepStep,
    Status,
    StepContext,
    StepError,
    SubflowStep,
    WaitStep,
    WorkflowNotFoundError,
    load_definition,
    testing,
)
from microsaga._run import Run
from microsaga.stores.base import Transition, TransitionResult
from microsaga.stores.memory import MemoryStore
from tests.helpers import eventually

LOG: list[tuple[str, Any]] = []  # what the module-level steps below were called with


async def reserve(msg: Message) -> dict[str, str]:
    LOG.append(("reserve", msg.json()))
    return {"reservation": "R1"}


async def release(msg: Message) -> None:
    LOG.append(("release", msg.json()))


async def pay(msg: Message) -> dict[str, Any]:
    LOG.append(("pay", msg.json()))
    return {"paid": msg.json()}


async def refund(msg: Message) -> None:
    LOG.append(("refund", msg.json()))


async def decline(msg: Message) -> None:
    LOG.append(("decline", msg.json()))
    raise StepError("card declined")


async def item(msg: Message) -> Any:
    value = msg.json()
    LOG.append(("item", (value, msg.header.get("Idempotency-Key"))))
    if value == "bad":
        raise StepError(f"cannot take {value}")
    return {"took": value}


async def put_back(msg: Message) -> None:
    LOG.append(("put_back", msg.json()))


async def let_go(msg: Message) -> None:
    LOG.append(("let_go", msg.json()))


REFUSED: set[str] = set()  # what the steps below refuse to do, while named here


async def refund_unless_refused(msg: Message) -> None:
    LOG.append(("refund", msg.json()))
    if "refund" in REFUSED:
        raise StepError("refund refused")


def _refusable_pay() -> FunctionStep:
    """The child's payment, whose refund fails while "refund" is in REFUSED."""
    refund = FunctionStep(refund_unless_refused, retry=Retry(max_attempts=1))
    return FunctionStep(pay, id="pay", compensate=refund)


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    LOG.clear()
    REFUSED.clear()


def body(message: Message | None) -> Any:
    assert message is not None
    return message.json()


def calls(name: str) -> list[Any]:
    return [got for step, got in LOG if step == name]


async def parked(flow: Flow, eid: str) -> bool:
    """The execution exists and waits in the store, held by no run of this worker."""
    info = await flow.store.get_execution(eid)
    if info is None:  # a child not started yet
        return False
    return info.status is Status.RUNNING and eid not in flow._running().runs and bool(info.note)


# signals ------------------------------------------------------------------------------


async def test_a_signal_wakes_a_parked_execution_and_its_payload_is_the_response(
    flow: Flow,
) -> None:
    wf = await flow.workflow_create(
        "order",
        FunctionStep(reserve, id="reserve"),
        WaitStep("payment.confirmed", requires=["reserve"]),
        FunctionStep(pay, id="pay", requires=["payment.confirmed"]),
    )
    eid = await wf.execute({"order": 1}, async_=True)
    await eventually(lambda: parked(flow, eid))
    info = await flow.execution(eid)
    assert info.steps["payment.confirmed"].status is Status.WAITING
    assert "payment.confirmed" in (info.note or "")

    await flow.signal(eid, "payment.confirmed", {"amount": 42})
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert done.steps["payment.confirmed"].response.json() == {"amount": 42}
    assert calls("pay") == [{"amount": 42}]


async def test_a_signal_sent_before_the_step_starts_is_kept_and_a_second_ignored(
    flow: Flow,
) -> None:
    wf = await flow.workflow_create(
        "order",
        SleepStep(0.2, id="nap"),
        WaitStep("approved", requires=["nap"]),
    )
    eid = await wf.execute({"order": 1}, async_=True)
    await flow.signal(eid, "approved", {"by": "ann"})
    await flow.signal(eid, "approved", {"by": "bob"})  # kept for nothing
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert body(done.response) == {"by": "ann"}


async def test_a_wait_that_times_out_fails_the_step_and_rolls_back(flow: Flow) -> None:
    wf = await flow.workflow_create(
        "order",
        FunctionStep(reserve, id="reserve", compensate=FunctionStep(release)),
        WaitStep("paid", timeout=0.3, requires=["reserve"]),
    )
    with pytest.raises(ExecutionFailedError) as failed:
        await wf.execute({"order": 1})
    assert failed.value.step_id == "paid"
    info = await flow.execution(failed.value.execution_id)
    assert info.steps["paid"].status is Status.FAILURE
    assert "timed out after 0.3s waiting for paid" in (info.steps["paid"].error or "")
    assert calls("release") == [{"request": {"order": 1}, "response": {"reservation": "R1"}}]


async def test_a_parked_timeout_fires_when_the_flows_clock_passes_it(store_url: str) -> None:
    now = [1_000_000.0]
    async with Flow(store_url, clock=lambda: now[0], poll_interval=0.02, lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("order", WaitStep("paid", timeout=3600))
        eid = await wf.execute(None, async_=True)
        await eventually(lambda: parked(flow, eid))
        now[0] += 3601
        done = await flow.wait(eid, timeout=10)
        assert done.status is Status.FAILURE
        assert done.failed_step == "paid"


async def test_a_signal_completes_a_wait_while_a_step_beside_it_runs(flow: Flow) -> None:
    """The step beside the wait is the only one running: the loop still looks at the
    wait (it ran such a step in its own task, and saw the signal only once the step
    had returned)."""
    release = asyncio.Event()

    async def slow(msg: Message) -> dict[str, int]:
        await release.wait()
        return {"slow": 1}

    wf = await flow.workflow_create("w", FunctionStep(slow, id="slow"), WaitStep("go", id="go"))
    eid = await wf.execute({}, async_=True)
    await flow.signal(eid, "go", {"ok": 1})

    async def waited() -> bool:
        return (await flow.execution(eid)).steps["go"].status is Status.SUCCESS

    await eventually(waited)
    assert (await flow.execution(eid)).steps["slow"].status is Status.RUNNING
    release.set()
    assert (await flow.wait(eid, timeout=10)).status is Status.SUCCESS


async def test_signal_errors_name_what_is_wrong(flow: Flow) -> None:
    wf = await flow.workflow_create("order", FunctionStep(reserve, id="reserve"))
    eid = await wf.execute({})
    with pytest.raises(ExecutionNotFoundError):
        await flow.signal("no-such-execution", "paid")
    with pytest.raises(InvalidTransitionError, match="SUCCESS"):
        await flow.signal(eid, "paid")
    with pytest.raises(ConfigurationError, match="event"):
        await flow.signal(eid, "")
    with pytest.raises(ConfigurationError, match="payload"):
        await flow.signal(eid, "paid", object())
    with pytest.raises(ConfigurationError, match="payload"):
        await flow.signal(eid, "paid", b"{not json")


async def test_a_signal_racing_the_park_is_not_lost(flow: Flow) -> None:
    """The signal lands after the run looked for it and before it parks: the park
    must see it (one transaction) rather than leave the execution waiting."""
    wf = await flow.workflow_create("order", WaitStep("paid"))
    sent: list[str] = []

    async def signal_now() -> None:
        if not sent:
            sent.append(eid)
            await flow.signal(eid, "paid", {"late": True})

    eid = "race-1"
    testing.arm_fault("before_park", signal_now)
    await wf.execute(None, execution_id=eid, async_=True)
    done = await flow.wait(eid, timeout=10)
    assert sent == [eid]
    assert done.status is Status.SUCCESS
    assert body(done.response) == {"late": True}


async def test_a_suspended_waiting_execution_resumes_and_still_waits(flow: Flow) -> None:
    wf = await flow.workflow_create("order", WaitStep("paid"))
    eid = await wf.execute(None, async_=True)
    await eventually(lambda: parked(flow, eid))
    await flow.suspend(eid)
    await flow.signal(eid, "paid", 1)  # kept while suspended
    assert (await flow.execution(eid)).status is Status.SUSPEND
    await flow.resume(eid)
    assert (await flow.wait(eid, timeout=10)).status is Status.SUCCESS


async def test_an_abort_of_a_parked_execution_rolls_it_back(flow: Flow) -> None:
    wf = await flow.workflow_create(
        "order",
        FunctionStep(reserve, id="reserve", compensate=FunctionStep(release)),
        WaitStep("paid", requires=["reserve"]),
    )
    eid = await wf.execute({"order": 2}, async_=True)
    await eventually(lambda: parked(flow, eid))
    await flow.abort(eid)
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.ABORTED
    assert done.steps["paid"].status is Status.PENDING
    assert len(calls("release")) == 1


async def test_an_abort_without_compensation_of_an_execution_about_to_park_ends_it(
    flow: Flow,
) -> None:
    """The abort is stored as the run parks (on SQLite, where the request waits for the
    store): found by test_run_control_properties, the park used to be accepted (the
    status stays RUNNING) and the execution waited, RUNNING, for a signal."""
    wf = await flow.workflow_create("order", WaitStep("paid"))
    eid = await wf.execute(None, async_=True)
    await flow.abort(eid, compensate=False)
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.ABORTED
    assert done.steps["paid"].status is Status.PENDING


@pytest.mark.parametrize("compensate", [True, False])
async def test_an_abort_of_a_parked_execution_with_nothing_to_undo_gives_up_the_wait(
    flow: Flow, compensate: bool
) -> None:
    """No worker holds it and no step succeeded: the abort used to end it at once in the
    store, leaving its step WAITING in an ABORTED execution (found by
    test_run_control_properties). A worker now gives the wait up, as in any abort."""
    wf = await flow.workflow_create("order", WaitStep("paid"))
    eid = await wf.execute(None, async_=True)
    await eventually(lambda: parked(flow, eid))
    await flow.abort(eid, compensate=compensate)
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.ABORTED
    assert done.steps["paid"].status is Status.PENDING


# timers -------------------------------------------------------------------------------


async def test_a_sleep_succeeds_with_its_request_when_the_clock_passes(store_url: str) -> None:
    now = [2_000_000.0]
    async with Flow(store_url, clock=lambda: now[0], poll_interval=0.02, lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("remind", SleepStep(3 * 86400), FunctionStep(pay, id="pay"))
        wf2 = await flow.workflow_create(
            "later", SleepStep(until=now[0] + 60, id="at"), FunctionStep(pay, id="pay")
        )
        assert [s.id for s in wf.step_list] == ["sleep-1", "pay"]
        eid = await wf.execute({"n": 1}, async_=True)
        eid2 = await wf2.execute({"n": 2}, async_=True)
        await eventually(lambda: parked(flow, eid))
        await eventually(lambda: parked(flow, eid2))
        now[0] += 61
        assert (await flow.wait(eid2, timeout=10)).status is Status.SUCCESS
        assert (await flow.execution(eid)).status is Status.RUNNING
        now[0] += 3 * 86400
        done = await flow.wait(eid, timeout=10)
        assert done.status is Status.SUCCESS
        assert done.steps["sleep-1"].response.json() == {"n": 1}


async def test_a_timer_that_passed_while_no_worker_ran_fires_at_the_next_start(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'timers.db'}"
    now = [3_000_000.0]
    async with Flow(url, clock=lambda: now[0], poll_interval=0.02, lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("remind", SleepStep(600, id="nap"))
        eid = await wf.execute({"n": 3}, async_=True)
        await eventually(lambda: parked(flow, eid))
    now[0] += 3600  # no worker runs meanwhile
    async with Flow(url, clock=lambda: now[0], poll_interval=0.02, lease_ttl=10**6) as flow:
        done = await flow.wait(eid, timeout=10)
        assert done.status is Status.SUCCESS


# sub-workflows ------------------------------------------------------------------------


async def _saved(flow: Flow, wf_id: str, *steps: Any) -> None:
    await flow.workflow_save(await flow.workflow_create(wf_id, *steps))


async def test_a_subflow_runs_the_saved_workflow_as_a_child(flow: Flow) -> None:
    await _saved(flow, "payment", FunctionStep(pay, id="pay"))
    wf = await flow.workflow_create("order", SubflowStep("payment", id="charge"))
    eid = await wf.execute({"amount": 5})
    done = await flow.execution(eid)
    assert body(done.response) == {"paid": {"amount": 5}}
    child = await flow.execution(f"{eid}:charge")
    assert child.status is Status.SUCCESS
    assert child.parent_id == eid
    assert done.parent_id is None
    assert calls("pay") == [{"amount": 5}]
    # a parent taken over after it started its child starts it again: nothing happens
    await flow.start_child(eid, wf.plan().nodes["charge"], Message(b'{"amount": 6}'))
    assert calls("pay") == [{"amount": 5}]
    assert (await flow.execution(f"{eid}:charge")).request.json() == {"amount": 5}


async def test_a_failed_child_fails_the_step_after_its_own_rollback(flow: Flow) -> None:
    await _saved(
        flow,
        "payment",
        FunctionStep(reserve, id="hold", compensate=FunctionStep(release)),
        FunctionStep(decline, id="charge", requires=["hold"]),
    )
    wf = await flow.workflow_create("order", SubflowStep("payment", id="pay"))
    with pytest.raises(ExecutionFailedError) as failed:
        await wf.execute({"amount": 5})
    eid = failed.value.execution_id
    child = await flow.execution(f"{eid}:pay")
    assert child.status is Status.FAILURE
    assert len(calls("release")) == 1  # the child's own rollback, before the step failed
    step = (await flow.execution(eid)).steps["pay"]
    assert step.status is Status.FAILURE
    assert "card declined" in (step.error or "")


async def test_a_parent_rollback_compensates_a_succeeded_child_as_a_unit(flow: Flow) -> None:
    await _saved(flow, "payment", FunctionStep(pay, id="pay", compensate=FunctionStep(refund)))
    wf = await flow.workflow_create(
        "order",
        SubflowStep("payment", id="charge"),
        FunctionStep(decline, id="ship", requires=["charge"]),
    )
    with pytest.raises(ExecutionFailedError) as failed:
        await wf.execute({"amount": 7})
    eid = failed.value.execution_id
    assert failed.value.compensated
    child = await flow.execution(f"{eid}:charge")
    assert child.status is Status.ABORTED
    assert calls("refund") == [{"request": {"amount": 7}, "response": {"paid": {"amount": 7}}}]
    assert (await flow.execution(eid)).steps["charge"].status is Status.COMPENSATED


async def test_a_rollback_giving_up_a_child_undoes_it_before_what_it_required(
    flow: Flow,
) -> None:
    """The child of a SubflowStep still waiting when the parent rolls back is aborted:
    its rollback ends before the steps that the SubflowStep requires are compensated
    (they were compensated at once, the child's undone after)."""
    await _saved(
        flow,
        "payment",
        FunctionStep(pay, id="pay", compensate=FunctionStep(refund)),
        WaitStep("confirmed", requires=["pay"]),
    )
    wf = await flow.workflow_create(
        "order",
        FunctionStep(reserve, id="reserve", compensate=FunctionStep(release)),
        SubflowStep("payment", id="charge", requires=["reserve"]),
        WaitStep("go"),
        FunctionStep(decline, id="ship", requires=["go"]),
    )
    eid = await wf.execute({"amount": 2}, async_=True)
    child_id = f"{eid}:charge"

    await eventually(lambda: parked(flow, child_id))  # paid, waits for "confirmed"
    await flow.signal(eid, "go")
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.FAILURE
    assert done.compensated
    assert (await flow.execution(child_id)).status is Status.ABORTED
    assert [step for step, _ in LOG if step in ("refund", "release")] == ["refund", "release"]


@pytest.mark.parametrize("own_compensate", [False, True], ids=["child-rollback", "own-compensate"])
async def test_a_given_up_child_whose_rollback_fails_stops_the_rollback_above_it(
    flow: Flow, own_compensate: bool
) -> None:
    """SPEC 4b: the rollback of a child given up while it runs fails as a compensation
    of its SubflowStep that fails (as a succeeded child's does): the steps the
    SubflowStep requires stay SUCCESS, the parent ends FAILURE, not compensated (it
    went on as if the child was undone: it compensated them and said so). A resume of
    the parent retries the child's rollback (never the SubflowStep's own compensate,
    which is for a child that succeeded), then carries on with its own."""
    await _saved(
        flow,
        "payment",
        _refusable_pay(),
        WaitStep("confirmed", requires=["pay"]),
    )
    wf = await flow.workflow_create(
        "order",
        FunctionStep(reserve, id="reserve", compensate=FunctionStep(release)),
        SubflowStep(
            "payment",
            id="charge",
            requires=["reserve"],
            compensate=FunctionStep(put_back) if own_compensate else None,
        ),
        FunctionStep(reserve, id="hold", compensate=FunctionStep(let_go)),  # independent
        WaitStep("go"),
        FunctionStep(decline, id="ship", requires=["go"]),
    )
    REFUSED.add("refund")
    eid = await wf.execute({"amount": 2}, async_=True)
    child_id = f"{eid}:charge"

    await eventually(lambda: parked(flow, child_id))  # paid, waits for "confirmed"
    await flow.signal(eid, "go")
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.FAILURE
    assert not done.compensated
    assert "refund refused" in (done.error or "")
    assert done.steps["reserve"].status is Status.SUCCESS
    assert calls("release") == []
    assert done.steps["hold"].status is Status.COMPENSATED  # an independent branch
    charge = done.steps["charge"]
    assert charge.compensation is not None
    assert charge.compensation.status is Status.FAILURE
    with pytest.raises(ExecutionFailedError) as failed:
        await wf.execute({"amount": 2}, execution_id=eid)
    assert not failed.value.compensated
    assert (await flow.execution(child_id)).status is Status.FAILURE

    REFUSED.clear()
    await flow.resume(eid)
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.FAILURE
    assert done.compensated
    assert done.steps["reserve"].status is Status.COMPENSATED
    assert (await flow.execution(child_id)).status is Status.ABORTED
    assert len(calls("let_go")) == 1
    assert [step for step, _ in LOG if step in ("refund", "release", "put_back")] == [
        "refund",
        "refund",
        "release",
    ]


async def test_a_resume_retries_the_failed_rollback_of_a_child_that_succeeded(
    flow: Flow,
) -> None:
    """SPEC 4b: a succeeded child whose rollback fails stops the parent's rollback
    above its SubflowStep; a resume of the parent retries the child's rollback (it
    found the child finished and failed again at once), then carries on."""
    await _saved(
        flow,
        "payment",
        _refusable_pay(),
    )
    wf = await flow.workflow_create(
        "order",
        FunctionStep(reserve, id="reserve", compensate=FunctionStep(release)),
        SubflowStep("payment", id="charge", requires=["reserve"]),
        FunctionStep(decline, id="ship", requires=["charge"]),
    )
    REFUSED.add("refund")
    with pytest.raises(ExecutionFailedError) as failed:
        await wf.execute({"amount": 4})
    assert not failed.value.compensated
    eid = failed.value.execution_id
    assert (await flow.execution(eid)).steps["reserve"].status is Status.SUCCESS
    assert calls("release") == []

    REFUSED.clear()
    await flow.resume(eid)
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.FAILURE
    assert done.compensated
    assert done.steps["charge"].status is Status.COMPENSATED
    assert done.steps["reserve"].status is Status.COMPENSATED
    assert (await flow.execution(f"{eid}:charge")).status is Status.ABORTED
    assert [step for step, _ in LOG if step in ("refund", "release")] == [
        "refund",
        "refund",
        "release",
    ]


async def test_a_child_failing_whose_own_rollback_fails_stops_the_rollback_above_it(
    flow: Flow,
) -> None:
    """SPEC 4b: a child that failed on its own and could not roll back is a
    SubflowStep whose undo failed: what it requires stays SUCCESS and the parent is not
    compensated (it compensated them, and said all was undone). A resume of the parent
    retries the child's rollback, then carries on with its own."""
    await _saved(
        flow,
        "payment",
        _refusable_pay(),
        FunctionStep(decline, id="confirm", requires=["pay"]),
    )
    wf = await flow.workflow_create(
        "order",
        FunctionStep(reserve, id="reserve", compensate=FunctionStep(release)),
        SubflowStep("payment", id="charge", requires=["reserve"]),
        FunctionStep(reserve, id="hold", compensate=FunctionStep(let_go)),  # independent
    )
    REFUSED.add("refund")
    with pytest.raises(ExecutionFailedError) as failed:
        await wf.execute({"amount": 5})
    assert not failed.value.compensated
    eid = failed.value.execution_id
    child = await flow.execution(f"{eid}:charge")
    assert (child.status, child.compensated) == (Status.FAILURE, False)
    info = await flow.execution(eid)
    assert info.steps["reserve"].status is Status.SUCCESS
    assert calls("release") == []
    assert info.steps["hold"].status is Status.COMPENSATED

    REFUSED.clear()
    await flow.resume(eid)
    done = await flow.wait(eid, timeout=10)
    assert (done.status, done.compensated) == (Status.FAILURE, True)
    assert done.steps["reserve"].status is Status.COMPENSATED
    child = await flow.execution(f"{eid}:charge")
    assert (child.status, child.compensated) == (Status.FAILURE, True)
    assert [step for step, _ in LOG if step in ("refund", "release")] == [
        "refund",
        "refund",
        "release",
    ]


@pytest.mark.parametrize(
    "options",
    [{"concurrency": 1, "lease_ttl": 5.0}, {"claim": False}],
    ids=["one-slot", "no-claim"],
)
async def test_a_parent_rollback_reaches_its_child_whoever_must_claim_it(
    store_url: str, options: dict[str, Any]
) -> None:
    """The child's rollback is claimed like any execution. A worker of one slot (so it
    holds one execution) claims it, though the parent waiting for it fills the worker
    (which waited for ever); a flow that does not claim, as ``microsaga run``, takes
    this one itself (the parent waited for ever for a worker to claim it)."""
    async with Flow(store_url, poll_interval=0.05, **options) as flow:
        await _saved(flow, "payment", FunctionStep(pay, id="pay", compensate=FunctionStep(refund)))
        wf = await flow.workflow_create(
            "order",
            SubflowStep("payment", id="charge"),
            FunctionStep(decline, id="ship", requires=["charge"]),
        )
        with pytest.raises(ExecutionFailedError) as failed:
            async with asyncio.timeout(10):
                await wf.execute({"amount": 3})
        assert failed.value.compensated
        eid = failed.value.execution_id
        assert (await flow.execution(f"{eid}:charge")).status is Status.ABORTED
        assert calls("refund") == [{"request": {"amount": 3}, "response": {"paid": {"amount": 3}}}]


async def test_suspend_and_abort_of_the_parent_reach_a_waiting_child(flow: Flow) -> None:
    await _saved(flow, "approval", WaitStep("approved"))
    wf = await flow.workflow_create("order", SubflowStep("approval", id="ask"))
    eid = await wf.execute({}, async_=True)
    child_id = f"{eid}:ask"
    await eventually(lambda: parked(flow, eid))
    await eventually(lambda: parked(flow, child_id))
    await flow.suspend(eid)
    assert (await flow.execution(child_id)).status is Status.SUSPEND
    await flow.resume(eid)
    assert (await flow.execution(child_id)).status is Status.RUNNING
    await flow.abort(eid)
    assert (await flow.wait(eid, timeout=10)).status is Status.ABORTED
    assert (await flow.wait(child_id, timeout=10)).status is Status.ABORTED


async def test_unknown_and_cyclic_subflows_are_refused_before_anything_is_stored(
    flow: Flow,
) -> None:
    missing = await flow.workflow_create("order", SubflowStep("nowhere", id="go"))
    with pytest.raises(WorkflowNotFoundError, match=r"nowhere .*step go of workflow order"):
        await missing.execute({}, execution_id="never-1")
    with pytest.raises(ExecutionNotFoundError):
        await flow.execution("never-1")
    await _saved(flow, "b", SubflowStep("c", id="to-c"))
    await _saved(flow, "c", SubflowStep("a", id="to-a"))
    a = await flow.workflow_create("a", SubflowStep("b", id="to-b"))
    with pytest.raises(CycleError, match="cycle between workflows: a -> b -> c -> a"):
        await a.execute({})


# map ----------------------------------------------------------------------------------


def _mapper(**options: Any) -> MapStep:
    step = FunctionStep(item, id="item", compensate=FunctionStep(put_back))
    return MapStep(step, over="request.items", id="take", **options)


async def test_a_map_runs_its_step_per_element_with_its_own_keys(flow: Flow) -> None:
    wf = await flow.workflow_create("pick", _mapper(concurrency=2))
    eid = await wf.execute({"items": ["a", "b", "c"]})
    done = await flow.execution(eid)
    assert done.response is not None
    assert done.response.json() == [{"took": "a"}, {"took": "b"}, {"took": "c"}]
    assert list(done.steps) == ["take", "take[0]", "take[1]", "take[2]"]
    assert sorted(calls("item")) == [(v, f"{eid}:take[{i}]") for i, v in enumerate("abc")]
    empty = await flow.execution(await wf.execute({"items": []}))
    assert body(empty.response) == []


async def test_a_failed_run_fails_the_map_and_the_succeeded_runs_are_compensated(
    flow: Flow,
) -> None:
    wf = await flow.workflow_create("pick", _mapper(concurrency=1))
    with pytest.raises(ExecutionFailedError) as failed:
        await wf.execute({"items": ["a", "b", "bad", "c"]})
    info = await flow.execution(failed.value.execution_id)
    assert info.steps["take"].status is Status.FAILURE
    assert "run take[2] failed" in (info.steps["take"].error or "")
    assert [got["request"] for got in calls("put_back")] == ["b", "a"]  # last first
    assert info.steps["take[0]"].status is Status.COMPENSATED
    assert "take[3]" not in info.steps  # never started


async def test_a_map_run_is_recorded_before_each_attempt_and_its_compensation(
    flow: Flow,
) -> None:
    seen: list[tuple[str, int, int, Status]] = []  # what, attempt, as stored

    async def stored(ctx: StepContext, what: str) -> None:
        run = (await flow.execution(ctx.execution_id)).steps[ctx.step_id]
        if what == "undo":
            assert run.compensation is not None
            run = run.compensation
        seen.append((what, ctx.attempt, run.attempts, run.status))

    async def flaky(msg: Message, ctx: StepContext) -> Any:
        await stored(ctx, "do")
        if msg.json() == "bad" or ctx.attempt < 2:
            raise StepError("not yet")
        return msg.json()

    async def undo(msg: Message, ctx: StepContext) -> None:
        await stored(ctx, "undo")
        if ctx.attempt < 2:
            raise StepError("not yet")

    quick = Retry(max_attempts=2, initial_interval=0.001)
    step = FunctionStep(
        flaky, id="flaky", retry=quick, compensate=FunctionStep(undo, id="undo", retry=quick)
    )
    wf = await flow.workflow_create("m", MapStep(step, over="request", id="each", concurrency=1))
    with pytest.raises(ExecutionFailedError, match=r"run each\[1\] failed"):
        await wf.execute(["a", "bad"])
    running = Status.RUNNING
    assert seen == [
        ("do", 1, 1, running),
        ("do", 2, 2, running),  # the retry was stored before it was made
        ("do", 1, 1, running),
        ("do", 2, 2, running),
        ("undo", 1, 1, running),  # each[0] compensated: stored before it ran
        ("undo", 2, 2, running),
    ]


async def test_a_suspend_while_a_map_run_waits_to_retry_leaves_it_to_the_resume(
    flow: Flow,
) -> None:
    tries: list[int] = []

    async def flaky(msg: Message, ctx: StepContext) -> Any:
        tries.append(ctx.attempt)
        if ctx.attempt < 2:
            raise StepError("not yet")
        return msg.json()

    step = FunctionStep(flaky, id="flaky", retry=Retry(max_attempts=2, initial_interval=30))
    wf = await flow.workflow_create("m", MapStep(step, over="request", id="each"))
    eid = await wf.execute(["a"], async_=True)
    await eventually(lambda: tries == [1])  # now waiting 30 s to retry
    await flow.suspend(eid)

    async def stopped() -> bool:  # the run gave up its wait: the map starts again
        return (await flow.execution(eid)).steps["each"].status is Status.PENDING

    await eventually(stopped)  # not FAILURE: the retry was not made
    assert (await flow.execution(eid)).status is Status.SUSPEND
    await flow.resume(eid)
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert tries == [1, 2]


class _SuspendedAtRun(MemoryStore):
    """Suspends the execution as the start of map run ``run`` is committed: the
    commit finds it suspended."""

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run: str | None = run

    def _transition(self, t: Transition) -> TransitionResult:
        if any(r.step_id == self.run and r.status is Status.RUNNING for r in t.records):
            self.run = None
            self._rows[t.execution_id].status = Status.SUSPEND  # as flow.suspend does
        return super()._transition(t)


async def test_a_map_run_stopped_as_it_is_recorded_counts_no_attempt() -> None:
    """A suspend comes as a map run's start is committed: the run is not made, and on
    resume it makes its first attempt (the store kept its record RUNNING, and the
    resumed map counted a second attempt, eating a retry never made)."""
    calls: list[tuple[str, int]] = []

    async def take(msg: Message, ctx: StepContext) -> Any:
        calls.append((ctx.step_id, ctx.attempt))
        return msg.json()

    async with Flow(_SuspendedAtRun("each[1]"), poll_interval=0.05) as flow:
        wf = await flow.workflow_create(
            "m", MapStep(FunctionStep(take, id="take"), over="request", id="each")
        )
        eid = await wf.execute(["a", "b"])
        info = await flow.execution(eid)
        assert info.status is Status.SUSPEND
        assert calls == [("each[0]", 1)]
        await flow.resume(eid)
        done = await flow.wait(eid, timeout=10)
        assert done.status is Status.SUCCESS
        assert calls == [("each[0]", 1), ("each[1]", 1)]
        assert done.steps["each[1]"].attempts == 1


async def test_a_map_that_ends_after_a_step_beside_it_is_recorded(flow: Flow) -> None:
    """``quick`` ends while the map's runs go on, and the loop folds it: the map's end
    is still recorded (it went to the list of ended steps that fold had taken, and the
    execution waited for ever)."""

    async def quick(msg: Message) -> str:
        return "quick"

    async def slow(msg: Message) -> Any:
        for _ in range(3):
            await asyncio.sleep(0)
        return msg.json()

    wf = await flow.workflow_create(
        "beside",
        FunctionStep(quick, id="quick"),
        MapStep(FunctionStep(slow, id="slow"), over="request", id="each"),
    )
    async with asyncio.timeout(10):
        eid = await wf.execute([1, 2])
    done = await flow.execution(eid)
    assert done.status is Status.SUCCESS
    assert body(done.steps["each"].response) == [1, 2]


async def test_a_map_over_something_not_a_list_fails_naming_the_expression(flow: Flow) -> None:
    wf = await flow.workflow_create("pick", _mapper())
    with pytest.raises(ExecutionFailedError, match=r"over request.items is a number"):
        await wf.execute({"items": 3})
    assert calls("item") == []


async def test_a_map_whose_over_cannot_be_evaluated_fails_naming_over(flow: Flow) -> None:
    step = FunctionStep(item, id="item")
    wf = await flow.workflow_create("pick", MapStep(step, over="abs(request.items)", id="take"))
    with pytest.raises(ExecutionFailedError, match=r"^.*over abs\(request.items\) cannot be"):
        await wf.execute({"items": "abc"})
    assert calls("item") == []


# definitions --------------------------------------------------------------------------


def test_the_waiting_kinds_round_trip_through_definitions() -> None:
    definition = {
        "id": "order",
        "steps": [
            {"wait": "payment.confirmed", "timeout": 3600},
            {"sleep": 30, "id": "cool-off", "requires": ["payment.confirmed"]},
            {"sleep": {"until": "2026-12-24T09:00:00Z"}, "id": "xmas"},
            {"workflow": "payment", "version": 2, "id": "charge"},
            {
                "map": {
                    "over": "request.items",
                    "concurrency": 8,
                    "step": {"function": "tests.unit.test_waits:item"},
                },
                "id": "take",
            },
        ],
    }
    wf = load_definition(definition)
    assert wf.to_dict() == definition
    assert isinstance(wf.step("take"), MapStep)


@pytest.mark.parametrize(
    ("steps", "where", "what"),
    [
        ([{"sleep": 30}], "steps[0]", "needs an id"),
        ([{"sleep": {}, "id": "s"}], "steps[0].sleep", "seconds or"),
        ([{"sleep": {"until": "tomorrow"}, "id": "s"}], "steps[0].sleep.until", "ISO 8601"),
        ([{"sleep": -1, "id": "s"}], "steps[0].sleep", "0 or more"),
        ([{"wait": ""}], "steps[0].wait", "non-empty"),
        ([{"workflow": "p", "version": 0}], "steps[0].version", "from 1"),
        ([{"map": {"step": {"function": "json:dumps"}}}], "steps[0].map.over", "missing"),
        ([{"map": {"over": "[", "step": {"function": "json:dumps"}}}], "steps[0].map.over",
         "JMESPath"),
        ([{"map": {"over": "a", "step": {"wait": "x"}}}], "steps[0].map.step", "not a wait"),
    ],
)  # fmt: skip
def test_bad_waiting_definitions_say_where(steps: list[Any], where: str, what: str) -> None:
    with pytest.raises(DefinitionError) as found:
        load_definition({"id": "w", "steps": steps})
    assert found.value.path == where
    assert what in str(found.value)


@pytest.mark.parametrize("concurrency", [0, 1.5, True])
def test_a_map_concurrency_must_be_a_whole_number_of_at_least_1(concurrency: Any) -> None:
    said = f"must be a whole number, at least 1, not {concurrency!r}"
    step = {"map": {"over": "request", "concurrency": concurrency, "step": {"publish": "x"}}}
    with pytest.raises(DefinitionError) as found:
        load_definition({"id": "w", "steps": [step]})
    assert str(found.value) == f"steps[0].map.concurrency: {said}"
    with pytest.raises(DefinitionError) as found:
        MapStep(FunctionStep(item, id="item"), over="request", concurrency=concurrency)
    assert str(found.value).endswith(said)


def test_sleep_needs_seconds_or_until_in_code() -> None:
    with pytest.raises(DefinitionError, match="seconds or until"):
        SleepStep()


async def test_many_executions_wait_holding_no_run(flow: Flow) -> None:
    wf = await flow.workflow_create("order", WaitStep("paid"))
    ids = [await wf.execute({"n": n}, async_=True) for n in range(50)]
    await eventually(lambda: all_parked(flow, ids))
    assert flow._running().runs == {}
    await asyncio.gather(*(flow.signal(eid, "paid", n) for n, eid in enumerate(ids)))
    for n, eid in enumerate(ids):
        done = await flow.wait(eid, timeout=10)
        assert body(done.response) == n


async def all_parked(flow: Flow, ids: list[str]) -> bool:
    return all([await parked(flow, eid) for eid in ids])


async def test_a_timer_that_passed_while_suspended_fires_on_resume(store_url: str) -> None:
    now = [6_000_000.0]
    async with Flow(store_url, clock=lambda: now[0], poll_interval=0.02, lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("remind", SleepStep(60, id="nap"))
        eid = await wf.execute({"n": 4}, async_=True)
        await eventually(lambda: parked(flow, eid))
        await flow.suspend(eid)
        now[0] += 120
        await asyncio.sleep(0.1)  # polls go by: a suspended execution is not claimed
        assert (await flow.execution(eid)).status is Status.SUSPEND
        await flow.resume(eid)
        done = await flow.wait(eid, timeout=10)
        assert done.status is Status.SUCCESS
        assert body(done.steps["nap"].response) == {"n": 4}


async def big(msg: Message) -> str:
    return "x" * 2000


async def test_a_map_run_answering_over_max_payload_fails_the_map(store_url: str) -> None:
    async with Flow(store_url, max_payload=1000) as flow:
        wf = await flow.workflow_create(
            "big", MapStep(FunctionStep(big, id="big"), over="request", id="many")
        )
        with pytest.raises(ExecutionFailedError, match="over max_payload 1000"):
            await wf.execute([1, 2])


async def test_a_map_whose_list_of_responses_is_over_max_payload_fails(store_url: str) -> None:
    """Each run answers within max_payload, their list (the map's response, and here the
    execution's) does not: the map fails as a step answering too much does, and the
    runs that succeeded are compensated."""

    async def line(msg: Message) -> dict[str, str]:
        return {"line": "y" * 90}

    step = FunctionStep(line, id="line", compensate=FunctionStep(let_go))
    async with Flow(store_url, max_payload=1000) as flow:
        wf = await flow.workflow_create("lines", MapStep(step, over="request", id="many"))
        with pytest.raises(ExecutionFailedError) as err:
            await wf.execute(list(range(20)))
        info = await flow.execution(err.value.execution_id)
        many = info.steps["many"]
        assert many.status is Status.FAILURE
        assert many.response is None
        assert many.error is not None
        assert many.error.endswith(
            "map many: the list of its runs' responses is 2041 bytes, over max_payload 1000"
        )
        assert info.response is None
        assert len(calls("let_go")) == 20
        assert all(info.steps[f"many[{i}]"].status is Status.COMPENSATED for i in range(20))


async def test_a_map_runs_retry_recorded_while_the_rollback_begins_is_made(tmp_path: Path) -> None:
    """``f`` fails for good while a map's run waits to retry; the run records its
    retry while the run commits the execution COMPENSATING: the retry is made (running
    steps finish before the rollback) instead of being lost, the run left RUNNING."""
    tries: list[int] = []

    async def f(msg: Message) -> None:
        raise StepError("broken", retryable=False)

    async def flaky(msg: Message, ctx: StepContext) -> Any:
        tries.append(ctx.attempt)
        for _ in range(2):
            await asyncio.sleep(0)  # the run folds f's failure and commits meanwhile
        if ctx.attempt == 1:
            raise StepError("busy")
        return msg.json()

    retry = Retry(max_attempts=2, initial_interval=0.0, jitter=False)
    url = f"sqlite:///{tmp_path / 'flow.db'}?inline_commit=0"
    async with Flow(url, poll_interval=0.05, lease_ttl=5.0) as flow:
        wf = await flow.workflow_create(
            "map-retry-in-rollback",
            FunctionStep(f, id="f"),
            MapStep(FunctionStep(flaky, id="flaky", retry=retry), over="request", id="each"),
        )
        with pytest.raises(ExecutionFailedError) as err:
            async with asyncio.timeout(10):
                await wf.execute(["a"])
        info = await flow.execution(err.value.execution_id)
    assert tries == [1, 2]
    assert info.steps["each[0]"].status is Status.SUCCESS
    assert info.steps["each[0]"].attempts == 2


class _SlowAbort(MemoryStore):
    """A store whose control requests wait until let through: a deadline's abort that
    takes its time to land (a slow or restarting server)."""

    def __init__(self) -> None:
        super().__init__()
        self.let_through = asyncio.Event()

    async def request(self, *args: Any, **kwargs: Any) -> Status:
        await self.let_through.wait()
        return await super().request(*args, **kwargs)


async def test_a_waiting_run_past_its_deadline_waits_for_the_abort_without_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the deadline and its abort landing, the run waits to be poked; it
    looked again and again with a 0 s pause, a busy loop for as long as the store
    took (a minute of retries, when the server is away)."""
    pauses = 0
    pause = Run.pause

    async def counted(run: Run, seconds: float) -> None:
        nonlocal pauses
        pauses += 1
        await pause(run, seconds)

    monkeypatch.setattr(Run, "pause", counted)
    store = _SlowAbort()
    async with Flow(store) as flow:
        wf = await flow.workflow_create("w", WaitStep("paid"))
        eid = await wf.execute(async_=True, deadline=0.2)
        await asyncio.sleep(0.7)  # the deadline passed, its abort waits for the store
        assert pauses < 10
        assert (await flow.execution(eid)).status is Status.RUNNING
        store.let_through.set()
        done = await flow.wait(eid, timeout=10)
        assert done.status is Status.ABORTED
