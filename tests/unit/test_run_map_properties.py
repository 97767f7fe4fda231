"""Property tests of the run loop with the steps the scheduling and limits tests
(test_run_scheduling_properties.py, test_run_limits_properties.py) leave out: maps
over random lists (items failing for good or once, a random map ``concurrency``, a
compensation or not), sub-workflows (a child that succeeds, fails, or outlives its
deadline: the SubflowStep's ``timeout``), steps that exceed their ``timeout`` (retried
or not), 2 to 4 executions at once on a worker of 1 to 3 slots, and the failure
policy "suspend". Hypothesis, derandomized, on memory and SQLite, with
docs/semantics.md as the oracle: every execution ends (bounded by a timeout), steps,
runs and children end as the rules say, each function runs the expected number of
times, never more at once than the worker's slots (nor a map's runs than its
``concurrency``), every step starts with the first decision after it is ready, and a
rollback undoes what succeeded in reverse dependency order, a map's runs last element
first."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    MapStep,
    Message,
    Retry,
    Status,
    StepContext,
    StepError,
    SubflowStep,
)
from microsaga.execution import Execution
from microsaga.step import Step
from tests.helpers import FLOW_EXAMPLES
from tests.unit.test_run_limits_properties import cases as dags
from tests.unit.test_run_limits_properties import slot_flows
from tests.unit.test_run_scheduling_properties import descendants

HANG = 0.05  # a hanging step's timeout: real time, so few such steps
LATE = 0.05  # a late child's deadline (its SubflowStep's timeout)
LATE_STEP = 0.2  # the timeout of the late child's hanging step, past its deadline
ENDS = 20.0  # every execution of an example ends within this (a hang fails it)
NO_RETRY = Retry(max_attempts=1)
AGAIN = Retry(max_attempts=2, initial_interval=0.0, jitter=False)


# what the step functions saw ---------------------------------------------------------


@dataclass
class Trace:
    """What the functions of one example saw, across its executions and their
    children: events ``(execution, event, what)`` in order (``what``: a step ``s1``, a
    map's run ``s2[0]``, a child's step ``s3/c1``), calls, the most functions running
    at once, and per map the most of its runs at once. ``fixed``: the cause of the
    failures is gone (the suspend test)."""

    log: list[tuple[str, str, str]] = field(default_factory=list)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    running: int = 0
    peak: int = 0
    maps: Counter[tuple[str, str]] = field(default_factory=Counter)
    map_peak: Counter[tuple[str, str]] = field(default_factory=Counter)
    fixed: bool = False

    def enter(self, eid: str, what: str) -> int:
        """A function starts: its call number."""
        call = self.calls[eid, what] = self.calls[eid, what] + 1
        self.log.append((eid, "start" if call == 1 else "again", what))
        self.running += 1
        self.peak = max(self.peak, self.running)
        return call

    def leave(self) -> None:
        self.running -= 1

    def events(self, eid: str) -> list[tuple[str, str]]:
        return [(ev, what) for e, ev, what in self.log if e == eid]


TRACE = Trace()  # the current example's: the children's functions are module-level


def where(ctx: StepContext) -> tuple[str, str]:
    """The top execution and the name of what runs: a child's steps are ``<its
    SubflowStep>/<step>``, a child's id being ``<parent>:<SubflowStep>``."""
    if ":" in ctx.execution_id:
        parent, _, sub = ctx.execution_id.partition(":")
        return parent, f"{sub}/{ctx.step_id}"
    return ctx.execution_id, ctx.step_id


async def work(eid: str, what: str, yields: int) -> int:
    """Run as a step function: counted while it runs; its call number."""
    call = TRACE.enter(eid, what)
    try:
        for _ in range(yields):
            await asyncio.sleep(0)  # let the others run
    finally:
        TRACE.leave()
    return call


async def undo_work(eid: str, what: str) -> None:
    TRACE.log.append((eid, "undo", what))
    TRACE.running += 1
    TRACE.peak = max(TRACE.peak, TRACE.running)
    try:
        await asyncio.sleep(0)
    finally:
        TRACE.running -= 1
    TRACE.log.append((eid, "undone", what))


# the child workflows: saved, so module-level functions --------------------------------

NEVER = asyncio.Event  # made per call: never set


