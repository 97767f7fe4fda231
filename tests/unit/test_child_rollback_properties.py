"""Property test of compensations that fail around a sub-workflow (hypothesis,
derandomized), on the memory store, SQLite and PostgreSQL: a parent DAG of function
steps (some with a compensation), one SubflowStep whose child is a chain of 1 to 3
steps with compensations, and a step that fails, either once the child succeeded
(``after``), or while the child waits for an event that never comes (``wait``), or
beside a child whose last step is slow (``slow``: either may come first); or no step
fails and the user aborts the parent while its child waits (``abort``; ``pause``:
suspended first). Some compensations (the parent's, the child's, the SubflowStep's
own) fail a few times then succeed; the user resumes the parent until it is
compensated, sometimes resuming the child by hand first (waiting for it or not). The
workers may have one slot, or hold one execution at a time, and the user's calls may
go through a second worker.

What a user would check after each run: the parent ends FAILURE (ABORTED when aborted
and compensated), ``compensated`` when nothing is left to undo, and then its error
names no failed compensation; a step is COMPENSATED once its compensation succeeded,
else still SUCCESS (with its failed compensation recorded); what a failed compensation
does not stop is compensated (independent branches too); the steps a step requires
are compensated after it (the child as a unit: the steps the SubflowStep requires
after the child is undone); a compensation runs at most once per recorded attempt and
never again once it succeeded; nothing that depends on the failed step starts; and
after the last resume everything that succeeded is undone."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from microsaga import (
    Flow,
    FunctionStep,
    InvalidTransitionError,
    Message,
    Retry,
    Status,
    Step,
    StepContext,
    StepError,
    SubflowStep,
    WaitStep,
)
from microsaga.execution import Execution
from tests.helpers import FLOW_EXAMPLES, eventually
from tests.integration.test_takeover_wait_properties import name_of
from tests.unit.test_saga_properties import descendants

MODES = ("after", "wait", "slow", "abort", "pause")
GIVEN_UP = ("wait", "abort", "pause")  # the child runs still when the rollback begins
SUB = "sub"
BAD = "bad"  # the parent's step that fails
GO = "go"  # wait mode: the wait that lets BAD start once the child waits
# before a resume of the parent, the child is resumed by hand: not, or waited for, or
# the parent resumed at once
HANDS = ("no", "no", "wait", "nowait")
SLOW = (0.0, 0.005, 0.03)
BASE = {"poll_interval": 0.05, "lease_ttl": 5.0}
# a worker with few slots: a parent waiting for its child's rollback leaves its place
OPTIONS: tuple[dict[str, int], ...] = ({}, {"concurrency": 1}, {"max_executions": 1})


@dataclass
class Case:
    """The parent's steps (``s0``... function steps, SUB, BAD, GO in wait mode) and
    their ``requires``, the function steps with a compensation, the child's length,
    when BAD fails (``mode``), whether SUB has a compensate of its own, how many times
    each compensation fails before it succeeds (``s1``, ``sub/c0``, ``sub`` for SUB's
    own), and for each resume of the parent whether the child is resumed by hand
    first."""

    requires: dict[str, list[str]]
    undoable: set[str]
    kid: int
    mode: str
    own: bool
    fails: dict[str, int]
    by_hand: list[str]
    delays: tuple[float, float] = (0.0, 0.0)  # slow: of the child's last step, of BAD
    options: int = 0  # the workers' options: OPTIONS[options]
    two: bool = False  # two workers on the store; the user's calls go to the second

    @property
    def kids(self) -> list[str]:
        return [f"{SUB}/c{i}" for i in range(self.kid)]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    mode = draw(st.sampled_from(MODES))
    n = draw(st.integers(min_value=1, max_value=4))
    at = draw(st.integers(min_value=0, max_value=n))  # SUB comes after s0..s{at-1}
    order = [f"s{i}" for i in range(at)] + [SUB] + [f"s{i}" for i in range(at, n)]
    requires: dict[str, list[str]] = {}
    for i, sid in enumerate(order):
        reqs = draw(st.lists(st.sampled_from(order[:i]), max_size=2)) if i else []
        requires[sid] = sorted(set(reqs))
    if mode == "after":
        requires[BAD] = sorted({SUB, *draw(st.lists(st.sampled_from(order), max_size=1))})
    elif mode == "wait":
        requires[GO] = []
        requires[BAD] = [GO]
    elif mode == "slow":  # started with SUB
        requires[BAD] = list(requires[SUB])
    # abort: no step fails, the user aborts the parent while its child waits (pause:
    # suspends it, then aborts it)
    fns = [sid for sid in order if sid != SUB]
    undoable = {sid for sid in fns if draw(st.booleans())}
    kid = draw(st.integers(min_value=1, max_value=3))
    own = draw(st.booleans())
    comps = sorted(undoable) + [f"{SUB}/c{i}" for i in range(kid)] + ([SUB] if own else [])
    fails = {name: draw(st.sampled_from([0, 0, 1, 2])) for name in comps}
    if not any(fails.values()):  # mostly a failing one: that is what is tested
        fails[draw(st.sampled_from(comps))] = draw(st.integers(0, 2))
    resumes = sum(fails.values()) + 1
    by_hand = draw(st.lists(st.sampled_from(HANDS), min_size=resumes, max_size=resumes))
    delays = (0.0, 0.0)
    if mode == "slow":  # either may come first
        delays = (draw(st.sampled_from(SLOW)), draw(st.sampled_from(SLOW)))
    options = draw(st.integers(0, len(OPTIONS) - 1))
    two = draw(st.booleans())
    return Case(requires, undoable, kid, mode, own, fails, by_hand, delays, options, two)


@dataclass(frozen=True)
class Call:
    what: str  # start, end (a forward step), undo, undone, raise (a compensation)
    name: str  # ``s1``, ``sub/c0``, ``sub`` (SUB's own compensate)
    attempt: int


@dataclass
class World:
    case: Case
    log: list[Call] = field(default_factory=list)
    left: dict[str, int] = field(default_factory=dict)  # failures to come
    by_own: bool = False  # SUB undone by its own compensate (it was not given up)


CURRENT: list[World] = []


async def forward(msg: Message, ctx: StepContext) -> dict[str, str]:
    world = CURRENT[-1]
    name = name_of(ctx)
    world.log.append(Call("start", name, ctx.attempt))
    await asyncio.sleep(0)  # let the other branches go on
    if name == BAD:
        await asyncio.sleep(world.case.delays[1])
        raise StepError("declined", retryable=False)
    if name == world.case.kids[-1]:
        await asyncio.sleep(world.case.delays[0])
    world.log.append(Call("end", name, ctx.attempt))
    return {"step": name}


async def undo(msg: Message, ctx: StepContext) -> None:
    world = CURRENT[-1]
    name = name_of(ctx)
    world.log.append(Call("undo", name, ctx.attempt))
    await asyncio.sleep(0)
    if world.left.get(name, 0):
        world.left[name] -= 1
        world.log.append(Call("raise", name, ctx.attempt))
        raise StepError(f"cannot undo {name}")
    world.log.append(Call("undone", name, ctx.attempt))


ONCE = Retry(max_attempts=1)  # a compensation that fails, fails for good at once
_names = itertools.count()


def undo_of(sid: str) -> FunctionStep:
    return FunctionStep(undo, id=f"undo-{sid.replace('/', '-')}", retry=ONCE)


def parent_steps(case: Case, kid: str) -> list[Step]:
    out: list[Step] = []
    for sid, reqs in case.requires.items():
        if sid == SUB:
            own = undo_of(SUB) if case.own else None
            out.append(SubflowStep(kid, id=SUB, requires=reqs, compensate=own))
        elif sid == GO:
            out.append(WaitStep(GO, id=GO))
        else:
            comp = undo_of(sid) if sid in case.undoable else None
            out.append(FunctionStep(forward, id=sid, requires=reqs, compensate=comp))
    return out


def child_steps(case: Case) -> list[Step]:
    out: list[Step] = [
        FunctionStep(
            forward, id=f"c{i}", requires=[f"c{i - 1}"] if i else [], compensate=undo_of(f"c{i}")
        )
        for i in range(case.kid)
    ]
    if case.mode in GIVEN_UP:
        out.append(WaitStep("never", id="never", requires=[f"c{case.kid - 1}"]))
    return out


class Seen:
    """What the log says so far."""

    def __init__(self, case: Case, log: list[Call], by_own: bool) -> None:
        self.case, self.log = case, log
        self.started = {c.name for c in log if c.what == "start"}
        self.ended = {c.name for c in log if c.what == "end"}
        self.undone = {c.name for c in log if c.what == "undone"}
        # SUB compensated by its own compensate (the child stays as it is), else the
        # child's rollback
        self.by_own = by_own

    def needs(self, unit: str) -> bool:
        """Whether a unit (a parent step, SUB for the child, or a child's step) has
        something to undo."""
        if unit == SUB:
            return self.by_own or bool(self.ended & set(self.case.kids))
        if unit.startswith(f"{SUB}/"):
            return unit in self.ended and not self.by_own
        return unit in self.ended and unit in self.case.undoable

    def done(self, unit: str) -> bool:
        """Whether a unit that needs an undo is undone."""
        if unit == SUB and not self.by_own:
            return all(self.done(k) for k in self.case.kids if self.needs(k))
        return unit in self.undone

    def pending(self, unit: str) -> bool:
        return self.needs(unit) and not self.done(unit)

    def after(self, unit: str) -> set[str]:
        """What must be undone before ``unit``: what depends on it (on SUB, for a
        step of the child), and the next step of the child."""
        if unit.startswith(f"{SUB}/"):
            i = int(unit.rpartition("c")[2])
            last = i + 1 == self.case.kid
            return descendants(self.case.requires, SUB) | (set() if last else {f"{SUB}/c{i + 1}"})
        return descendants(self.case.requires, unit)


def describe(world: World) -> str:
    calls = " ".join(f"{c.what}:{c.name}#{c.attempt}" for c in world.log)
    return f"{world.case}; calls: {calls}"


def check_order(world: World) -> None:
    """Over the whole log: forward steps ran once, nothing that depends on BAD, and a
    compensation starts after those of what depends on it, at most once per attempt,
    never after it succeeded, only of a step that succeeded."""
    case, log, why = world.case, world.log, describe(world)
    seen = Seen(case, log, world.by_own)
    starts = [c.name for c in log if c.what == "start"]
    assert len(starts) == len(set(starts)), why
    assert not descendants(case.requires, BAD) & seen.started, why
    attempts = [(c.name, c.attempt) for c in log if c.what == "undo"]
    assert len(attempts) == len(set(attempts)), why
    if case.mode in GIVEN_UP:
        assert not seen.by_own, why  # a child given up is undone by its rollback
    if seen.by_own:
        assert not any(c.name in case.kids for c in log if c.what == "undo"), why
    else:
        assert not any(c.name == SUB for c in log if c.what == "undo"), why
    for i, c in enumerate(log):
        if c.what != "undo":
            continue
        earlier = Seen(case, log[:i], world.by_own)
        assert c.name not in earlier.undone, (c, why)  # never again once it succeeded
        if c.name != SUB:
            assert c.name in earlier.ended, (c, why)
        else:
            assert seen.ended & set(case.kids) == set(case.kids), (c, why)  # the child succeeded
        for later in seen.after(c.name):
            assert not earlier.pending(later), (c, later, why)


def check_run(
    world: World, first: int, info: Execution, child: Execution | None, alone: bool = True
) -> None:
    """After a run of the parent (its calls from ``first`` on in the log; ``alone``:
    and no resume of the child by hand beside it)."""
    case, log, why = world.case, world.log, describe(world)
    seen = Seen(case, log, world.by_own)
    raised = {c.name for c in log[first:] if c.what == "raise"}
    left = [u for u in [*case.requires, *case.kids] if seen.pending(u)]
    assert info.compensated == (not left), (info.error, left, why)
    aborted = case.mode in ("abort", "pause") and info.compensated
    assert info.status is (Status.ABORTED if aborted else Status.FAILURE), (info.error, why)
    if alone:  # else the child resumed by hand beside it may have failed and not it
        assert info.compensated == (not raised), (info.error, why)
    assert child is not None or SUB not in seen.started, why
    # what a failed compensation does not stop is compensated
    units = [s for s in case.requires if s not in (BAD, GO)]
    for unit in units:
        if seen.pending(unit):
            blocked = any(seen.pending(d) for d in seen.after(unit))
            failed = unit in raised or (
                unit == SUB and not seen.by_own and bool(raised & set(case.kids))
            )
            assert blocked or failed, (unit, info.error, why)
    if not seen.by_own:
        for k in case.kids:
            if seen.pending(k):
                assert k in raised or any(seen.pending(d) for d in seen.after(k)), (k, why)
    # statuses
    for sid, rec in info.steps.items():
        if sid == BAD:
            assert rec.status is Status.FAILURE, why
        elif sid == GO:
            assert rec.status in (Status.SUCCESS, Status.PENDING), why
        elif sid == SUB:
            given_up = case.mode in GIVEN_UP
            if given_up or (case.mode == "slow" and rec.status is Status.PENDING):
                assert rec.status is Status.PENDING, (rec.status, why)
            elif seen.needs(SUB):
                want = Status.COMPENSATED if seen.done(SUB) else Status.SUCCESS
                assert rec.status is want, (rec.status, why)
        elif sid not in seen.started:
            assert rec.status is Status.PENDING, (sid, rec.status, why)
            assert rec.compensation is None, (sid, why)
        else:
            want = Status.COMPENSATED if seen.needs(sid) and seen.done(sid) else Status.SUCCESS
            assert rec.status is want, (sid, rec.status, why)
            if sid in raised:
                assert rec.compensation is not None, (sid, why)
                assert rec.compensation.status is Status.FAILURE, (sid, why)
    if seen.pending(SUB) and (SUB in raised or (alone and raised & set(case.kids))):
        comp = info.steps[SUB].compensation
        assert comp is not None, why
        assert comp.status is Status.FAILURE, (comp, why)
    if child is not None:
        check_child(world, child)


def check_child(world: World, child: Execution) -> None:
    case, why = world.case, describe(world)
    seen = Seen(case, world.log, world.by_own)
    assert child.status.finished, (child.status, why)
    if seen.by_own:
        assert child.status is Status.SUCCESS, (child.status, why)
        return
    if child.status is Status.SUCCESS:  # its rollback waits for what depends on SUB
        assert not any(c.name in case.kids for c in world.log if c.what == "undo"), why
        assert any(seen.pending(d) for d in seen.after(SUB)), why
        return
    assert child.status in (Status.FAILURE, Status.ABORTED), (child.status, why)
    undone = not any(seen.pending(k) for k in case.kids)
    assert child.compensated == undone, (child.status, child.error, why)
    for k in case.kids:
        rec = child.steps[k.partition("/")[2]]
        if k not in seen.ended:
            assert rec.status is not Status.SUCCESS, (k, rec.status, why)
        else:
            want = Status.COMPENSATED if seen.done(k) else Status.SUCCESS
            assert rec.status is want, (k, rec.status, why)


async def child_waits(flow: Flow, cid: str) -> bool:
    found = await flow.store.get_execution(cid)
    return found is not None and found.steps["never"].status is Status.WAITING


async def run_case(url: str, world: World) -> None:
    case = world.case
    options = {**BASE, **OPTIONS[case.options]}
    async with contextlib.AsyncExitStack() as stack:
        flow = await stack.enter_async_context(Flow(url, **options))  # type: ignore[arg-type]
        user = flow
        if case.two:
            user = await stack.enter_async_context(Flow(url, **options))  # type: ignore[arg-type]
        await run_on(flow, user, world)


async def run_on(flow: Flow, user: Flow, world: World) -> None:
    """Run the case: saved and started on ``flow``, signalled, aborted, resumed and
    waited for by ``user`` (another worker, or the same)."""
    case = world.case
    world.left = dict(case.fails)
    n = next(_names)
    kid = await flow.workflow_create(f"kid{n}", *child_steps(case))
    await flow.workflow_save(kid)
    wf = await flow.workflow_create(f"parent{n}", *parent_steps(case, f"kid{n}"))
    eid = await wf.execute({}, async_=True)
    cid = f"{eid}:{SUB}"
    if case.mode in GIVEN_UP:
        await eventually(lambda: child_waits(user, cid))
        if case.mode == "wait":
            await user.signal(eid, GO)
        elif case.mode == "abort":
            await user.abort(eid)
        else:  # suspended (its child too), then aborted
            await user.suspend(eid)
            await user.wait(eid, timeout=20)
            await user.abort(eid)
    info = await user.wait(eid, timeout=20)
    world.by_own = case.own and info.steps[SUB].status is not Status.PENDING
    check_order(world)
    check_run(world, 0, info, await user.store.get_execution(cid))
    for by_hand in case.by_hand:
        if info.compensated:
            break
        child = await user.store.get_execution(cid)
        alone = True
        if by_hand != "no" and child is not None and not child.compensated:
            alone = by_hand == "wait"
            event(f"the child resumed by hand ({by_hand})")
            first = len(world.log)
            await user.resume(cid)
            if by_hand == "wait":
                child = await user.wait(cid, timeout=20)
                raised = [c for c in world.log[first:] if c.what == "raise"]
                assert child.compensated == (not raised), describe(world)
                check_child(world, child)
        first = len(world.log)
        await user.resume(eid)
        info = await user.wait(eid, timeout=20)
        check_order(world)
        check_run(world, first, info, await user.store.get_execution(cid), alone)
    why = describe(world)
    assert info.compensated, (info.error, why)
    seen = Seen(case, world.log, world.by_own)
    assert not [u for u in [*case.requires, *case.kids] if seen.pending(u)], why
    event(f"mode {case.mode}, own {world.by_own}")
    event(f"{len([c for c in world.log if c.what == 'raise'])} failed compensations")
    assert "compensation" not in (info.error or ""), (info.error, why)
    with pytest.raises(InvalidTransitionError):  # nothing left to resume
        await user.resume(eid)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_urls(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], contextlib.AbstractAsyncContextManager[str]]]:
    """The store of an example: a new one in memory, else the test's SQLite file or
    PostgreSQL database (each example's workflows and executions have names of their
    own, and every execution of an example ends with it)."""
    url = f"sqlite:///{tmp_path / 'props.db'}"
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgres":
            from tests.integration.pg import fresh_database

            url = await stack.enter_async_context(fresh_database())

        @contextlib.asynccontextmanager
        async def store() -> AsyncIterator[str]:
            yield f"memory://props-{next(_names)}" if request.param == "memory" else url

        yield store


@settings(FLOW_EXAMPLES, max_examples=25)
@given(cases())
async def test_failing_compensations_around_a_child_end_by_the_rules(
    store_urls: Callable[[], contextlib.AbstractAsyncContextManager[str]], case: Case
) -> None:
    world = World(case)
    CURRENT.append(world)
    try:
        async with store_urls() as url:
            await run_case(url, world)
    finally:
        CURRENT.remove(world)


# regressions found by the property test --------------------------------------------


async def test_an_aborted_execution_whose_retried_compensation_succeeds_has_no_stale_error(
    store_urls: Callable[[], contextlib.AbstractAsyncContextManager[str]],
) -> None:
    """An abort whose compensation failed ends FAILURE, its error naming the failed
    compensation; a resume that retries it with success ends ABORTED, compensated, and
    its error no longer names a failed compensation (it kept the first run's)."""
    refused = [1]

    async def hold(msg: Message) -> dict[str, int]:
        return {"held": 1}

    async def let_go(msg: Message) -> None:
        if refused:
            refused.pop()
            raise StepError("cannot let go")

    async with store_urls() as url, Flow(url, **BASE) as flow:  # type: ignore[arg-type]
        wf = await flow.workflow_create(
            f"hold{next(_names)}",
            FunctionStep(hold, id="hold", compensate=FunctionStep(let_go, retry=ONCE)),
            WaitStep("go", requires=["hold"]),
        )
        eid = await wf.execute({}, async_=True)

        async def waits() -> bool:
            return (await flow.execution(eid)).steps["go"].status is Status.WAITING

        await eventually(waits)
        await flow.abort(eid)
        info = await flow.wait(eid, timeout=10)
        assert info.status is Status.FAILURE
        assert not info.compensated
        assert "compensation of hold failed: cannot let go" in (info.error or "")

        await flow.resume(eid)
        info = await flow.wait(eid, timeout=10)
        assert info.status is Status.ABORTED
        assert info.compensated
        assert info.steps["hold"].status is Status.COMPENSATED
        assert "compensation" not in (info.error or ""), info.error


async def test_an_abort_whose_child_rolled_back_first_and_failed_stops_above_it(
    store_urls: Callable[[], contextlib.AbstractAsyncContextManager[str]],
) -> None:
    """An abort of a parent reaches its running child too; when the child's rollback
    ends (failed) before the parent's run looks at it (here: the worker takes the
    child first), the parent still gives the child up, its failed rollback the failed
    compensation of the SubflowStep: what the SubflowStep requires stays SUCCESS, and
    the parent ends FAILURE, not compensated (it took the child for one that failed on
    its own, compensated the rest and ended ABORTED). A resume finishes the job."""
    case = Case({"s0": [], SUB: ["s0"]}, {"s0"}, 1, "abort", False, {"sub/c0": 1}, ["no"])
    world = World(case, left=dict(case.fails))
    CURRENT.append(world)
    try:
        async with store_urls() as url, Flow(url, **BASE) as flow:  # type: ignore[arg-type]
            n = next(_names)
            await flow.workflow_save(await flow.workflow_create(f"kid{n}", *child_steps(case)))
            wf = await flow.workflow_create(f"parent{n}", *parent_steps(case, f"kid{n}"))
            eid = await wf.execute({}, async_=True)
            cid = f"{eid}:{SUB}"

            async def parked(execution_id: str) -> bool:
                info = await flow.store.get_execution(execution_id)
                running = flow._running().runs
                return info is not None and bool(info.note) and execution_id not in running

            await eventually(lambda: parked(cid))
            await eventually(lambda: parked(eid))
            # the worker takes the child's rollback first, the parent's once it ended
            store = flow.store
            real_claim = store.claim
            first: list[str] = [cid]

            async def child_first(
                *args: Any, only: Collection[str] | None = None, **kw: Any
            ) -> Any:
                return await real_claim(*args, only=first if first and only is None else only, **kw)

            store.claim = child_first  # type: ignore[method-assign]
            await flow.abort(eid)

            async def child_ended() -> bool:
                return (await flow.execution(cid)).status.finished

            await eventually(child_ended)
            first.clear()
            flow._running().poke()
            info = await flow.wait(eid, timeout=10)
            assert (await flow.execution(cid)).status is Status.FAILURE
            assert info.status is Status.FAILURE, info.error
            assert not info.compensated
            assert info.steps["s0"].status is Status.SUCCESS
            assert [c.name for c in world.log if c.what == "undo"] == ["sub/c0"]

            await flow.resume(eid)
            info = await flow.wait(eid, timeout=10)
            assert info.status is Status.ABORTED, info.error
            assert info.compensated
            assert info.steps["s0"].status is Status.COMPENSATED
            assert [c.name for c in world.log if c.what == "undo"] == ["sub/c0", "sub/c0", "s0"]
    finally:
        CURRENT.remove(world)
