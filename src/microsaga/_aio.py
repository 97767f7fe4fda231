"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Slots", "wait_event"]


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds; True if it was set.

    Uses ``asyncio.timeout`` rather than ``wait_for``: on Python 3.11 ``wait_for``
    can swallow the cancellation of the waiting task when the event fires at the
    same moment, and a cancelled loop would then run on.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


class Slots:
    """A counting limit like ``asyncio.Semaphore``, cheaper when a slot is free: the
    caller takes a slot with :meth:`take` without awaiting anything, and only waits
    (``await slots.wait()``) when none is free."""

    __slots__ = ("_free", "_waiters", "size")

    def __init__(self, size: int) -> None:
        self.size = size  # how many there are
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot and take it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.give()  # handed a slot, but cancelled before using it
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def give(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the waiter
                return
        self._free += 1