async def kid_step(msg: Message, ctx: StepContext) -> dict[str, Any]:
    """A child's step; ``c2`` fails (for good) when the child's request says so, and
    in a late child hangs until its timeout."""
    eid, what = where(ctx)
    conf = ctx.request.json()
    await work(eid, what, conf.get("yields", 1))
    if ctx.step_id == "c2" and conf.get("late"):
        try:
            await NEVER().wait()  # the step's timeout ends it
        except asyncio.CancelledError:
            TRACE.log.append((eid, "timeout", what))
            raise
    if ctx.step_id == "c2" and conf.get("fail") and not TRACE.fixed:
        TRACE.log.append((eid, "fail", what))
        raise StepError("child declined", retryable=False)
    TRACE.log.append((eid, "end", what))
    return {"child": ctx.step_id, "of": what.partition("/")[0]}


async def kid_undo(msg: Message, ctx: StepContext) -> None:
    await undo_work(*where(ctx))


def kid_steps(late: bool) -> list[Step]:
    c1 = FunctionStep(kid_step, id="c1", compensate=FunctionStep(kid_undo, id="u1"))
    c2 = FunctionStep(
        kid_step,
        id="c2",
        requires=["c1"],
        compensate=FunctionStep(kid_undo, id="u2"),
        timeout=LATE_STEP if late else None,
    )
    return [c1, c2]


KIDS = {False: "kid", True: "kid-late"}


# cases --------------------------------------------------------------------------------


@dataclass
class Case:
    """A random workflow run by ``runs`` executions at once on a worker of ``slots``
    slots: each step's ``requires`` and ``kind`` (``fn``, ``map``, ``sub``, ``late``: a
    sub whose child outlives its deadline, ``hang``: exceeds its timeout once),
    whether it has a compensation (a map's: of its runs), its retry (a map's: of its
    runs), a map's ``concurrency``, and each execution's request: per step what it
    does (``fail``; a map's ``items``; a sub's child's request)."""

    slots: int
    requires: dict[str, list[str]]
    kind: dict[str, str]
    undoable: set[str]
    retried: set[str]
    concurrency: dict[str, int | None]
    yields: dict[str, int]
    requests: list[dict[str, Any]]
    suspend: bool = False


@st.composite
def cases(draw: st.DrawFn, failures: bool = False, suspend: bool = False) -> Case:
    base = draw(dags())  # the DAG, slots and yields of the limits test
    ids = list(base.requires)
    kinds = ["fn", "fn", "map", "map", "sub"]
    kind: dict[str, str] = {}
    for sid in ids:
        # few steps that cost real time: one that hangs, one late child, at most
        # a late child cannot be fixed (its deadline passes again): not under "suspend"
        costly = ("hang", "late") if failures and not suspend else ("hang",)
        extra = [k for k in costly if k not in kind.values()]
        kind[sid] = draw(st.sampled_from(kinds + extra))
    undoable = {sid for sid in ids if draw(st.booleans())}
    retried = {sid for sid in ids if kind[sid] in ("map", "hang") and draw(st.booleans())}
    if not failures:  # a step that hangs is then retried, and succeeds
        retried |= {sid for sid in ids if kind[sid] == "hang"}
    concurrency = {sid: draw(st.sampled_from([None, 1, 2, 3])) for sid in ids if kind[sid] == "map"}
    fails = st.booleans() if failures else st.just(False)
    requests = []
    for _ in range(draw(st.integers(min_value=2, max_value=4))):
        request: dict[str, Any] = {}
        for sid in ids:
            if kind[sid] == "fn":
                request[sid] = {"fail": draw(fails) and draw(st.booleans())}
            elif kind[sid] == "map":
                flaky = st.booleans() if sid in retried else st.just(False)
                item = st.fixed_dictionaries(
                    {"fail": st.sampled_from([False, False, False, True]) if failures
                     else st.just(False), "flaky": flaky}
                )  # fmt: skip
                request[sid] = draw(st.lists(item, max_size=6))
            elif kind[sid] in ("sub", "late"):
                late = kind[sid] == "late"
                # not under "suspend": resuming a failed SubflowStep finds its child
                # (its id is fixed) failed again (docs/semantics.md, on_failure)
                fail = not (late or suspend) and draw(fails) and draw(st.booleans())
                request[sid] = {"fail": fail, "late": late, "yields": base.yields[sid]}
        requests.append(request)
    return Case(
        slots=base.slots,
        requires=base.requires,
        kind=kind,
        undoable=undoable,
        retried=retried,
        concurrency=concurrency,
        yields=base.yields,
        requests=requests,
        suspend=suspend,
    )


