"""A worker and its leases, on every store: it keeps what it still runs when its own
leases ran out, and it stops, writing nothing, when another worker took one over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga.errors import StoreError
from microsaga.stores import open_store
from microsaga.stores.base import Claim, Store
from tests.helpers import eventually
from tests.integration.pg import empty_store

STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty store; every Flow or store opened on it shares its data."""
    async with empty_store(request.param, tmp_path) as url:
        yield url


class Clock:
    """The flows' clock, moved on by the test (leases expire when it says so)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Steps:
    """Two chained steps; the first waits for ``gate`` and notes how it ended."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = {"first": 0, "second": 0}
        self.cancelled = 0

    async def first(self, msg: Message) -> object:
        self.calls["first"] += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return {"first": True}

    async def second(self, msg: Message) -> object:
        self.calls["second"] += 1
        return {"second": True}

    async def start(self, flow: Flow) -> str:
        first = FunctionStep(self.first, id="first")
        second = FunctionStep(self.second, id="second", requires=[first])
        wf = await flow.workflow_create("leases", first, second)
        eid = await wf.execute({}, async_=True)
        await eventually(lambda: self.calls["first"] == 1)
        return eid


def spy_claims(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, list[Claim]]]:
    """Every claim the worker makes on ``store``: (its now, what it took)."""
    seen: list[tuple[float, list[Claim]]] = []
    real = store.claim

    async def claim(
        owner: str, now: float, ttl: float, limit: int, *, alive: Collection[str] = ()
    ) -> list[Claim]:
        taken = await real(owner, now, ttl, limit, alive=alive)
        seen.append((now, taken))
        return taken

    monkeypatch.setattr(store, "claim", claim)
    return seen


async def test_a_worker_whose_own_leases_ran_out_keeps_running_its_executions(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stall (or the store away) longer than the lease TTL: the worker's next claim
    finds its own leases expired. It must not take them again under a new token, which
    would fence off its own runs (their next commit rejected, the execution stuck)."""
    clock, steps = Clock(), Steps()
    quiet = {"lease_ttl": 600.0, "heartbeat_interval": 599.0}  # no renewal in the test
    async with Flow(store_url, poll_interval=0.01, clock=clock, **quiet) as flow:
        eid = await steps.start(flow)
        claims = spy_claims(flow.store, monkeypatch)
        expired = clock.now = clock.now + 1000.0  # no heartbeat since: the lease ran out
        await eventually(lambda: any(now >= expired for now, _ in claims))
        assert [taken for _, taken in claims if taken] == []
        steps.gate.set()
        done = await flow.wait(eid, timeout=10)
        assert done.status is Status.SUCCESS
        stored = await flow.store.load(eid)
    assert stored is not None
    assert stored.token == 1  # never claimed again
    assert steps.calls == {"first": 1, "second": 1}


async def _taken_over(store_url: str, eid: str) -> Store:
    """Another worker's claim of ``eid``, long after the lease expired."""
    thief = open_store(store_url)
    await thief.open()
    # PostgreSQL claims SKIP LOCKED: a row its owner is renewing at that moment (every
    # 50 ms in the heartbeat test) is skipped, and a worker claims again at its next poll
    for _ in range(100):
        taken = await thief.claim("thief", time.time() + 3600.0, 10.0, 10)
        if taken:
            break
        await asyncio.sleep(0.01)
    assert [c.execution_id for c in taken] == [eid]
    return thief


async def _assert_nothing_written_after_the_takeover(thief: Store, eid: str) -> None:
    stored = await thief.load(eid)
    assert stored is not None
    assert (stored.status, stored.token) == (Status.RUNNING, 2)
    first = {r.step_id: r for r in stored.records}["first"]
    assert (first.status, first.attempts, first.response) == (Status.RUNNING, 1, None)
    assert "second" not in {r.step_id for r in stored.records}


async def test_a_worker_whose_lease_was_taken_over_stops_at_its_next_commit(
    store_url: str,
) -> None:
    steps = Steps()
    quiet = {"lease_ttl": 600.0, "heartbeat_interval": 599.0}  # no renewal in the test
    async with Flow(store_url, poll_interval=30.0, **quiet) as flow:
        eid = await steps.start(flow)
        thief = await _taken_over(store_url, eid)
        try:
            steps.gate.set()  # its step returns; recording that is refused (fenced)
            await asyncio.wait_for(flow.settle(eid), 10)
            await _assert_nothing_written_after_the_takeover(thief, eid)
            assert steps.calls == {"first": 1, "second": 0}
        finally:
            await thief.close()


async def test_a_worker_whose_lease_was_taken_over_stops_at_its_next_heartbeat(
    store_url: str,
) -> None:
    steps = Steps()
    async with Flow(store_url, heartbeat_interval=0.05, poll_interval=30.0) as flow:
        eid = await steps.start(flow)
        thief = await _taken_over(store_url, eid)
        try:
            # the renewal finds the lease gone: the running step is cancelled
            await asyncio.wait_for(flow.settle(eid), 10)
            await eventually(lambda: steps.cancelled == 1)
            await _assert_nothing_written_after_the_takeover(thief, eid)
            steps.gate.set()
            assert steps.calls == {"first": 1, "second": 0}
        finally:
            await thief.close()


async def test_a_worker_back_from_a_store_outage_leaves_live_workers_their_leases(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store full (or away) for longer than the lease TTL: every worker's leases ran
    out, since none could renew them. A worker whose claims failed must not take the
    others' executions as soon as its first claim gets through, before their live
    workers renewed: each would count as a recovery attempt, as if their worker had
    died, and their runs would be fenced (the long sqlite-disk-full chaos run gave up
    hundreds of executions after 6 such takeovers in a row). It claims them only once
    the store has worked for a lease TTL."""
    clock, steps = Clock(), Steps()
    quiet = {"lease_ttl": 600.0, "heartbeat_interval": 599.0}  # no renewal in the test
    async with Flow(store_url, clock=clock, **quiet) as runner:
        eid = await steps.start(runner)
        async with Flow(store_url, poll_interval=0.01, clock=clock, **quiet) as other:
            full, claims, polls = True, [], 0
            real_claim, real_controls = other.store.claim, other.store.controls

            async def claim(
                owner: str, now: float, ttl: float, limit: int, *, alive: Collection[str] = ()
            ) -> list[Claim]:
                if full:
                    raise StoreError("database or disk is full")
                taken = await real_claim(owner, now, ttl, limit, alive=alive)
                claims.append(taken)
                return taken

            async def controls(after: int) -> tuple[list[str], int]:
                nonlocal polls
                polls += 1
                return await real_controls(after)

            monkeypatch.setattr(other.store, "claim", claim)
            monkeypatch.setattr(other.store, "controls", controls)
            clock.now += 1000.0  # the runner's lease ran out while the store was full
            seen = polls
            await eventually(lambda: polls > seen + 3)  # claims failed meanwhile
            full, seen = False, polls
            try:
                await eventually(lambda: polls > seen + 20)  # the store is back
                assert [taken for taken in claims if taken] == []
            finally:
                steps.gate.set()  # else the flows wait for the step when they close
            done = await runner.wait(eid, timeout=10)
            assert done.status is Status.SUCCESS
            clock.now += 600.0  # a lease TTL later, it claims again
            await eventually(lambda: len(claims) > 0)
        stored = await runner.store.load(eid)
    assert stored is not None
    assert stored.token == 1  # never taken over
    assert steps.calls == {"first": 1, "second": 1}
