"""Property tests of the run loop where the scheduling test
(test_run_scheduling_properties.py) does not go: a worker with 1, 2 or 3 slots under
fan-outs wider than that (started steps queue for a task of their own: Run._queued),
steps retried, steps saved by their fallback or failing with it, compensations that
fail. Hypothesis, derandomized, on memory and SQLite. Whatever the shape and the
interleaving: the execution ends (bounded by a timeout) with the rules' statuses,
every step runs once (and once per retry), never more step functions at once than
slots, every step is started by the first decision after it is ready, and a failure
lets the steps already started run, starts no other, then undoes in reverse order."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microsaga import ExecutionFailedError, Flow, FunctionStep, Message, Retry, Status, StepError
from microsaga.execution import Execution
from tests.helpers import FLOW_EXAMPLES
from tests.integration.pg import fresh_schema
from tests.unit.test_run_scheduling_properties import descendants

SLOTS = (1, 2, 3)


class Ticks:
    """The flows' clock: the time, but never the same value twice (100 us apart at
    least), so that a step's ``started_at`` names the decision that started it (one
    ``now`` per decision)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self) -> float:
        self.last = max(time.time(), self.last + 1e-4)
        return self.last


async def slot_flows(stack: AsyncExitStack, store_url: str, tmp_path: Path) -> dict[int, Flow]:
    """A flow (a worker, a store of its own) for each number of slots, open in ``stack``:
    on SQLite a file each, on PostgreSQL (a database's URL) a schema each."""
    out = {}
    for n in SLOTS:
        if store_url.startswith("postgresql:"):
            url = await stack.enter_async_context(fresh_schema(store_url))
        elif store_url.startswith("sqlite:"):
            url = f"sqlite:///{tmp_path / f'{n}.db'}"
        else:
            url = store_url
        flow = Flow(url, concurrency=n, poll_interval=0.05, lease_ttl=5.0, clock=Ticks())
        out[n] = await stack.enter_async_context(flow)
    return out


@pytest.fixture
async def flows(store_url: str, tmp_path: Path) -> AsyncIterator[dict[int, Flow]]:
    async with AsyncExitStack() as stack:
        yield await slot_flows(stack, store_url, tmp_path)


@dataclass
class Case:
    """A random saga on a worker of ``slots`` slots: ``requires`` of each step (earlier
    ones), how often each step yields to the loop, how many times each fails (retryably)
    before it succeeds, the steps that fail for good, those of them with a fallback
    (True: it answers, False: it fails too), the steps with a compensation and those
    whose compensation fails."""

    slots: int
    requires: dict[str, list[str]]
    yields: dict[str, int]
    retries: dict[str, int]
    delay: float  # the retries' wait
    failing: set[str] = field(default_factory=set)
    fallback: dict[str, bool] = field(default_factory=dict)
    undoable: set[str] = field(default_factory=set)
    undo_fails: set[str] = field(default_factory=set)


@st.composite
def cases(draw: st.DrawFn, failures: bool = False) -> Case:
    n = draw(st.integers(min_value=2, max_value=10))
    requires: dict[str, list[str]] = {}
    for i in range(n):
        shape = draw(st.sampled_from(["root", "chain", "fan", "fan", "fan", "join"]))
        if i == 0 or shape == "root":
            reqs: list[int] = []
        elif shape == "chain":
            reqs = [i - 1]
        elif shape == "fan":  # mostly on the first steps: fan-outs wider than the slots
            reqs = [draw(st.integers(min_value=0, max_value=min(i - 1, 1)))]
        else:
            ints = st.integers(min_value=0, max_value=i - 1)
            reqs = draw(st.lists(ints, min_size=2, max_size=3))
        requires[f"s{i}"] = sorted({f"s{r}" for r in reqs})
    ids = list(requires)
    case = Case(
        slots=draw(st.sampled_from(SLOTS)),
        requires=requires,
        yields={sid: draw(st.integers(min_value=0, max_value=3)) for sid in ids},
        retries={sid: draw(st.sampled_from([0, 0, 0, 1, 2])) for sid in ids},
        delay=draw(st.sampled_from([0.0, 0.001])),
    )
    if failures:
        case.failing = set(draw(st.lists(st.sampled_from(ids), min_size=1, max_size=2)))
        case.fallback = {
            sid: ok
            for sid in sorted(case.failing)
            if (ok := draw(st.sampled_from([None, True, False]))) is not None
        }
        case.undoable = set(draw(st.lists(st.sampled_from(ids))))
        case.undo_fails = (
            set(draw(st.lists(st.sampled_from(sorted(case.undoable)), max_size=1)))
            if case.undoable
            else set()
        )
    return case


