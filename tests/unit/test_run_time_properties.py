"""Property tests of the time rules (hypothesis, derandomized), on memory and SQLite:
step timeouts (an attempt that overruns, with retries and their backoff, with a
fallback), sleeps, waits with timeouts and signals sent at random moments, the
execution's deadline, and suspend/resume of a waiting execution.

Time is the flows' clock (``Flow(clock=...)``), moved by the steps (a step takes its
ticks) and by the test between parks, never raced against: an attempt that overruns
waits for a tick that never comes, so its timeout fires whatever the machine's speed,
and an attempt that does not overrun returns without giving the loop a turn, so its
timeout cannot. Whatever the shape and the moments: the execution ends, each step ends
as the rules say (SUCCESS, FAILURE timed out, or its fallback used) after as many
attempts as they allow, errors name the step and its timeout, no step starts once the
deadline has passed, no timer fires before its time, and the rollback undoes in
reverse order."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    SleepStep,
    Status,
    Step,
    StepContext,
    StepError,
    WaitStep,
)
from microsaga.execution import Execution
from tests.helpers import FLOW_EXAMPLES, eventually, logged_undo
from tests.unit.test_saga_properties import descendants

TICK = 10.0  # seconds of the flows' clock; every wait is whole ticks, so it parks
START = 1_000_000.0


class Clock:
    """The flows' clock, moved by the steps and by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    clock: Clock
    flow: Flow


@pytest.fixture
async def world(store_url: str, tmp_path: Path) -> AsyncIterator[World]:
    clock = Clock()
    async with AsyncExitStack() as stack:
        # leases far longer than any example's ticks: only parks give them up
        flow = Flow(store_url, clock=clock, poll_interval=0.02, lease_ttl=10**7)
        yield World(clock, await stack.enter_async_context(flow))


def shapes(draw: st.DrawFn, n: int) -> dict[str, list[str]]:
    requires: dict[str, list[str]] = {}
    for i in range(n):
        shape = draw(st.sampled_from(["root", "chain", "fan", "join"]))
        if i == 0 or shape == "root":
            reqs: list[int] = []
        elif shape == "chain":
            reqs = [i - 1]
        elif shape == "fan":
            reqs = [draw(st.integers(min_value=0, max_value=i - 1))]
        else:
            reqs = draw(st.lists(st.integers(min_value=0, max_value=i - 1), min_size=2, max_size=3))
        requires[f"s{i}"] = sorted({f"s{r}" for r in reqs})
    return requires


def at(moment: datetime | None) -> float:
    assert moment is not None
    return moment.timestamp()


_names = itertools.count()


# step timeouts, retries and fallbacks --------------------------------------------------


@dataclass
class TimeoutCase:
    """A random saga of function steps: what each attempt of each step does ("ok",
    "overrun": waits past its timeout, "error": a retryable error), its own timeout and
    the execution's (``execute(timeout=)``), the steps whose timeouts are not retried,
    the fallbacks (what they do, their own timeout), the ticks each step takes, the
    steps with a compensation."""

    requires: dict[str, list[str]]
    plans: dict[str, list[str]]
    timeout: dict[str, float | None]
    default_timeout: float | None
    timeouts_final: set[str]
    fallback: dict[str, tuple[str, float | None]]
    ticks: dict[str, int]
    undoable: set[str]

    def step_timeout(self, sid: str) -> float | None:
        return self.timeout[sid] or self.default_timeout

    def outcome(self, sid: str) -> tuple[int, bool, str | None]:
        """How many attempts the step makes, whether it succeeded, and the error of its
        last failed attempt (kept in its record also when a retry succeeded)."""
        plan = self.plans[sid]
        error = None
        for i, what in enumerate(plan, start=1):
            if what == "ok":
                return i, True, error
            if what == "overrun":
                error = f"StepTimeoutError: step {sid} timed out after {self.step_timeout(sid):g}s"
                if sid in self.timeouts_final:
                    return i, False, error
            else:
                error = "boom"
        return len(plan), False, error


SHORT = st.sampled_from([0.005, 0.01, 0.02])


