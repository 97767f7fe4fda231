"""Waiting in every store (memory, SQLite, PostgreSQL): signals, parking, waking; and
waiting steps run through a Flow, woken from another Flow on the same store."""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import (
    ExecutionNotFoundError,
    Flow,
    FunctionStep,
    InvalidTransitionError,
    MapStep,
    Message,
    SleepStep,
    Status,
    StepError,
    SubflowStep,
    WaitStep,
)
from microsaga.stores.base import Store
from tests.helpers import eventually
from tests.integration import test_store_contract as contract
from tests.integration.test_store_contract import commit_one, new, transition

store_url = contract.store_url  # the same fixtures: every store, each fresh
store = contract.store

PAYLOAD = Message(b'{"amount": 42}', {"Source": "bank"})


async def test_a_signal_is_kept_once_per_event(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    await store.signal("e1", "paid", PAYLOAD, 101.0)
    await store.signal("e1", "paid", Message(b'{"amount": 1}'), 102.0)  # ignored
    await store.signal("e1", "shipped", Message(), 103.0)
    kept = await store.signals("e1")
    assert sorted(kept) == ["paid", "shipped"]
    assert kept["paid"].body == PAYLOAD.body
    assert kept["paid"].header.get("Source") == "bank"
    assert await store.signals("e2") == {}


async def test_a_signal_for_an_unknown_or_finished_execution_is_refused(store: Store) -> None:
    with pytest.raises(ExecutionNotFoundError):
        await store.signal("nope", "paid", PAYLOAD, 101.0)
    await store.commit([new("e1", owner="w1")])
    await commit_one(store, transition("e1", status=Status.SUCCESS, release=True, at=101.0))
    with pytest.raises(InvalidTransitionError, match="SUCCESS"):
        await store.signal("e1", "paid", PAYLOAD, 102.0)


async def test_a_parked_execution_is_claimed_at_its_time_or_when_signalled(store: Store) -> None:
    await store.commit([new("e1", owner="w1"), new("e2", owner="w1")])
    assert await store.park("e1", 1, 500.0, ["paid"], [], "waiting for paid")
    assert await store.park("e2", 1, 10**15, ["paid"], [], "waiting for paid")
    info = await store.get_execution("e1")
    assert info is not None
    assert info.note == "waiting for paid"
    assert info.status is Status.RUNNING
    assert await store.claim("w2", 200.0, 10.0, 10) == []  # nothing due, nothing held
    _, seq = await store.controls(0)
    await store.signal("e2", "paid", PAYLOAD, 201.0)
    claimed = await store.claim("w2", 202.0, 10.0, 10)
    assert [c.execution_id for c in claimed] == ["e2"]
    ids, _ = await store.controls(seq)
    assert ids == ["e2"]  # the signal is also a control request, for an owner to see
    claimed = await store.claim("w2", 501.0, 10.0, 10)
    assert [c.execution_id for c in claimed] == ["e1"]


async def test_a_park_is_refused_when_what_it_waits_for_is_there(store: Store) -> None:
    await store.commit([new("e1", owner="w1"), new("child", owner="w1")])
    await store.signal("e1", "paid", PAYLOAD, 101.0)
    assert not await store.park("e1", 1, 10**15, ["paid"], [], "waiting for paid")
    assert await store.renew("w1", ["e1"], 102.0, 10.0) == {"e1"}  # still held
    await commit_one(store, transition("child", status=Status.SUCCESS, release=True, at=103.0))
    assert not await store.park("e1", 1, 10**15, ["other"], ["child"], "waiting for child")
    assert not await store.park("e1", 9, 10**15, ["other"], [], "a stale token")
    await store.request("e1", "suspend", 104.0)
    assert not await store.park("e1", 1, 10**15, ["other"], [], "suspended meanwhile")
    # an abort without compensation leaves the status RUNNING: parked, nobody would
    # end the execution until its timer
    await store.commit([new("e2", owner="w1")])
    assert await store.request("e2", "abort_nocomp", 105.0) is Status.RUNNING
    assert not await store.park("e2", 1, 10**15, ["other"], [], "aborted meanwhile")


async def test_wake_makes_a_parked_execution_claimable_now(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    assert await store.park("e1", 1, 10**15, [], ["e1:child"], "waiting for e1:child")
    await store.wake("e1", 101.0)
    claimed = await store.claim("w2", 102.0, 10.0, 10)
    assert [c.execution_id for c in claimed] == ["e1"]
    assert (await store.get_execution("e1")).note is None  # type: ignore[union-attr]


async def test_a_succeeded_execution_can_be_compensated_as_a_unit(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    await commit_one(store, transition("e1", status=Status.SUCCESS, release=True, at=101.0))
    assert await store.request("e1", "compensate", 102.0) is Status.COMPENSATING
    claimed = await store.claim("w2", 103.0, 10.0, 10)
    assert [c.execution_id for c in claimed] == ["e1"]
    with pytest.raises(InvalidTransitionError):
        await store.request("e1", "compensate", 104.0)


# through flows --------------------------------------------------------------------------

LOG: list[tuple[str, Any]] = []


async def charge(msg: Message) -> dict[str, Any]:
    LOG.append(("charge", msg.json()))
    return {"charged": msg.json()}


async def refund(msg: Message) -> None:
    LOG.append(("refund", msg.json()))


async def test_a_signal_from_another_flow_wakes_the_execution(store_url: str) -> None:
    async with (
        Flow(store_url, poll_interval=0.05, lease_ttl=5.0) as runner,
        Flow(store_url, worker=False) as other,
    ):
        wf = await runner.workflow_create(
            "order", WaitStep("paid", timeout=3600), SleepStep(0.1, id="nap", requires=["paid"])
        )
        eid = await wf.execute({"order": 1}, async_=True)

        async def waiting() -> bool:
            info = await other.execution(eid)
            return info.steps["paid"].status is Status.WAITING and eid not in runner._running().runs

        await eventually(waiting)
        await other.signal(eid, "paid", {"amount": 3})
        done = await other.wait(eid, timeout=20)
        assert done.status is Status.SUCCESS
        assert done.response is not None
        assert done.response.json() == {"amount": 3}


async def test_subflows_and_maps_on_every_store(store_url: str) -> None:
    LOG.clear()
    async with Flow(store_url, poll_interval=0.05, lease_ttl=5.0) as flow:
        child = await flow.workflow_create(
            "payment", FunctionStep(charge, id="charge", compensate=FunctionStep(refund))
        )
        await flow.workflow_save(child)
        step = FunctionStep(charge, id="line", compensate=FunctionStep(refund))
        wf = await flow.workflow_create(
            "order",
            SubflowStep("payment", id="pay"),
            MapStep(step, over="request.lines", id="lines", concurrency=3),
        )
        eid = await wf.execute({"lines": [1, 2, 3, 4]})
        info = await flow.execution(eid)
        assert info.steps["pay"].response is not None
        assert info.steps["pay"].response.json() == {"charged": {"lines": [1, 2, 3, 4]}}
        assert info.steps["lines"].response is not None
        assert [r["charged"] for r in info.steps["lines"].response.json()] == [1, 2, 3, 4]
        runs = [s for s in info.steps if s.startswith("lines[")]
        assert runs == [f"lines[{i}]" for i in range(4)]
        child_info = await flow.execution(f"{eid}:pay")
        assert child_info.parent_id == eid
        assert len([c for c in LOG if c[0] == "charge"]) == 5


async def picky_charge(msg: Message) -> dict[str, Any]:
    LOG.append(("picky_charge", msg.json()))
    if msg.json().get("card") == "expired":
        raise StepError("card declined")
    return {"charged": msg.json()}


async def test_each_redrive_of_a_subflow_step_runs_a_new_child_on_every_store(
    store_url: str,
) -> None:
    """Under the failure policy "suspend", each redrive of a failed SubflowStep runs a
    new child (``::2``, ``::3``), the children of the tries before left as they ended."""
    LOG.clear()
    async with Flow(store_url, poll_interval=0.05, lease_ttl=5.0) as flow:
        child = await flow.workflow_create("payment", FunctionStep(picky_charge, id="charge"))
        await flow.workflow_save(child)
        wf = await flow.workflow_create(
            "order", SubflowStep("payment", id="pay"), on_failure="suspend"
        )
        eid = await wf.execute({"card": "expired"})
        assert (await flow.execution(eid)).status is Status.SUSPEND
        await flow.redrive(eid, input={"card": "expired", "again": True})
        assert (await flow.wait(eid, timeout=20)).status is Status.SUSPEND
        await flow.redrive(eid, input={"card": "new"})
        done = await flow.wait(eid, timeout=20)
        assert done.status is Status.SUCCESS
        assert done.steps["pay"].attempts == 3
        assert done.response is not None
        assert done.response.json() == {"charged": {"card": "new"}}
        tries = [await flow.execution(f"{eid}:pay{n}") for n in ("", "::2", "::3")]
        assert [t.status for t in tries] == [Status.FAILURE, Status.FAILURE, Status.SUCCESS]
        assert {t.parent_id for t in tries} == {eid}
        assert [t.request.json()["card"] for t in tries] == ["expired", "expired", "new"]
        assert len([c for c in LOG if c[0] == "picky_charge"]) == 3


async def after_nap(msg: Message) -> None:
    LOG.append(("after", msg.json()))


async def test_each_due_timer_fires_once_with_two_workers(store_url: str) -> None:
    """Timers due at once, two workers claiming: every execution goes on exactly once."""
    LOG.clear()
    now = [5_000_000.0]

    def clock() -> float:
        return now[0]

    options: dict[str, Any] = {"clock": clock, "poll_interval": 0.02, "lease_ttl": 3600}
    async with Flow(store_url, **options) as first, Flow(store_url, **options) as second:
        wf = await first.workflow_create(
            "naps", SleepStep(60, id="nap"), FunctionStep(after_nap, id="after", requires=["nap"])
        )
        ids = [await wf.execute({"n": n}, async_=True) for n in range(40)]

        async def all_parked() -> bool:
            infos = [await second.execution(eid) for eid in ids]
            return all(i.note == "waiting for a timer" for i in infos)

        await eventually(all_parked)
        now[0] += 61
        for eid in ids:
            assert (await second.wait(eid, timeout=20)).status is Status.SUCCESS
    assert sorted(n["n"] for _, n in LOG) == list(range(40))
