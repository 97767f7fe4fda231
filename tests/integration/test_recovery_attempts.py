"""Recovery limits on every store: each takeover from a worker that died (or let its
lease expire) while running an execution counts a recovery attempt, a commit sets the
count back to 0, and past ``max_recovery_attempts`` in a row the next worker fails the
steps that were running instead of invoking them again, and rolls back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga.errors import ConfigurationError
from microsaga.stores import open_store
from microsaga.stores.base import Claim, Store, Transition
from tests.helpers import eventually
from tests.integration.pg import empty_store

STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
HOUR = 3600.0


@pytest.fixture(params=STORES)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty store; every Flow or store opened on it shares its data."""
    async with empty_store(request.param, tmp_path) as url:
        yield url


class Clock:
    """A worker's clock, moved on by the test (leases expire when it says so)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Steps:
    """``reserve`` (compensated by ``release``), then ``crash``, which returns only once
    ``gate`` is set: its worker is taken for dead while it runs. Module functions, so
    that another flow finds them; the calls of the test running go to ``calls``."""

    current: Steps | None = None

    def __init__(self) -> None:
        self.calls = {"reserve": 0, "release": 0, "crash": 0}
        self.gate = asyncio.Event()
        Steps.current = self

    async def start(self, flow: Flow) -> str:
        step = FunctionStep(reserve, compensate=FunctionStep(release))
        wf = await flow.workflow_create("crashing", step, FunctionStep(crash, requires=[step]))
        eid = await wf.execute({}, async_=True)
        await eventually(lambda: self.calls["crash"] == 1)
        return eid


def _calls() -> dict[str, int]:
    assert Steps.current is not None
    return Steps.current.calls


async def reserve(msg: Message) -> object:
    _calls()["reserve"] += 1
    return {"reserved": True}


async def release(msg: Message) -> None:
    _calls()["release"] += 1


async def crash(msg: Message) -> None:
    _calls()["crash"] += 1
    assert Steps.current is not None
    # bounded: a failing test closes its flows (which wait for running steps) soon
    await asyncio.wait_for(Steps.current.gate.wait(), 20)


async def _claim(store: Store, owner: str, at: float, alive: tuple[str, ...] = ()) -> Claim:
    # PostgreSQL claims SKIP LOCKED: a row locked at that moment is skipped; retry
    for _ in range(100):
        taken = await store.claim(owner, at, 10.0, 10, alive=alive)
        if taken:
            assert len(taken) == 1
            return taken[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{owner} claimed nothing")


@pytest.fixture
async def thief(store_url: str) -> AsyncIterator[Store]:
    """The store as other workers see it."""
    store = open_store(store_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# no lease renewal, no claim but at start, during a test; the first flow claims nothing
QUIET = {"lease_ttl": 600.0, "heartbeat_interval": 599.0, "poll_interval": 30.0}


@pytest.fixture
async def steps() -> AsyncIterator[Steps]:
    found = Steps()
    try:
        yield found
    finally:
        found.gate.set()  # flows still running ``crash`` can close


async def test_takeovers_from_dead_workers_are_counted_and_a_commit_resets_them(
    store_url: str, thief: Store, steps: Steps
) -> None:
    async with Flow(store_url, claim=False, **QUIET) as flow:
        eid = await steps.start(flow)
        now = time.time()
        first = await _claim(thief, "ghost-1", now + HOUR)  # its lease expired
        assert (first.execution_id, first.recovery_attempts) == (eid, 1)
        second = await _claim(thief, "ghost-2", now + 2 * HOUR)
        assert second.recovery_attempts == 2
        assert await thief.release_all("ghost-2") == 1  # ghost-2 found dead
        third = await _claim(thief, "ghost-3", now + 2 * HOUR)  # free: not counted again
        assert third.recovery_attempts == 3
        # ghost-3 is alive: it commits (here, nothing but the fact that it holds it)
        result = await thief.commit(
            [Transition(execution_id=eid, token=third.token, expect=Status.RUNNING)]
        )
        assert result[0].owned  # type: ignore[union-attr]
        fourth = await _claim(thief, "ghost-4", now + 3 * HOUR)
        assert fourth.recovery_attempts == 1
        await thief.release(eid, fourth.token, 0.0)  # handed back by a live worker
        fifth = await _claim(thief, "ghost-5", now + 3 * HOUR)
        assert fifth.recovery_attempts == 1
        steps.gate.set()  # the flow's run ends (fenced off) when the flow closes


async def test_takeovers_from_workers_known_alive_are_not_counted(
    store_url: str, thief: Store, steps: Steps
) -> None:
    async with Flow(store_url, claim=False, **QUIET) as flow:
        await steps.start(flow)
        now = time.time()
        first = await _claim(thief, "ghost-1", now + HOUR)
        assert first.recovery_attempts == 1
        # ghost-1's process runs still: it stalled past its lease, it did not die
        second = await _claim(thief, "ghost-2", now + 2 * HOUR, alive=("ghost-1",))
        assert second.recovery_attempts == 1
        third = await _claim(thief, "ghost-3", now + 3 * HOUR, alive=("ghost-1",))
        assert third.recovery_attempts == 2  # ghost-2 is not known to run
        steps.gate.set()


async def test_a_worker_taking_over_from_a_live_worker_of_its_machine_counts_nothing(
    store_url: str, steps: Steps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers of one machine (here, two flows of this process) whose leases ran out
    by a stall (the store full longer than the TTL, an overloaded machine) take each
    other's executions: no worker died, so past ``max_recovery_attempts`` such
    takeovers in a row the steps must not be given up (the long sqlite-disk-full
    chaos run gave up hundreds, their effects never undone)."""
    async with Flow(store_url, claim=False, **QUIET) as flow:
        eid = await steps.start(flow)
        clock = Clock(time.time())
        async with Flow(store_url, max_recovery_attempts=1, clock=clock, **POLLING) as heir:
            claims = _recorded_claims(heir, monkeypatch)
            clock.now += HOUR  # the first flow's lease ran out
            await eventually(lambda: steps.calls["crash"] == 2)  # invoked again
            steps.gate.set()
            done = await heir.wait(eid, timeout=10)
    assert [(c.execution_id, c.recovery_attempts) for c in claims] == [(eid, 0)]
    assert done.status is Status.SUCCESS