@st.composite
def timeout_cases(draw: st.DrawFn) -> TimeoutCase:
    requires = shapes(draw, draw(st.integers(min_value=2, max_value=8)))
    ids = list(requires)
    attempt = st.sampled_from(["overrun", "overrun", "error"])
    plans = {}
    for sid in ids:
        failures = draw(st.lists(attempt, max_size=3))
        ok = draw(st.sampled_from([True, True, False])) or not failures
        plans[sid] = [*failures, "ok"] if ok else failures
    default = draw(st.none() | SHORT)
    timeout = {sid: draw(st.none() | SHORT) for sid in ids}
    for sid in ids:  # an attempt that overruns has a timeout to end it
        if "overrun" in plans[sid] and default is None and timeout[sid] is None:
            timeout[sid] = draw(SHORT)
    fallback: dict[str, tuple[str, float | None]] = {}
    for sid in ids:
        if draw(st.booleans()):
            what = draw(st.sampled_from(["ok", "overrun", "error"]))
            own = draw(st.none() | SHORT)
            if what == "overrun" and own is None and default is None and timeout[sid] is None:
                own = draw(SHORT)
            fallback[sid] = (what, own)
    return TimeoutCase(
        requires=requires,
        plans=plans,
        timeout=timeout,
        default_timeout=default,
        timeouts_final=set(draw(st.lists(st.sampled_from(ids), max_size=2))),
        fallback=fallback,
        ticks={sid: draw(st.integers(min_value=0, max_value=3)) for sid in ids},
        undoable=set(draw(st.lists(st.sampled_from(ids)))),
    )


@dataclass
class Log:
    events: list[tuple[str, str]] = field(default_factory=list)
    attempts: dict[str, list[int]] = field(default_factory=dict)


async def run_timeouts(w: World, case: TimeoutCase) -> tuple[Execution, Log]:
    log = Log()
    never = asyncio.Event()  # the tick an overrunning attempt waits for

    async def act(what: str, sid: str, label: str, timeout: float | None) -> dict[str, str]:
        if what == "overrun":
            log.events.append(("overrun", label))
            await never.wait()
        if timeout is None:  # no timeout to race: the loop may turn meanwhile
            for _ in range(case.ticks[sid]):
                await asyncio.sleep(0)
        if what == "error":
            log.events.append(("error", label))
            raise StepError("boom")
        log.events.append(("end", label))
        return {"step": label}

    def step(sid: str) -> FunctionStep:
        async def forward(msg: Message, ctx: StepContext) -> dict[str, str]:
            log.attempts.setdefault(sid, []).append(ctx.attempt)
            log.events.append(("start", sid))
            w.clock.now += case.ticks[sid] * TICK  # the step takes its ticks
            what = case.plans[sid][ctx.attempt - 1]
            return await act(what, sid, sid, case.step_timeout(sid))

        async def fallback(msg: Message, ctx: StepContext) -> dict[str, str]:
            log.events.append(("fallback", sid))
            what, own = case.fallback[sid]
            return await act(what, sid, f"fb-{sid}", own or case.step_timeout(sid))

        fb = None
        if sid in case.fallback:
            fb = FunctionStep(fallback, id=f"fb-{sid}", timeout=case.fallback[sid][1])
        final = ("step_timeout",) if sid in case.timeouts_final else ()
        retry = Retry(
            max_attempts=len(case.plans[sid]),
            initial_interval=0.001,
            jitter=False,
            non_retryable=final,
        )
        return FunctionStep(
            forward,
            id=sid,
            requires=case.requires[sid],
            retry=retry,
            timeout=case.timeout[sid],
            fallback=fb,
            compensate=logged_undo(log.events, sid) if sid in case.undoable else None,
        )

    wf = await w.flow.workflow_create(f"timeouts{next(_names)}", *(step(s) for s in case.requires))
    async with asyncio.timeout(20):  # a hang fails the example instead of the suite
        try:
            eid = await wf.execute({}, timeout=case.default_timeout)
        except ExecutionFailedError as err:
            eid = err.execution_id
    return await w.flow.execution(eid), log


