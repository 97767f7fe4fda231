"""Eager start: run a coroutine in the caller's call until it first waits.

A synchronous ``wf.execute()`` on a store whose commits never wait (the memory store)
runs its whole execution without waiting for anything; in a task of its own it would
still pay for the task, a turn of the event loop, and a future to hand the caller its
outcome. :class:`EagerStarter` runs such a coroutine at once instead, as Python 3.12's
eager tasks do, and a coroutine that finishes that way costs no task at all.

While the coroutine runs, the current task (``asyncio.current_task()``) is a *host*: a
task made in advance that waits for work. What the coroutine hands its task before it
first waits (a timeout, a task group, a cancel scope) is thus a task that can run the
rest: when the coroutine waits, the host takes it over and drives it to its end, in the
context the coroutine started with, while the starter makes a new host for the next
one. Cancelling the host cancels what the coroutine waits on, as for any task.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["EagerStarter"]


class EagerStarter:
    """Starts coroutines eagerly (see the module docstring); one per worker."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._idle: _Host | None = None

    def start(
        self, coro: Coroutine[Any, Any, Any], name: str, suffix: str = ""
    ) -> asyncio.Task[Any] | None:
        """Run ``coro`` until it first waits. Returns None when it finished (its result
        is dropped, and so is an exception it raised); else the task that runs the rest,
        named ``name + suffix`` (joined only then)."""
        loop = asyncio.get_running_loop()
        host = self._idle
        if host is None or host.task.done():
            host = _Host(loop, self._name)
        self._idle = None  # taken: a start made meanwhile (nested) makes its own host
        context = contextvars.copy_context()  # as a task's, taken at its start
        caller = asyncio.current_task(loop)
        if caller is not None:
            _leave_task(loop, caller)
        _enter_task(loop, host.task)
        try:
            waiting = context.run(coro.send, None)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # StopIteration, or what the coroutine raised
            # the host stays idle for the next start, unless the coroutine cancelled
            # its task (which then ends cancelled, as a task would) or a nested start
            # left a host of its own
            if self._idle is None and not host.task.cancelling():
                self._idle = host
            else:
                host.task.cancel()
            return None
        finally:
            _leave_task(loop, host.task)
            if caller is not None:
                _enter_task(loop, caller)
        host.task.set_name(name + suffix)
        host.take(coro, context, waiting)
        return host.task

    def close(self) -> None:
        """Cancel the idle host, if any (the worker stops)."""
        if self._idle is not None:
            self._idle.task.cancel()
            self._idle = None


class _Host(Coroutine[Any, Any, Any]):
    """The coroutine of a task that waits for work: a coroutine started eagerly, which
    it then drives to its end, in that coroutine's own context. Not an ``async def``:
    a task cancelled before its first step throws into its coroutine at once, and that
    has to reach the coroutine taken over, where it waits."""

    __slots__ = ("_context", "_coro", "_handed", "_ready", "_waiting", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._ready: asyncio.Future[None] = loop.create_future()
        self._coro: Coroutine[Any, Any, Any] | None = None
        self._context = contextvars.Context()
        self._waiting: Any = None
        self._handed = False  # whether the task waits on what the coroutine waits on
        self.task: asyncio.Task[Any] = loop.create_task(self, name=name)

    def take(
        self, coro: Coroutine[Any, Any, Any], context: contextvars.Context, waiting: Any
    ) -> None:
        self._coro, self._context, self._waiting = coro, context, waiting
        if not self._ready.done():
            self._ready.set_result(None)

    def send(self, value: Any) -> Any:
        coro = self._coro
        if coro is None:  # idle: the task waits for work
            ready = self._ready
            ready._asyncio_future_blocking = True  # the protocol of a future awaited
            return ready
        if not self._handed:
            self._handed = True
            return self._waiting  # a future the coroutine awaits, or None (a bare yield)
        return self._context.run(coro.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = typ if isinstance(typ, BaseException) else typ(val)
        coro = self._coro
        if coro is None:
            raise exc  # cancelled while idle
        if not self._handed:  # before the task waited on it: cancel it, as a task would
            self._handed = True
            if isinstance(self._waiting, asyncio.Future):
                self._waiting.cancel()
        return self._context.run(coro.throw, exc)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("the coroutine of a task, not to be awaited")