def failing(case: Case, request: dict[str, Any]) -> set[str]:
    """The steps that fail for good in an execution of ``request``, if they start."""
    out = set()
    for sid, kind in case.kind.items():
        conf = request.get(sid)
        if kind in ("fn", "sub"):
            bad = conf["fail"]
        elif kind == "map":
            bad = any(item["fail"] for item in conf)
        else:  # a late child always fails; a step that hangs, unless retried
            bad = kind == "late" or sid not in case.retried
        if bad:
            out.add(sid)
    return out


# running ------------------------------------------------------------------------------


async def kid_flows(stack: AsyncExitStack, store_url: str, tmp_path: Path) -> dict[int, Flow]:
    """A flow (a worker, a store of its own) for each number of slots, open in
    ``stack``, with the child workflows saved."""
    out = await slot_flows(stack, store_url, tmp_path)
    for flow in out.values():
        for late, name in KIDS.items():
            await flow.workflow_save(await flow.workflow_create(name, *kid_steps(late)))
    return out


@pytest.fixture
async def flows(store_url: str, tmp_path: Path) -> AsyncIterator[dict[int, Flow]]:
    async with AsyncExitStack() as stack:
        yield await kid_flows(stack, store_url, tmp_path)


_names = itertools.count()


def workflow_steps(case: Case) -> list[Step]:
    def fn(sid: str) -> FunctionStep:
        async def forward(msg: Message, ctx: StepContext) -> dict[str, str]:
            eid = ctx.execution_id
            await work(eid, sid, case.yields[sid])
            if ctx.request.json()[sid]["fail"] and not TRACE.fixed:
                TRACE.log.append((eid, "fail", sid))
                raise StepError("x", retryable=False)
            TRACE.log.append((eid, "end", sid))
            return {"step": sid}

        return FunctionStep(forward, id=sid, requires=case.requires[sid], compensate=undo(sid))

    def hang(sid: str) -> FunctionStep:
        async def forward(msg: Message, ctx: StepContext) -> dict[str, str]:
            eid = ctx.execution_id
            call = TRACE.enter(eid, sid)
            try:
                if call == 1 and not TRACE.fixed:  # hangs once: its timeout ends it
                    await NEVER().wait()
            except asyncio.CancelledError:
                TRACE.log.append((eid, "timeout", sid))
                raise
            finally:
                TRACE.leave()
            TRACE.log.append((eid, "end", sid))
            return {"step": sid}

        retry = AGAIN if sid in case.retried else NO_RETRY
        return FunctionStep(
            forward,
            id=sid,
            requires=case.requires[sid],
            timeout=HANG,
            retry=retry,
            compensate=undo(sid),
        )

    def mapped(sid: str) -> MapStep:
        async def item(msg: Message, ctx: StepContext) -> dict[str, Any]:
            eid, rid = ctx.execution_id, ctx.step_id
            key = (eid, sid)
            TRACE.maps[key] += 1
            TRACE.map_peak[key] = max(TRACE.map_peak[key], TRACE.maps[key])
            try:
                call = await work(eid, rid, case.yields[sid])
            finally:
                TRACE.maps[key] -= 1
            conf = msg.json()
            if conf["flaky"] and call == 1:
                TRACE.log.append((eid, "retry", rid))
                raise StepError("busy")  # retryable
            if conf["fail"] and not TRACE.fixed:
                TRACE.log.append((eid, "fail", rid))
                raise StepError("bad item", retryable=False)
            TRACE.log.append((eid, "end", rid))
            return {"item": rid}

        async def unitem(msg: Message, ctx: StepContext) -> None:
            await undo_work(ctx.execution_id, ctx.step_id)

        comp = FunctionStep(unitem, id=f"undo-{sid}") if sid in case.undoable else None
        retry = AGAIN if sid in case.retried else None
        inner = FunctionStep(item, id=f"item-{sid}", retry=retry, compensate=comp)
        over = f"request.{sid}"
        return MapStep(
            inner, over=over, concurrency=case.concurrency[sid], id=sid, requires=case.requires[sid]
        )

    def sub(sid: str) -> SubflowStep:
        late = case.kind[sid] == "late"
        return SubflowStep(
            KIDS[late],
            id=sid,
            requires=case.requires[sid],
            input=f"request.{sid}",
            timeout=LATE if late else None,
            compensate=undo(sid),  # its own: else the child is undone as a unit
        )

    def undo(sid: str) -> FunctionStep | None:
        async def back(msg: Message, ctx: StepContext) -> None:
            await undo_work(ctx.execution_id, sid)

        return FunctionStep(back, id=f"undo-{sid}") if sid in case.undoable else None

    make = {"fn": fn, "hang": hang, "map": mapped, "sub": sub, "late": sub}
    return [make[case.kind[sid]](sid) for sid in case.requires]


