"""Property tests of the run loop's scheduling on random DAGs (hypothesis, derandomized:
the same examples every run), on memory and SQLite: whatever the shape, the ``when``s
and how the steps interleave, the statuses are the rules' and every step starts as soon
as it is ready, beside the others, never once another branch has moved on (what the
loop's shortcuts must not get wrong; see saga.after_success and after_successes)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from microsaga import ExecutionFailedError, Flow, FunctionStep, Message, Status, StepError
from tests.helpers import FLOW_EXAMPLES, logged_undo


@dataclass
class Case:
    """A random saga: ``requires`` of each step (earlier ones), the request's flag of the
    steps with a ``when``, how often each step yields to the loop, the steps that fail
    for good and those with a compensation."""

    requires: dict[str, list[str]]
    when: dict[str, bool]
    yields: dict[str, int]
    failing: set[str] = field(default_factory=set)
    undoable: set[str] = field(default_factory=set)


@st.composite
def cases(draw: st.DrawFn, failures: bool = False) -> Case:
    n = draw(st.integers(min_value=2, max_value=14))
    requires: dict[str, list[str]] = {}
    for i in range(n):
        if i == 0:
            reqs: list[int] = []
        else:
            shape = draw(st.sampled_from(["root", "chain", "fan", "fan", "join", "diamond"]))
            if shape == "root":
                reqs = []
            elif shape == "chain":  # the step just before: chains, and diamonds' arms
                reqs = [i - 1]
            elif shape == "diamond":  # the two steps just before: a diamond's end
                reqs = [i - 1, max(i - 2, 0)]
            elif shape == "fan":  # one earlier step: fan-outs
                reqs = [draw(st.integers(min_value=0, max_value=i - 1))]
            else:  # several earlier steps: joins, diamonds' ends
                ints = st.integers(min_value=0, max_value=i - 1)
                reqs = draw(st.lists(ints, min_size=2, max_size=4))
        requires[f"s{i}"] = sorted({f"s{r}" for r in reqs})
    ids = sorted(requires)
    flags = st.sampled_from([None, None, True, False])  # a when on half of the steps
    when = {sid: flag for sid in ids if (flag := draw(flags)) is not None}
    yields = {sid: draw(st.integers(min_value=0, max_value=3)) for sid in ids}
    case = Case(requires, when, yields)
    if failures:
        case.failing = set(draw(st.lists(st.sampled_from(ids), min_size=1, max_size=2)))
        case.undoable = set(draw(st.lists(st.sampled_from(ids))))
    return case


def skipped(case: Case) -> set[str]:
    """The rules: a step is skipped when its ``when`` is false or when it requires steps
    and all of them were skipped."""
    out: set[str] = set()
    for sid, reqs in case.requires.items():  # earlier steps first
        if case.when.get(sid) is False or (reqs and all(r in out for r in reqs)):
            out.add(sid)
    return out


def descendants(case: Case, root: str) -> set[str]:
    out, frontier = set(), [root]
    while frontier:
        node = frontier.pop()
        for sid, reqs in case.requires.items():
            if node in reqs and sid not in out:
                out.add(sid)
                frontier.append(sid)
    return out


_names = itertools.count()


async def run(flow: Flow, case: Case) -> tuple[str, list[tuple[str, str]]]:
    """One execution of ``case`` on ``flow``: its id and what the steps did, in order."""
    log: list[tuple[str, str]] = []

    def step(sid: str) -> FunctionStep:
        async def forward(msg: Message) -> dict[str, str]:
            log.append(("start", sid))
            for _ in range(case.yields[sid]):
                await asyncio.sleep(0)  # let the other branches and the loop go on
            if sid in case.failing:
                log.append(("fail", sid))
                raise StepError("x", retryable=False)
            log.append(("end", sid))
            return {"step": sid}

        comp = logged_undo(log, sid) if sid in case.undoable else None
        when = f"request.{sid}" if sid in case.when else None
        reqs = case.requires[sid]
        return FunctionStep(forward, id=sid, requires=reqs, when=when, compensate=comp)

    # the flow's concurrency (64) is above any fan-out here: no step waits for a slot
    wf = await flow.workflow_create(f"prop{next(_names)}", *(step(s) for s in case.requires))
    try:
        eid = await wf.execute(dict(case.when))
    except ExecutionFailedError as err:
        eid = err.execution_id
    return eid, log


def check_eager(case: Case, log: list[tuple[str, str]]) -> None:
    """Every step that ran started as soon as it was ready: no step that became ready
    at the same point or later ended before it started.

    ready(S): the log's position after which all of S's requirements were settled (one
    that ran: its end; a skipped one: when it was ready itself); -1 for a root. The
    loop folds the steps that ended in the order of their ends, so a step T with
    ready(T) >= ready(S) is started by the same decision as S or a later one, when S
    starts as soon as it is ready; then S's start comes before T's end, given that T
    yields at least once (a step that never yields is done before the others of its
    decision start, and is no witness). Not "T started after ready(S)": a step started
    before may first run after it, legitimately."""
    at = {(ev, sid): i for i, (ev, sid) in enumerate(log)}
    ran = [sid for sid in case.requires if ("start", sid) in at]
    ready: dict[str, int] = {}
    for sid, reqs in case.requires.items():  # earlier steps first
        ready[sid] = max((at["end", r] if ("end", r) in at else ready[r] for r in reqs), default=-1)
    for s in ran:
        for t in ran:
            ended = at.get(("end", t), at.get(("fail", t)))
            if t == s or not case.yields[t] or ready[t] < ready[s] or ended is None:
                continue
            assert ended > at["start", s], (
                f"{s} was ready at {ready[s]} but started at {at['start', s]}, after {t} "
                f"(ready at {ready[t]}) ended at {ended}: {log} in {case}"
            )


@settings(FLOW_EXAMPLES, max_examples=150)
@given(cases())
async def test_steps_start_as_soon_as_ready_and_settle_by_the_rules(flow: Flow, case: Case) -> None:
    eid, log = await run(flow, case)
    info = await flow.execution(eid)
    assert info.status is Status.SUCCESS, (info.error, log)
    off = skipped(case)
    for sid in case.requires:
        expected = Status.SKIPPED if sid in off else Status.SUCCESS
        assert info.steps[sid].status is expected, (sid, log)
        started = ("start", sid) in log
        assert started is (sid not in off), (sid, log)
    check_eager(case, log)


@settings(FLOW_EXAMPLES, max_examples=100)
@given(cases(failures=True))
async def test_a_failure_stops_the_forward_steps_and_undoes_in_reverse_order(
    flow: Flow, case: Case
) -> None:
    eid, log = await run(flow, case)
    info = await flow.execution(eid)
    at = {(ev, sid): i for i, (ev, sid) in enumerate(log)}
    failed = {sid for ev, sid in log if ev == "fail"}
    succeeded = {sid for ev, sid in log if ev == "end"}
    off = skipped(case)
    if not failed:  # the failing steps were all skipped
        assert not case.failing - off
        assert info.status is Status.SUCCESS, (info.error, log)
        assert not any(ev == "undo" for ev, _ in log)
        check_eager(case, log)
        return
    assert info.status is Status.FAILURE, log
    assert info.compensated
    first_fail = min(at["fail", sid] for sid in failed)
    check_eager(case, log[:first_fail])  # up to the failure, as when all succeed
    for sid in failed:
        assert info.steps[sid].status is Status.FAILURE
        # nothing that depends on a failed step ever started
        assert not {s for s in descendants(case, sid) if ("start", s) in at}, log
    for sid in case.requires:
        status = info.steps[sid].status
        if sid in succeeded:
            assert status is (Status.COMPENSATED if sid in case.undoable else Status.SUCCESS)
        elif sid not in failed:  # skipped by the rules, or not reached
            assert status in (Status.SKIPPED, Status.PENDING), (sid, status, log)
            if status is Status.SKIPPED:
                assert sid in off
    # the rollback starts once no forward step runs, and undoes what succeeded, a step
    # after every step that depends on it
    undone = {sid for ev, sid in log if ev == "undo"}
    assert undone == succeeded & case.undoable, log
    if undone:
        first_undo = min(at["undo", sid] for sid in undone)
        assert all(ev in ("undo", "undone") for ev, _ in log[first_undo:]), log
    for sid in undone:
        for later in descendants(case, sid) & undone:
            assert at["undone", later] < at["undo", sid], (sid, later, log)
