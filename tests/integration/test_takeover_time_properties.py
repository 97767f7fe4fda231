"""Property tests of timers under takeover (hypothesis, derandomized), on SQLite: random
DAGs of function steps (some needing a retry), sleeps and waits (with a timeout or
not, their signal sent before the execution starts, after its worker died, or never).
Flow A (which waits in its own process: ``claim=False``) dies while steps run, retry,
sleep or wait; flow B, its clock an hour later (past A's lease and past every timer),
takes the execution over and finishes it. Each timer fires once, on B; a signal kept
for a wait is its response; no attempt runs twice but the one A died in; and nothing
A does after its death is written (as in test_takeover_properties, a death is
in-process: A's calls and writes never return until the end of the test)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from microsaga import (
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
from microsaga.stores.base import Store
from tests.helpers import FLOW_EXAMPLES, eventually, killed_in_time
from tests.integration.test_takeover_properties import route_writes
from tests.unit.test_saga_properties import descendants

HOUR = 3600.0
TICK = 60.0  # every timer is a few minutes: all passed for B
QUIET = {"lease_ttl": 600.0, "heartbeat_interval": 599.0, "poll_interval": 30.0}
POLLING = {**QUIET, "poll_interval": 0.02}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Case:
    """``requires`` of each step, its kind (fn, sleep, wait), its ticks (a sleep's, a
    wait's timeout: 0 for none), the attempts each function step needs, when each
    wait's signal is sent ("early", "late": once A died, or "never"), and when A dies:
    at its ``kill_at``-th step call, or (0) once a step waits, or when only waiting
    steps are left."""

    requires: dict[str, list[str]]
    kinds: dict[str, str]
    ticks: dict[str, int]
    needs: dict[str, int]
    signal: dict[str, str]
    kill_at: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(min_value=2, max_value=6))
    requires: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    ticks: dict[str, int] = {}
    for i in range(n):
        reqs = draw(st.lists(st.integers(min_value=0, max_value=i - 1), max_size=2)) if i else []
        sid = f"s{i}"
        requires[sid] = sorted({f"s{r}" for r in reqs})
        kinds[sid] = draw(st.sampled_from(["fn", "fn", "sleep", "wait"]))
        ticks[sid] = draw(st.integers(min_value=1 if kinds[sid] == "sleep" else 0, max_value=5))
    signal = {}
    for sid in requires:
        if kinds[sid] == "wait":
            choices = ["early", "late", "never", "never"] if ticks[sid] else ["early", "late"]
            signal[sid] = draw(st.sampled_from(choices))
    return Case(
        requires=requires,
        kinds=kinds,
        ticks=ticks,
        needs={sid: draw(st.sampled_from([1, 1, 2])) for sid in requires if kinds[sid] == "fn"},
        signal=signal,
        kill_at=draw(st.integers(min_value=0, max_value=4)),
    )


@dataclass(frozen=True)
class Call:
    who: int  # 0: A, 1: B
    what: str  # start, retry, end, undo, undone
    sid: str
    attempt: int


@dataclass
class World:
    case: Case
    flows: list[Flow] = field(default_factory=list)
    log: list[Call] = field(default_factory=list)
    calls: int = 0  # A's step calls
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # set at the end
    zombies: list[Call] = field(default_factory=list)  # A's calls once dead
    held: int = 0  # A's calls and writes waiting for the gate, or under way after it

    def who(self, ctx: StepContext) -> int:
        return next(i for i, flow in enumerate(self.flows) if ctx.flow is flow)

    async def alive(self, call: Call) -> bool:
        """False (once the gate opens) when the caller is dead."""
        if call.who == 0 and self.killed.is_set():
            self.zombies.append(call)
            await self.hold()
            self.held -= 1
            return False
        return True

    async def hold(self) -> None:
        """Wait for the end of the test; ``held`` counts the calls and writes not
        done yet (a write counts until it returns)."""
        self.held += 1
        await asyncio.wait_for(self.gate.wait(), 60)

    def kill_writes(self, store: Store) -> None:
        async def write(real: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if not self.killed.is_set():
                return await real(*args, **kwargs)
            await self.hold()
            try:
                return await real(*args, **kwargs)
            finally:
                self.held -= 1

        route_writes(store, write, self.killed.is_set)


CURRENT: list[World] = []


async def forward(msg: Message, ctx: StepContext) -> dict[str, str]:
    world = CURRENT[-1]
    call = Call(world.who(ctx), "start", ctx.step_id, ctx.attempt)
    world.log.append(call)
    if call.who == 0:
        world.calls += 1
        if world.calls == world.case.kill_at:
            world.killed.set()
    await asyncio.sleep(0)
    if not await world.alive(call):
        return {"step": ctx.step_id}
    if ctx.attempt < world.case.needs[ctx.step_id]:
        world.log.append(Call(call.who, "retry", call.sid, call.attempt))
        raise StepError("flaky")  # retryable
    world.log.append(Call(call.who, "end", call.sid, call.attempt))
    return {"step": ctx.step_id}


async def undo(msg: Message, ctx: StepContext) -> None:
    world = CURRENT[-1]
    call = Call(world.who(ctx), "undo", ctx.step_id, ctx.attempt)
    world.log.append(call)
    if await world.alive(call):
        world.log.append(Call(call.who, "undone", call.sid, call.attempt))


def steps_of(case: Case) -> list[Step]:
    out: list[Step] = []
    for sid, reqs in case.requires.items():
        if case.kinds[sid] == "fn":
            retry = Retry(max_attempts=3, initial_interval=0.001, jitter=False)
            comp = FunctionStep(undo, id=f"undo-{sid}")
            out.append(FunctionStep(forward, id=sid, requires=reqs, retry=retry, compensate=comp))
        elif case.kinds[sid] == "sleep":
            out.append(SleepStep(case.ticks[sid] * TICK, id=sid, requires=reqs))
        else:
            timeout = case.ticks[sid] * TICK or None
            out.append(WaitStep(f"ev-{sid}", id=sid, requires=reqs, timeout=timeout))
    return out


def at(moment: datetime | None) -> float:
    assert moment is not None
    return moment.timestamp()


_names = itertools.count()


async def run_with_death(world: World, folder: Path) -> tuple[Execution, bool, float]:
    """The execution as B (or A, when it ended before its death) left it, whether A
    died, and B's clock."""
    case = world.case
    url = f"sqlite:///{folder / f'timers{next(_names)}.db'}"
    start = float(int(time.time()))  # whole seconds: stored times round-trip exactly
    CURRENT.append(world)
    try:
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                Flow(url, clock=Clock(start), claim=False, **QUIET)  # type: ignore[arg-type]
            )
            world.flows.append(a)
            world.kill_writes(a.store)
            # the signals come from a process that runs nothing
            other = await stack.enter_async_context(Flow(url, worker=False))
            wf = await a.workflow_create(f"timers{next(_names)}", *steps_of(case))
            eid = await wf.execute({}, async_=True)
            for sid, when in sorted(case.signal.items()):
                if when == "early":
                    await other.signal(eid, f"ev-{sid}", {"signal": sid})

            await eventually(lambda: killed_in_time(a, eid, case.kill_at, world.killed), timeout=20)
            if not world.killed.is_set():
                return await a.execution(eid), False, start
            clock_b = start + HOUR
            for sid, when in sorted(case.signal.items()):  # once A died
                if when == "late":
                    await other.signal(eid, f"ev-{sid}", {"signal": sid})
            heir = Clock(clock_b)
            b = await stack.enter_async_context(Flow(url, clock=heir, **POLLING))  # type: ignore[arg-type]
            world.flows.append(b)

            async def still() -> Execution | None:
                """Finished, or parked by B with no timer due (those of the steps B
                started wait for B's clock to move)."""
                info = await b.execution(eid)
                if info.status.finished:
                    return info
                if not info.note or eid in b._running().runs:
                    return None
                for sid, rec in info.steps.items():
                    timed = case.kinds[sid] == "sleep" or case.ticks[sid]
                    due = rec.status is Status.WAITING and timed
                    if due and at(rec.started_at) + case.ticks[sid] * TICK < heir.now:
                        return None  # due: B claims it at its next poll
                return info

            while True:
                done = await eventually(still, timeout=10)
                if done.status.finished:
                    break
                heir.now += 6 * TICK  # past the timers of the steps B started
            stored = await b.store.load(eid)
            world.gate.set()  # A's calls return, its writes go on: all refused
            await eventually(lambda: world.held == 0)  # A's blocked calls and writes ran
            # A's run may still wait in its process (its clock never moves), until its
            # next heartbeat finds the lease gone: it writes nothing meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(a.settle(eid), 1)
            assert await b.store.load(eid) == stored, "a dead flow wrote"
            return done, True, clock_b
    finally:
        world.gate.set()
        CURRENT.remove(world)


