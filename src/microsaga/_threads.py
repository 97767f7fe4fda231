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

One thread runs quick functions best (threads taking turns at the GIL cost more than
such calls), and a function that blocks needs a thread of its own. So a call finding
no idle thread starts one only while there are fewer than ``EAGER``; beyond, it waits
its turn, and a look every ``WATCH`` seconds while calls wait decides from what the
threads did since the last look (:meth:`StepThreads._watch`): blocked (in calls most
of the time but seldom on a CPU, which each thread's CPU clock tells), as many threads
as are busy are woken or started (at most one per waiting call); computing
(in calls nearly all the time, on a CPU at least half of it) while fewer threads are
busy than there are CPUs, one more, since calls that let go of the GIL run side by
side; up to ``size`` threads. A thread idle for ``RETIRE`` seconds stops while more
than ``EAGER`` run.

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
import time
from collections.abc import Callable
from typing import Any

EAGER = 1  # threads started at once, when a call finds none idle
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

    __slots__ = ("calls", "clock", "cpu", "id", "inbox", "seen", "since")

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[_Call | _Look | None] = queue.SimpleQueue()
        self.id = 0  # the system's id of the thread, set by the thread before its first call
        self.cpu: int | None = None  # None: any CPU
        # the clock of the CPU time the thread used (set by the thread; None: unknown)
        self.clock: int | None = None
        self.calls = 0.0  # seconds spent in finished calls, set by the thread
        self.since = 0.0  # time.perf_counter() when its call started (0: in none)
        self.seen = (0.0, 0.0)  # seconds in calls and on a CPU at the last look

    def look(self) -> tuple[float, float]:
        """The seconds the thread spent in calls, and on a CPU, since the last look."""
        # read before the start of its call: a call ending meanwhile is counted at the
        # next look, where read after it would be counted twice
        calls, since = self.calls, self.since
        in_calls = calls + (time.perf_counter() - since if since else 0.0)
        cpu = self.seen[1]
        if self.clock is not None:
            try:
                cpu = time.clock_gettime(self.clock)
            except OSError:  # the thread ended meanwhile
                pass
        before, self.seen = self.seen, (in_calls, cpu)
        return max(0.0, in_calls - before[0]), max(0.0, cpu - before[1])

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
# whether a thread's CPU time can be read from another thread (Linux, the BSDs)
_thread_clock = hasattr(time, "pthread_getcpuclockid")
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
        self._all: set[_Thread] = set()  # every thread running, idle or not
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
        self._looked_at = 0.0  # time.perf_counter() at the last look at the threads
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
            self._look()  # counted from now on
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

    def _look(self) -> tuple[float, float, float]:
        """The seconds since the last look, and the seconds the threads spent in calls
        and on a CPU meanwhile (on a CPU: 0 where a thread's CPU time is unknown)."""
        with self._lock:
            threads = list(self._all)
        now = time.perf_counter()
        elapsed, self._looked_at = now - self._looked_at, now
        in_calls = on_cpu = 0.0
        for thread in threads:
            calls, cpu = thread.look()
            in_calls += calls
            on_cpu += cpu
        return elapsed, in_calls, on_cpu

    def _watch(self) -> None:
        """While calls wait, look at what the threads did since the last look. Blocked
        (they spent at least half the time in calls, and under a quarter of that on a
        CPU: waiting for the network, a lock, a sleep; where a thread's CPU time cannot
        be read, no call finished): wake idle threads or start new ones, as many as are
        busy (doubling them at each look) and no more than calls wait, so that one
        blocked call does not start a thread for each of the quick calls queued behind
        it. Computing (in calls nearly all the time, on a CPU at least half of it)
        while fewer threads are busy than there are CPUs: one more, since calls that
        let go of the GIL (hashing, compressing) run side by side; a call holding the
        GIL for long starts no crowd. Else none: threads that only wait for the GIL
        between quick calls spend little of their time in calls. Up to ``size``."""
        elapsed, in_calls, on_cpu = self._look()
        with self._lock:
            waiting = len(self._backlog)
            busy = self._threads - len(self._idle)
            if _thread_clock:
                blocked = in_calls >= elapsed / 2 and on_cpu < in_calls / 4
            else:
                blocked = self._finished == self._seen
            if blocked:
                wanted = min(waiting, max(1, busy))
            elif busy < _CPUS and in_calls >= 0.9 * busy * elapsed and on_cpu >= elapsed / 2:
                wanted = 1
            else:
                wanted = 0
            woken = min(wanted, len(self._idle))
            idle = [self._idle.pop() for _ in range(woken)]
            more = min(wanted - woken, self.size - self._threads)
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
        if _thread_clock:
            thread.clock = time.pthread_getcpuclockid(threading.get_ident())
        with self._lock:
            self._all.add(thread)
        try:
            self._serve(thread)
        finally:
            with self._lock:
                self._all.discard(thread)

    def _serve(self, thread: _Thread) -> None:
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
            thread.since = time.perf_counter()
            try:
                done = (future, False, context.run(fn, *args))
            except BaseException as exc:  # handed to the awaiting task, as run_in_executor does
                done = (future, True, exc)
            thread.calls += time.perf_counter() - thread.since
            thread.since = 0.0
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
