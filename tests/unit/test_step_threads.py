"""The threads a flow runs sync step functions on (``microsaga._threads.StepThreads``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from microsaga import _threads
from microsaga._threads import EAGER, StepThreads
from tests.helpers import eventually


def _alive(prefix: str) -> int:
    return sum(t.name.startswith(f"{prefix}-") for t in threading.enumerate())


async def test_a_lone_call_after_a_busy_spell_runs_on_the_thread_used_last() -> None:
    threads = StepThreads(32, name="lifo")
    try:
        width = 12  # blocked together: more threads than the EAGER ones
        together = threading.Barrier(width, timeout=20)
        await asyncio.gather(*(threads.run(together.wait) for _ in range(width)))
        assert _alive("lifo") >= width
        lone = [await threads.run(lambda: threading.current_thread().name) for _ in range(20)]
        # one thread, kept warm, not the longest idle of the dozen each time
        assert len(set(lone)) == 1
    finally:
        threads.shutdown()


_PINNABLE = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1


@pytest.mark.skipif(not _PINNABLE, reason="threads cannot be pinned to a CPU here")
async def test_a_lone_call_runs_on_one_cpu_and_overlapping_calls_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the loop's thread waits for a lone call until it is done: on a busy machine the
    # thread may not start within HOLD, and a call not waited for runs anywhere
    hold = _threads.HOLD
    monkeypatch.setattr(_threads, "HOLD", 20.0)
    everywhere = os.sched_getaffinity(0)
    threads = StepThreads(8, name="pin")
    try:
        for _ in range(5):  # alone: on the loop's CPU, one of the process's
            allowed = await threads.run(os.sched_getaffinity, 0)
            assert len(allowed) == 1
            assert allowed <= everywhere
        monkeypatch.setattr(_threads, "HOLD", hold)  # or it would wait for the first below
        gate = threading.Barrier(2, timeout=20)

        def overlapping() -> set[int]:
            gate.wait()  # both calls in flight at once
            return os.sched_getaffinity(0)

        both = await asyncio.gather(threads.run(overlapping), threads.run(overlapping))
        assert both == [everywhere, everywhere]
        monkeypatch.setattr(_threads, "HOLD", 20.0)
        assert len(await threads.run(os.sched_getaffinity, 0)) == 1  # alone again
    finally:
        threads.shutdown()


async def test_blocked_calls_do_not_stop_the_others() -> None:
    threads = StepThreads(16, name="blocked")
    release = threading.Event()
    try:
        held = [threads.run(release.wait, 30) for _ in range(EAGER + 2)]
        quick = await asyncio.wait_for(
            asyncio.gather(*(threads.run(abs, -i) for i in range(5))), 20
        )
        assert quick == list(range(5))
        assert not any(f.done() for f in held)
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*held), 20) == [True] * (EAGER + 2)
    finally:
        release.set()
        threads.shutdown()


async def test_a_call_behind_blocked_ones_is_taken_by_an_idle_thread() -> None:
    threads = StepThreads(3, name="behind")  # every thread started, one of them idle
    release = threading.Event()
    try:
        together = threading.Barrier(3, timeout=20)
        await asyncio.gather(*(threads.run(together.wait) for _ in range(3)))
        assert _alive("behind") == 3
        # made in one burst: the second wakes an idle thread to look at the backlog,
        # the third waits for it, and both threads it could wait for block
        held = [threads.run(release.wait, 30), threads.run(release.wait, 30)]
        quick = threads.run(lambda: threading.current_thread().name)
        name = await asyncio.wait_for(quick, 20)
        assert name.startswith("behind-")
        assert not any(f.done() for f in held)
    finally:
        release.set()
        threads.shutdown()


async def test_calls_are_never_lost_while_threads_come_and_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_threads, "RETIRE", 0.001)  # idle threads beyond EAGER stop at once
    threads = StepThreads(24, name="churn")
    try:
        for wave in range(10):
            width = 8 + wave
            together = threading.Barrier(width, timeout=20)  # grows the pool to width
            blocked = [threads.run(together.wait) for _ in range(width)]
            quick = [threads.run(pow, i, 2) for i in range(200)]
            assert await asyncio.wait_for(asyncio.gather(*quick), 30) == [i * i for i in range(200)]
            assert sorted(await asyncio.wait_for(asyncio.gather(*blocked), 30)) == list(
                range(width)
            )
            for i in range(50):  # one at a time, while the threads beyond EAGER retire
                assert await threads.run(pow, i, 3) == i**3
                await asyncio.sleep(0.001)
        # the busy spells over, the pool shrinks back
        await eventually(lambda: _alive("churn") <= EAGER, timeout=10)
        assert await threads.run(str, 7) == "7"
    finally:
        threads.shutdown()


async def test_shutdown_cancels_the_calls_not_started() -> None:
    threads = StepThreads(1, name="closing")
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(30)
        return "finished"

    running = threads.run(hold)
    queued = [threads.run(str, i) for i in range(3)]  # one thread: these wait their turn
    await asyncio.to_thread(started.wait, 20)
    threads.shutdown()
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="shut down"):
        threads.run(str, 1)
    release.set()
    # the call already running still hands its result back, then its thread stops
    assert await asyncio.wait_for(running, 20) == "finished"
    await eventually(lambda: _alive("closing") == 0, timeout=10)


async def test_a_quick_lone_call_is_settled_before_run_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_threads, "HOLD", 30.0)  # however slow the machine, it is waited for
    threads = StepThreads(4, name="held")
    name = contextvars.ContextVar("name")
    try:
        await threads.run(str, 0)  # a thread started, now idle
        name.set("caller")
        settled = threads.run(name.get)
        assert settled.done()  # awaiting it does not go through the loop
        assert await settled == "caller"
        failed = threads.run(int, "x")
        assert failed.done()
        with pytest.raises(ValueError, match="invalid literal"):
            await failed
    finally:
        threads.shutdown()


async def test_a_call_is_not_waited_for_while_the_loop_has_other_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_threads, "HOLD", 30.0)
    threads = StepThreads(4, name="busy")
    release = threading.Event()
    try:
        await threads.run(str, 0)
        asyncio.get_running_loop().call_soon(lambda: None)  # the loop has work ready
        passed = threads.run(str, 1)
        assert not passed.done()
        assert await passed == "1"
        with monkeypatch.context() as short:
            short.setattr(_threads, "HOLD", 0.001)
            held = threads.run(release.wait, 30)  # lone, but outlasts the wait for it
        overlapping = threads.run(str, 2)  # made while another call is in flight
        assert not overlapping.done()
        assert await asyncio.wait_for(overlapping, 20) == "2"
        release.set()
        assert await asyncio.wait_for(held, 20) is True
    finally:
        release.set()
        threads.shutdown()


async def test_a_lone_call_that_blocks_leaves_the_loop_free() -> None:
    threads = StepThreads(4, name="free")
    opened = threading.Event()
    try:
        await threads.run(str, 0)
        waiting = threads.run(opened.wait, 30)  # only a task on the loop opens it

        async def opener() -> None:
            opened.set()

        assert await asyncio.wait_for(asyncio.gather(waiting, opener()), 20) == [True, None]
        # a call given up by its caller still finishes, and the threads go on
        opened.clear()
        abandoned = threads.run(opened.wait, 30)
        abandoned.cancel()
        opened.set()
        assert await asyncio.wait_for(threads.run(str, 3), 20) == "3"
    finally:
        opened.set()
        threads.shutdown()


class _Inside:
    """How many calls are inside a function at once, at most, and on which threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.names: collections.Counter[str] = collections.Counter()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.names[threading.current_thread().name] += 1

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


