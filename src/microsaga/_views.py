"""What this process has seen of the executions it started: ``wf.status`` and
``step.status/request/response`` read it; runs never write into user objects.

A workflow maps to its latest execution started through it (the run's live state while
it runs here); a step maps to the workflow and step id it was last compiled under. An
execution that stops running here and goes on later (resumed, woken by a signal or a
timer) is followed: :func:`follow` points its views at the later run's state, and
:func:`observed` brings their status up to what was read of it in the store.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import msgspec

from ._engine.records import ExecState, StepRecord
from .status import Phase, Status

if TYPE_CHECKING:
    from .step import Step
    from .workflow import Workflow

__all__ = ["Seen", "follow", "observed", "record_of", "seen", "started", "steps_of", "watched"]


class Seen(msgspec.Struct):
    """The latest execution started through a workflow object."""

    execution_id: str
    state: ExecState | None  # the run's state when it runs in this process
    status: Status  # else its status as last read

    @property
    def current(self) -> Status:
        return self.state.status if self.state is not None else self.status


# by id() of the workflow, each entry dropped when its workflow is (weakref.finalize):
# a WeakKeyDictionary would make a weak reference at every execution
_latest: dict[int, Seen] = {}
_steps: weakref.WeakKeyDictionary[Step, tuple[weakref.ref[Workflow], str, Phase]] = (
    weakref.WeakKeyDictionary()
)


def started(wf: Workflow, execution_id: str, state: ExecState | None, status: Status) -> None:
    """``execution_id`` is the latest execution started through ``wf``."""
    key = id(wf)
    if key not in _latest:
        weakref.finalize(wf, _latest.pop, key, None)
    _latest[key] = Seen(execution_id, state, status)


def _views_of(execution_id: str) -> list[Seen]:
    # a look at every workflow object's latest execution (a few, or a few hundred),
    # on the rare calls below, rather than an index kept at every execution
    return [seen for seen in _latest.values() if seen.execution_id == execution_id]


def watched(execution_id: str) -> bool:
    """Whether ``execution_id`` is the latest execution of a workflow object."""
    return any(seen.execution_id == execution_id for seen in _latest.values())


def follow(execution_id: str, state: ExecState) -> None:
    """A later run of ``execution_id`` started here: its views show that run's state."""
    for seen in _views_of(execution_id):
        seen.state = state


def observed(execution_id: str, status: Status) -> None:
    """``execution_id`` was read ``status`` in the store while no run of it was here:
    its views show that status (their step records stay as last seen)."""
    for seen in _views_of(execution_id):
        if seen.state is None:
            seen.status = status
        elif seen.state.status is not status:
            # a copy: the state of the run that stopped is left alone
            seen.state = msgspec.structs.replace(seen.state, status=status)


def seen(wf: Workflow) -> Seen | None:
    return _latest.get(id(wf))


def steps_of(wf: Workflow, steps: list[tuple[Step, str, Phase]]) -> None:
    """The step objects of ``wf`` (forward steps and compensations), by id and phase."""
    ref = weakref.ref(wf)
    for step, sid, phase in steps:
        _steps[step] = (ref, sid, phase)


def record_of(step: Step) -> StepRecord | None:
    """The latest record of ``step`` in an execution run here, if any."""
    found = _steps.get(step)
    if found is None:
        return None
    ref, sid, phase = found
    wf = ref()
    view = _latest.get(id(wf)) if wf is not None else None
    if view is None or view.state is None:
        return None
    records = view.state.steps if phase is Phase.FORWARD else view.state.comps
    return records.get(sid)