@settings(FLOW_EXAMPLES, max_examples=40)
@given(timeout_cases())
async def test_timeouts_retries_and_fallbacks_end_steps_as_the_rules_say(
    world: World, case: TimeoutCase
) -> None:
    info, log = await run_timeouts(world, case)
    events = log.events
    where = {ev: i for i, ev in enumerate(events)}
    failed, succeeded = set(), set()
    for sid in case.requires:
        run = info.steps[sid]
        if sid not in log.attempts:  # never started: a failure came first
            assert run.status is Status.PENDING, (sid, run, events)
            continue
        attempts, ok, error = case.outcome(sid)
        assert log.attempts[sid] == list(range(1, attempts + 1)), (sid, log.attempts, case)
        assert run.attempts == attempts, (sid, run, case)
        if ok:
            succeeded.add(sid)
            assert run.error == error, (sid, run)
            assert ("fallback", sid) not in where
            continue
        fb = case.fallback.get(sid)
        assert (("fallback", sid) in where) is (fb is not None), (sid, events)
        if fb is not None and fb[0] == "ok":
            succeeded.add(sid)
            assert run.error == f"{error} (fallback fb-{sid} used)", (sid, run, case)
            assert run.response is not None
            assert run.response.json() == {"step": f"fb-{sid}"}
        else:
            failed.add(sid)
            assert run.status is Status.FAILURE, (sid, run, events)
            assert run.error == error, (sid, run, case)
    for sid in case.requires:
        if sid in succeeded:
            undone = bool(failed) and sid in case.undoable
            assert info.steps[sid].status is (Status.COMPENSATED if undone else Status.SUCCESS)
    if not failed:
        assert info.status is Status.SUCCESS, (info.error, events)
        assert set(log.attempts) == set(case.requires)
        assert not any(ev == "undo" for ev, _ in events)
        return
    assert info.status is Status.FAILURE, (info.error, events)
    assert info.error is not None
    assert any(f"step {sid} failed: {info.steps[sid].error}" in info.error for sid in failed)
    for sid in failed:  # nothing that depends on a failed step starts
        assert not descendants(case.requires, sid) & set(log.attempts), (sid, events)
    # the rollback: once no step runs, each compensation after those of its dependents
    undone = {sid for ev, sid in events if ev == "undo"}
    assert undone == succeeded & case.undoable, (undone, events)
    if undone:
        first = min(where["undo", sid] for sid in undone)
        assert all(ev in ("undo", "undone") for ev, _ in events[first:]), events
    for sid in undone:
        for later in descendants(case.requires, sid) & undone:
            assert where["undone", later] < where["undo", sid], (sid, later, events)


# sleeps, waits, signals and the deadline -----------------------------------------------


@dataclass
class WaitCase:
    """A random saga of function steps (taking ``ticks``), sleeps (of ``ticks``) and
    waits (a timeout of ``ticks``, 0 for none; the signal sent at tick ``signal_at``
    from the start, or never; maybe a fallback), a deadline maybe, compensations of
    function steps, and the parks at which the test suspends the execution, moves the
    clock, then resumes it."""

    requires: dict[str, list[str]]
    kinds: dict[str, str]
    ticks: dict[str, int]
    signal_at: dict[str, int]
    fallback: set[str]
    deadline: int | None
    undoable: set[str]
    suspend_at: set[int]

    def timeout(self, sid: str) -> float | None:
        return self.ticks[sid] * TICK if self.kinds[sid] == "wait" and self.ticks[sid] else None


@st.composite
def wait_cases(draw: st.DrawFn) -> WaitCase:
    requires = shapes(draw, draw(st.integers(min_value=2, max_value=8)))
    ids = list(requires)
    kinds = {sid: draw(st.sampled_from(["fn", "fn", "sleep", "wait", "wait"])) for sid in ids}
    ticks = {}
    for sid in ids:
        low = 1 if kinds[sid] == "sleep" else 0
        ticks[sid] = draw(st.integers(min_value=low, max_value=4))
    waits = [sid for sid in ids if kinds[sid] == "wait"]
    signal_at = {
        sid: tick
        for sid in waits
        if (tick := draw(st.sampled_from([None, None, 0, 1, 2, 3, 5, 8]))) is not None
    }
    return WaitCase(
        requires=requires,
        kinds=kinds,
        ticks=ticks,
        signal_at=signal_at,
        fallback=set(draw(st.lists(st.sampled_from(waits)))) if waits else set(),
        deadline=draw(st.sampled_from([None, None, 2, 4, 8, 16])),
        undoable={sid for sid in ids if kinds[sid] == "fn" and draw(st.booleans())},
        suspend_at=set(draw(st.lists(st.integers(min_value=0, max_value=6), max_size=2))),
    )


def wait_steps(w: World, case: WaitCase, events: list[tuple[str, str]]) -> list[Step]:
    def function(sid: str) -> FunctionStep:
        async def forward(msg: Message) -> dict[str, str]:
            events.append(("start", sid))
            w.clock.now += case.ticks[sid] * TICK  # the step takes its ticks
            events.append(("end", sid))
            return {"step": sid}

        comp = logged_undo(events, sid) if sid in case.undoable else None
        return FunctionStep(forward, id=sid, requires=case.requires[sid], compensate=comp)

    async def stand_in(msg: Message, ctx: StepContext) -> dict[str, str]:
        events.append(("fallback", ctx.step_id))
        return {"fallback": ctx.step_id}

    steps: list[Step] = []
    for sid in case.requires:
        reqs = case.requires[sid]
        if case.kinds[sid] == "fn":
            steps.append(function(sid))
        elif case.kinds[sid] == "sleep":
            steps.append(SleepStep(case.ticks[sid] * TICK, id=sid, requires=reqs))
        else:
            fb = FunctionStep(stand_in, id=f"fb-{sid}") if sid in case.fallback else None
            steps.append(
                WaitStep(f"ev-{sid}", id=sid, requires=reqs, timeout=case.timeout(sid), fallback=fb)
            )
    return steps


