"""The threads sync step functions run on, off the event loop (they may block).

``loop.run_in_executor`` costs, per call, a ``concurrent.futures.Future``, an asyncio
future chained to it with callbacks on both sides, and one ``call_soon_threadsafe``
(a write to the loop's wake-up pipe) to pass the result back. For a step function that
takes microseconds, that hop costs more than the orchestration around it; and a
thread per call in flight (64 executions, 64 threads) makes them fight for the GIL.

:class:`StepThreads` keeps one asyncio future per call and nothing else: a call goes
on a ``queue.SimpleQueue`` that daemon threads take calls from; finished calls are put
on a list, and the first one put on an empty list schedules one
``call_soon_threadsafe`` that settles every future on the list at once. Under load,
many completions share one wake-up of the loop.

Few threads run quick functions best, and a function that blocks needs a thread of its
own. So a call finding no idle thread starts one only while there are fewer than
``EAGER``; beyond, it waits its turn, and a check every ``WATCH`` seconds while calls
wait starts a thread for each waiting call if no call finished since the last check
(the threads are blocked, not busy), up to ``size``.

A call made while no other is in flight (one execution of plain functions at a time)
runs on the CPU the loop's thread is on, where the platform lets a thread be pinned
(Linux): the loop sleeps as soon as it hands the call over, so the thread takes that
CPU at once and hands it back; left to itself the scheduler wakes the thread on an idle
CPU instead, and waking an idle CPU (in a virtual machine, a halted one) costs more
than the whole step. Once calls overlap, the threads run anywhere again.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

EAGER = 4  # threads started at once, when a call finds none idle
# seconds between checks for blocked threads while calls wait: longer than the GIL's
# switch interval (5 ms), or threads only waiting for the GIL would look blocked
WATCH = 0.01

# a call: the future to settle, the function, its arguments and the CPU to run it on
# (None: any); None instead of a call stops the thread
_Call = tuple[
    asyncio.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...], int | None
]
# a finished call: the future, whether it raised, what it returned or raised
_Done = tuple[asyncio.Future[Any], bool, Any]


def _cpu_probe() -> Callable[[], int] | None:
    """``sched_getcpu`` where threads can be pinned to a CPU (Linux), else None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        import ctypes

        getcpu = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    getcpu.argtypes = []
    getcpu.restype = ctypes.c_int
    return getcpu


_current_cpu = _cpu_probe()


class StepThreads:
    """At most ``size`` daemon threads running sync functions for one event loop.

    Args:
        size: the most threads (each blocked function holds one).
        name: the threads' name prefix.
    """

    def __init__(self, size: int, name: str = "microsaga-step") -> None:
        self.size = max(1, size)
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call, less the calls queued for them
        self._finished = 0  # calls finished, ever
        self._seen = 0  # ... at the last check
        self._watching = False
        self._lock = threading.Lock()
        self._done: list[_Done] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` on one of the threads, in a copy of the caller's context;
        the future (of the running loop) gets what it returns or raises."""
        if self._closed:
            raise RuntimeError("the flow's step threads are shut down")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
        future: asyncio.Future[Any] = loop.create_future()
        cpu = None
        if _current_cpu is not None and self._idle == len(self._threads):
            cpu = _current_cpu()  # no other call in flight: run it where the loop is
            cpu = cpu if cpu >= 0 else None
        self._calls.put((future, contextvars.copy_context(), fn, args, cpu))
        with self._lock:
            self._idle -= 1
            waits = self._idle < 0
            start = waits and len(self._threads) < min(EAGER, self.size)
            if start:
                self._idle += 1  # the new thread takes it
        if start:
            self._start_thread()
        elif waits and not self._watching and len(self._threads) < self.size:
            self._watching = True
            self._seen = self._finished
            loop.call_later(WATCH, self._watch)
        return future

    def _watch(self) -> None:
        """While calls wait: if none finished since the last check, the threads are
        blocked; start one for each waiting call (up to ``size``)."""
        with self._lock:
            waiting = -self._idle
            stuck = self._finished == self._seen
            more = min(waiting, self.size - len(self._threads)) if stuck else 0
            self._idle += max(0, more)
        for _ in range(more):
            self._start_thread()
        self._seen = self._finished
        if waiting - max(0, more) > 0 and len(self._threads) < self.size and not self._closed:
            asyncio.get_running_loop().call_later(WATCH, self._watch)
        else:
            self._watching = False

    def shutdown(self) -> None:
        """Stop the threads once they finish what they run; calls not started are
        cancelled. Does not wait (a function that hangs cannot be stopped). Called on
        the loop's thread."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                call[0].cancel()
        for _ in self._threads:
            self._calls.put(None)

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        calls = self._calls
        anywhere = os.sched_getaffinity(0) if _current_cpu is not None else None
        pinned: int | None = None
        while True:
            call = calls.get()
            if call is None:
                return
            future, context, fn, args, cpu = call
            if cpu is not None and self._idle != len(self._threads) - 1:
                cpu = None  # calls were queued after it (a fan-out): not alone after all
            if cpu != pinned and anywhere is not None:
                pinned = cpu
                try:
                    os.sched_setaffinity(0, anywhere if cpu is None else {cpu})
                except OSError:  # a CPU taken away meanwhile: run anywhere
                    pinned = None
            try:
                done: _Done = (future, False, context.run(fn, *args))
            except BaseException as exc:  # handed to the awaiting task, as run_in_executor does
                done = (future, True, exc)
            # the bookkeeping first: the loop, once woken, does not wait for this thread
            with self._lock:
                self._idle += 1
                self._finished += 1
                self._done.append(done)
                first = len(self._done) == 1
            if first:
                self._wake()
            del call, future, context, fn, args, cpu, done

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the loop is closed: nobody awaits these futures
                pass

    def _settle(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for future, raised, value in done:
            if future.cancelled():
                continue
            if raised:
                future.set_exception(value)
            else:
                future.set_result(value)
