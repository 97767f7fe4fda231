"""Property tests of takeover with waiting steps (hypothesis, derandomized), on SQLite
and on PostgreSQL: random DAGs of function steps (some needing a retry, some with a
compensation), waits (their signal sent before the execution starts, after its worker
died, both, or never: then their timeout fails them), a sleep and a sub-workflow (a
child of 1 to 3 steps), maybe with a step that fails (in the parent or in the child).
Flow A (which waits in its own process: ``claim=False``) dies at its k-th call of a
step or compensation, or once only waiting steps are left; flow B, its clock an hour
later and moving on, takes the execution (and the child) over and ends it.

What a user would check: the execution ends SUCCESS when every waited event came and
nothing failed, else FAILURE with its rollback done; an attempt of a step or
compensation ran again only if it was RUNNING when A died; what succeeded is undone on
rollback (the child as a unit, after the steps that depend on it), nothing starts once
the rollback began; a wait's response is the first signal's payload; the child runs
once, as ``<eid>:<step id>``; and nothing A does after its death is written (as in
test_takeover_properties, a death is in-process: A's calls and writes never return
until the end of the test)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microsaga import (
    Flow,
    FunctionStep,
    InvalidTransitionError,
    Message,
    Retry,
    SleepStep,
    Status,
    Step,
    StepContext,
    StepError,
    SubflowStep,
    WaitStep,
)
from microsaga.execution import Execution
from microsaga.status import Phase
from microsaga.stores.base import Store
from tests.helpers import FLOW_EXAMPLES, eventually, killed_in_time
from tests.integration.test_takeover_properties import Clock, route_writes, until_the_end
from tests.unit.test_saga_properties import descendants

HOUR = 3600.0
TICK = 60.0  # a sleep, a wait's timeout: a few ticks, all passed for B
QUIET = {"lease_ttl": 600.0, "heartbeat_interval": 599.0, "poll_interval": 30.0}
# B's clock moves on (its timers fire): its own lease never runs out meanwhile
HEIR = {"lease_ttl": 1e9, "heartbeat_interval": 599.0, "poll_interval": 0.02}
SIGNALS = ("early", "late", "twice", "never")  # never: only for a wait with a timeout


@dataclass
class Case:
    """Each step's ``requires`` and kind (fn, wait, sleep, sub), the function steps
    with a compensation and the attempts they need, each wait's timeout (ticks, 0 for
    none) and when its signal comes, the number of the child's steps (a chain c0, c1,
    ... each with a compensation), the step that fails for good (``s2``, or ``s3/c1``
    for a child's), and when A dies: at its ``kill_at``-th call, or (0) once only
    waiting steps are left."""

    requires: dict[str, list[str]]
    kinds: dict[str, str]
    undoable: set[str]
    needs: dict[str, int]
    timeouts: dict[str, int]
    signal: dict[str, str]
    kid: int
    failing: str | None
    kill_at: int

    @property
    def sub(self) -> str | None:
        return next((sid for sid, kind in self.kinds.items() if kind == "sub"), None)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(min_value=2, max_value=5))
    requires: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for i in range(n):
        reqs = draw(st.lists(st.integers(min_value=0, max_value=i - 1), max_size=2)) if i else []
        sid = f"s{i}"
        requires[sid] = sorted({f"s{r}" for r in reqs})
        kind = draw(st.sampled_from(["fn", "wait", "wait", "sleep", "sub", "sub"]))
        kinds[sid] = "fn" if kind in ("sleep", "sub") and kind in kinds.values() else kind
    fns = [sid for sid, kind in kinds.items() if kind == "fn"]
    timeouts = {sid: draw(st.integers(0, 3)) for sid, kind in kinds.items() if kind == "wait"}
    signal = {
        sid: draw(st.sampled_from(SIGNALS if ticks else SIGNALS[:-1]))
        for sid, ticks in timeouts.items()
    }
    kid = draw(st.integers(min_value=1, max_value=3))
    sub = next((sid for sid, kind in kinds.items() if kind == "sub"), None)
    kids = [f"{sub}/c{i}" for i in range(kid)] if sub else []
    return Case(
        requires=requires,
        kinds=kinds,
        undoable={sid for sid in fns if draw(st.booleans())},
        needs={sid: draw(st.sampled_from([1, 1, 2])) for sid in fns},
        timeouts=timeouts,
        signal=signal,
        kid=kid,
        failing=draw(st.none() | st.sampled_from(fns + kids)) if fns + kids else None,
        kill_at=draw(st.integers(min_value=0, max_value=6)),
    )


@dataclass(frozen=True, eq=False)  # by identity: two calls alike are two calls
class Call:
    who: int  # 0: A, 1: B
    what: str  # start, retry, end, fail (a step's call), undo, undone (its compensation's)
    name: str  # a step ``s1``, a child's step ``s3/c0``
    attempt: int


@dataclass
class World:
    case: Case
    flows: list[Flow] = field(default_factory=list)
    log: list[Call] = field(default_factory=list)
    calls: int = 0  # A's calls
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # set at the end
    zombies: list[Call] = field(default_factory=list)  # A's calls once dead
    held: int = 0  # A's calls and writes waiting for the gate, or under way after it
    writing: int = 0  # A's writes under way, begun before its death

    async def called(self, what: str, ctx: StepContext) -> Call:
        """Log the call; False when the caller is dead (once the gate opens)."""
        who = next(i for i, flow in enumerate(self.flows) if ctx.flow is flow)
        call = Call(who, what, name_of(ctx), ctx.attempt)
        self.log.append(call)
        if who == 0:
            self.calls += 1
            if self.calls == self.case.kill_at:
                self.killed.set()
        return call

    async def alive(self, call: Call) -> bool:
        """False (once the gate opens) when the caller is dead."""
        if call.who == 0 and self.killed.is_set():
            self.zombies.append(call)
            self.held += 1
            try:
                await until_the_end(self.gate)
            finally:
                self.held -= 1
            return False
        return True

    def kill_writes(self, store: Store) -> None:
        """A's writes from its death on wait for the end of the test."""

        async def write(real: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            dead = self.killed.is_set()
            if dead:
                self.held += 1
            else:
                self.writing += 1
            try:
                if dead:
                    await until_the_end(self.gate)
                return await real(*args, **kwargs)
            finally:
                if dead:
                    self.held -= 1
                else:
                    self.writing -= 1

        route_writes(store, write, self.killed.is_set)


CURRENT: list[World] = []


def name_of(ctx: StepContext) -> str:
    """``s1``, or ``s3/c0`` for step c0 of the child of SubflowStep s3 (its id is
    ``<parent>:s3``)."""
    _, colon, sub = ctx.execution_id.partition(":")
    return f"{sub}/{ctx.step_id}" if colon else ctx.step_id


async def forward(msg: Message, ctx: StepContext) -> dict[str, str]:
    world = CURRENT[-1]
    call = await world.called("start", ctx)
    await asyncio.sleep(0)  # let the other branches and the loop go on
    if not await world.alive(call):
        return {"step": call.name}
    if ctx.attempt < world.case.needs.get(call.name, 1):
        world.log.append(Call(call.who, "retry", call.name, call.attempt))
        raise StepError("flaky")  # retryable
    if call.name == world.case.failing:
        world.log.append(Call(call.who, "fail", call.name, call.attempt))
        raise StepError("declined", retryable=False)
    world.log.append(Call(call.who, "end", call.name, call.attempt))
    return {"step": call.name}


async def undo(msg: Message, ctx: StepContext) -> None:
    world = CURRENT[-1]
    call = await world.called("undo", ctx)
    await asyncio.sleep(0)
    if await world.alive(call):
        world.log.append(Call(call.who, "undone", call.name, call.attempt))


RETRY = Retry(max_attempts=3, initial_interval=0.001, jitter=False)


def kid_steps(n: int) -> list[Step]:
    return [
        FunctionStep(
            forward,
            id=f"c{i}",
            requires=[f"c{i - 1}"] if i else [],
            compensate=FunctionStep(undo, id=f"undo-c{i}"),
        )
        for i in range(n)
    ]


def steps_of(case: Case) -> list[Step]:
    out: list[Step] = []
    for sid, reqs in case.requires.items():
        kind = case.kinds[sid]
        if kind == "fn":
            comp = FunctionStep(undo, id=f"undo-{sid}") if sid in case.undoable else None
            out.append(FunctionStep(forward, id=sid, requires=reqs, retry=RETRY, compensate=comp))
        elif kind == "wait":
            timeout = case.timeouts[sid] * TICK or None
            out.append(WaitStep(f"ev-{sid}", id=sid, requires=reqs, timeout=timeout))
        elif kind == "sleep":
            out.append(SleepStep(2 * TICK, id=sid, requires=reqs))
        else:
            out.append(SubflowStep(f"kid{case.kid}", id=sid, requires=reqs))
    return out


def payload(sid: str, n: int) -> dict[str, Any]:
    return {"signal": sid, "n": n}


@dataclass
class Outcome:
    info: Execution
    child: Execution | None  # the child of the sub-workflow, if it started
    at_death: dict[tuple[str, Phase], int]  # {(name, phase): attempt} RUNNING at A's death
    died: bool
    others: list[str]  # the ids of the executions other than the parent and its child


_names = itertools.count()


async def run_with_death(world: World, url: str) -> Outcome:
    """The execution as B (or A, when it ended before its death) left it."""
    case = world.case
    start = float(int(time.time()))  # whole seconds: stored times round-trip exactly
    CURRENT.append(world)
    try:
        async with contextlib.AsyncExitStack() as stack:
            # the signals come from a process that runs nothing
            other = await stack.enter_async_context(Flow(url, worker=False))
            kid = await other.workflow_create(f"kid{case.kid}", *kid_steps(case.kid))
            await other.workflow_save(kid)
            a = await stack.enter_async_context(
                Flow(url, clock=Clock(start), claim=False, **QUIET)  # type: ignore[arg-type]
            )
            world.flows.append(a)
            world.kill_writes(a.store)
            wf = await a.workflow_create(f"waits{next(_names)}", *steps_of(case))
            eid = await wf.execute({}, async_=True)
            for sid, when in sorted(case.signal.items()):
                if when in ("early", "twice"):
                    await send(other, eid, sid, 1)

            try:
                await eventually(
                    lambda: killed_in_time(other, eid, case.kill_at, world.killed), timeout=20
                )
            except AssertionError:
                raise AssertionError(f"A neither died nor ended: {show(world)}") from None
            cid = f"{eid}:{case.sub}"
            if not world.killed.is_set():
                info = await other.execution(eid)
                child = await other.store.get_execution(cid)
                return Outcome(info, child, {}, False, await others(other, eid, cid))
            await eventually(lambda: world.writing == 0)  # begun before: let them land
            at_death = {}
            for run, prefix in ((eid, ""), (cid, f"{case.sub}/")):
                found = await other.store.load(run)
                for r in found.records if found is not None else []:
                    if r.status is Status.RUNNING:
                        at_death[prefix + r.step_id, r.phase] = r.attempts
            for sid, when in sorted(case.signal.items()):  # once A died
                if when in ("late", "twice"):
                    await send(other, eid, sid, 1 if when == "late" else 2)
            heir = Clock(start + HOUR)
            b = await stack.enter_async_context(Flow(url, clock=heir, **HEIR))  # type: ignore[arg-type]
            world.flows.append(b)

            async def ended() -> Execution | None:
                info = await b.execution(eid)
                heir.now += TICK  # B's timers fire
                return info if info.status.finished else None

            info = await eventually(ended, timeout=30, interval=0.05)
            stored = await b.store.load(eid), await b.store.load(cid)
            child = await b.store.get_execution(cid)
            world.gate.set()  # A's calls return, its writes go on: all refused
            await eventually(lambda: world.held == 0)  # A's blocked calls and writes ran
            # A's runs may still wait in its process (its clock never moves): closing,
            # A stops them and hands back its leases, which are B's
            await a.close()
            assert (await b.store.load(eid), await b.store.load(cid)) == stored, "A wrote"
            return Outcome(info, child, at_death, True, await others(other, eid, cid))
    finally:
        world.gate.set()
        CURRENT.remove(world)


async def send(flow: Flow, eid: str, sid: str, n: int) -> None:
    """Signal the event of wait ``sid``, unless the execution ended (it may end before
    an early signal, or with the last write of A, under way as A died)."""
    try:
        await flow.signal(eid, f"ev-{sid}", payload(sid, n))
    except InvalidTransitionError:
        assert (await flow.execution(eid)).status.finished
        return


async def others(flow: Flow, eid: str, cid: str) -> list[str]:
    found = await flow.executions()
    return sorted(e.id for e in found if e.id not in (eid, cid))


def show(world: World, out: Outcome | None = None) -> str:
    calls = " ".join(f"{c.who}:{c.what}:{c.name}#{c.attempt}" for c in world.log)
    running = "" if out is None else f"; running at A's death: {out.at_death}"
    return f"{world.case}; calls: {calls}{running}"


def check(world: World, out: Outcome) -> None:
    case, info, child, sub = world.case, out.info, out.child, world.case.sub
    why = show(world, out)
    zombies = set(map(id, world.zombies))
    log = [c for c in world.log if id(c) not in zombies]  # the calls that did something
    assert not out.others, (out.others, why)  # no second child, nothing else started
    # an attempt ran once, or twice: by A and by B, when A died with it RUNNING
    callers: dict[tuple[str, str, int], list[int]] = {}
    for c in world.log:
        if c.what in ("start", "undo"):
            callers.setdefault((c.what, c.name, c.attempt), []).append(c.who)
    for (what, name, attempt), who in callers.items():
        assert sorted(who) in ([0], [1], [0, 1]), (what, name, attempt, why)
        if len(who) == 2:
            phase = Phase.FORWARD if what == "start" else Phase.COMPENSATE
            assert out.at_death.get((name, phase)) == attempt, (what, name, attempt, why)
    for name, attempts in case.needs.items():  # a retry only after a retryable failure
        tried = {c.attempt for c in world.log if c.what == "start" and c.name == name}
        assert tried <= set(range(1, attempts + 1)), (name, tried, why)
    ended = {c.name for c in log if c.what == "end"}
    undone = [c.name for c in log if c.what == "undone"]
    kids = {f"{sub}/c{i}" for i in range(case.kid)}
    if child is not None:
        assert child.id == f"{info.id}:{sub}", why
        assert child.parent_id == info.id, why
    # each wait: the first signal's payload, or its timeout, or given up
    timed_out = set()
    for sid, when in case.signal.items():
        rec = info.steps[sid]
        if rec.status is Status.SUCCESS:
            assert when != "never", why
            assert rec.response is not None, why
            assert rec.response.json() == payload(sid, 1), why
        elif rec.status is Status.FAILURE:
            assert when == "never", (sid, rec.error, why)
            timeout = case.timeouts[sid] * TICK
            assert rec.error == (
                f"StepTimeoutError: step {sid} timed out after {timeout:g}s waiting for ev-{sid}"
            )
            timed_out.add(sid)
        else:
            assert rec.status is Status.PENDING, (sid, rec.status, why)
    failed = {c.name for c in log if c.what == "fail"} | timed_out
    if case.failing is None and "never" not in case.signal.values():
        assert info.status is Status.SUCCESS, (info.error, why)
        assert not failed, why
        for sid, rec in info.steps.items():
            assert rec.status is Status.SUCCESS, (sid, rec.status, why)
        assert ended == {s for s, k in case.kinds.items() if k == "fn"} | (kids if sub else set())
        assert child is not None if sub else child is None, why
        if child is not None:
            assert child.status is Status.SUCCESS, why
            assert info.steps[sub].response == child.response, why  # type: ignore[index]
        assert not undone, why
        return
    assert info.status is Status.FAILURE, (info.error, why)
    assert failed, why
    assert info.compensated, (info.error, why)
    child_failed = bool(failed & kids)
    # what succeeded is undone, once (but the attempt A died in, run again by B)
    expected = {s for s in ended if s in case.undoable} | (ended & kids)
    assert set(undone) == expected, why
    for name in failed:  # what depends on a failed step never starts
        sid = name.partition("/")[0]
        started = {c.name for c in log if c.what == "start"}
        assert not descendants(case.requires, sid) & started, (name, why)
    for sid, rec in info.steps.items():
        if case.kinds[sid] == "fn" and sid in ended:
            want = Status.COMPENSATED if sid in case.undoable else Status.SUCCESS
            assert rec.status is want, (sid, rec.status, why)
    if child is not None:  # rolled back on its own, or as a unit by the parent
        assert child.status in (Status.FAILURE, Status.ABORTED), (child.status, why)
        if child.status is Status.FAILURE:
            assert child_failed, why
        elif failed <= kids:  # it failed alone: its parent had nothing else to abort it for
            assert not child_failed, (child.status, why)
        assert info.steps[sub].status is not Status.SUCCESS, why  # type: ignore[index]
    # the parent's rollback: nothing starts once it began; a step is undone after the
    # steps that depend on it, the child (as a unit, when it did not fail) too
    own = {f"{sub}/c{i}" for i in range(case.kid)} if child_failed else set()
    undos = [i for i, c in enumerate(log) if c.what == "undo" and c.name not in own]
    began = min(undos, default=len(log))
    # but B runs again what was RUNNING when A died (its end not recorded; the child
    # may be rolled back first: see Waiting.cancel)
    again = {name: n for (name, phase), n in out.at_death.items() if phase is Phase.FORWARD}
    late = [c for c in log[began:] if c.what == "start" and again.get(c.name) != c.attempt]
    assert not late, why

    def unit(name: str) -> str:
        return name.partition("/")[0]

    first_undo: dict[str, int] = {}
    last_undone: dict[str, int] = {}
    for i, c in enumerate(log):
        if c.name in own:
            continue
        if c.what == "undo":
            first_undo.setdefault(unit(c.name), i)
        elif c.what == "undone":
            last_undone[unit(c.name)] = i
    for sid, i in first_undo.items():
        for later in descendants(case.requires, sid) & set(last_undone):
            assert last_undone[later] < i, (sid, later, why)
    for k in range(case.kid - 1):  # the child's steps, last first
        a, b = f"{sub}/c{k}", f"{sub}/c{k + 1}"
        if a in undone and b in undone:
            assert undone.index(b) < undone.index(a), why


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_urls(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], contextlib.AbstractAsyncContextManager[str]]]:
    """A new store per example: a SQLite file, or a PostgreSQL schema (in a database
    of the test's: the test skips, or fails under ``CI``, when no server answers)."""
    if request.param == "sqlite":

        @contextlib.asynccontextmanager
        async def sqlite() -> AsyncIterator[str]:
            yield f"sqlite:///{tmp_path / f'waits{next(_names)}.db'}"

        yield sqlite
        return
    from tests.integration.pg import fresh_database, fresh_schema

    async with fresh_database() as url:
        yield lambda: fresh_schema(url)


@settings(FLOW_EXAMPLES, max_examples=40)
@given(cases())
async def test_waits_sleeps_and_children_of_a_dead_worker_end_by_the_rules_on_its_heir(
    store_urls: Callable[[], contextlib.AbstractAsyncContextManager[str]], case: Case
) -> None:
    world = World(case)
    async with store_urls() as url:
        out = await run_with_death(world, url)
    check(world, out)