async def still(flow: Flow, eid: str) -> Execution | None:
    """The execution once nothing moves in it: finished, suspended and settled, or
    parked (waiting in the store, held by no run)."""
    info = await flow.execution(eid)
    if info.status.finished:
        return info
    held = eid in flow._running().runs
    if info.status is Status.SUSPEND and not held:
        return info
    if info.status is Status.RUNNING and not held and info.note:
        return info
    return None


@dataclass
class Drive:
    """What the test did: when (by the flows' clock) each signal was sent, the clock
    at each resume, whether it gave up waiting (a signal that never comes) and aborted."""

    sent: dict[str, float] = field(default_factory=dict)
    resumed: list[float] = field(default_factory=list)
    gave_up: bool = False


async def drive(w: World, case: WaitCase, eid: str, created: float) -> tuple[Execution, Drive]:
    """Moves the clock from park to park, to the next moment something is due: a
    timer, a signal, the deadline; sends the signals due; suspends and resumes."""
    flow, clock, done = w.flow, w.clock, Drive()
    parks = itertools.count()

    def timers(info: Execution) -> list[float]:
        out = []
        if case.deadline is not None:
            out.append(created + case.deadline * TICK)
        for sid, run in info.steps.items():
            timed = case.kinds[sid] == "sleep" or case.timeout(sid)
            if run.status is Status.WAITING and timed:
                out.append(at(run.started_at) + case.ticks[sid] * TICK)
        return out

    async def quiet() -> Execution | None:
        """Still, and no timer due that a worker is yet to fire."""
        info = await still(flow, eid)
        if info is None or info.status is not Status.RUNNING:
            return info
        # a signal sent to a waiting step is still the worker's to take (it woke the
        # execution, which shows parked until a worker claims it): time moves on after
        if any(r.status is Status.WAITING and sid in done.sent for sid, r in info.steps.items()):
            return None
        # due now is due: the engine fires a timer at its time, so a signal the test
        # sends at that moment would race the worker's look at it
        return None if any(t <= clock.now for t in timers(info)) else info

    async def settled() -> Execution:
        try:
            found: Execution = await eventually(quiet, timeout=5)
        except AssertionError:
            info = await flow.execution(eid)
            steps = {sid: (r.status.name, r.error, r.started_at) for sid, r in info.steps.items()}
            held = eid in flow._running().runs
            raise AssertionError(
                f"never still: {info.status.name} held={held} note={info.note} "
                f"now={clock.now - START} {steps} {done} {case}"
            ) from None
        return found

    while True:
        info = await settled()
        if info.status.finished:
            return info, done
        due = [sid for sid, tick in case.signal_at.items() if sid not in done.sent]
        due = [sid for sid in due if created + case.signal_at[sid] * TICK <= clock.now]
        if due:
            for sid in sorted(due):
                done.sent[sid] = clock.now
                await flow.signal(eid, f"ev-{sid}", {"signal": sid})
            continue
        moments = [created + t * TICK for s, t in case.signal_at.items() if s not in done.sent]
        moments = [m for m in moments + timers(info) if m >= clock.now]
        if not moments:  # waits for a signal that never comes: give up
            done.gave_up = True
            await flow.abort(eid)
            return await flow.wait(eid, timeout=20), done
        suspend = next(parks) in case.suspend_at
        if suspend:
            await flow.suspend(eid)
            await settled()
        # a second past it: a parked execution is claimed once its timer has passed
        clock.now = min(moments) + 1
        if suspend:
            done.resumed.append(clock.now)
            await flow.resume(eid)


