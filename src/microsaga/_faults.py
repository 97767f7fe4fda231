"""Named fault points at the durability boundaries, inert unless a test arms them.

Armed from the environment (``MICROSAGA_FAULTS="step_recorded:kill"``) or with
:func:`microsaga.testing.arm_fault`. Actions: ``kill`` (SIGKILL this process),
``raise`` (raise :class:`FaultError`, which stops the run as a crash would), or a
callable (at ``before_park``, an async one is awaited).

The points are a :class:`~microsaga.Hook`, added to every flow's hooks while any
point is armed, so that they cost nothing otherwise.
"""

from __future__ import annotations

import inspect
import os
import signal
import weakref
from collections.abc import Callable

from .hooks import ExecutionEvent, Hook, Hooks, StepEvent
from .status import Phase, Status

__all__ = ["POINTS", "FaultError", "arm", "attach", "disarm", "hit"]

POINTS = (
    "execution_created",  # the execution and its first steps are committed
    "step_started",  # a step's RUNNING record is committed, before it is invoked
    "step_returned",  # a step returned, before its result is committed
    "step_recorded",  # a step's result is committed, before dependents start
    "compensation_started",  # a compensation's RUNNING record is committed
    "before_park",  # an execution that only waits looked at what it waits for, and parks
)


class FaultError(RuntimeError):
    """Raised by a fault point armed with ``raise``."""


_armed: dict[str, Callable[[], None] | str] = {}


def hit(name: str) -> None:
    """Called at fault point ``name``; does nothing unless armed."""
    action = _armed.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FaultError(f"fault point {name}")
    elif callable(action):
        action()


async def reached(name: str) -> None:
    """:func:`hit` where the engine can wait: a callable may return an awaitable
    (a test sends a signal there)."""
    action = _armed.get(name)
    if action is None:
        return
    if callable(action):
        result: object = action()
        if inspect.isawaitable(result):
            await result
        return
    hit(name)


class FaultPoints(Hook):
    """The fault points, where the hooks are called."""

    def execution_created(self, event: ExecutionEvent) -> None:
        hit("execution_created")

    def step_started(self, event: StepEvent) -> None:
        hit("step_started" if event.phase is Phase.FORWARD else "compensation_started")

    def step_finished(self, event: StepEvent) -> None:
        if not event.retrying and event.status is not Status.PENDING:
            hit("step_returned")

    def step_recorded(self, event: StepEvent) -> None:
        hit("step_recorded")


_POINTS = FaultPoints()
_attached: weakref.WeakSet[Hooks] = weakref.WeakSet()


def attach(hooks: Hooks) -> None:
    """Let the fault points reach ``hooks`` (a flow's) whenever one is armed."""
    _attached.add(hooks)
    if _armed:
        hooks.add(_POINTS)


def _update() -> None:
    for hooks in list(_attached):
        hooks.remove(_POINTS)
        if _armed:
            hooks.add(_POINTS)


def arm(name: str, action: Callable[[], None] | str = "raise") -> None:
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; known: {', '.join(POINTS)}")
    _armed[name] = action
    _update()


def disarm(name: str | None = None) -> None:
    if name is None:
        _armed.clear()
    else:
        _armed.pop(name, None)
    _update()


def _from_env() -> None:
    for item in filter(None, os.environ.get("MICROSAGA_FAULTS", "").split(",")):
        name, _, action = item.partition(":")
        _armed[name.strip()] = action.strip() or "kill"


_from_env()
Hooks.passthrough = (FaultError,)