@settings(FLOW_EXAMPLES, max_examples=20)
@given(cases())
async def test_timers_of_a_dead_worker_fire_once_on_its_heir(tmp_path: Path, case: Case) -> None:
    world = World(case)
    info, died, clock_b = await run_with_death(world, tmp_path)
    zombies = set(map(id, world.zombies))
    log = [c for c in world.log if id(c) not in zombies]  # the calls that did something
    assert info.status in (Status.SUCCESS, Status.FAILURE), (info.status, info.error, log)
    # every attempt of a step ran once, but the one A died in, run again by B
    for sid in case.needs:
        starts = [(c.attempt, c.who) for c in world.log if c.what == "start" and c.sid == sid]
        attempts = sorted({a for a, _ in starts})
        if starts:
            assert attempts == list(range(1, case.needs[sid] + 1)), (sid, starts, world.log)
            assert info.steps[sid].attempts == case.needs[sid]
        for attempt in attempts:
            by = sorted(w for a, w in starts if a == attempt)
            assert by in ([0], [1], [0, 1]), (sid, attempt, starts)
            if by == [0, 1]:  # A died before it recorded the attempt's end
                assert died, (sid, attempt, starts)
    failed = set()
    for sid, run in info.steps.items():
        kind = case.kinds[sid]
        if run.started_at is None or run.status is Status.PENDING:
            continue
        started = at(run.started_at)
        if kind == "sleep":
            assert run.status is Status.SUCCESS, (sid, run)
            assert at(run.finished_at) >= started + case.ticks[sid] * TICK, (
                sid,
                run.started_at,
                run.finished_at,
                died,
                clock_b,
                case,
                log,
            )
            if died:  # fired by B: A's clock never reached it
                assert at(run.finished_at) >= clock_b, (
                    sid,
                    at(run.started_at),
                    at(run.finished_at),
                    clock_b,
                    case,
                    log,
                )
        elif kind == "wait":
            if case.signal[sid] == "never":
                assert run.status is Status.FAILURE, (sid, run)
                timeout = case.ticks[sid] * TICK
                assert run.error == (
                    f"StepTimeoutError: step {sid} timed out after {timeout:g}s"
                    f" waiting for ev-{sid}"
                )
                assert at(run.finished_at) >= started + timeout
                failed.add(sid)
            else:  # a signal kept for it, early or late, wins over its timeout
                assert run.status is Status.SUCCESS, (sid, run, log)
                assert run.response is not None
                assert run.response.json() == {"signal": sid}
    ended = {c.sid for c in log if c.what == "end"}
    undone = {c.sid for c in log if c.what == "undone"}
    if not failed:
        assert info.status is Status.SUCCESS, (info.error, log)
        assert not undone
        return
    assert info.status is Status.FAILURE, (info.error, log)
    for sid in failed:
        assert not descendants(case.requires, sid) & {c.sid for c in log if c.what == "start"}
    assert undone == ended, log  # every function step that succeeded is undone
    where = {(c.what, c.sid): i for i, c in enumerate(log)}
    for sid in undone:
        for later in descendants(case.requires, sid) & undone:
            assert where["undone", later] < where["undo", sid], (sid, later, log)
