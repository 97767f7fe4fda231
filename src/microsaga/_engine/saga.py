"""The saga rules as pure functions of an execution's state.

:func:`decide` looks at the state of one execution and says what happens next: which
steps start, which compensations start, which status the execution takes, whether
it is finished or its lease can be released. It does no I/O and keeps no clock: the
worker (``microsaga.worker``) commits what it decides and then acts on it.
"""

from __future__ import annotations

import msgspec

from ..status import Phase, Status
from .plan import Plan, RunGraph
from .records import Abort, ExecState, StepRecord

__all__ = [
    "Decision",
    "after_success",
    "after_successes",
    "compensable",
    "compensated",
    "decide",
    "failure_summary",
    "first",
]


class Decision(msgspec.Struct, frozen=True, gc=False):
    """What to do next."""

    start: tuple[str, ...] = ()  # forward steps to start
    compensate: tuple[str, ...] = ()  # compensations to start
    status: Status | None = None  # the status to write, when it changes
    done: bool = False  # finished: the status above is final
    release: bool = False  # suspended and settled: the lease can go
    cancel: tuple[str, ...] = ()  # WAITING steps given up (a rollback, an abort): PENDING
    park: bool = False  # only WAITING steps are left: wait for them holding nothing


_WAIT = Decision()
_PARK = Decision(park=True)
_SUCCEEDED = Decision(status=Status.SUCCESS, done=True)


def _any(states: dict[str, StepRecord], status: Status) -> bool:
    return any(s.status is status for s in states.values())


def decide(plan: Plan, graph: RunGraph, state: ExecState) -> Decision:
    """What happens next to an execution in ``state``."""
    # one pass over the steps: which are running, which failed, and which are ready
    # (not started, every requirement succeeded), the last only used when nothing failed
    steps, requires = state.steps, graph.requires
    steps_running = failed = False
    ready = []
    waiting = []
    for sid in graph.order:
        current = steps[sid].status
        if current is Status.PENDING:
            if _satisfied(steps, requires[sid]):
                ready.append(sid)
        elif current is Status.RUNNING:
            steps_running = True
        elif current is Status.FAILURE:
            failed = True
        elif current is Status.WAITING:
            waiting.append(sid)
    running = steps_running or _any(state.comps, Status.RUNNING)
    if state.abort is Abort.NO_COMPENSATION:
        if running:
            return Decision(cancel=tuple(waiting))
        return Decision(cancel=tuple(waiting), status=Status.ABORTED, done=True)
    if state.status is Status.SUSPEND:
        return Decision(release=not running)  # waiting steps wait on, suspended
    if failed and plan.on_failure == "suspend" and state.abort is Abort.NONE:
        # the failure policy "suspend": wait for an operator, compensating nothing
        return Decision(status=Status.SUSPEND, release=not running)
    if failed or state.abort is Abort.COMPENSATE:
        status = None if state.status is Status.COMPENSATING else Status.COMPENSATING
        cancel = tuple(waiting)  # a rollback waits for nothing
        if steps_running:
            # running steps finish before any rollback
            return Decision(cancel=cancel, status=status)
        comps = compensable(plan, graph, state)
        if comps or running:
            return Decision(compensate=tuple(comps), cancel=cancel, status=status)
        if cancel:
            return Decision(cancel=cancel, status=status)  # decided again once cancelled
        aborted = state.abort is Abort.COMPENSATE and not _any(state.comps, Status.FAILURE)
        return Decision(status=Status.ABORTED if aborted else Status.FAILURE, done=True)
    if ready:
        return Decision(start=tuple(ready))
    if running:
        return _WAIT
    if waiting:
        return _PARK
    return Decision(status=Status.SUCCESS, done=True)


def first(graph: RunGraph) -> Decision:
    """:func:`decide` for a run that has not started (every step PENDING, RUNNING, no
    abort): its roots, the steps that require none."""
    return Decision(start=graph.roots)


def after_success(graph: RunGraph, state: ExecState, step_id: str) -> Decision | None:
    """:func:`decide`, cheaply, in the usual case: the last decision started one
    forward step and nothing else, and that step has just succeeded. Steps that were
    not ready then can only have become ready through it, so the ready steps now are
    among its dependents. When it is the graph's only leaf, every other step is among
    the steps it requires, directly or not, which had all succeeded (or been skipped)
    before it started: the execution succeeded. None when that case does not hold (a
    suspend, an abort, a rollback) or when not exactly one step becomes ready: ask
    :func:`decide`."""
    if state.status is not Status.RUNNING or state.abort is not Abort.NONE or state.comps:
        return None
    steps, requires = state.steps, graph.requires
    if steps[step_id].status is not Status.SUCCESS:
        return None
    dependents = graph.dependents[step_id]
    if not dependents and len(graph.leaves) == 1:
        return _SUCCEEDED
    ready = None
    for sid in dependents:
        if steps[sid].status is Status.PENDING and _satisfied(steps, requires[sid]):
            if ready is not None:
                return None  # several: decide()
            ready = sid
    if ready is None:
        return None  # none: decide() tells whether the run is over
    return Decision((ready,))