async def _in_flight(
    threads: StepThreads, fn: Callable[[], object], count: int, width: int
) -> None:
    slots = asyncio.Semaphore(width)

    async def one() -> None:
        async with slots:
            await threads.run(fn)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 60)


async def test_calls_that_wait_briefly_each_get_a_thread() -> None:
    """Calls that wait for the network (here a 4 ms sleep) but finish all the time, so
    that some call always finished since the last look: the threads are blocked
    nonetheless (in calls, off the CPU), and the calls waiting get threads of their own
    instead of queueing behind a few (a service's latency times the calls in flight)."""
    import time

    inside = _Inside()

    def waits() -> None:
        inside.enter()
        time.sleep(0.004)
        inside.leave()

    threads = StepThreads(64, name="brief")
    try:
        await _in_flight(threads, waits, 400, 32)
    finally:
        threads.shutdown()
    assert inside.most >= 16


async def test_quick_calls_made_together_keep_to_one_thread() -> None:
    """Threads taking turns at the GIL for calls of microseconds cost more than the
    calls: many made at once run one after the other on one thread (all of them but
    for a stall of the machine, which looks like a blocked thread for a moment)."""
    inside = _Inside()

    def quick() -> None:
        inside.enter()
        inside.leave()

    threads = StepThreads(64, name="quick")
    try:
        for _ in range(5):
            await _in_flight(threads, quick, 2000, 64)
    finally:
        threads.shutdown()
    assert inside.names.most_common(1)[0][1] >= 0.9 * 5 * 2000


