"""Tools for testing sagas without servers: in-memory store and transports, fault points.

- :class:`MemoryStore` (``Flow("memory://")``): the store in dicts.
- :class:`MockClient`: answers ``CallStep`` calls with your handler.
- :class:`MemoryBroker`: records publishes; ``subscribe`` handlers reply.
- :func:`arm_fault` / :func:`disarm_faults`: make microsaga raise (or kill the
  process) at a named durability boundary, to test what survives.
"""

from __future__ import annotations

from collections.abc import Callable

from ._faults import POINTS as FAULT_POINTS
from ._faults import FaultError, arm, disarm
from .stores.memory import MemoryStore
from .transports.memory import MemoryBroker, MockClient

__all__ = [
    "FAULT_POINTS",
    "FaultError",
    "MemoryBroker",
    "MemoryStore",
    "MockClient",
    "arm_fault",
    "disarm_faults",
]


def arm_fault(point: str, action: Callable[[], None] | str = "raise") -> None:
    """Arm fault point ``point`` (one of ``FAULT_POINTS``) with ``"raise"``,
    ``"kill"`` (SIGKILL this process) or a callable."""
    arm(point, action)


def disarm_faults(point: str | None = None) -> None:
    """Disarm one fault point, or all of them."""
    disarm(point)