async def run(flow: Flow, case: Case) -> list[Execution]:
    """The executions of ``case``, run at once on ``flow``, as they ended."""
    global TRACE
    TRACE = Trace()
    policy = "suspend" if case.suspend else "compensate"
    wf = await flow.workflow_create(f"map{next(_names)}", *workflow_steps(case), on_failure=policy)

    async def one(request: dict[str, Any]) -> str:
        try:
            return await wf.execute(request)
        except ExecutionFailedError as err:
            return err.execution_id

    async with asyncio.timeout(ENDS):  # a hang fails the example, not the suite
        eids = await asyncio.gather(*(one(r) for r in case.requests))
        return [await flow.execution(eid) for eid in eids]


async def children(flow: Flow, case: Case, info: Execution) -> dict[str, Execution]:
    """The children of an execution, once they ended (an aborted child may still run
    when its parent has ended: its parent does not wait for its rollback)."""
    out = {}
    for sid, kind in case.kind.items():
        if kind in ("sub", "late"):
            try:
                out[sid] = await flow.wait(f"{info.id}:{sid}", timeout=ENDS)
            except Exception as exc:  # never started
                if type(exc).__name__ != "ExecutionNotFoundError":
                    raise
    return out


# checks -------------------------------------------------------------------------------

ENDED = (Status.SUCCESS, Status.COMPENSATED)


def body(message: Message | None) -> Any:
    assert message is not None
    return message.json()


def check_prompt(case: Case, info: Execution) -> None:
    """Every step that started was started by the first decision after it was ready,
    as in the limits test (check_prompt there), but with the records' times instead of
    the functions' log: a map ends when its last run's record is committed and a
    sub-workflow when its parent sees its child ended, neither of which a function
    sees. ready(S): the last ``finished_at`` among S's requirements. The loop folds
    the records in the order of their ``finished_at`` (a map's and a child's are set
    when the loop gets them), so a step ready before another is started by the same
    decision or an earlier one, and two ready at once by the same; a decision is told
    by its records' ``started_at`` (one clock reading per decision; never twice the
    same: Ticks)."""
    ran = [sid for sid in case.requires if info.steps[sid].started_at is not None]
    ready: dict[str, float] = {}
    when: dict[str, float] = {}
    for sid in ran:
        ends = []
        for r in case.requires[sid]:
            rec = info.steps[r]
            assert rec.status in ENDED, (sid, r, rec)
            assert rec.finished_at is not None, (sid, r, rec)
            ends.append(rec.finished_at.timestamp())
        ready[sid] = max(ends, default=0.0)
        started = info.steps[sid].started_at
        assert started is not None
        when[sid] = started.timestamp()
    for s in ran:
        for t in ran:
            if ready[s] < ready[t]:
                assert when[s] <= when[t], (s, t, ready, when, case)
            elif ready[s] == ready[t]:
                assert when[s] == when[t], (s, t, ready, when, case)


def compensable(case: Case, sid: str) -> bool:
    """A sub-workflow's step always is: by its own compensation, else its child as a
    unit."""
    return sid in case.undoable or case.kind[sid] in ("sub", "late")