@contextlib.asynccontextmanager
async def _one_busy_three_waiting(name: str) -> AsyncIterator[StepThreads]:
    """Step threads with one thread blocked in a call and three calls waiting, whose
    looks the test makes (not a timer)."""
    threads = StepThreads(16, name=name)
    threads._watching = True
    release = threading.Event()
    try:
        held = [threads.run(release.wait, 30) for _ in range(4)]
        await eventually(lambda: _alive(name) == 1 and len(threads._backlog) == 3)
        yield threads
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*held), 20)
        threads.shutdown()


@pytest.mark.parametrize(
    ("seen", "more"),
    [
        # seconds since the last look, in calls, on a CPU: the threads started
        # blocked: in calls, off the CPU: as many as are busy (one), not one per waiting
        # call (three)
        ((0.01, 0.0100, 0.0000), 1),
        ((0.01, 0.0100, 0.0095), 1),  # computing: one more, which may use another CPU
        ((0.01, 0.0010, 0.0010), 0),  # quick calls, taking turns at the GIL: none
    ],
)
async def test_what_the_threads_did_decides_how_many_more_start(
    monkeypatch: pytest.MonkeyPatch, seen: tuple[float, float, float], more: int
) -> None:
    """The look made while calls wait, every ``WATCH`` seconds, given what one busy
    thread did since the last look (calls finished meanwhile, so that only what they
    did decides)."""
    if seen[2] > 0.005 and _threads._CPUS < 2:
        pytest.skip("one more thread computing helps only with a second CPU")
    if more and not _threads._thread_clock:
        pytest.skip("threads' CPU time cannot be read here")
    async with _one_busy_three_waiting("look") as threads:
        monkeypatch.setattr(threads, "_look", lambda: seen)
        threads._seen = threads._finished - 1  # a call finished since the last look
        threads._watch()
        assert threads._threads == 1 + more


async def test_one_blocked_call_does_not_start_a_thread_per_quick_call_behind_it() -> None:
    """A call that blocks for long while many quick calls queue behind it: one more
    thread takes the quick ones, rather than one thread each (up to the flow's
    concurrency), all then taking turns at the GIL."""
    release = threading.Event()
    threads = StepThreads(64, name="behind-one")
    try:
        held = threads.run(release.wait, 30)
        await eventually(lambda: _alive("behind-one") == 1)
        quick = await asyncio.wait_for(
            asyncio.gather(*(threads.run(abs, -i) for i in range(200))), 20
        )
        assert quick == list(range(200))
        assert not held.done()
        # two, but for a stall of the machine at a look (which doubles them)
        assert _alive("behind-one") <= 8
    finally:
        release.set()
        threads.shutdown()


async def test_without_cpu_clocks_no_call_finished_is_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a thread's CPU time cannot be read, a look at which no call finished since
    the last one counts the threads as blocked: one more per busy thread."""
    monkeypatch.setattr(_threads, "_thread_clock", False)
    async with _one_busy_three_waiting("clockless") as threads:
        monkeypatch.setattr(threads, "_look", lambda: (0.01, 0.0, 0.0))
        threads._seen = threads._finished  # no call finished since the last look
        threads._watch()
        assert threads._threads == 2
        threads._watch()  # still none finished: two busy, two more
        assert threads._threads == 4
