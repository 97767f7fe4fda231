"""Hooks: the one seam for what watches executions from the side.

A :class:`Hook` is told what happens to the executions a flow runs: an execution
created, a run started in this process (new or taken over), a status committed, a step
attempt started and finished, a step's outcome committed, a batch committed to the
store, the steps waiting in the store. Live progress in the CLI, fault points for tests,
tracing and metrics are hooks; your own (an audit log, a notifier) plug in the same
way::

    class Audit(microsaga.Hook):
        def execution_status(self, event: microsaga.ExecutionEvent) -> None:
            if event.status.finished:
                log.info("%s ended %s", event.execution_id, event.status.name)

    async with Flow("sqlite:///orders.db", hooks=[Audit()]) as flow: ...

Every method does nothing by default; override the ones you need. They are called on
the event loop, in the order the hooks were given, and must not block: hand slow work
to a task or a thread. A hook that raises is logged and the execution goes on: a hook
never changes what an execution does. (The one exception is the fault points of
:mod:`microsaga.testing`, whose whole purpose is to stop a run at a boundary.)

Events are frozen: a hook may keep them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import msgspec

from .message import Message
from .status import Phase, Status

__all__ = ["CommitEvent", "ExecutionEvent", "Hook", "Hooks", "StepEvent"]

log = logging.getLogger("microsaga.hooks")


class ExecutionEvent(msgspec.Struct, frozen=True, gc=False):
    """Something happened to an execution.

    Attributes:
        execution_id, workflow_id: which execution.
        status: its status after the event (committed).
        at: when (the flow's clock, seconds since the epoch).
        created_at: when the execution was created.
        error: the execution's one-line error, when it ended FAILURE or ABORTED.
        taken_over: for :meth:`Hook.run_started`, whether this process took the
            execution over from another worker (or a previous life of its own).
        interrupted: for :meth:`Hook.run_started` of an execution taken over, whether
            its previous worker stopped it mid-run (died, lost its lease, or gave up):
            steps were RUNNING, and are invoked again. False for one resumed or woken.
        request: the execution's request, as stored (its header carries what
            :meth:`Hook.execution_header` added, a trace context say).
    """

    execution_id: str
    workflow_id: str
    status: Status
    at: float
    created_at: float
    error: str | None = None
    taken_over: bool = False
    request: Message | None = None
    interrupted: bool = False


class StepEvent(msgspec.Struct, frozen=True, gc=False):
    """Something happened to one attempt of a step (or of its compensation).

    Attributes:
        execution_id, workflow_id, step_id: where.
        phase: :attr:`Phase.FORWARD` or :attr:`Phase.COMPENSATE`.
        attempt: the attempt number, from 1.
        status: RUNNING when started; SUCCESS or FAILURE when finished (FAILURE also
            for an attempt that will be retried: see ``retrying``).
        at: when (the flow's clock).
        started_at: when the attempt started.
        error: the attempt's one-line error.
        retrying: the attempt failed and another one follows.
        request, response: the attempt's messages.
    """

    execution_id: str
    workflow_id: str
    step_id: str
    phase: Phase
    attempt: int
    status: Status
    at: float
    started_at: float | None = None
    error: str | None = None
    retrying: bool = False
    request: Message | None = None
    response: Message | None = None


class CommitEvent(msgspec.Struct, frozen=True, gc=False):
    """A batch of writes committed to the store (group commit).

    Attributes:
        units: how many executions' writes the batch held.
        seconds: how long the commit took.
    """

    units: int
    seconds: float


class Hook:
    """What watches executions; every method does nothing unless overridden."""

    def execution_header(self, event: ExecutionEvent) -> Mapping[str, str] | None:
        """Entries to add to the header of a new execution's request before it is
        stored (every step request carries them; a worker that takes the execution
        over reads them back). ``event.request`` is the request as given."""
        return None

    def execution_created(self, event: ExecutionEvent) -> None:
        """An execution this process started is committed (before any step runs)."""

    def run_started(self, event: ExecutionEvent) -> None:
        """This process starts running an execution: one it created, or one it claimed
        (``event.taken_over``: resumed, woken, or left by a dead worker)."""

    def run_stopped(self, event: ExecutionEvent) -> None:
        """This process stopped running the execution: it finished, was suspended,
        waits (parked in the store), or another worker took it over."""

    def execution_status(self, event: ExecutionEvent) -> None:
        """The execution's status changed (committed), by its run or by a request."""

    def step_started(self, event: StepEvent) -> None:
        """A step attempt is about to be invoked: its RUNNING record is committed."""

    def step_finished(self, event: StepEvent) -> None:
        """A step attempt returned or raised; its outcome is not committed yet."""

    def step_recorded(self, event: StepEvent) -> None:
        """A step's outcome is committed; dependents may start."""

    def store_committed(self, event: CommitEvent) -> None:
        """A batch of writes was committed to the store."""

    def steps_waiting(self, count: int) -> None:
        """How many steps wait (for a signal, a timer or a child execution) in the
        store, as a worker read it (every few seconds, when a hook overrides this):
        store-wide, the same on every worker of the store."""


_METHODS = (
    "execution_header",
    "execution_created",
    "run_started",
    "run_stopped",
    "execution_status",
    "step_started",
    "step_finished",
    "step_recorded",
    "store_committed",
    "steps_waiting",
)


class Hooks:
    """The hooks of a flow, dispatched in order, each one's failure isolated.

    For each method, ``hooks.<method>`` is the list of bound methods that are
    overridden (empty when no hook cares), so a caller can skip building an event
    nobody reads: ``if hooks.step_started: hooks.emit(hooks.step_started, event)``.
    """

    # exceptions a hook may raise on purpose to stop a run (fault points)
    passthrough: ClassVar[tuple[type[BaseException], ...]] = ()

    execution_header: list[Callable[[ExecutionEvent], Mapping[str, str] | None]]
    execution_created: list[Callable[[ExecutionEvent], None]]
    run_started: list[Callable[[ExecutionEvent], None]]
    run_stopped: list[Callable[[ExecutionEvent], None]]
    execution_status: list[Callable[[ExecutionEvent], None]]
    step_started: list[Callable[[StepEvent], None]]
    step_finished: list[Callable[[StepEvent], None]]
    step_recorded: list[Callable[[StepEvent], None]]
    store_committed: list[Callable[[CommitEvent], None]]
    steps_waiting: list[Callable[[int], None]]

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self._hooks: list[Hook] = []
        self._failed: set[tuple[int, str]] = set()
        for name in _METHODS:
            setattr(self, name, [])
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        if not isinstance(hook, Hook):
            raise TypeError(f"a hook is a microsaga.Hook, not {hook!r}")
        self._hooks.append(hook)
        for name in _METHODS:
            if getattr(type(hook), name) is not getattr(Hook, name):
                getattr(self, name).append(getattr(hook, name))

    def remove(self, hook: Hook) -> None:
        if hook not in self._hooks:
            return
        self._hooks.remove(hook)
        for name in _METHODS:
            bound = getattr(self, name)
            bound[:] = [m for m in bound if getattr(m, "__self__", None) is not hook]

    def __iter__(self) -> Any:
        return iter(self._hooks)

    def emit(self, methods: Sequence[Callable[[Any], Any]], event: Any) -> None:
        """Call each of ``methods`` with ``event``."""
        for method in methods:
            self._call(method, event)

    def collect(self, methods: Sequence[Callable[[Any], Any]], event: Any) -> list[Any]:
        """Call each of ``methods`` with ``event``; what they returned (None for one
        that failed)."""
        return [self._call(method, event) for method in methods]

    def _call(self, method: Callable[[Any], Any], event: Any) -> Any:
        try:
            return method(event)
        except self.passthrough:
            raise
        except Exception:
            key = (id(getattr(method, "__self__", method)), method.__name__)
            if key not in self._failed:  # once per hook and method, not per event
                self._failed.add(key)
                eid = getattr(event, "execution_id", None)
                log.exception(
                    "hook %s failed (its later failures are not logged)",
                    method,
                    extra=None
                    if eid is None
                    else {
                        "execution_id": eid,
                        "workflow_id": event.workflow_id,
                        "step_id": getattr(event, "step_id", None),
                    },
                )
            return None