def check_execution(
    case: Case, request: dict[str, Any], info: Execution, kids: dict[str, Execution]
) -> None:
    """One execution that ended (SUCCESS or FAILURE), by the rules."""
    eid = info.id
    log = TRACE.events(eid)
    calls = {what: n for (e, what), n in TRACE.calls.items() if e == eid}
    undos = Counter(what for ev, what in log if ev == "undo")
    bad = failing(case, request)
    failed = {sid for sid in case.requires if info.steps[sid].status is Status.FAILURE}
    rolled_back = bool(bad)
    assert failed <= bad, (failed, bad, log)
    if rolled_back:
        assert info.status is Status.FAILURE, (info.status, info.error, log, case)
        assert failed, (info.steps, log)
        assert info.compensated, info.error
        assert any(f"step {sid} failed" in (info.error or "") for sid in failed), info.error
    else:
        assert info.status is Status.SUCCESS, (info.error, log, case)
    for sid in failed:  # nothing that depends on a failed step was invoked
        for later in descendants(case, sid):
            assert info.steps[later].status is Status.PENDING, (later, log)
            assert not any(w == later or w.startswith((f"{later}[", f"{later}/")) for w in calls)
    # a rollback undoes what succeeded: the steps that succeeded are COMPENSATED when
    # they have a compensation
    for sid, kind in case.kind.items():
        rec = info.steps[sid]
        if rec.status in ENDED:
            assert sid not in bad, (sid, rec)
            undone = rolled_back and compensable(case, sid)
            assert (rec.status is Status.COMPENSATED) is undone, (sid, rec, log)
        else:
            assert rec.status in (Status.FAILURE, Status.PENDING), (sid, rec)
            assert rolled_back
        if kind == "fn":
            assert calls.get(sid, 0) == (0 if rec.status is Status.PENDING else 1), (sid, log)
            if rec.status in ENDED:
                assert body(rec.response) == {"step": sid}
        elif kind == "hang":
            check_hang(case, sid, rec, calls.get(sid, 0), log)
        elif kind == "map":
            check_map(case, request[sid], info, sid, calls, log)
        else:
            check_sub(case, sid, info, kids.get(sid), calls, log)
        if kind != "map" and not (kind in ("sub", "late") and sid not in case.undoable):
            want = int(rec.status is Status.COMPENSATED)
            assert undos[sid] == want, (sid, rec, log)
    if rolled_back:
        check_rollback(case, info, log)


def check_hang(case: Case, sid: str, rec: Any, calls: int, log: list[tuple[str, str]]) -> None:
    """A step past its timeout fails with StepTimeoutError, or is retried when it has
    a retry policy (then it does not hang: it succeeds)."""
    timeouts = log.count(("timeout", sid))
    if rec.status in ENDED:
        assert sid in case.retried
        assert (calls, timeouts, rec.attempts) == (2, 1, 2), (sid, rec, log)
    elif rec.status is Status.FAILURE:
        assert sid not in case.retried
        assert (calls, timeouts, rec.attempts) == (1, 1, 1), (sid, rec, log)
        assert f"step {sid} timed out after {HANG:g}s" in (rec.error or ""), rec
    else:
        assert calls == 0, (sid, log)


def check_map(
    case: Case,
    items: list[dict[str, bool]],
    info: Execution,
    sid: str,
    calls: dict[str, int],
    log: list[tuple[str, str]],
) -> None:
    """A map runs its step once per element (again when it failed retryably), at most
    ``concurrency`` at once; it responds with the responses in element order, or
    fails when a run fails for good (no run starts after that one failed), and its
    runs that succeeded are undone in a rollback, the last element first."""
    rec = info.steps[sid]
    peak = TRACE.map_peak[info.id, sid]
    assert peak <= (case.concurrency[sid] or case.slots), (sid, peak, case)
    ended, undone = [], []
    for i, item in enumerate(items):
        rid = f"{sid}[{i}]"
        run = info.steps.get(rid)
        n = calls.get(rid, 0)
        if n == 0:
            assert run is None, (rid, run)  # never started
            continue
        assert run is not None, rid
        assert n == 1 + item["flaky"], (rid, n, log)
        assert run.attempts == n, (rid, run)
        if ("end", rid) in log:
            ended.append(rid)
            want = Status.COMPENSATED if rec.status is not Status.SUCCESS else Status.SUCCESS
            if sid not in case.undoable:
                want = Status.SUCCESS
            assert run.status is want, (rid, run, rec)
        else:
            assert item["fail"], (rid, log)
            assert ("fail", rid) in log, (rid, log)
            assert run.status is Status.FAILURE, (rid, run)
    if rec.status in ENDED:
        assert len(ended) == len(items), (sid, ended, log)
        assert body(rec.response) == [{"item": rid} for rid in ended], rec
    elif rec.status is Status.FAILURE:
        assert any(item["fail"] for item in items)
        assert rec.error is not None, rec
        assert "run " in rec.error, rec
        assert "failed" in rec.error, rec
        # one run failing starts no other: every run was recorded started before the
        # first failed. Not "invoked before": as a step does, a run started while the
        # worker's slots were all taken waits for one, and runs after the failure
        runs = [info.steps[f"{sid}[{i}]"] for i in range(len(items)) if f"{sid}[{i}]" in calls]
        ends = [r.finished_at for r in runs if r.status is Status.FAILURE]
        first = min(end for end in ends if end is not None)
        late = [r.step_id for r in runs if r.started_at is None or r.started_at > first]
        assert not late, (sid, late, runs, log)
    else:
        assert not ended, (sid, log)
        assert not any(w.startswith(f"{sid}[") for w in calls), (sid, log)
    undone = [w for ev, w in log if ev == "undo" and w.startswith(f"{sid}[")]
    if sid in case.undoable and info.status is Status.FAILURE:
        # the last element first: the runs' indexes going down
        order = sorted(ended, key=lambda w: int(w[len(sid) + 1 : -1]), reverse=True)
        assert undone == order, (sid, undone, log)
    else:
        assert not undone, (sid, log)


