"""The status of a step or an execution, with the ``"StatusX"`` strings of the Go
``flow`` package microsaga follows (go.unistack.org/micro)."""

from __future__ import annotations

import enum

__all__ = ["STATUS_STRING", "STRING_STATUS", "Phase", "Status"]


class Status(enum.IntEnum):
    """Status of a step or an execution.

    ``str(Status.RUNNING) == "StatusRunning"`` as upstream; ``.name`` is ``"RUNNING"``.
    """

    PENDING = 0
    RUNNING = 1
    FAILURE = 2
    SUCCESS = 3
    ABORTED = 4
    SUSPEND = 5
    COMPENSATING = 6
    COMPENSATED = 7
    WAITING = 8  # a step waiting for an event, a timer or a child execution
    SKIPPED = 9  # a step whose ``when`` was false

    def __str__(self) -> str:
        return STATUS_STRING[self]

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @classmethod
    def parse(cls, text: str) -> Status:
        """Read ``"StatusRunning"``; unknown strings are PENDING, as upstream."""
        return STRING_STATUS.get(text, cls.PENDING)

    @classmethod
    def lookup(cls, text: str) -> Status | None:
        """Read ``"StatusRunning"`` or ``"RUNNING"`` (any case); None when unknown."""
        return STRING_STATUS.get(text) or cls.__members__.get(text.upper())

    @property
    def stopped(self) -> bool:
        """True when an execution with this status is not progressing on its own."""
        return self in _STOPPED

    @property
    def finished(self) -> bool:
        """True when an execution with this status will never change again by itself."""
        return self in _FINISHED


STATUS_STRING: dict[Status, str] = {s: "Status" + s.name.capitalize() for s in Status}
STRING_STATUS: dict[str, Status] = {v: k for k, v in STATUS_STRING.items()}

_FINISHED = frozenset({Status.SUCCESS, Status.FAILURE, Status.ABORTED})
_STOPPED = _FINISHED | {Status.SUSPEND}


class Phase(enum.IntEnum):
    """Which way a step run goes: the step itself, or its compensation.

    ``str(Phase.COMPENSATE) == "compensate"`` (the ``microsaga.phase`` of traces and
    the ``phase`` label of metrics); stores keep the number.
    """

    FORWARD = 0
    COMPENSATE = 1

    def __str__(self) -> str:
        return self.name.lower()

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)
