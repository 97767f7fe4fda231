"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import Task
from asyncio.tasks import _enter_task, _leave_task
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["Slots", "start_task", "wait_event"]

T = TypeVar("T")


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

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
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


def start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], name: str) -> Task[T]:
    """A task running ``coro`` that starts at once, in this call, and runs until it
    first waits: Python 3.12's eager start. A coroutine that never waits is finished
    when this returns, with no turn of the event loop, and nothing it made outlives it.

    While it runs, ``asyncio.current_task()`` is the new task, as it will be after its
    first wait, so what the coroutine hands its task (a timeout, a task group, a cancel
    scope) is the task that runs the rest. On Python 3.11 the task is made first with
    :class:`_Resume` as its coroutine, which hands it what ``coro`` waits on, or its
    result, at the task's first step.
    """
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg]
    context = contextvars.copy_context()
    resume = _Resume(coro)
    task = loop.create_task(resume, name=name, context=context)
    caller = asyncio.current_task(loop)
    if caller is not None:
        _leave_task(loop, caller)
    _enter_task(loop, task)
    try:
        resume.first = context.run(coro.send, None)
    except StopIteration as stop:
        resume.state, resume.first = _Resume.RETURNED, stop.value
    except (KeyboardInterrupt, SystemExit):
        resume.state = _Resume.HANDED
        raise
    except BaseException as exc:
        resume.state, resume.first = _Resume.RAISED, exc
    finally:
        _leave_task(loop, task)
        if caller is not None:
            _enter_task(loop, caller)
    return task


class _Resume(Coroutine[Any, Any, Any]):
    """The coroutine of a task made by :func:`start_task` on Python 3.11: ``coro``
    was started by hand; at the task's first step this hands the task what ``coro``
    waits on (or ends it with ``coro``'s result or exception); then it is ``coro``."""

    WAITING, RETURNED, RAISED, HANDED = range(4)

    __slots__ = ("coro", "first", "state")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.first: Any = None
        self.state = self.WAITING

    def send(self, value: Any) -> Any:
        state = self.state
        if state == self.HANDED:
            return self.coro.send(value)
        self.state = self.HANDED
        if state == self.WAITING:
            return self.first  # the task now waits on what coro waits on
        if state == self.RETURNED:
            raise StopIteration(self.first)
        raise self.first

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = typ if isinstance(typ, BaseException) else typ(val)
        state = self.state
        self.state = self.HANDED
        if state in (self.RETURNED, self.RAISED):
            raise exc  # cancelled after coro finished, before the task's first step
        if state == self.WAITING and isinstance(self.first, asyncio.Future):
            self.first.cancel()  # as a task cancels what it waits on
        return self.coro.throw(exc)

    def close(self) -> None:
        self.state = self.HANDED
        self.coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("a task's coroutine, not to be awaited")
