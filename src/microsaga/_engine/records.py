"""What the engine knows of an execution: its step runs and its state."""

from __future__ import annotations

import enum

import msgspec

from ..message import Message
from ..status import Phase, Status

__all__ = ["Abort", "ExecState", "Phase", "StepRecord"]


class Abort(enum.IntEnum):
    """An abort requested of an execution (stores keep the number)."""

    NONE = 0
    COMPENSATE = 1  # stop starting steps, then roll back
    NO_COMPENSATION = 2  # stop starting steps, roll nothing back


# Structs rather than dataclasses: the engine makes a few per step run, and gc=False
# keeps the garbage collector from walking them (they refer to messages, which never
# refer back, so they are in no cycle).


class StepRecord(msgspec.Struct, frozen=True, gc=False):
    """One run of a step (``phase``: the step itself, or its compensation), as the
    engine holds it and a store writes it. Frozen: a change is a new record
    (``msgspec.structs.replace``), so a store may keep the one it was handed."""

    step_id: str
    phase: Phase
    status: Status
    attempts: int = 0
    request: Message | None = None
    response: Message | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


class ExecState(msgspec.Struct, gc=False):
    """An execution's status, abort request and step runs, as its run holds them."""

    status: Status
    abort: Abort = Abort.NONE
    steps: dict[str, StepRecord] = {}  # forward runs by step id (a struct copies defaults)
    comps: dict[str, StepRecord] = {}  # compensation runs by step id
