"""Property tests of crash recovery on random DAGs (hypothesis, derandomized), on SQLite:
a worker (flow A) dies at its k-th step call (or compensation call), another (flow B,
same file) takes the execution over; whatever the shape, the retries and the point of
death, the execution ends as an undisturbed run would, every step ran, an attempt was
invoked again only if it was recorded RUNNING when A died (once more, with the same
attempt number and idempotency key), in the DAG's order, the rollback's order kept; and
nothing A does once dead is written (fencing).

A dies in-process, as in test_recovery_attempts (a live flow taken for dead): from its
k-th call on, its step calls never return and its writes to the store (commits, lease
renewals and releases) never reach it, until the end of the test; B's clock is an hour
ahead, so that A's lease (never renewed here) has run out for B. At the end A's calls
return and its writes go through: all must be refused, the execution left as B left it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from microsaga import Flow, FunctionStep, Message, Retry, Status, StepContext, StepError
from microsaga.execution import Execution
from microsaga.status import Phase
from microsaga.stores.base import Store, StoredExecution
from tests.helpers import eventually
from tests.unit.test_run_scheduling_properties import Case, cases, descendants, skipped

HOUR = 3600.0
# A: no lease renewal, no claim; B: claims at once what A left
QUIET = {"lease_ttl": 600.0, "heartbeat_interval": 599.0, "poll_interval": 30.0}
POLLING = {**QUIET, "poll_interval": 0.02}
WRITES = ("commit", "renew", "release", "release_all", "park", "wake")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, eq=False)  # by identity: two calls alike are two calls
class Event:
    what: str  # start, retry, end, fail (a step's call), undo, undone (its compensation's)
    who: str  # the flow that called: A or B
    sid: str
    attempt: int
    key: str


@dataclass
class World:
    """One example: the case, its flows, the calls' log, and when A dies (its
    ``kill_at``-th call of ``counted`` kind: forward steps or compensations)."""

    case: Case
    kill_at: int
    counted: str  # "forward" or "undo"
    flaky: dict[str, int] = field(default_factory=dict)  # attempts a step needs
    log: list[Event] = field(default_factory=list)
    a: Flow | None = None
    calls: int = 0
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # set at the end
    blocked: list[Event] = field(default_factory=list)  # A's calls that never returned
    writing: int = 0  # A's writes under way, begun before its death

    def who(self, ctx: StepContext) -> str:
        return "A" if ctx.flow is self.a else "B"

    async def called(self, what: str, ctx: StepContext) -> Event:
        event = Event(what, self.who(ctx), ctx.step_id, ctx.attempt, ctx.idempotency_key)
        self.log.append(event)
        if event.who == "A" and ("undo" if ctx.compensation else "forward") == self.counted:
            self.calls += 1
            if self.calls == self.kill_at:
                self.killed.set()
        await self.alive(event)
        return event

    async def alive(self, event: Event) -> None:
        """Never returns, for A's calls, once A is dead (but at the end of the test)."""
        if event.who == "A" and self.killed.is_set():
            self.blocked.append(event)
            await asyncio.wait_for(self.gate.wait(), 60)
            raise Zombie  # then returns (the step succeeded), logging no more

    def kill_writes(self, store: Store) -> None:
        """A's writes from its death on wait for the end of the test."""

        def dying(real: Callable[..., Any]) -> Callable[..., Any]:
            async def write(*args: Any, **kwargs: Any) -> Any:
                if self.killed.is_set():
                    await asyncio.wait_for(self.gate.wait(), 60)
                    return await real(*args, **kwargs)
                self.writing += 1
                try:
                    return await real(*args, **kwargs)
                finally:
                    self.writing -= 1

            return write

        for name in WRITES:
            setattr(store, name, dying(getattr(store, name)))
        real_now = store.commit_now

        def commit_now(unit: Any) -> Any:
            # None: "not now", the caller then goes through commit
            return None if self.killed.is_set() else real_now(unit)

        store.commit_now = commit_now  # type: ignore[method-assign]


class Zombie(Exception):
    pass


CURRENT: list[World] = []


async def forward(msg: Message, ctx: StepContext) -> dict[str, str]:
    world = CURRENT[-1]
    try:
        start = await world.called("start", ctx)
        for _ in range(world.case.yields[ctx.step_id]):
            await asyncio.sleep(0)  # let the other branches and the loop go on
            await world.alive(start)
    except Zombie:
        return {"step": ctx.step_id}
    if ctx.attempt < world.flaky.get(ctx.step_id, 1):
        world.log.append(Event("retry", start.who, start.sid, start.attempt, start.key))
        raise StepError("flaky", retryable=True)
    if ctx.step_id in world.case.failing:
        world.log.append(Event("fail", start.who, start.sid, start.attempt, start.key))
        raise StepError("x", retryable=False)
    world.log.append(Event("end", start.who, start.sid, start.attempt, start.key))
    return {"step": ctx.step_id}