async def test_a_takeover_from_a_live_worker_unseen_at_the_last_heartbeat_counts_nothing(
    store_url: str, steps: Steps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the claimer last looked at the lease owners while that worker held
    nothing: in the long postgres-restart chaos run no worker died, yet 207 running
    steps and compensations were given up. Workers learned which owners were alive once
    per heartbeat; an owner that held no lease then (all taken from it in a stall), then
    took executions again, counted as dead. A claim now looks at the owners first."""
    clock = Clock(time.time())
    # the heir looks at the lease owners when it starts: nobody holds a lease yet
    async with Flow(store_url, max_recovery_attempts=1, clock=clock, **POLLING) as heir:
        claims = _recorded_claims(heir, monkeypatch)
        # a worker of this process (alive) takes an execution after that look
        async with Flow(store_url, claim=False, **QUIET) as flow:
            eid = await steps.start(flow)
            clock.now += HOUR  # its lease ran out: a stall, not a death
            await eventually(lambda: steps.calls["crash"] == 2)  # invoked again
            steps.gate.set()
            done = await heir.wait(eid, timeout=10)
    assert [(c.execution_id, c.recovery_attempts) for c in claims] == [(eid, 0)]
    assert done.status is Status.SUCCESS


POLLING = {**QUIET, "poll_interval": 0.02}


def _recorded_claims(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> list[Claim]:
    """The claims ``flow``'s worker makes from now on, as they are made."""
    claims: list[Claim] = []
    real = flow.store.claim

    async def claim(
        owner: str, now: float, ttl: float, limit: int, *, alive: Collection[str] = ()
    ) -> list[Claim]:
        taken = await real(owner, now, ttl, limit, alive=alive)
        claims.extend(taken)
        return taken

    monkeypatch.setattr(flow.store, "claim", claim)
    return claims


async def test_past_the_limit_the_running_step_fails_and_the_execution_rolls_back(
    store_url: str, thief: Store, steps: Steps
) -> None:
    async with Flow(store_url, claim=False, **QUIET) as flow:
        eid = await steps.start(flow)
        now = time.time()
        for n in range(1, 3):  # two workers died running it
            await _claim(thief, f"ghost-{n}", now + n * HOUR)
        clock = Clock(now + 3 * HOUR)
        async with Flow(store_url, max_recovery_attempts=2, clock=clock, **QUIET) as heir:
            done = await heir.wait(eid, timeout=10)
        steps.gate.set()
    assert done.status is Status.FAILURE
    assert steps.calls == {"reserve": 1, "release": 1, "crash": 1}  # never invoked again
    crash = done.steps["crash"]
    assert crash.status is Status.FAILURE
    assert "3 recovery attempts" in (crash.error or ""), crash.error
    assert "max_recovery_attempts 2" in (done.error or ""), done.error
    assert done.steps["reserve"].status is Status.COMPENSATED


async def test_within_the_limit_the_running_step_is_invoked_again(
    store_url: str, thief: Store, steps: Steps
) -> None:
    async with Flow(store_url, claim=False, **QUIET) as flow:
        eid = await steps.start(flow)
        now = time.time()
        await _claim(thief, "ghost-1", now + HOUR)
        clock = Clock(now + 2 * HOUR)
        async with Flow(store_url, max_recovery_attempts=2, clock=clock, **QUIET) as heir:
            await eventually(lambda: steps.calls["crash"] == 2)
            found = await heir.store.get_status(eid)
            assert found is not None
            assert found[0] is Status.RUNNING
            steps.gate.set()


def test_max_recovery_attempts_is_a_positive_whole_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Flow("memory://").options.max_recovery_attempts == 5
    monkeypatch.setenv("MICROSAGA_MAX_RECOVERY_ATTEMPTS", "2")
    assert Flow("memory://").options.max_recovery_attempts == 2
    assert Flow("memory://", max_recovery_attempts=7).options.max_recovery_attempts == 7
    with pytest.raises(ConfigurationError, match="max_recovery_attempts"):
        Flow("memory://", max_recovery_attempts=0)
    monkeypatch.setenv("MICROSAGA_MAX_RECOVERY_ATTEMPTS", "many")
    with pytest.raises(ConfigurationError, match="MICROSAGA_MAX_RECOVERY_ATTEMPTS"):
        Flow("memory://")
