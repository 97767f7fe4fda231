"""The record of one step run: what the engine knows of it and what the store keeps."""

from __future__ import annotations

import msgspec

from ..message import Message
from ..status import Status

__all__ = ["COMPENSATION", "FORWARD", "StepRecord"]

FORWARD, COMPENSATION = 0, 1


class StepRecord(msgspec.Struct, gc=False):
    """One step run (``phase`` 0 forward, 1 compensation), as the engine holds it and
    as a store writes it. The engine never changes a record it has handed to a store
    (the memory store keeps the object itself while the execution is held): it makes
    a new one (``msgspec.structs.replace``).

    A struct rather than a dataclass: made in C (the engine makes two per step run),
    and not tracked by the garbage collector (``gc=False``: it refers to messages,
    which never refer back, so it is in no cycle)."""

    step_id: str
    phase: int
    status: Status
    attempts: int = 0
    request: Message | None = None
    response: Message | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
