"""The threads sync step functions run on, off the event loop (they may block).

``loop.run_in_executor`` costs, per call, a ``concurrent.futures.Future``, an asyncio
future chained to it with callbacks on both sides, and one ``call_soon_threadsafe``
(a write to the loop's wake-up pipe) to pass the result back. For a step function that
takes microseconds, that hop costs more than the orchestration around it; and a
thread per call in flight (64 executions, 64 threads) makes them fight for the GIL.

:class:`StepThreads` keeps one asyncio future per call and nothing else: a call is
handed to an idle thread, each waiting on a ``queue.SimpleQueue`` of its own; finished
calls are put on a list, and the first one put on an empty list schedules one
``call_soon_threadsafe`` that settles every future on the list at once. Under load,
many completions share one wake-up of the loop.

The idle threads are a stack: a call goes to the thread that went idle last, so calls
made one at a time all run on one thread, whose CPU and caches are still warm, however
many threads a busy spell started. (On one queue that every idle thread waits on, the
system wakes the one that waited longest: after 64 executions in flight had started a
few dozen threads, one execution of four plain functions took three times as long.)
A call made while others are in flight joins a backlog, and a thread that finishes a
call takes the oldest call of the backlog before it goes idle: the thread that holds
the GIL takes the calls of a burst one after the other, where waking a thread for each
would make them pass the GIL around. Such a call wakes one idle thread (with
``_LOOK``) unless one was woken and has not looked at the backlog yet. Both decisions
are made under one lock.

Few threads run quick functions best, and a function that blocks needs a thread of its
own. So a call finding no idle thread starts one only while there are fewer than
``EAGER``; beyond, it waits its turn, and a check every ``WATCH`` seconds while calls
wait wakes an idle thread, or starts one, for each waiting call if no call finished
since the last check (the threads are blocked, not busy), up to ``size`` threads. A
thread idle for ``RETIRE`` seconds stops while more than ``EAGER`` run.

A call made while no other is in flight (one execution of plain functions at a time)
runs on the CPU the loop's thread is on, where the platform lets a thread be pinned
(Linux): the loop sleeps as soon as it hands the call over, so the thread takes that
CPU at once and hands it back; left to itself the scheduler wakes the thread on an idle
CPU instead, and waking an idle CPU (in a virtual machine, a halted one) costs more
than the whole step. The loop's thread pins the idle thread before handing it the
call, so that it wakes up there: a thread pinning itself once awake would first wake
on the CPU of its last call, and when the loop has moved since, move after it, at
every step. Once calls overlap, the threads run anywhere again.

Even so, the hop there and back costs two thread switches plus the loop's own round:
the result's ``call_soon_threadsafe`` (a write to the loop's wake-up pipe), an epoll
wake-up, a turn of the loop to settle the future and another to resume the task. So a
lone call made while the loop has nothing else ready waits on the loop's thread, up to
``HOLD``, blocked on a lock the thread releases with the result in hand: a call that
finishes in time settles its future before ``run`` returns, and awaiting it does not
go through the loop at all. A call that takes longer goes on as any other (its result
comes back through the loop, its thread runs on any CPU), and the loop is free again:
a function that blocks holds the loop at most ``HOLD`` per call. The loop's ready queue
is asyncio's own (``_ready``; a loop without one, such as uvloop's, never waits): a
loop with callbacks ready is busy, and waiting there would make the calls of a burst
(64 executions in flight) run one after the other.
"""

from __future__ import annotations

import asyncio
import collections
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
RETIRE = 5.0  # seconds a thread beyond the EAGER ones stays idle before it stops
# seconds the loop's thread waits for a lone call: several quick steps' worth, short
# enough that a function that blocks barely holds the loop
HOLD = 0.0002


class _Reply:
    """Where a lone call's thread leaves its result while the loop's thread waits for
    it; ``waiting`` (guarded by the lock of the threads) turns False if it gave up."""

    __slots__ = ("handed", "raised", "ready", "value", "waiting")

    def __init__(self) -> None:
        self.ready = threading.Lock()
        self.ready.acquire()  # released by the thread once the result is here
        self.waiting = True
        self.handed = False  # the result is here (or about to be, once ready)
        self.raised = False
        self.value: Any = None


