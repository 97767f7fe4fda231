"""Live changes of executions, for ``GET /api/executions/{id}/events`` (Server-Sent Events).

One :class:`Feed` serves every subscriber of an app. It keeps, for each execution that
someone watches, the statuses last sent, and finds what changed by reading the
execution again: one read per execution and view (every run of its maps, or a given
``map_runs``: its maps of more runs in brief) however many clients watch it, and the
events found are encoded once and handed to every subscriber's queue. Reads happen

- at once (coalesced) when this process changes the execution, or :data:`READ_PAUSE`
  times as long as its last read took after that read (a map of 10,000 runs changes
  hundreds of times a second, and each read of it is long): a :class:`~microsaga.Hook`
  added to the flow while anyone watches (``flow.add_hook``), and the API's own
  suspend/resume/abort calls;
- when the store signals a change (``Store.watch``: PostgreSQL's ``LISTEN``), at most
  every :data:`MIN_GAP` seconds;
- and for every watched execution once per ``interval`` (1 s), which is how changes
  made by workers in other processes arrive when the store does not signal them.

Changes quicker than a read (a step RUNNING then SUCCESS between two reads) arrive as
one event with the latest state: a client never misses a final status, and the data of
each event is the whole step as it is now. A subscriber that does not keep up (its
queue full) is dropped, and its stream ends; reconnecting gives the current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .._aio import wait_event
from ..errors import ExecutionNotFoundError, MicrosagaError, one_line
from ..execution import Execution, StepRun
from ..hooks import ExecutionEvent, Hook, StepEvent
from ..observability.logs import about
from ..status import Status
from ..stores.base import MapBrief
from . import models

if TYPE_CHECKING:
    from ..flow import Flow

__all__ = ["Feed", "Subscription", "read_in_brief", "settled", "sse"]

log = logging.getLogger("microsaga.api")

MIN_GAP = 0.1  # seconds between two reads of everything that a store signal starts
READS_AT_ONCE = 16  # executions read side by side in one sweep
READ_PAUSE = 3  # an execution read in t seconds is read for its changes again t * 3 later
HEARTBEAT = 15.0  # seconds of silence after which a stream sends a comment

_encoder = msgspec.json.Encoder()


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event (msgspec's JSON has no newline, so one data line)."""
    return b"event: " + event.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


def _step_key(run: StepRun) -> tuple[str, str | None, int]:
    """What makes a step's change worth an event: its status, its compensation's, its
    attempts (a retry of a RUNNING step)."""
    comp = run.compensation.status.name if run.compensation is not None else None
    return (run.status.name, comp, run.attempts)


# what a stream shows: an execution, and its map_runs (None: every run of its maps)
_View = tuple[str, int | None]


class Subscription:
    """One client's stream: the events for it, in order, then the end of the stream."""

    def __init__(self, feed: Feed, view: _View, size: int) -> None:
        self.feed = feed
        self.view = view
        self.execution_id = view[0]
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.closed = False

    def put(self, chunk: bytes) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(chunk)
        except asyncio.QueueFull:  # too slow: drop it; it reconnects for the current state
            log.info(
                "an event stream of %s fell behind; closing it",
                self.execution_id,
                extra=about(self.execution_id),
            )
            self.close()

    def close(self) -> None:
        """End the stream (after the events already queued, unless it fell behind)."""
        if self.closed:
            return
        self.closed = True
        if self._queue.full():
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def stream(self) -> AsyncIterator[bytes]:
        """The bytes to send: events, a comment line after each quiet ``HEARTBEAT``
        (proxies keep the connection, the server notices a client gone), until the end."""
        try:
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        chunk = await self._queue.get()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if chunk is None:
                    return
                yield chunk
        finally:
            self.feed.unsubscribe(self)


@dataclass(slots=True)
class _Watched:
    """An execution someone watches: what its subscribers were last told."""

    status: str
    steps: dict[str, tuple[str, str | None, int]]
    snapshot: list[bytes]  # the current state as events, for a new subscriber
    maps: dict[str, models.MapRuns]  # its maps in brief (with map_runs)
    subscribers: set[Subscription] = field(default_factory=set)
    not_before: float = 0.0  # loop time before which its changes are not read