def after_successes(
    graph: RunGraph,
    state: ExecState,
    finished: list[StepRecord],
    running: bool,
    seen: dict[str, int],
) -> Decision | None:
    """:func:`decide`, cheaply, when the step runs ``finished`` have just ended and
    nothing else changed since the last decision, which started every step that was
    ready (none settled without running). ``running``: whether other steps still run.
    As :func:`after_success`, the ready steps now are among their dependents; when
    none is, the decision is to wait while steps run. None when that case does not
    hold (one of them did not succeed, a suspend, an abort, a rollback) or when
    nothing runs any more: ask :func:`decide`. What keeps a fan-out of thousands of
    steps from looking at all of them each time some finish.

    ``seen``: for a step not ready yet, how many of its requirements (in order) were
    found done, kept by the caller between calls while the case holds (they stay
    done), so that a join of thousands looks at each once."""
    if state.status is not Status.RUNNING or state.abort is not Abort.NONE or state.comps:
        return None
    steps, requires, dependents = state.steps, graph.requires, graph.dependents
    ready: dict[str, None] = {}
    for rec in finished:
        if rec.status is not Status.SUCCESS or rec.phase is not Phase.FORWARD:
            return None
        for sid in dependents[rec.step_id]:
            if sid in ready or steps[sid].status is not Status.PENDING:
                continue
            reqs, at = requires[sid], seen.get(sid, 0)
            while at < len(reqs) and steps[reqs[at]].status in _DONE:
                at += 1
            if at == len(reqs):
                ready[sid] = None
            else:
                seen[sid] = at
    if ready:
        return Decision(tuple(ready))
    return _WAIT if running else None


def _satisfied(steps: dict[str, StepRecord], requires: tuple[str, ...]) -> bool:
    """Whether every step of ``requires`` succeeded (a loop: cheaper than ``all()``
    over a generator, and this runs for every step of every run)."""
    for r in requires:  # noqa: SIM110
        if steps[r].status not in _DONE:
            return False
    return True


_DONE = (Status.SUCCESS, Status.SKIPPED)  # what a dependent needs of a step
_UNDO_FAILED = (Status.PENDING, Status.FAILURE)  # see compensable


def compensable(plan: Plan, graph: RunGraph, state: ExecState) -> list[str]:
    """Succeeded steps whose compensation can start: every step depending on them is
    settled (compensated, or with nothing to compensate, all the way down)."""
    steps, comps, nodes = state.steps, state.comps, plan.nodes
    settled: dict[str, bool] = {}
    out = []
    for sid in reversed(graph.order):
        deps_settled = all(settled[d] for d in graph.dependents[sid])
        node, current, comp = nodes[sid], steps[sid].status, comps.get(sid)
        needs = node.compensate is not None and (
            current is Status.SUCCESS
            # a failed map: its runs that succeeded (the record stays FAILURE)
            or (current is Status.FAILURE and node.partial and not _undone(comp))
            # a SubflowStep whose child's rollback failed (given up: its record is
            # PENDING again; or failed on its own): that rollback is its
            # compensation, retried on resume
            or (current in _UNDO_FAILED and comp is not None and not _undone(comp))
        )
        settled[sid] = deps_settled and not needs
        if needs and deps_settled and (comp is None or comp.status is Status.PENDING):
            out.append(sid)
    out.reverse()
    return out


def _undone(comp: StepRecord | None) -> bool:
    return comp is not None and comp.status is Status.SUCCESS


def failure_summary(plan: Plan, graph: RunGraph, state: ExecState) -> tuple[str | None, str]:
    """The failed step (or None) and a one-line error for a failed execution."""
    failed = next((s for s in graph.order if state.steps[s].status is Status.FAILURE), None)
    parts = []
    if failed is not None:
        parts.append(f"step {failed} failed: {state.steps[failed].error}")
    elif state.abort is not Abort.NONE:
        parts.append("aborted")
    for sid in graph.order:
        comp = state.comps.get(sid)
        if comp is not None and comp.status is Status.FAILURE:
            parts.append(f"compensation of {sid} failed: {comp.error}")
    return failed, "; ".join(parts) or "failed"


def compensated(state: ExecState) -> bool:
    """True when no compensation failed."""
    return not _any(state.comps, Status.FAILURE)
