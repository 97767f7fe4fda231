"""Property tests of crash recovery on random DAGs (hypothesis, derandomized), on SQLite
(and on PostgreSQL: test_postgres_properties): a worker (flow A) dies at its k-th step
call (or compensation call), another (flow B, same file) takes the execution over, and
may die in turn for a flow C. Whatever the shape, the retries and the points of death,
the execution ends as an undisturbed run would, every step ran, an attempt was invoked
again only if it was recorded RUNNING when a flow died (once more per death, with the
same attempt number and idempotency key), in the DAG's order, the rollback's order kept;
and nothing a dead flow does is written.

A flow dies in-process, as in test_recovery_attempts (a live flow taken for dead): from
its k-th call on, its step calls never return and its writes to the store (commits,
claims, lease renewals and releases) never reach it, until the end of the test. Each
flow's clock is an hour past the previous one's, so that the lease of the flow before
(never renewed here) has run out for it. At the end the dead flows' calls return and
their writes go through: all must be refused, the execution left as the last flow
left it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from tests.helpers import FLOW_EXAMPLES, eventually
from tests.unit.test_run_scheduling_properties import Case, cases, descendants, skipped

HOUR = 3600.0
# no lease renewal; the first flow claims nothing, the others claim at once what they find
QUIET = {"lease_ttl": 600.0, "heartbeat_interval": 599.0, "poll_interval": 30.0}
POLLING = {**QUIET, "poll_interval": 0.02}
WRITES = ("commit", "claim", "renew", "release", "release_all", "park", "wake")


def route_writes(store: Store, write: Callable[..., Any], dead: Callable[[], bool]) -> None:
    """Every write of ``store`` goes through ``write(real, *args)``, which makes it or
    holds it; a commit made at once (``commit_now``) is refused once ``dead()``."""

    def through(real: Callable[..., Any]) -> Callable[..., Any]:
        return functools.partial(write, real)

    for name in WRITES:
        setattr(store, name, through(getattr(store, name)))
    real_now = store.commit_now

    def commit_now(unit: Any) -> Any:
        # None: "not now", the caller then goes through commit
        return None if dead() else real_now(unit)

    store.commit_now = commit_now  # type: ignore[method-assign]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, eq=False)  # by identity: two calls alike are two calls
class Event:
    what: str  # start, retry, end, fail (a step's call), undo, undone (its compensation's)
    who: int  # the flow that called: 0 (A), 1 (B)...
    sid: str
    attempt: int
    key: str


@dataclass
class World:
    """One example: the case, its flows, the calls' log, and when each flow but the
    last dies: flow i at its ``kill_at[i]``-th call of ``counted`` kind (forward steps
    or compensations)."""

    case: Case
    kill_at: list[int]
    counted: str  # "forward" or "undo"
    flaky: dict[str, int] = field(default_factory=dict)  # attempts a step needs
    log: list[Event] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    killed: list[asyncio.Event] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # set at the end
    blocked: list[Event] = field(default_factory=list)  # calls that never returned
    writing: int = 0  # writes under way of the flow dying, begun before its death

    def __post_init__(self) -> None:
        self.calls = [0] * len(self.kill_at)
        self.killed = [asyncio.Event() for _ in self.kill_at]

    def dead(self, who: int) -> bool:
        return who < len(self.killed) and self.killed[who].is_set()

    def who(self, ctx: StepContext) -> int:
        return next(i for i, flow in enumerate(self.flows) if ctx.flow is flow)

    async def called(self, what: str, ctx: StepContext) -> Event:
        who = self.who(ctx)
        event = Event(what, who, ctx.step_id, ctx.attempt, ctx.idempotency_key)
        self.log.append(event)
        kind = "undo" if ctx.compensation else "forward"
        if who < len(self.kill_at) and kind == self.counted:
            self.calls[who] += 1
            if self.calls[who] == self.kill_at[who]:
                self.killed[who].set()
        await self.alive(event)
        return event

    async def alive(self, event: Event) -> None:
        """Never returns once the caller is dead (but at the end of the test)."""
        if self.dead(event.who):
            self.blocked.append(event)
            await until_the_end(self.gate)
            raise Zombie  # then returns (the step succeeded), logging no more

    def kill_writes(self, store: Store, who: int) -> None:
        """Flow ``who``'s writes from its death on wait for the end of the test."""

        async def write(real: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if self.dead(who):
                await until_the_end(self.gate)
                return await real(*args, **kwargs)
            self.writing += 1
            try:
                return await real(*args, **kwargs)
            finally:
                self.writing -= 1

        route_writes(store, write, lambda: self.dead(who))


class Zombie(Exception):
    pass


async def until_the_end(gate: asyncio.Event) -> None:
    """Wait for the end of the test. Not with ``asyncio.wait_for``: on Python 3.11 it
    swallows the cancellation of a flow's loop that comes as the gate opens (as the
    flows close), and that flow's close then waits for the loop forever."""
    async with asyncio.timeout(60):
        await gate.wait()


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
    at_death: list[StoredExecution]  # the execution as each flow that died left it
    log: list[Event]  # the calls until the last flow ended it

    @property
    def died(self) -> int:
        return len(self.at_death)


def sqlite_url(folder: Path) -> str:
    """A new SQLite file in ``folder``, for one example."""
    return f"sqlite:///{folder / f'takeover{next(_names)}.db'}"


async def run_with_deaths(world: World, url: str) -> Outcome:
    """Runs the world's case on flow 0 until it dies (or the execution ends), then on
    flow 1, and so on, each flow on the empty store at ``url``."""
    CURRENT.append(world)
    at_death: list[StoredExecution] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            eid, done = "", None
            for who in range(len(world.kill_at) + 1):
                # each flow's clock an hour past the last's: the leases it finds ran out
                clock = Clock(time.time() + who * HOUR)
                options = {"claim": False, **QUIET} if who == 0 else POLLING
                flow = await stack.enter_async_context(Flow(url, clock=clock, **options))
                world.flows.append(flow)
                if who < len(world.kill_at):
                    world.kill_writes(flow.store, who)
                if who == 0:
                    wf = await flow.workflow_create(f"takeover{next(_names)}", *steps_of(world))
                    eid = await wf.execute(dict(world.case.when), async_=True)
                if who == len(world.kill_at):
                    break
                died = asyncio.ensure_future(world.killed[who].wait())
                ended = asyncio.ensure_future(flow.wait(eid, timeout=60))
                try:
                    await asyncio.wait([died, ended], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    died.cancel()
                if not world.killed[who].is_set():
                    done = await ended  # it ended before that flow's death
                    break
                ended.cancel()
                await asyncio.gather(ended, return_exceptions=True)
                await eventually(lambda: world.writing == 0)  # begun before: let them land
                stored = await flow.store.load(eid)
                assert stored is not None
                at_death.append(stored)
            last = world.flows[-1]
            if done is None:

                async def taken_over() -> bool:
                    stored = await last.store.load(eid)
                    return stored is not None and stored.token > at_death[-1].token

                await eventually(taken_over)
                # the dead flows wake up while the last one runs (or once it is done):
                # their calls return and their writes go on, all to be refused
                world.gate.set()
                done = await last.wait(eid, timeout=30)
            log = list(world.log)
            before = await last.store.load(eid)
            world.gate.set()
            for flow in world.flows[:-1]:
                await asyncio.wait_for(flow.settle(eid), 10)
            assert await last.store.load(eid) == before, "a dead flow wrote"
        # closing, the dead flows hand back nothing of the last one's
        async with Flow(url, worker=False) as reader:
            assert await reader.store.load(eid) == before, "a dead flow wrote"
        return Outcome(done, at_death, log)
    finally:
        world.gate.set()
        CURRENT.remove(world)


def show(out: Outcome) -> str:
    """The calls, and the runs RUNNING at each death, for a failure's message."""
    calls = " ".join(f"{e.who}:{e.what}:{e.sid}#{e.attempt}" for e in out.log)
    deaths = [
        {(r.step_id, int(r.phase)): r.attempts for r in d.records if r.status is Status.RUNNING}
        for d in out.at_death
    ]
    return f"calls: {calls}; running at the deaths: {deaths}"


def running_at_death(out: Outcome, who: int, phase: Phase) -> dict[str, int]:
    """``{step id: attempt}`` of the runs of ``phase`` recorded RUNNING when flow
    ``who`` died."""
    return {
        r.step_id: r.attempts
        for r in out.at_death[who].records
        if r.phase is phase and r.status is Status.RUNNING
    }


def check_calls(out: Outcome, calls: dict[str, list[Event]], phase: Phase) -> None:
    """An attempt ran once, or once more per death of a flow that had it RUNNING (in a
    later flow, alike); every attempt RUNNING at a death ran again later."""
    for sid, found in calls.items():
        by_attempt: dict[int, list[Event]] = {}
        for event in found:
            by_attempt.setdefault(event.attempt, []).append(event)
        assert sorted(by_attempt) == list(range(1, len(by_attempt) + 1)), (sid, show(out))
        for attempt, group in by_attempt.items():
            callers = sorted(e.who for e in group)
            assert len(set(callers)) == len(callers), (sid, attempt, show(out))
            for who in callers[:-1]:  # a flow that called it died, it RUNNING
                assert who < out.died, (sid, attempt, show(out))
                running = running_at_death(out, who, phase)
                assert running.get(sid) == attempt, (sid, attempt, who, running, show(out))
            assert len({e.key for e in group}) == 1
    for who in range(out.died):
        for sid, attempt in running_at_death(out, who, phase).items():
            assert any(e.who > who and e.attempt == attempt for e in calls.get(sid, ())), (
                sid,
                attempt,
                who,
                show(out),
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
    check_calls(out, starts, Phase.FORWARD)
    check_calls(out, undos, Phase.COMPENSATE)
    at = {id(e): i for i, e in enumerate(log)}
    # every call that did not die ended, once: retryable failures, then a last one
    outcomes = [(e.who, e.sid, e.attempt) for e in log if e.what in ("retry", "end", "fail")]
    assert sorted(outcomes) == sorted((e.who, e.sid, e.attempt) for e in log if e.what == "start")
    ended = {e.sid: at[id(e)] for e in log if e.what in ("end", "fail")}  # the last
    assert set(starts) == set(ended), out.log
    for sid in starts:
        last = max(e.attempt for e in starts[sid])
        assert last == world.flaky.get(sid, 1), (sid, show(out))
    failed = {e.sid for e in log if e.what == "fail"}
    succeeded = {e.sid for e in log if e.what == "end"}
    # order: a step starts after every call of the steps it requires
    for sid, calls in starts.items():
        first_start = min(at.get(id(c), len(log)) for c in calls)
        for req in case.requires[sid]:
            if req in starts:
                assert ended[req] < first_start, (sid, req, show(out))
                assert max(at.get(id(c), -1) for c in starts[req]) < first_start
    if not failed:
        assert info.status is Status.SUCCESS, (info.error, show(out))
        for sid in case.requires:
            expected = Status.SKIPPED if sid in off else Status.SUCCESS
            assert info.steps[sid].status is expected, (sid, show(out))
            assert (sid in starts) is (sid not in off), (sid, show(out))
        assert not undos, out.log
        return
    assert info.status is Status.FAILURE, (info.error, show(out))
    assert info.compensated
    for sid in failed:
        assert info.steps[sid].status is Status.FAILURE
        assert not {s for s in descendants(case, sid) if s in starts}, out.log
    for sid in case.requires:
        status = info.steps[sid].status
        if sid in succeeded:
            assert status is (Status.COMPENSATED if sid in case.undoable else Status.SUCCESS)
        elif sid not in failed:
            assert status in (Status.SKIPPED, Status.PENDING), (sid, status, show(out))
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
            assert undone[later] < began, (sid, later, show(out))


SETTINGS = settings(
    FLOW_EXAMPLES,
    max_examples=60,
    suppress_health_check=[*FLOW_EXAMPLES.suppress_health_check, HealthCheck.filter_too_much],
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
    await dying_mid_run(sqlite_url(tmp_path), case, data)


async def dying_mid_run(url: str, case: Case, data: st.DataObject) -> None:
    """Flow A dies at one of its forward calls (B maybe too), on the store at ``url``."""
    ran = [sid for sid in case.requires if sid not in skipped(case)]
    assume(ran)
    flaky = flaky_steps(data, case)
    calls = sum(flaky.get(sid, 1) for sid in ran)
    deaths = st.lists(st.integers(min_value=1, max_value=calls), min_size=1, max_size=2)
    world = World(case, data.draw(deaths, label="kill_at"), "forward", flaky)
    out = await run_with_deaths(world, url)
    assert out.died  # every step that is not skipped runs: A's k-th call comes
    check(world, out)


@SETTINGS
@given(cases(failures=True), st.data())
async def test_a_worker_dying_before_a_failure_is_taken_over_and_rolls_back(
    tmp_path: Path, case: Case, data: st.DataObject
) -> None:
    await dying_before_a_failure(sqlite_url(tmp_path), case, data)


async def dying_before_a_failure(url: str, case: Case, data: st.DataObject) -> None:
    """Flow A dies at one of its first forward calls, of a saga that may fail."""
    flaky = flaky_steps(data, case)
    deaths = st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=2)
    world = World(case, data.draw(deaths, label="kill_at"), "forward", flaky)
    out = await run_with_deaths(world, url)  # or it ended before A's k-th call
    check(world, out)


def undone_for_sure(case: Case) -> int:
    """How many compensations run whatever the interleaving. A failure comes for sure
    when a failing step (not skipped) has no failing ancestor; then the roots that run
    (all started at once) succeed and are undone; and when that step is the only one
    failing, its ancestors that run too."""
    off = skipped(case)
    failing = case.failing - off
    sure: set[str] = set()
    for sid in failing:
        ancestors = {s for s in case.requires if sid in descendants(case, s)}
        if ancestors & case.failing:
            continue
        sure |= {s for s, reqs in case.requires.items() if not reqs}
        if len(failing) == 1:
            sure |= ancestors
    return len((sure - off - case.failing) & case.undoable)


@SETTINGS
@given(cases(failures=True), st.data())
async def test_a_worker_dying_during_the_rollback_is_taken_over(
    tmp_path: Path, case: Case, data: st.DataObject
) -> None:
    await dying_during_the_rollback(sqlite_url(tmp_path), case, data)


async def dying_during_the_rollback(url: str, case: Case, data: st.DataObject) -> None:
    """Flow A dies at one of the compensations of a saga that fails for sure."""
    if not undone_for_sure(case):
        case.undoable = set(case.requires)  # give the rollback something to do
    sure = undone_for_sure(case)
    assume(sure)
    deaths = st.lists(st.integers(min_value=1, max_value=sure), min_size=1, max_size=2)
    world = World(case, data.draw(deaths, label="kill_at"), "undo", flaky_steps(data, case))
    out = await run_with_deaths(world, url)
    assert out.died
    check(world, out)