def check_sub(
    case: Case,
    sid: str,
    info: Execution,
    child: Execution | None,
    calls: dict[str, int],
    log: list[tuple[str, str]],
) -> None:
    """A child execution runs once, with the step's input; the step succeeds with its
    response, or fails once the child rolled itself back; a child whose parent rolls
    back is undone as a unit (ABORTED) unless the step has a compensation of its own;
    a child whose parent gave up waiting for it is aborted. Whatever happens, a child
    that did not succeed for its parent has undone all it did."""
    rec = info.steps[sid]
    mine = {w: n for w, n in calls.items() if w.startswith(f"{sid}/")}
    assert all(n == 1 for n in mine.values()), (sid, mine)
    if child is None:
        assert rec.status is Status.PENDING, (sid, rec, mine)
        assert not mine, (sid, rec, mine)
        return
    assert child.parent_id == info.id
    ended = [w for ev, w in log if ev == "end" and w.startswith(f"{sid}/")]
    undone = [w for ev, w in log if ev == "undo" and w.startswith(f"{sid}/")]
    if child.status is Status.SUCCESS:
        # it succeeded for its parent: never undone, unless by the step's own
        # compensation
        assert rec.status in ENDED, (sid, rec, child)
        assert rec.status is Status.SUCCESS or sid in case.undoable, (sid, rec, child)
        assert body(rec.response) == body(child.response)
        assert ended == [f"{sid}/c1", f"{sid}/c2"], (sid, log)
        assert not undone, (sid, log)
        return
    assert child.status in (Status.FAILURE, Status.ABORTED), (sid, child.status)
    assert child.compensated, child.error
    # what the child did is undone, the last first
    assert undone == ended[::-1], (sid, ended, undone, log)
    if rec.status is Status.COMPENSATED:  # undone with its parent, as a unit
        assert sid not in case.undoable, (sid, child)
        assert child.status is Status.ABORTED, (sid, child)
        assert ended == [f"{sid}/c1", f"{sid}/c2"], (sid, log)
    elif rec.status is Status.FAILURE:
        assert f"child execution {info.id}:{sid} ended" in (rec.error or ""), rec
        want = Status.ABORTED if case.kind[sid] == "late" else Status.FAILURE
        if case.kind[sid] == "late":
            # its deadline passed while its step hung: aborted; or, on a machine so
            # slow that the deadline's timer fired after that step's timeout, failed
            assert child.status in (Status.ABORTED, Status.FAILURE), child
        else:
            assert child.status is want, child
    else:  # given up by its parent's rollback while it ran
        assert rec.status is Status.PENDING, rec
        assert info.status is Status.FAILURE


