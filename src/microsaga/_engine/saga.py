"""The saga rules as pure functions of an execution's state.

:func:`decide` looks at the state of one execution and says what happens next: which
steps start, which compensations start, which status the execution takes, whether
it is finished or its lease can be released. It does no I/O and keeps no clock: the
worker (``microsaga.worker``) commits what it decides and then acts on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from ..status import ABORTED, COMPENSATING, FAILURE, PENDING, RUNNING, SUCCESS, SUSPEND, Status
from .plan import Plan, RunGraph
from .records import StepRecord

__all__ = [
    "ABORT",
    "ABORT_NO_COMPENSATION",
    "NO_ABORT",
    "Decision",
    "ExecState",
    "decide",
]

NO_ABORT, ABORT, ABORT_NO_COMPENSATION = 0, 1, 2


class ExecState(msgspec.Struct, gc=False):
    """An execution's status, abort request and step runs, as the engine holds them
    (a struct: made in C, one per execution run, and in no cycle)."""

    status: Status
    abort: int = NO_ABORT
    # a struct copies a mutable default for each instance
    steps: dict[str, StepRecord] = {}
    comps: dict[str, StepRecord] = {}


@dataclass(slots=True)
class Decision:
    """What to do next (read only: the engine shares some of them)."""

    start: Sequence[str] = ()
    compensate: Sequence[str] = ()
    status: Status | None = None  # the status to write, when it changes
    done: bool = False  # finished: the status above is final
    release: bool = False  # suspended and settled: the lease can go


# decisions that carry nothing of their own (decisions are never changed: shared)
_WAIT = Decision()
_SUCCEEDED = Decision(status=SUCCESS, done=True)


def _any(states: dict[str, StepRecord], status: Status) -> bool:
    return any(s.status is status for s in states.values())


def decide(plan: Plan, graph: RunGraph, state: ExecState) -> Decision:
    """What happens next to an execution in ``state``."""
    # one pass over the steps: which are running, which failed, and which are ready
    # (not started, every requirement succeeded), the last only used when nothing failed
    steps, requires = state.steps, graph.requires
    steps_running = failed = False
    todo = []
    for sid in graph.order:
        current = steps[sid].status
        if current is PENDING:
            for r in requires[sid]:
                if steps[r].status is not SUCCESS:
                    break
            else:
                todo.append(sid)
        elif current is RUNNING:
            steps_running = True
        elif current is FAILURE:
            failed = True
    running = steps_running or (bool(state.comps) and _any(state.comps, RUNNING))
    if state.abort == ABORT_NO_COMPENSATION:
        if running:
            return Decision()
        return Decision(status=ABORTED, done=True)
    if state.status is SUSPEND:
        return Decision(release=not running)
    if failed or state.abort == ABORT:
        status = None if state.status is COMPENSATING else COMPENSATING
        if steps_running:
            return Decision(status=status)  # running steps finish before any rollback
        comps = compensable(plan, graph, state)
        if comps or running:
            return Decision(compensate=comps, status=status)
        aborted = state.abort == ABORT and not _any(state.comps, FAILURE)
        return Decision(status=ABORTED if aborted else FAILURE, done=True)
    if todo:
        if len(todo) > 1:
            return Decision(todo)
        single = graph.decisions.get(todo[0])
        if single is None:
            single = graph.decisions[todo[0]] = Decision((todo[0],))
        return single
    if running:
        return _WAIT
    return _SUCCEEDED


def first(graph: RunGraph) -> Decision:
    """:func:`decide` for a run that has not started (every step PENDING, RUNNING, no
    abort): its roots, the steps that require none. Made once per graph."""
    found = graph.decisions.get(None)
    if found is None:
        found = graph.decisions[None] = Decision(graph.roots)
    return found


def after_success(graph: RunGraph, state: ExecState, step_id: str) -> Decision | None:
    """:func:`decide`, cheaply, in the usual case: the last decision started one
    forward step and nothing else, and that step has just succeeded. Steps that were
    not ready then can only have become ready through it, so the ready steps now are
    among its dependents. None when that case does not hold (a suspend, an abort, a
    rollback) or when not exactly one step becomes ready: ask :func:`decide`."""
    if state.status is not RUNNING or state.abort != NO_ABORT or state.comps:
        return None
    steps, requires = state.steps, graph.requires
    if steps[step_id].status is not SUCCESS:
        return None
    found: str | None = None
    for sid in graph.dependents[step_id]:
        if steps[sid].status is not PENDING:
            continue
        for r in requires[sid]:
            if steps[r].status is not SUCCESS:
                break
        else:
            if found is not None:
                return None  # several: decide() gives them in order
            found = sid
    if found is None:
        return None
    decision = graph.decisions.get(found)
    if decision is None:
        decision = graph.decisions[found] = Decision((found,))
    return decision


def compensable(plan: Plan, graph: RunGraph, state: ExecState) -> list[str]:
    """Succeeded steps whose compensation can start: every step depending on them is
    settled (compensated, or with nothing to compensate, all the way down)."""
    steps, comps, nodes = state.steps, state.comps, plan.nodes
    settled: dict[str, bool] = {}
    out = []
    for sid in reversed(graph.order):
        deps_settled = all(settled[d] for d in graph.dependents[sid])
        needs = steps[sid].status is SUCCESS and nodes[sid].compensate is not None
        settled[sid] = deps_settled and not needs
        if needs and deps_settled:
            comp = comps.get(sid)
            if comp is None or comp.status is PENDING:
                out.append(sid)
    out.reverse()
    return out


def failure_summary(plan: Plan, graph: RunGraph, state: ExecState) -> tuple[str | None, str]:
    """The failed step (or None) and a one-line error for a failed execution."""
    failed = next((s for s in graph.order if state.steps[s].status is FAILURE), None)
    parts = []
    if failed is not None:
        parts.append(f"step {failed} failed: {state.steps[failed].error}")
    elif state.abort:
        parts.append("aborted")
    for sid in graph.order:
        comp = state.comps.get(sid)
        if comp is not None and comp.status is FAILURE:
            parts.append(f"compensation of {sid} failed: {comp.error}")
    return failed, "; ".join(parts) or "failed"


def compensated(state: ExecState) -> bool:
    """True when no compensation failed."""
    return not _any(state.comps, FAILURE)