def _events(
    info: Execution, before: _Watched | None, briefs: Mapping[str, MapBrief] | None = None
) -> tuple[list[bytes], _Watched]:
    """The events from ``before`` to ``info``, and the new state (all of it as events
    when ``before`` is None; steps that never started are left out then). With
    ``briefs`` (read with ``map_runs``: ``info`` has only their listed runs), a map of
    more runs is a ``map`` event and the events of its listed runs (a run newly listed
    has its event even if it did not change)."""
    change = sse(
        "execution",
        models.ExecutionChange(
            id=info.id,
            workflow_id=info.workflow_id,
            status=info.status.name,
            error=info.error,
            updated_at=info.updated_at,
        ),
    )
    snapshot = [change]
    status = info.status.name
    events = [] if before is not None and before.status == status else [change]
    maps: dict[str, models.MapRuns] = {}
    listed: set[str] = set()  # runs newly listed
    if briefs is not None:
        maps = {map_id: models.map_runs(brief) for map_id, brief in briefs.items()}
        listed = {r for brief in maps.values() for r in brief.listed}
        if before is not None:
            listed.difference_update(r for brief in before.maps.values() for r in brief.listed)
    keys = {}
    for sid, run in info.steps.items():
        key = keys[sid] = _step_key(run)
        if key == ("PENDING", None, 0):
            continue
        event = sse(
            "step",
            models.StepChange(execution_id=info.id, step_id=sid, step=models.step_run(run)),
        )
        snapshot.append(event)
        if before is None or before.steps.get(sid) != key or sid in listed:
            events.append(event)
    for map_id, brief in maps.items():
        event = sse("map", models.MapChange(execution_id=info.id, step_id=map_id, runs=brief))
        snapshot.append(event)
        if before is None or before.maps.get(map_id) != brief:
            events.append(event)
    # the execution's own change last: a client that sees it stop has every step's event
    if events and events[0] is change and len(events) > 1:
        events.append(events.pop(0))
    return events, _Watched(status, keys, snapshot, maps)


def settled(info: Execution, briefs: Mapping[str, MapBrief] | None = None) -> bool:
    """Whether the execution has stopped and nothing of it runs any more: a suspended
    execution's running steps still finish and are recorded. ``briefs``: the maps
    whose runs ``info`` left out."""
    if not info.status.stopped:
        return False
    for brief in (briefs or {}).values():
        if Status.RUNNING in brief.statuses or Status.RUNNING in brief.compensations:
            return False
    for run in info.steps.values():
        if run.status is Status.RUNNING:
            return False
        if run.compensation is not None and run.compensation.status is Status.RUNNING:
            return False
    return True


async def read_in_brief(
    flow: Flow, execution_id: str, map_runs: int
) -> tuple[Execution, dict[str, MapBrief]]:
    """The execution with its maps of more than ``map_runs`` runs in brief, counted by
    the store, which reads only the runs it gives (``Store.get_execution_in_brief``;
    headers unredacted: the API shows none).

    Raises:
        ExecutionNotFoundError: unknown id.
    """
    found = await flow.store.get_execution_in_brief(execution_id, map_runs)
    if found is None:
        raise ExecutionNotFoundError(execution_id)
    return found


def _end(status: str | None, execution_id: str) -> bytes:
    """The last event of a stream: the status the execution stopped with (null when it
    was deleted meanwhile)."""
    return sse("end", {"id": execution_id, "status": status})


