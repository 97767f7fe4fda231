"""Named fault points at the durability boundaries, inert unless a test arms them.

Armed from the environment (``MICROSAGA_FAULTS="step_recorded:kill"``) or with
:func:`microsaga.testing.arm_fault`. Actions: ``kill`` (SIGKILL this process),
``raise`` (raise :class:`FaultError`), or a callable.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

__all__ = ["POINTS", "FaultError", "arm", "disarm", "hit"]

POINTS = (
    "execution_created",  # the execution and its first steps are committed
    "step_started",  # a step's RUNNING record is committed, before it is invoked
    "step_returned",  # a step returned, before its result is committed
    "step_recorded",  # a step's result is committed, before dependents start
    "compensation_started",  # a compensation's RUNNING record is committed
)


class FaultError(RuntimeError):
    """Raised by a fault point armed with ``raise``."""


_armed: dict[str, Callable[[], None] | str] = {}
ARMED = False  # checked before calling hit(): the points sit on the hot path


def _from_env() -> None:
    global ARMED
    for item in filter(None, os.environ.get("MICROSAGA_FAULTS", "").split(",")):
        name, _, action = item.partition(":")
        _armed[name.strip()] = action.strip() or "kill"
    ARMED = bool(_armed)


def arm(name: str, action: Callable[[], None] | str = "raise") -> None:
    global ARMED
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; known: {', '.join(POINTS)}")
    _armed[name] = action
    ARMED = True


def disarm(name: str | None = None) -> None:
    global ARMED
    if name is None:
        _armed.clear()
    else:
        _armed.pop(name, None)
    ARMED = bool(_armed)


def hit(name: str) -> None:
    """Called at fault point ``name``; does nothing unless armed."""
    if not _armed:
        return
    action = _armed.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FaultError(f"fault point {name}")
    elif callable(action):
        action()


_from_env()
