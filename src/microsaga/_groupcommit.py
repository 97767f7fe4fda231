"""Group commit: units submitted while a commit is in flight share the next one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ._health import StoreHealth
from .errors import StoreError
from .hooks import CommitEvent, Hooks
from .stores.base import NewExecution, Store, Transition, TransitionResult

__all__ = ["Committer"]

Unit = NewExecution | Transition
Result = bool | TransitionResult


def _execution_id(unit: Unit) -> str:
    return unit.id if isinstance(unit, NewExecution) else unit.execution_id


class Committer:
    """Feeds a store's ``commit`` with batches; retries while the store is away.

    A unit's submitter gets its result only after the batch holding it committed.
    Retryable store errors (a restarting server, a locked file) are retried with
    backoff for up to ``retry_for`` seconds before the submitters get the error.
    """

    def __init__(
        self,
        store: Store,
        *,
        retry_for: float = 60.0,
        quiet: Callable[[], bool] | None = None,
        hooks: Hooks | None = None,
        health: StoreHealth | None = None,
    ) -> None:
        self.store = store
        self.health = health or StoreHealth()
        self.retry_for = retry_for
        # when the worker runs little or nothing else, a lone unit gains nothing from
        # waiting for company: the store may commit it at once (Store.commit_now)
        self.quiet = quiet or (lambda: False)
        self.hooks = hooks or Hooks()
        self._queue: list[tuple[Unit, asyncio.Future[Result]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._drains = 0  # drain loops running (counted from their creation)
        self._committing = 0  # drains waiting on the store now

    async def submit(self, unit: Transition) -> TransitionResult:
        """Commit a transition of an execution."""
        result = self.now(unit)
        if result is None:
            result = await self.later(unit)
        assert isinstance(result, TransitionResult)
        return result

    def now(self, unit: Unit) -> Result | None:
        """The unit committed at once, when the store can (Store.commit_now) and the
        unit gains nothing from waiting for company; else None (then :meth:`later`).
        A new execution's result is False when an execution with its id exists.

        A caller on the hot path tries this first: a run on the memory store commits
        every transition this way, without making a coroutine for it."""
        store = self.store
        if store.batching and (self._queue or self._drains or not self.quiet()):
            return None
        if not self.hooks.store_committed:
            return store.commit_now(unit)
        started = time.perf_counter()
        done = store.commit_now(unit)
        if done is not None:
            self._committed(1, started)
        return done

    async def later(self, unit: Unit) -> Result:
        """The unit committed in the next batch: what :meth:`now` could not commit."""
        store = self.store
        if not store.batching:
            return (await self._commit([unit]))[0]
        if not self._queue and not self._drains and self.quiet():
            return await self._alone(unit)
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((unit, fut))
        # a store that takes several commits at once (PostgreSQL) gets the next batch
        # while one is in flight, rather than after it
        if self._drains == self._committing and self._drains < store.commit_concurrency:
            self._start_drain()
        return await fut

    async def _alone(self, unit: Unit) -> Result:
        """A lone unit committed in its submitter's task, as a drain of its own: no
        task to start and switch to. Units submitted meanwhile start drains beside it,
        or after it when the store takes one commit at a time."""
        self._drains += 1
        self._committing += 1
        try:
            return (await self._commit([unit]))[0]
        finally:
            self._committing -= 1
            self._drains -= 1
            if (
                self._queue
                and self._drains == self._committing
                and self._drains < self.store.commit_concurrency
            ):
                self._start_drain()

    def _committed(self, units: int, started: float) -> None:
        event = CommitEvent(units=units, seconds=time.perf_counter() - started)
        self.hooks.emit(self.hooks.store_committed, event)

    def _start_drain(self) -> None:
        self._drains += 1
        task = asyncio.get_running_loop().create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[tuple[Unit, asyncio.Future[Result]]]:
        """The next batch: the whole queue or, for a store with ``batch_split``, its
        share of a longer queue (the queue split evenly among the commits the store
        can still take, each of at least ``batch_split`` units), with every other
        queued unit of its executions, in order: the units of one execution are
        applied one after another, in one batch."""
        queue, split = self._queue, self.store.batch_split
        if split is None or len(queue) <= split:
            self._queue = []
            return queue
        free = max(1, self.store.commit_concurrency - self._committing)
        share = max(split, -(-len(queue) // free))
        batch = queue[:share]
        ids = {_execution_id(unit) for unit, _ in batch}
        rest: list[tuple[Unit, asyncio.Future[Result]]] = []
        for item in queue[share:]:
            (batch if _execution_id(item[0]) in ids else rest).append(item)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        try:
            if self.store.commit_concurrency == 1:
                # a store taking one commit at a time: the first batch waits a turn of
                # the loop for what that turn brings (results of sync step functions
                # coming back from their threads), so that fewer, larger commits go out
                await asyncio.sleep(0)
            while self._queue:
                batch = self._take()
                if self._queue and self._drains < self.store.commit_concurrency:
                    self._start_drain()  # the rest goes beside this batch, not after it
                self._committing += 1
                try:
                    results = await self._commit([unit for unit, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(
                                exc if isinstance(exc, Exception) else StoreError("cancelled")
                            )
                    if not isinstance(exc, Exception):
                        raise
                    continue
                finally:
                    self._committing -= 1
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._drains -= 1  # in the same step as the empty queue was seen

    async def _commit(self, units: list[Unit]) -> list[Result]:
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                results = await self.store.commit(units)
            except StoreError as exc:
                if not exc.retryable or time.monotonic() + delay > deadline:
                    raise
                self.health.failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.health.ok()
            if self.hooks.store_committed:
                self._committed(len(units), started)
            return results