_names = itertools.count()


@dataclass
class Trace:
    """What the step functions saw: events in order, calls per step, the most step
    functions (forward, fallback, compensation) running at once."""

    log: list[tuple[str, str]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    running: int = 0
    peak: int = 0

    def enter(self) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        self.running -= 1


async def run(flow: Flow, case: Case) -> tuple[Execution, Trace]:
    trace = Trace()
    log = trace.log

    def step(sid: str) -> FunctionStep:
        async def forward(msg: Message) -> dict[str, str]:
            call = trace.calls[sid] = trace.calls.get(sid, 0) + 1
            log.append(("start" if call == 1 else "again", sid))
            trace.enter()
            try:
                for _ in range(case.yields[sid]):
                    await asyncio.sleep(0)
            finally:
                trace.leave()
            if call <= case.retries[sid]:
                log.append(("retry", sid))
                raise StepError("busy")  # retryable
            if sid in case.failing:
                log.append(("fell" if sid in case.fallback else "fail", sid))
                raise StepError("x", retryable=False)
            log.append(("end", sid))
            return {"step": sid}

        async def fallback(msg: Message) -> dict[str, str]:
            log.append(("fallback", sid))
            trace.enter()
            try:
                await asyncio.sleep(0)
            finally:
                trace.leave()
            if not case.fallback[sid]:
                log.append(("fail", sid))
                raise StepError("y", retryable=False)
            log.append(("end", sid))
            return {"fallback": sid}

        async def undo(msg: Message) -> None:
            log.append(("undo", sid))
            trace.enter()
            try:
                await asyncio.sleep(0)
            finally:
                trace.leave()
            if sid in case.undo_fails:
                log.append(("undo-failed", sid))
                raise StepError("z", retryable=False)
            log.append(("undone", sid))

        comp = FunctionStep(undo, id=f"undo-{sid}") if sid in case.undoable else None
        fb = FunctionStep(fallback, id=f"fb-{sid}") if sid in case.fallback else None
        retry = Retry(max_attempts=case.retries[sid] + 1, initial_interval=case.delay, jitter=False)
        return FunctionStep(
            forward, id=sid, requires=case.requires[sid], retry=retry, fallback=fb, compensate=comp
        )

    wf = await flow.workflow_create(f"lim{next(_names)}", *(step(s) for s in case.requires))
    async with asyncio.timeout(10):  # a hang fails the example instead of the suite
        try:
            eid = await wf.execute({})
        except ExecutionFailedError as err:
            eid = err.execution_id
    return await flow.execution(eid), trace


def check_prompt(case: Case, info: Execution, log: list[tuple[str, str]]) -> None:
    """Every step that started was started by the first decision after it was ready,
    slots or not (a step waiting for a slot is recorded RUNNING by that decision).

    ready(S): the log position of the last end among S's requirements (-1 for a root).
    The loop folds every attempt that ended so far (in the order of their ends: the
    log's), so a step ready before another is started by the same decision or an
    earlier one, and two ready at the same point by the same; a decision is told by
    its records' ``started_at`` (one per decision: the flows' clock never repeats)."""
    at = {(ev, sid): i for i, (ev, sid) in enumerate(log)}
    ran = [sid for sid in case.requires if ("start", sid) in at]
    ready = {sid: max((at["end", r] for r in case.requires[sid]), default=-1) for sid in ran}
    when = {sid: info.steps[sid].started_at for sid in ran}
    for s in ran:
        for t in ran:
            before, after = when[s], when[t]
            assert before is not None
            assert after is not None
            if ready[s] < ready[t]:
                assert before <= after, (s, t, ready, when, log, case)
            elif ready[s] == ready[t]:
                assert before == after, (s, t, ready, when, log, case)


def check_runs(case: Case, info: Execution, trace: Trace) -> None:
    """Each step that started ran once, plus once per retry, with as many attempts
    recorded; never more step functions at once than slots."""
    assert trace.peak <= case.slots, (trace.peak, case)
    for sid, calls in trace.calls.items():  # a failure elsewhere stops no retry
        assert calls == case.retries[sid] + 1, (sid, calls, trace.log, case)
        assert info.steps[sid].attempts == calls, (sid, info.steps[sid], case)
    for sid in case.requires:
        # recorded started (RUNNING at some point) if and only if invoked: a step
        # waiting for a slot when another failed still runs before the rollback
        assert (info.steps[sid].started_at is not None) is (sid in trace.calls), (sid, trace.log)
        assert info.steps[sid].status is not Status.RUNNING


def expected_undone(case: Case, succeeded: set[str]) -> tuple[set[str], set[str]]:
    """The compensations that run, and those that succeed: a step's runs once every step
    depending on it has nothing left to undo (a failed compensation stays to undo)."""
    order = list(case.requires)  # requirements come first
    settled: dict[str, bool] = {}
    ran: set[str] = set()
    for sid in reversed(order):
        deps = all(settled[d] for d in descendants_direct(case, sid))
        needs = sid in succeeded and sid in case.undoable
        if needs and deps:
            ran.add(sid)
        settled[sid] = deps and (not needs or sid not in case.undo_fails)
    return ran, ran - case.undo_fails


def descendants_direct(case: Case, sid: str) -> list[str]:
    return [s for s, reqs in case.requires.items() if sid in reqs]


@settings(FLOW_EXAMPLES, max_examples=80)
@given(cases())
async def test_slots_and_retries_keep_every_step_prompt_and_run_once(
    flows: dict[int, Flow], case: Case
) -> None:
    info, trace = await run(flows[case.slots], case)
    assert info.status is Status.SUCCESS, (info.error, trace.log)
    for sid in case.requires:
        assert info.steps[sid].status is Status.SUCCESS, (sid, trace.log)
    check_runs(case, info, trace)
    check_prompt(case, info, trace.log)


@settings(FLOW_EXAMPLES, max_examples=80)
@given(cases(failures=True))
async def test_with_slots_a_failure_runs_the_started_steps_then_undoes_in_reverse(
    flows: dict[int, Flow], case: Case
) -> None:
    info, trace = await run(flows[case.slots], case)
    log = trace.log
    at = {(ev, sid): i for i, (ev, sid) in enumerate(log)}
    failed = {sid for ev, sid in log if ev == "fail"}
    succeeded = {sid for ev, sid in log if ev == "end"}
    check_runs(case, info, trace)
    for sid in case.fallback:
        if sid in succeeded:
            assert info.steps[sid].status in (Status.SUCCESS, Status.COMPENSATED)
            assert info.steps[sid].error == f"x (fallback fb-{sid} used)", info.steps[sid]
    if not failed:  # every failing step was saved by its fallback
        assert info.status is Status.SUCCESS, (info.error, log)
        assert all(info.steps[s].status is Status.SUCCESS for s in case.requires), log
        assert not any(ev == "undo" for ev, _ in log)
        check_prompt(case, info, log)
        return
    first_fail = min(at["fail", sid] for sid in failed)
    check_prompt(case, info, log[:first_fail])
    assert info.status is Status.FAILURE, log
    assert info.error is not None
    assert any(f"step {sid} failed" in info.error for sid in failed), info.error
    for sid in failed:
        assert info.steps[sid].status is Status.FAILURE
        assert not {s for s in descendants(case, sid) if ("start", s) in at}, log
    # after a failure nothing starts that was not started (waiting for a slot) before:
    # its requirements all ended before the failure
    for sid in case.requires:
        if ("start", sid) in at and at["start", sid] > first_fail:
            assert all(at["end", r] < first_fail for r in case.requires[sid]), (sid, log)
    # the rollback starts once no forward step runs; a step's compensation after those
    # of every step depending on it; one that fails leaves its requirements undone
    ran, undone = expected_undone(case, succeeded)
    assert {sid for ev, sid in log if ev == "undo"} == ran, (ran, log, case)
    assert info.compensated is (not (ran & case.undo_fails)), info
    for sid in ran & case.undo_fails:
        assert info.error is not None
        assert f"compensation of {sid} failed" in info.error
    if ran:
        first_undo = min(at["undo", sid] for sid in ran)
        assert all(ev.startswith("undo") for ev, _ in log[first_undo:]), log
    for sid in ran:
        for later in descendants(case, sid) & ran:
            assert at["undone", later] < at["undo", sid], (sid, later, log)
    for sid in case.requires:
        status = info.steps[sid].status
        comp = info.steps[sid].compensation
        if sid in succeeded:
            assert status is (Status.COMPENSATED if sid in undone else Status.SUCCESS), sid
            if sid in ran:
                assert comp is not None
                assert comp.status is (Status.SUCCESS if sid in undone else Status.FAILURE)
                assert comp.attempts == 1
        elif sid not in failed:
            assert status is Status.PENDING, (sid, status, log)