class _FeedHook(Hook):
    """Changes this process makes: the executions they concern are read again now."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    def execution_status(self, event: ExecutionEvent) -> None:
        self.feed.touch(event.execution_id)

    def step_started(self, event: StepEvent) -> None:
        self.feed.touch(event.execution_id)

    def step_recorded(self, event: StepEvent) -> None:
        self.feed.touch(event.execution_id)


class Feed:
    """The live changes of the executions that clients watch (see the module's text).

    Args:
        flow: an open flow.
        interval: seconds between two reads of every watched execution.
        queue_size: events a subscriber may have waiting, beyond the current state it
            starts with, before it is dropped.
    """

    def __init__(self, flow: Flow, *, interval: float = 1.0, queue_size: int = 1000) -> None:
        self.flow = flow
        self.interval = interval
        self.queue_size = queue_size
        self._watched: dict[_View, _Watched] = {}
        self._dirty: set[_View] = set()
        self._views: dict[str, set[_View]] = {}  # the watched views of each execution
        self._wake = asyncio.Event()
        self._sweep_at = 0.0  # when to read every watched execution next (loop time)
        self._task: asyncio.Task[None] | None = None
        self._hook = _FeedHook(self)
        self._hooked = False
        self._watching_store = False
        self.reads = 0  # executions read since the feed was made (for tests and figures)

    @property
    def watched(self) -> int:
        """How many executions someone watches now."""
        return len(self._views)

    @property
    def subscribers(self) -> int:
        return sum(len(w.subscribers) for w in self._watched.values())

    async def subscribe(self, execution_id: str, map_runs: int | None = None) -> Subscription:
        """A stream of the execution's changes: first its current state (its status
        and each step that started), then one event per change, and ``end`` once it
        has stopped and none of its steps runs any more (at once for such an
        execution: a suspended execution's running steps still finish). With
        ``map_runs``, its maps of more runs in brief (``map`` events).

        Raises:
            ExecutionNotFoundError: unknown id.
        """
        view = (execution_id, map_runs)
        watched = self._watched.get(view)
        stopped_status: str | None = None
        if watched is None:
            info, briefs = await self._read(view)  # raises ExecutionNotFoundError
            watched = self._watched.get(view)  # someone else may have come meanwhile
            if watched is None:
                _, watched = _events(info, None, briefs)
                if settled(info, briefs):
                    stopped_status = info.status.name
                else:
                    self._watch(view, watched)
        # the current state whole, however many steps started (a map's 10,000 runs),
        # then up to queue_size events waiting
        sub = Subscription(self, view, self.queue_size + len(watched.snapshot))
        for chunk in watched.snapshot:
            sub.put(chunk)
        if stopped_status is not None:
            sub.put(_end(stopped_status, execution_id))
            sub.close()
            return sub
        watched.subscribers.add(sub)
        await self._start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        watched = self._watched.get(sub.view)
        if watched is None:
            return
        watched.subscribers.discard(sub)
        if not watched.subscribers:
            self._unwatch(sub.view)

    def _watch(self, view: _View, watched: _Watched) -> None:
        self._watched[view] = watched
        self._views.setdefault(view[0], set()).add(view)

    def _unwatch(self, view: _View) -> None:
        del self._watched[view]
        views = self._views[view[0]]
        views.discard(view)
        if not views:
            del self._views[view[0]]

    def touch(self, execution_id: str) -> None:
        """The execution changed: read it again soon (if anyone watches it)."""
        views = self._views.get(execution_id)
        if views:
            self._dirty.update(views)
            self._wake.set()

    def _store_changed(self) -> None:
        if self._watched:
            loop = asyncio.get_running_loop()
            self._sweep_at = min(self._sweep_at, loop.time() + MIN_GAP)
            self._wake.set()

    async def _start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        add_hook = getattr(self.flow, "add_hook", None)
        if add_hook is not None and not self._hooked:
            add_hook(self._hook)
            self._hooked = True
        if not self._watching_store:
            self._watching_store = True
            try:
                await self.flow.store.watch(self._store_changed)
            except MicrosagaError as exc:  # the periodic reads cover it
                log.warning("event feed: no store notifications: %s", one_line(exc))
        if self._task is not None and not self._task.done():
            return  # started by another subscriber while this one awaited the store
        self._sweep_at = asyncio.get_running_loop().time() + self.interval
        self._task = asyncio.get_running_loop().create_task(self._run(), name="microsaga-api-feed")

    async def close(self) -> None:
        """End every stream and stop reading."""
        for watched in list(self._watched.values()):
            for sub in list(watched.subscribers):
                sub.close()
        self._watched.clear()
        self._views.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._unhook()

    def _unhook(self) -> None:
        remove_hook = getattr(self.flow, "remove_hook", None)
        if self._hooked and remove_hook is not None:
            remove_hook(self._hook)
        self._hooked = False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._watched:
                self._dirty.intersection_update(self._watched)
                due = min(
                    (self._watched[eid].not_before for eid in self._dirty),
                    default=self._sweep_at,
                )
                await wait_event(self._wake, max(0.0, min(due, self._sweep_at) - loop.time()))
                self._wake.clear()
                now = loop.time()
                if now >= self._sweep_at:
                    self._sweep_at = now + self.interval
                    ids = list(self._watched)
                    self._dirty.clear()
                else:  # the changed ones whose pause after their last read is over
                    ids = [
                        eid
                        for eid in self._dirty
                        if eid in self._watched and self._watched[eid].not_before <= now
                    ]
                    self._dirty.difference_update(ids)
                for at in range(0, len(ids), READS_AT_ONCE):
                    await asyncio.gather(*(self._refresh(e) for e in ids[at : at + READS_AT_ONCE]))
        finally:
            if not self._watched:  # nobody left: no cost on the flow's runs
                self._unhook()

    async def _read(self, view: _View) -> tuple[Execution, dict[str, MapBrief] | None]:
        """The execution of ``view``, and its maps in brief when it has a map_runs."""
        self.reads += 1
        execution_id, map_runs = view
        if map_runs is None:
            return await self.flow.execution(execution_id), None
        return await read_in_brief(self.flow, execution_id, map_runs)

    async def _refresh(self, view: _View) -> None:
        watched = self._watched.get(view)
        if watched is None:
            return
        execution_id = view[0]
        began = asyncio.get_running_loop().time()
        try:
            info, briefs = await self._read(view)
        except ExecutionNotFoundError:  # pruned meanwhile
            self._finish(view, _end(None, execution_id))
            return
        except MicrosagaError as exc:  # the store is away: try again at the next sweep
            log.warning(
                "event feed: cannot read %s: %s",
                execution_id,
                one_line(exc),
                extra=about(execution_id),
            )
            return
        if self._watched.get(view) is not watched:
            return  # its last subscriber left while it was read
        events, now = _events(info, watched, briefs)
        now.subscribers = watched.subscribers
        self._watched[view] = now
        for chunk in events:
            for sub in list(now.subscribers):
                sub.put(chunk)
        done = asyncio.get_running_loop().time()  # read, its events found and queued
        now.not_before = done + (done - began) * READ_PAUSE
        if settled(info, briefs):
            self._finish(view, _end(info.status.name, execution_id))

    def _finish(self, view: _View, end: bytes) -> None:
        watched = self._watched.get(view)
        if watched is None:
            return
        self._unwatch(view)
        for sub in list(watched.subscribers):
            sub.put(end)
            sub.close()