# a call: the future to settle, the function, its arguments, the CPU to run it on
# (None: any) and, for a lone call the loop's thread waits for, where its result goes
_Call = tuple[
    asyncio.Future[Any],
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
    int | None,
    _Reply | None,
]
# a finished call: the future, whether it raised, what it returned or raised
_Done = tuple[asyncio.Future[Any], bool, Any]


class _Look:
    """Handed to an idle thread instead of a call: take the calls of the backlog."""


_LOOK = _Look()


class _Thread:
    """One step thread: where it waits for its next call (None instead of a call stops
    it), and the CPU it is pinned to. Its pin is changed by the loop's thread while it
    is idle or once it stops waiting for its call, by itself when it takes a call."""

    __slots__ = ("cpu", "id", "inbox")

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[_Call | _Look | None] = queue.SimpleQueue()
        self.id = 0  # the system's id of the thread, set by the thread before its first call
        self.cpu: int | None = None  # None: any CPU

    def pin(self, cpu: int | None, anywhere: set[int]) -> None:
        """Run the thread on ``cpu`` from now on (None: on any CPU of ``anywhere``)."""
        try:
            os.sched_setaffinity(self.id, anywhere if cpu is None else {cpu})
        except OSError:  # a CPU taken away meanwhile: run anywhere
            cpu = None
        self.cpu = cpu


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
        self._lock = threading.Lock()  # guards what the threads change, below
        self._idle: list[_Thread] = []  # the idle threads, the last idle on top
        self._backlog: collections.deque[_Call] = collections.deque()  # calls not taken
        self._threads = 0  # threads running, idle or not
        self._pending = 0  # calls made and not finished (running or in the backlog)
        self._waking = False  # an idle thread was woken to look at the backlog, not there yet
        self._finished = 0  # calls finished, ever
        self._done: list[_Done] = []
        self._closed = False
        # the loop's thread only
        self._started = 0  # threads started, ever (their names)
        self._seen = 0  # calls finished at the last check
        self._watching = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: collections.deque[Any] | None = None  # the loop's ready callbacks
        # the CPUs a thread may run on when not pinned (None: no pinning here)
        self._anywhere = os.sched_getaffinity(0) if _current_cpu is not None else None

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` on one of the threads, in a copy of the caller's context;
        the future (of the running loop) gets what it returns or raises."""
        if self._closed:
            raise RuntimeError("the flow's step threads are shut down")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._ready = getattr(loop, "_ready", None)
        future: asyncio.Future[Any] = loop.create_future()
        cpu = None
        if _current_cpu is not None and self._pending == 0:
            cpu = _current_cpu()  # no other call in flight: run it where the loop is
            cpu = cpu if cpu >= 0 else None
        context = contextvars.copy_context()
        start = False
        thread: _Thread | None = None
        with self._lock:
            self._pending += 1
            lone = self._pending == 1
            if lone and self._idle:
                thread = self._idle.pop()  # handed the call itself
            else:
                self._backlog.append((future, context, fn, args, cpu, None))
                if not self._idle:
                    start = self._threads < min(EAGER, self.size)
                    if start:
                        self._threads += 1  # the new thread takes a call from the backlog
                elif not self._waking:  # calls made until it looks wait for it
                    thread, self._waking = self._idle.pop(), True
            spare = bool(self._idle) or self._threads < self.size
        if thread is not None:
            if not lone:
                thread.inbox.put(_LOOK)
                return future
            if cpu is not None and thread.cpu != cpu and self._anywhere is not None:
                thread.pin(cpu, self._anywhere)  # so that it wakes up on the loop's CPU
            if self._ready is not None and not self._ready:  # nothing else to do
                reply = _Reply()
                thread.inbox.put((future, context, fn, args, cpu, reply))
                self._hold(future, reply, thread)
            else:
                thread.inbox.put((future, context, fn, args, cpu, None))
        elif start:
            self._start_thread()
        elif not self._watching and spare:
            self._watching = True
            self._seen = self._finished
            loop.call_later(WATCH, self._watch)
        return future

    def _hold(self, future: asyncio.Future[Any], reply: _Reply, thread: _Thread) -> None:
        """Wait up to ``HOLD`` seconds for a lone call on the loop's thread; if it
        finished, settle its future, so that awaiting it does not go through the loop.
        Otherwise its result comes back through the loop, as other calls' do, and its
        thread, no longer alone on the loop's CPU, runs anywhere."""
        finished = False
        try:
            finished = reply.ready.acquire(timeout=HOLD)
        finally:  # also when interrupted (a signal's exception): the thread must know
            if not finished:
                with self._lock:
                    reply.waiting = False  # too late if the thread handed the result
                    finished = reply.handed
                if finished:
                    reply.ready.acquire()  # the thread is releasing it
                elif thread.cpu is not None and self._anywhere is not None:
                    thread.pin(None, self._anywhere)
        if not finished:
            return
        if reply.raised:
            future.set_exception(reply.value)
        else:
            future.set_result(reply.value)

    def _watch(self) -> None:
        """While calls wait: if none finished since the last check, the threads are
        blocked; wake an idle thread or start one for each waiting call (up to
        ``size`` threads)."""
        with self._lock:
            waiting = len(self._backlog)
            stuck = self._finished == self._seen
            woken = min(waiting, len(self._idle)) if stuck else 0
            idle = [self._idle.pop() for _ in range(woken)]
            more = min(waiting - woken, self.size - self._threads) if stuck else 0
            self._threads += more
            spare = bool(self._idle) or self._threads < self.size
        for thread in idle:
            thread.inbox.put(_LOOK)
        for _ in range(more):
            self._start_thread()
        self._seen = self._finished
        if waiting > woken + more and spare and not self._closed:
            asyncio.get_running_loop().call_later(WATCH, self._watch)
        else:
            self._watching = False

    def shutdown(self) -> None:
        """Stop the threads once they finish what they run; calls not started are
        cancelled. Does not wait (a function that hangs cannot be stopped). Called on
        the loop's thread."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            queued, self._backlog = self._backlog, collections.deque()
            idle, self._idle = self._idle, []
            self._pending -= len(queued)
            self._threads -= len(idle)
        for call in queued:
            call[0].cancel()
        for thread in idle:
            thread.inbox.put(None)

    def _start_thread(self) -> None:
        name = f"{self._name}-{self._started}"
        self._started += 1
        threading.Thread(target=self._work, args=(_Thread(),), name=name, daemon=True).start()

    def _work(self, thread: _Thread) -> None:
        thread.id = threading.get_native_id()
        anywhere = self._anywhere
        done: _Done | None = None
        reply: _Reply | None = None
        while True:
            # hand back what finished, the bookkeeping first (the loop, once woken, does
            # not wait for this thread); then the oldest call waiting, else go idle
            first = False
            handed = None  # the lock to release once the loop's thread may read the result
            with self._lock:
                if done is not None:
                    self._pending -= 1
                    self._finished += 1
                    if reply is not None and reply.waiting:
                        reply.handed, handed = True, reply.ready
                        reply.raised, reply.value = done[1], done[2]
                    else:
                        self._done.append(done)
                        first = len(self._done) == 1
                self._waking = False
                call = self._backlog.popleft() if self._backlog else None
                if call is None:
                    if self._closed:
                        self._threads -= 1
                    else:
                        self._idle.append(thread)
                stop = call is None and self._closed
            if handed is not None:
                handed.release()
            done = reply = None
            if first:
                self._wake()
            if stop:
                return
            if call is None:
                got = self._wait(thread)
                if got is None:
                    return
                if isinstance(got, _Look):
                    continue  # to the backlog, which a busy thread may have emptied
                call = got
            future, context, fn, args, cpu, reply = call
            if cpu is not None and (self._pending > 1 or (reply is not None and not reply.waiting)):
                cpu = None  # calls were made after it, or the loop went on: not alone
            if cpu != thread.cpu and anywhere is not None:
                thread.pin(cpu, anywhere)  # a call of the backlog, or calls overlap
            try:
                done = (future, False, context.run(fn, *args))
            except BaseException as exc:  # handed to the awaiting task, as run_in_executor does
                done = (future, True, exc)
            del call, future, context, fn, args

    def _wait(self, thread: _Thread) -> _Call | _Look | None:
        """The call handed to this idle thread, or ``_LOOK``; None: stop (shut down, or
        idle for ``RETIRE`` seconds while more than ``EAGER`` threads run)."""
        while True:
            try:
                return thread.inbox.get(timeout=RETIRE)
            except queue.Empty:
                with self._lock:
                    # not on the stack any more: a call (or a stop) is on its way
                    if self._threads > EAGER and thread in self._idle:
                        self._idle.remove(thread)
                        self._threads -= 1
                        return None

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