@settings(FLOW_EXAMPLES, max_examples=50)
@given(wait_cases())
async def test_sleeps_waits_and_the_deadline_fire_on_time_and_once(
    world: World, case: WaitCase
) -> None:
    events: list[tuple[str, str]] = []
    flow, clock = world.flow, world.clock
    wf = await flow.workflow_create(f"waits{next(_names)}", *wait_steps(world, case, events))
    created = clock.now
    deadline = case.deadline * TICK if case.deadline is not None else None
    eid = await wf.execute({}, async_=True, deadline=deadline)
    info, done = await drive(world, case, eid, created)
    where = {ev: i for i, ev in enumerate(events)}
    starts = [sid for ev, sid in events if ev == "start"]
    assert len(starts) == len(set(starts)), events  # every step runs once
    failed = {sid for sid, run in info.steps.items() if run.status is Status.FAILURE}
    for sid in case.requires:
        run, kind = info.steps[sid], case.kinds[sid]
        if run.started_at is None:
            assert run.status is Status.PENDING, (sid, run)
            continue
        started = at(run.started_at)
        if case.deadline is not None:  # no step starts once the deadline has passed
            assert started < created + case.deadline * TICK, (sid, run, case)
        if run.status in (Status.PENDING, Status.SUCCESS, Status.COMPENSATED):
            assert run.error in (None, "cancelled") or "fallback" in (run.error or "")
        if kind == "sleep" and run.status is Status.SUCCESS:
            assert at(run.finished_at) >= started + case.ticks[sid] * TICK, (sid, run)
            assert run.response == run.request  # a sleep answers with its request
        if kind != "wait":
            continue
        timeout = case.timeout(sid)
        sent = done.sent.get(sid)
        # sent at the timeout's moment is late: the timeout fired first (see quiet)
        in_time = sent is not None and (timeout is None or sent < started + timeout)
        if run.status is Status.SUCCESS and run.error is None:
            assert in_time, (sid, run, done, case)
            assert run.response is not None
            assert run.response.json() == {"signal": sid}
            continue
        if run.status is Status.PENDING:  # given up by a rollback or an abort
            assert run.error == "cancelled", (sid, run)
            assert info.status is not Status.SUCCESS
            continue
        assert timeout is not None, (sid, run, case)
        assert not in_time, (sid, run, done, case)  # a signal in time is never late
        assert at(run.finished_at) >= started + timeout, (sid, run)
        error = f"StepTimeoutError: step {sid} timed out after {timeout:g}s waiting for ev-{sid}"
        if sid in case.fallback:
            assert run.status is Status.SUCCESS, (sid, run)
            assert run.error == f"{error} (fallback fb-{sid} used)"
            assert ("fallback", sid) in where
        else:
            assert run.status is Status.FAILURE, (sid, run)
            assert run.error == error
    # resumed after its time, a sleep succeeds at once
    for sid, run in info.steps.items():
        if case.kinds[sid] == "sleep" and run.status is Status.SUCCESS and done.resumed:
            due = at(run.started_at) + case.ticks[sid] * TICK
            later = [r for r in done.resumed if r >= due]
            if later and at(run.finished_at) > later[0]:
                raise AssertionError((sid, run, done))
    # how it ended
    if done.gave_up:
        assert info.status is Status.ABORTED
    elif info.status is Status.ABORTED:  # maybe with a wait timed out at the same park
        assert case.deadline is not None
        assert clock.now >= created + case.deadline * TICK
        assert info.error is not None
        assert "deadline" in info.error
    elif failed:
        assert info.status is Status.FAILURE, (info.error, events, done, case, info.steps)
    else:
        assert info.status is Status.SUCCESS, (info.error, events, case)
        assert all(r.status is Status.SUCCESS for r in info.steps.values()), info.steps
    ended = {sid for ev, sid in events if ev == "end"}
    undone = {sid for ev, sid in events if ev == "undo"}
    if info.status is Status.SUCCESS:
        assert not undone
    else:
        assert undone == ended & case.undoable, (undone, events)
        first = min((where["undo", sid] for sid in undone), default=len(events))
        assert all(ev in ("undo", "undone") for ev, _ in events[first:]), events
        for sid in undone:
            for later in descendants(case.requires, sid) & undone:
                assert where["undone", later] < where["undo", sid], (sid, later, events)


async def test_a_waits_fallback_is_bounded_by_the_executions_step_timeout(world: World) -> None:
    flow, clock = world.flow, world.clock
    never = asyncio.Event()

    async def overrun(msg: Message) -> None:
        await never.wait()  # the tick it waits for never comes

    fb = FunctionStep(overrun, id="fb-paid")
    wf = await flow.workflow_create("wait-fallback", WaitStep("paid", timeout=TICK, fallback=fb))
    eid = await wf.execute({}, async_=True, timeout=0.01)
    await eventually(lambda: still(flow, eid))
    clock.now += TICK + 1  # the wait times out; its fallback overruns
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.FAILURE
    assert info.steps["paid"].status is Status.FAILURE
    assert info.steps["paid"].error == (
        f"StepTimeoutError: step paid timed out after {TICK:g}s waiting for paid"
    )