async def undo(msg: Message, ctx: StepContext) -> None:
    world = CURRENT[-1]
    try:
        start = await world.called("undo", ctx)
        await asyncio.sleep(0)
        await world.alive(start)
    except Zombie:
        return
    world.log.append(Event("undone", start.who, start.sid, start.attempt, start.key))


_names = itertools.count()


def steps_of(world: World) -> list[FunctionStep]:
    out = []
    case = world.case
    for sid, reqs in case.requires.items():
        comp = FunctionStep(undo, id=f"undo-{sid}") if sid in case.undoable else None
        when = f"request.{sid}" if sid in case.when else None
        retry = Retry(max_attempts=3, initial_interval=0) if sid in world.flaky else None
        out.append(
            FunctionStep(forward, id=sid, requires=reqs, when=when, compensate=comp, retry=retry)
        )
    return out


@dataclass
class Outcome:
    info: Execution
    died: bool
    at_death: StoredExecution | None = None  # the execution as A left it
    log: list[Event] = field(default_factory=list)  # the calls until B ended it


async def run_with_a_death(world: World, folder: Path) -> Outcome:
    """Runs the world's case on A until A dies (or the execution ends), then on B."""
    url = f"sqlite:///{folder / f'takeover{next(_names)}.db'}"
    CURRENT.append(world)
    try:
        async with Flow(url, claim=False, **QUIET) as a:
            world.a = a
            world.kill_writes(a.store)
            wf = await a.workflow_create(f"takeover{next(_names)}", *steps_of(world))
            eid = await wf.execute(dict(world.case.when), async_=True)
            died = asyncio.ensure_future(world.killed.wait())
            ended = asyncio.ensure_future(a.wait(eid, timeout=60))
            try:
                await asyncio.wait([died, ended], return_when=asyncio.FIRST_COMPLETED)
            finally:
                died.cancel()
            if not world.killed.is_set():
                return Outcome(await ended, False, log=list(world.log))
            ended.cancel()
            await asyncio.gather(ended, return_exceptions=True)
            await eventually(lambda: world.writing == 0)  # begun before: let them land
            at_death = await a.store.load(eid)
            clock = Clock(time.time() + HOUR)  # A's lease ran out for B
            async with Flow(url, clock=clock, **POLLING) as b:
                done = await b.wait(eid, timeout=30)
                log = list(world.log)
                before = await b.store.load(eid)
                world.gate.set()  # A's calls return and its writes go on: refused
                await asyncio.wait_for(a.settle(eid), 10)
                assert await b.store.load(eid) == before, "A wrote after it died"
            # A closing hands back nothing of B's
            assert await a.store.load(eid) == before, "A wrote after it died"
            return Outcome(done, True, at_death, log)
    finally:
        world.gate.set()
        CURRENT.remove(world)


def running_at_death(out: Outcome, phase: Phase) -> dict[str, int]:
    """``{step id: attempt}`` of the runs of ``phase`` recorded RUNNING when A died."""
    if out.at_death is None:
        return {}
    return {
        r.step_id: r.attempts
        for r in out.at_death.records
        if r.phase is phase and r.status is Status.RUNNING
    }


def check_calls(world: World, out: Outcome, calls: dict[str, list[Event]], phase: Phase) -> None:
    """An attempt ran once, or twice (A then B, alike) when it was RUNNING at A's death;
    every attempt RUNNING then ran again on B."""
    running = running_at_death(out, phase)
    for sid, found in calls.items():
        by_attempt: dict[int, list[Event]] = {}
        for event in found:
            by_attempt.setdefault(event.attempt, []).append(event)
        assert sorted(by_attempt) == list(range(1, len(by_attempt) + 1)), (sid, out.log)
        for attempt, group in by_attempt.items():
            assert len(group) in (1, 2), (sid, attempt, out.log)
            if len(group) == 2:
                assert {e.who for e in group} == {"A", "B"}, (sid, out.log)
                assert running.get(sid) == attempt, (sid, attempt, running, out.log)
                assert len({e.key for e in group}) == 1
    for sid, attempt in running.items():
        assert any(e.who == "B" and e.attempt == attempt for e in calls.get(sid, ())), (
            sid,
            attempt,
            out.log,
        )