def check_rollback(case: Case, info: Execution, log: list[tuple[str, str]]) -> None:
    """The rollback starts once no forward step of the execution runs (its children
    may still: an aborted child rolls back on its own), and undoes a step after every
    step depending on it."""

    def of(sid: str, what: str) -> bool:
        rec = info.steps[sid]
        if rec.status is not Status.COMPENSATED and not (
            case.kind[sid] == "map" and rec.status is Status.FAILURE
        ):
            return False
        if case.kind[sid] == "map":
            return what.startswith(f"{sid}[")
        if case.kind[sid] in ("sub", "late") and sid not in case.undoable:
            return what.startswith(f"{sid}/")  # the child, undone as a unit
        return what == sid

    spans: dict[str, tuple[int, int]] = {}
    for sid in case.requires:
        at = [i for i, (ev, w) in enumerate(log) if ev in ("undo", "undone") and of(sid, w)]
        if at:
            spans[sid] = (min(at), max(at))
    if not spans:
        return
    first = min(start for start, _ in spans.values())
    forward = [(ev, w) for ev, w in log[first:] if ev not in ("undo", "undone") and "/" not in w]
    assert not forward, (forward, log)
    for sid, (start, _) in spans.items():
        for later in descendants(case, sid):
            if later in spans:
                assert spans[later][1] < start, (sid, later, log)


# the tests ----------------------------------------------------------------------------

settings_ = settings(
    FLOW_EXAMPLES,
    suppress_health_check=[*FLOW_EXAMPLES.suppress_health_check, HealthCheck.too_slow],
)


async def check_all(flow: Flow, case: Case, infos: list[Execution]) -> None:
    assert TRACE.peak <= case.slots, (TRACE.peak, case)
    for request, info in zip(case.requests, infos, strict=True):
        kids = await children(flow, case, info)
        check_execution(case, request, info, kids)
        check_prompt(case, info)


@settings(settings_, max_examples=30)
@given(cases())
async def test_maps_children_and_timeouts_at_once_succeed_by_the_rules(
    flows: dict[int, Flow], case: Case
) -> None:
    flow = flows[case.slots]
    infos = await run(flow, case)
    await check_all(flow, case, infos)


@settings(settings_, max_examples=40)
@given(cases(failures=True))
async def test_maps_children_and_timeouts_at_once_fail_and_roll_back_by_the_rules(
    flows: dict[int, Flow], case: Case
) -> None:
    flow = flows[case.slots]
    infos = await run(flow, case)
    await check_all(flow, case, infos)


@settings(settings_, max_examples=15)
@given(cases(failures=True, suspend=True), st.booleans())
async def test_under_the_suspend_policy_a_failure_waits_until_fixed_and_resumed(
    flows: dict[int, Flow], case: Case, redrive: bool
) -> None:
    """A step failing for good leaves the execution SUSPEND, the step FAILURE, nothing
    compensated; once the cause is gone, resume (or redrive) tries the failed steps
    again and the execution finishes, the finished steps not run again."""
    await fails_then_resumed(flows[case.slots], case, redrive)


async def fails_then_resumed(flow: Flow, case: Case, redrive: bool) -> None:
    """The suspend policy's case run on ``flow``, resumed (or redriven), and checked."""
    infos = await run(flow, case)
    first: dict[str, set[str]] = {}
    for request, info in zip(case.requests, infos, strict=True):
        bad = failing(case, request)
        if not bad:
            assert info.status is Status.SUCCESS, (info.error, case)
            continue
        assert info.status is Status.SUSPEND, (info.status, info.error, case)
        failed = {sid for sid in case.requires if info.steps[sid].status is Status.FAILURE}
        assert failed, info.steps
        assert failed <= bad, (failed, bad)
        assert any(f"step {sid} failed" in (info.error or "") for sid in failed), info.error
        # nothing compensated (a failed child rolled itself back: its own rollback)
        undone = [w for ev, w in TRACE.events(info.id) if ev == "undo" and "/" not in w]
        assert not undone, undone
        first[info.id] = failed
    TRACE.fixed = True
    for eid in first:
        await (flow.redrive(eid) if redrive else flow.resume(eid))
    async with asyncio.timeout(ENDS):
        done = [await flow.wait(eid) for eid in first]
    for info in done:
        assert info.status is Status.SUCCESS, (info.error, info.steps, case)
        for sid, kind in case.kind.items():
            assert info.steps[sid].status is Status.SUCCESS, (sid, info.steps[sid])
            if kind == "fn":  # tried again only when it failed
                want = 1 + (sid in first[info.id])
                assert TRACE.calls[info.id, sid] == want, (sid, TRACE.log)
