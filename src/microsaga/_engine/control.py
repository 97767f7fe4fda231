"""The rules of suspend, resume and abort requests, shared by every store."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidTransitionError
from ..status import Status
from .records import Abort

__all__ = ["ControlChange", "control_change"]


@dataclass(frozen=True, slots=True)
class ControlChange:
    status: Status
    abort: Abort
    free_lease: bool = False  # make the execution claimable by any worker now
    retry_compensations: bool = False  # failed compensations go back to PENDING
    retry_steps: bool = False  # failed steps go back to PENDING, with a fresh retry budget
    final: bool = False  # the execution ends here (nobody has to act)


def control_change(
    action: str,
    status: Status,
    abort: Abort,
    *,
    held: bool,
    steps_running: bool,
    compensation_failed: bool,
    steps_succeeded: bool = True,
) -> ControlChange:
    """What ``action`` does to an execution in ``status``.

    Args:
        held: a live worker holds the execution's lease.
        steps_running: a step run is recorded RUNNING or WAITING (an abort then takes a
            worker: a waiting step is given up, its child aborted).
        compensation_failed: a compensation of the execution failed for good.
        steps_succeeded: a forward step succeeded (there may be something to compensate).

    Raises:
        InvalidTransitionError: naming the action and the status.
    """
    abort = Abort(abort)
    if action == "suspend":
        if status in (Status.PENDING, Status.RUNNING, Status.SUSPEND):
            return ControlChange(Status.SUSPEND, abort)
    elif action == "resume":
        if status is Status.SUSPEND:
            resumed = Status.COMPENSATING if abort is Abort.COMPENSATE else Status.RUNNING
            return ControlChange(resumed, abort, free_lease=not held)
        if status is Status.FAILURE and compensation_failed:
            return ControlChange(
                Status.COMPENSATING, abort, free_lease=True, retry_compensations=True
            )
    elif action in ("retry", "redrive"):
        # a step failed for good under the failure policy "suspend": try it again
        if status is Status.SUSPEND and abort is Abort.NONE:
            return ControlChange(Status.RUNNING, abort, free_lease=not held, retry_steps=True)
    elif action == "abort":
        if not status.finished:
            if not held and not steps_running and not steps_succeeded:
                # nothing ran to the end, nothing runs: nothing to roll back, no worker
                # needed (a queued execution ends here even when no worker is running)
                return ControlChange(Status.ABORTED, Abort.COMPENSATE, final=True)
            return ControlChange(Status.COMPENSATING, Abort.COMPENSATE, free_lease=not held)
    elif action == "abort_nocomp":
        if not status.finished:
            if not held and not steps_running:
                return ControlChange(Status.ABORTED, Abort.NO_COMPENSATION, final=True)
            if status is Status.SUSPEND:
                status = Status.RUNNING
            return ControlChange(status, Abort.NO_COMPENSATION, free_lease=not held)
    elif action == "compensate":
        # a sub-workflow's child that succeeded, rolled back with its parent
        if status is Status.SUCCESS:
            return ControlChange(Status.COMPENSATING, Abort.COMPENSATE, free_lease=True)
    else:
        raise InvalidTransitionError(f"unknown action {action!r}")
    verb = "abort" if action.startswith("abort") else "resume" if action == "retry" else action
    raise InvalidTransitionError(f"cannot {verb} an execution that is {status.name}")
