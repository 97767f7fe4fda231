"""Property tests of suspend, resume and abort on random DAGs (hypothesis, derandomized:
the same examples every run), on memory and SQLite (PostgreSQL: in
tests/integration/test_postgres_properties.py), as docs/semantics.md has them: an
execution started without waiting is stopped at a random point (the k-th call of a
step function, that step maybe still running) by a random sequence of requests, with
WaitSteps among the steps released by signals sent at random points. Whatever the
shape and the moment: no step starts while the execution is suspended or once it is
aborted; resumed, it ends as an undisturbed run would, each step run once and no
signal lost; aborted, exactly the steps that succeeded and have a compensation are
compensated (none without compensation), each after the steps depending on it; and
every execution ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from microsaga import (
    Flow,
    FunctionStep,
    InvalidTransitionError,
    Message,
    Status,
    Step,
    WaitStep,
)
from tests.helpers import FLOW_EXAMPLES, logged_undo
from tests.unit.test_run_scheduling_properties import Case, cases, descendants, skipped

T = TypeVar("T")

# the requests applied once the k-th step function was called, in order: a first one,
# and after a suspend, what follows it
FIRST = ["suspend", "abort_nocomp", "abort"]
AFTER_SUSPEND = [  # hypothesis draws the first ones more often
    ("resume",),
    ("abort_nocomp",),
    ("abort",),
    ("suspend", "resume"),  # a suspend of a suspended execution: a no-op
    ("resume", "abort"),
]
BOUND = 10.0  # seconds: an execution or a wait that takes longer hangs


@dataclass
class Scenario:
    """A random saga (``case``; ``waits``: its steps that are WaitSteps), the requests
    (``ops``), the call of a step function after which they come (``k``, 0: at once),
    whether that call lasts until the first request was made (``hold``), whether the
    test waits for the run to stop after a suspend (``settle``), and when the signal
    of each WaitStep is sent: ``early`` (right after the start), ``trigger`` (after
    the k-th call), ``suspended``, ``resumed``, or ``never``."""

    case: Case
    waits: set[str]
    ops: tuple[str, ...]
    k: int
    hold: bool
    settle: bool
    signal_at: dict[str, str]


def called_first(case: Case, waits: set[str], signal_at: dict[str, str]) -> list[str]:
    """The step functions called whatever happens before the first request: those
    that run and depend on no WaitStep whose signal comes later."""
    off, blocked = skipped(case), set()
    for sid, reqs in case.requires.items():  # earlier steps first
        # a step is started or skipped once the steps it requires ended: after a wait
        # whose signal comes later, neither until then
        if any(r in blocked for r in reqs) or (
            sid in waits and sid not in off and signal_at[sid] != "early"
        ):
            blocked.add(sid)
    return [s for s in case.requires if s not in off | waits | blocked]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    case = draw(cases())
    ids = sorted(case.requires)
    waits = set(draw(st.lists(st.sampled_from(ids), max_size=2)))
    case.undoable = set(draw(st.lists(st.sampled_from(ids))))
    ops: tuple[str, ...] = (draw(st.sampled_from(FIRST)),)
    if ops == ("suspend",):
        ops += draw(st.sampled_from(AFTER_SUSPEND))
    points = ["early", "trigger"]
    if ops[0] == "suspend":
        points.append("suspended")
    points.append("resumed" if "resume" in ops else "never")
    signal_at = {w: draw(st.sampled_from(points)) for w in sorted(waits)}
    k = draw(st.integers(min_value=0, max_value=len(called_first(case, waits, signal_at))))
    hold = k > 0 and draw(st.booleans())
    return Scenario(case, waits, ops, k, hold, draw(st.booleans()), signal_at)


_BASE = time.time() - time.monotonic()


def monotonic_flow(url: str) -> Flow:
    """A flow whose clock never goes back: the steps' ``started_at`` order them
    against the requests (a wall clock may step back)."""
    return Flow(url, poll_interval=0.05, lease_ttl=5.0, clock=lambda: _BASE + time.monotonic())


@pytest.fixture
async def mflow(store_url: str) -> AsyncIterator[Flow]:
    async with monotonic_flow(store_url) as f:
        yield f


async def bounded(what: str, aw: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(aw, BOUND)
    except TimeoutError:
        raise AssertionError(f"hangs: {what}") from None


_names = iter(range(10**9))


@settings(FLOW_EXAMPLES, max_examples=300)
@given(scenarios())
async def test_requests_stop_resume_and_roll_back_as_documented(mflow: Flow, sc: Scenario) -> None:
    await run_scenario(mflow, sc)


async def run_scenario(flow: Flow, sc: Scenario) -> None:
    """Runs the scenario's saga on ``flow``, makes its requests and sends its signals,
    and checks the outcome."""
    case, waits = sc.case, sc.waits
    log: list[tuple[str, str]] = []
    reached, go = asyncio.Event(), asyncio.Event()
    calls = 0

    def step(sid: str) -> Step:
        async def forward(msg: Message) -> dict[str, str]:
            nonlocal calls
            log.append(("start", sid))
            calls += 1
            if calls == sc.k:
                reached.set()
                if sc.hold:  # still running when the first request comes
                    await go.wait()
            for _ in range(case.yields[sid]):
                await asyncio.sleep(0)
            log.append(("end", sid))
            return {"step": sid}

        options: dict[str, Any] = {
            "id": sid,
            "requires": case.requires[sid],
            "when": f"request.{sid}" if sid in case.when else None,
            "compensate": logged_undo(log, sid) if sid in case.undoable else None,
        }
        if sid in waits:
            return WaitStep(f"ev-{sid}", **options)
        return FunctionStep(forward, **options)

    wf = await flow.workflow_create(f"ctl{next(_names)}", *(step(s) for s in case.requires))
    eid = await wf.execute(dict(case.when), async_=True)
    sent: set[str] = set()

    async def send(point: str) -> None:
        for w in sorted(waits):
            if sc.signal_at[w] == point:
                try:
                    await flow.signal(eid, f"ev-{w}", {"w": w})
                except InvalidTransitionError:  # it ended without it: skipped, or aborted
                    assert (await flow.execution(eid)).status.finished, sc
                    continue
                sent.add(w)

    # the requests, each with the flow's clock when it was made and acknowledged
    done: list[tuple[str, float, float]] = []
    late = None
    try:
        await send("early")
        if sc.k:
            await bounded(f"call {sc.k} of a step function: {log} in {sc}", reached.wait())
        await send("trigger")
        for op in sc.ops:
            before = flow.clock()
            try:
                if op == "suspend":
                    await flow.suspend(eid)
                elif op == "resume":
                    await flow.resume(eid)
                else:
                    await flow.abort(eid, compensate=op == "abort")
            except InvalidTransitionError:  # finished first: no request may follow
                assert (await flow.execution(eid)).status is Status.SUCCESS, (op, log, sc)
                break
            done.append((op, before, flow.clock()))
            if op != "resume":
                late = len(log)  # a step function called from here on ran after a stop
            go.set()
            if op == "suspend" and len(done) == 1:
                if sc.settle:  # its running steps finished and were recorded
                    await bounded(f"settle after suspend: {log} in {sc}", flow.settle(eid))
                    info = await flow.execution(eid)
                    assert info.status is Status.SUSPEND, (info.status, log, sc)
                    running = [s for s, r in info.steps.items() if r.status is Status.RUNNING]
                    assert not running, (running, log, sc)
                await send("suspended")
                if sc.settle:  # kept, not taken: it counts once resumed
                    info = await flow.execution(eid)
                    assert info.status is Status.SUSPEND, (info.status, log, sc)
                    for w in waits & sent:
                        assert info.steps[w].status is not Status.SUCCESS or (
                            sc.signal_at[w] != "suspended"
                        ), (w, log, sc)
            if op == "resume":
                await send("resumed")
    finally:
        go.set()
    try:
        info = await flow.wait(eid, timeout=BOUND)
    except TimeoutError:
        raise AssertionError(f"hangs: {await flow.execution(eid)} {log} in {sc}") from None
    called_late = late is not None and any(ev == "start" for ev, _ in log[late:])
    event(f"{'+'.join(op for op, _, _ in done) or 'ended first'}: {info.status.name}")
    event(f"a step function called after a suspend or abort: {called_late}")
    check(sc, info.status, info.steps, log, done, sent)


def check(
    sc: Scenario,
    status: Status,
    steps: dict[str, Any],
    log: list[tuple[str, str]],
    done: list[tuple[str, float, float]],
    sent: set[str],
) -> None:
    case, waits = sc.case, sc.waits
    what = f"{status}: {log} with {done} in {sc}"
    at = {(ev, sid): i for i, (ev, sid) in enumerate(log)}
    started = [sid for ev, sid in log if ev == "start"]
    assert len(started) == len(set(started)), f"a step ran twice: {what}"
    off = skipped(case)
    ops = [op for op, _, _ in done]
    aborted = next((op for op in ops if op.startswith("abort")), None)

    # no step starts while suspended (from the suspend's acknowledgement to the
    # resume's request) or once aborted; running steps finish and are recorded
    stops: list[tuple[float, float]] = []
    since = None
    for op, before, acked in done:
        if op in ("suspend", "abort", "abort_nocomp") and since is None:
            since = acked
        elif op == "resume" and since is not None:
            stops.append((since, before))
            since = None
    if since is not None:
        stops.append((since, float("inf")))
    for sid, rec in steps.items():
        if rec.started_at is None:
            continue
        t = rec.started_at.timestamp()
        for lo, hi in stops:
            assert not lo < t < hi, f"{sid} started at {t}, in ({lo}, {hi}): {what}"

    ran = {s for s in case.requires if ("end", s) in at}
    ran |= {w for w in waits if steps[w].status in (Status.SUCCESS, Status.COMPENSATED)}
    undone = {sid for ev, sid in log if ev == "undo"}
    if aborted is None:  # never stopped, or resumed: as an undisturbed run
        assert status is Status.SUCCESS, what
        assert not undone, what
        for sid in case.requires:
            expected = Status.SKIPPED if sid in off else Status.SUCCESS
            assert steps[sid].status is expected, f"{sid}: {what}"
            assert (sid in ran) is (sid not in off), f"{sid}: {what}"
        for w in waits - off:  # its signal, wherever it was sent, was not lost
            assert w in sent, what
            assert steps[w].response.json() == {"w": w}, f"{w}: {what}"
        return

    assert status is Status.ABORTED, what
    if aborted == "abort":
        assert undone == ran & case.undoable, what
    else:
        assert not undone, what
    for sid in case.requires:
        got = steps[sid].status
        if sid in ran:
            assert got is (Status.COMPENSATED if sid in undone else Status.SUCCESS), (sid, what)
        else:  # skipped by the rules, or never reached (a wait given up: PENDING)
            assert got in (Status.SKIPPED, Status.PENDING), (sid, what)
            assert got is not Status.SKIPPED or sid in off, (sid, what)
    # the rollback starts once no forward step runs, and undoes a step after every step
    # that depends on it
    if undone:
        first_undo = min(at["undo", sid] for sid in undone)
        assert all(ev in ("undo", "undone") for ev, _ in log[first_undo:]), what
    for sid in undone:
        for later in descendants(case, sid) & undone:
            assert at["undone", later] < at["undo", sid], (sid, later, what)