def check(world: World, out: Outcome) -> None:
    case, info = world.case, out.info
    zombies = {id(e) for e in world.blocked}
    log = [e for e in out.log if id(e) not in zombies]  # the calls that did something
    off = skipped(case)
    starts: dict[str, list[Event]] = {}
    undos: dict[str, list[Event]] = {}
    for event in out.log:
        if event.what == "start":
            starts.setdefault(event.sid, []).append(event)
        elif event.what == "undo":
            undos.setdefault(event.sid, []).append(event)
    check_calls(world, out, starts, Phase.FORWARD)
    check_calls(world, out, undos, Phase.COMPENSATE)
    at = {id(e): i for i, e in enumerate(log)}
    # every call that did not die ended, once: retryable failures, then a last one
    outcomes = [(e.who, e.sid, e.attempt) for e in log if e.what in ("retry", "end", "fail")]
    assert sorted(outcomes) == sorted((e.who, e.sid, e.attempt) for e in log if e.what == "start")
    ended = {e.sid: at[id(e)] for e in log if e.what in ("end", "fail")}  # the last
    assert set(starts) == set(ended), out.log
    for sid in starts:
        last = max(e.attempt for e in starts[sid])
        assert last == world.flaky.get(sid, 1), (sid, out.log)
    failed = {e.sid for e in log if e.what == "fail"}
    succeeded = {e.sid for e in log if e.what == "end"}
    # order: a step starts after every call of the steps it requires
    for sid, calls in starts.items():
        first_start = min(at.get(id(c), len(log)) for c in calls)
        for req in case.requires[sid]:
            if req in starts:
                assert ended[req] < first_start, (sid, req, out.log)
                assert max(at.get(id(c), -1) for c in starts[req]) < first_start
    if not failed:
        assert info.status is Status.SUCCESS, (info.error, out.log)
        for sid in case.requires:
            expected = Status.SKIPPED if sid in off else Status.SUCCESS
            assert info.steps[sid].status is expected, (sid, out.log)
            assert (sid in starts) is (sid not in off), (sid, out.log)
        assert not undos, out.log
        return
    assert info.status is Status.FAILURE, (info.error, out.log)
    assert info.compensated
    for sid in failed:
        assert info.steps[sid].status is Status.FAILURE
        assert not {s for s in descendants(case, sid) if s in starts}, out.log
    for sid in case.requires:
        status = info.steps[sid].status
        if sid in succeeded:
            assert status is (Status.COMPENSATED if sid in case.undoable else Status.SUCCESS)
        elif sid not in failed:
            assert status in (Status.SKIPPED, Status.PENDING), (sid, status, out.log)
            if status is Status.SKIPPED:
                assert sid in off
    # the rollback: what succeeded is undone once no step runs, a compensation after
    # those of the steps that depend on it
    undone = {e.sid: at[id(e)] for e in log if e.what == "undone"}
    assert set(undos) == set(undone) == succeeded & case.undoable, out.log
    first_undo = min((at[id(e)] for e in log if e.what == "undo"), default=len(log))
    assert all(e.what in ("undo", "undone") for e in log[first_undo:]), out.log
    for sid, calls in undos.items():
        began = min(at.get(id(c), len(log)) for c in calls)
        for later in descendants(case, sid) & set(undos):
            assert undone[later] < began, (sid, later, out.log)


SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)


def flaky_steps(data: st.DataObject, case: Case) -> dict[str, int]:
    """Some steps need 2 or 3 attempts (a retryable failure first)."""
    ids = sorted(case.requires)
    chosen = data.draw(st.lists(st.sampled_from(ids), max_size=3, unique=True), label="flaky")
    return {sid: data.draw(st.integers(2, 3), label=f"attempts of {sid}") for sid in chosen}


@SETTINGS
@given(cases(), st.data())
async def test_a_worker_dying_mid_run_is_taken_over_as_if_nothing_happened(
    tmp_path: Path, case: Case, data: st.DataObject
) -> None:
    ran = [sid for sid in case.requires if sid not in skipped(case)]
    assume(ran)
    flaky = flaky_steps(data, case)
    calls = sum(flaky.get(sid, 1) for sid in ran)
    kill_at = data.draw(st.integers(min_value=1, max_value=calls), label="kill_at")
    world = World(case, kill_at, "forward", flaky)
    out = await run_with_a_death(world, tmp_path)
    assert out.died  # every step that is not skipped runs: A's k-th call comes
    check(world, out)


@SETTINGS
@given(cases(failures=True), st.data())
async def test_a_worker_dying_before_a_failure_is_taken_over_and_rolls_back(
    tmp_path: Path, case: Case, data: st.DataObject
) -> None:
    flaky = flaky_steps(data, case)
    kill_at = data.draw(st.integers(min_value=1, max_value=4), label="kill_at")
    world = World(case, kill_at, "forward", flaky)
    out = await run_with_a_death(world, tmp_path)  # or it ended before A's k-th call
    check(world, out)


def undone_for_sure(case: Case) -> int:
    """How many compensations run whatever the interleaving: those of the undoable,
    not skipped ancestors of a failing step (not skipped) with no failing ancestor."""
    off = skipped(case)
    best = 0
    for sid in case.failing - off:
        ancestors = {s for s in case.requires if sid in descendants(case, s)}
        if ancestors & case.failing:
            continue
        best = max(best, len((ancestors - off) & case.undoable))
    return best


@SETTINGS
@given(cases(failures=True), st.data())
async def test_a_worker_dying_during_the_rollback_is_taken_over(
    tmp_path: Path, case: Case, data: st.DataObject
) -> None:
    if not undone_for_sure(case):
        case.undoable = set(case.requires)  # give the rollback something to do
    sure = undone_for_sure(case)
    assume(sure)
    kill_at = data.draw(st.integers(min_value=1, max_value=sure), label="kill_at")
    world = World(case, kill_at, "undo", flaky_steps(data, case))
    out = await run_with_a_death(world, tmp_path)
    assert out.died
    check(world, out)
