"""Server-Sent Events of executions, and the feed that serves every subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from microsaga import Flow, Status
from microsaga.api.events import Feed, Subscription
from tests.helpers import eventually
from tests.integration.pg import empty_store

from . import steps
from .conftest import STORES, Client, order_api
from .openapi_check import parse_events


async def running(api: Client, eid: str, step: str = "reserve") -> bool:
    got = (await api.get(f"/api/executions/{eid}")).json()
    return bool(got["steps"][step]["status"] == "RUNNING")


async def test_a_stream_follows_an_execution_to_its_end(api: Client) -> None:
    eid = await api.start({"gate": "sse"})
    await eventually(lambda: running(api, eid), timeout=10)
    feed: Feed = api.app.state.feed
    stream = asyncio.create_task(api.get(f"/api/executions/{eid}/events"))
    await eventually(lambda: feed.subscribers == 1, timeout=10)
    steps.gate("sse").set()
    answer = await asyncio.wait_for(stream, 15)  # the stream ends when the execution does

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = parse_events(answer.text)  # each checked against the document by the client
    # first the current state: the execution RUNNING, reserve RUNNING
    assert events[0] == ("execution", events[0][1])
    assert events[0][1]["status"] == "RUNNING"
    assert events[1][0] == "step"
    assert (events[1][1]["step_id"], events[1][1]["step"]["status"]) == ("reserve", "RUNNING")
    # then the changes: every step ends SUCCESS before the execution does, then `end`
    finals = {
        data["step_id"]: data["step"]["status"] for kind, data in events[2:] if kind == "step"
    }
    assert finals == dict.fromkeys(("reserve", "charge", "ship", "notify"), "SUCCESS")
    assert events[-2][0] == "execution"
    assert events[-2][1]["status"] == "SUCCESS"
    assert events[-1] == ("end", {"id": eid, "status": "SUCCESS"})
    assert feed.watched == 0  # nobody watches: nothing is read any more


async def test_a_stream_of_a_stopped_execution_ends_at_once(memory_api: Client) -> None:
    eid = await memory_api.start({"fail": True})
    await eventually(lambda: _stopped(memory_api, eid), timeout=10)
    answer = await memory_api.get(f"/api/executions/{eid}/events")
    events = parse_events(answer.text)
    kinds = [kind for kind, _ in events]
    assert kinds == ["execution", "step", "step", "end"]
    states = {d["step_id"]: d["step"]["status"] for k, d in events if k == "step"}
    assert states == {"reserve": "COMPENSATED", "charge": "FAILURE"}
    assert events[-1][1] == {"id": eid, "status": "FAILURE"}


async def _stopped(api: Client, eid: str) -> bool:
    got = (await api.get(f"/api/executions/{eid}")).json()
    return bool(Status[got["status"]].stopped)


async def collect(sub: Subscription) -> list[tuple[str, Any]]:
    return parse_events(b"".join([chunk async for chunk in sub.stream()]).decode())


async def test_subscribers_share_one_read(memory_api: Client, memory_flow: Flow) -> None:
    eid = await memory_api.start({"gate": "many"})
    await eventually(lambda: running(memory_api, eid), timeout=10)
    feed = Feed(memory_flow, interval=3600)  # no periodic reads: only what is asked
    subs = [await feed.subscribe(eid) for _ in range(200)]
    assert feed.reads == 1
    streams = [asyncio.create_task(collect(sub)) for sub in subs]
    steps.gate("many").set()
    await memory_flow.wait(eid, timeout=10)
    feed.touch(eid)
    results = await asyncio.wait_for(asyncio.gather(*streams), 10)
    # a read per change (hooks) and per touch, not per subscriber: 200 of them here
    assert 2 <= feed.reads <= 4
    assert all(result == results[0] for result in results)
    assert results[0][-1] == ("end", {"id": eid, "status": "SUCCESS"})
    assert feed.watched == 0
    await feed.close()


async def test_a_hook_event_reads_the_execution_at_once() -> None:
    async with Flow("memory://") as flow, order_api(flow) as api:
        before = len(list(flow.hooks))  # the app's own (metrics), if any
        eid = await api.start({"gate": "hook"})
        await eventually(lambda: running(api, eid), timeout=10)
        feed = Feed(flow, interval=3600)  # no periodic reads: only hooks
        sub = await feed.subscribe(eid)
        assert len(list(flow.hooks)) == before + 1  # one hook, however many subscribers
        assert (await feed.subscribe(eid)) is not sub
        assert len(list(flow.hooks)) == before + 1
        steps.gate("hook").set()
        events = await asyncio.wait_for(collect(sub), 5)
        assert events[-1] == ("end", {"id": eid, "status": "SUCCESS"})
        await eventually(lambda: len(list(flow.hooks)) == before, timeout=5)  # removed
        await feed.close()


async def test_a_store_signal_reads_every_watched_execution(
    memory_api: Client, memory_flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    signals: list[Callable[[], None]] = []

    async def watch(wake: Callable[[], None]) -> None:
        signals.append(wake)

    monkeypatch.setattr(memory_flow.store, "watch", watch)
    eids = [await memory_api.start({"gate": "signal"}) for _ in range(3)]
    for eid in eids:
        await eventually(lambda eid=eid: running(memory_api, eid), timeout=10)
    feed = Feed(memory_flow, interval=3600)
    subs = [await feed.subscribe(eid) for eid in eids]
    assert len(signals) == 1
    steps.gate("signal").set()
    for eid in eids:
        await memory_flow.wait(eid, timeout=10)
    signals[0]()
    results = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in subs)), 5)
    assert [r[-1][1]["status"] for r in results] == ["SUCCESS"] * 3
    await feed.close()


async def test_a_subscriber_that_falls_behind_is_dropped(
    memory_api: Client, memory_flow: Flow
) -> None:
    eid = await memory_api.start({"gate": "slow"})
    await eventually(lambda: running(memory_api, eid), timeout=10)
    feed = Feed(memory_flow, interval=3600, queue_size=2)
    slow = await feed.subscribe(eid)  # the snapshot (execution, reserve), then 2 at most
    steps.gate("slow").set()
    await memory_flow.wait(eid, timeout=10)
    feed.touch(eid)
    events = await asyncio.wait_for(collect(slow), 5)
    assert "end" not in [kind for kind, _ in events]  # cut short: it reconnects
    await feed.close()


async def test_changes_during_a_long_read_are_read_together_later(
    memory_api: Client, memory_flow: Flow
) -> None:
    """A map of 10,000 runs changes hundreds of times a second and takes long to read:
    read again at each change, back to back, it left its own runs little time to run."""
    eid = await memory_api.start({"gate": "large"})
    await eventually(lambda: running(memory_api, eid), timeout=10)

    class Large(Feed):
        async def _read(self, execution_id: str) -> Any:
            await asyncio.sleep(0.2)  # as long as reading 10,000 runs
            return await super()._read(execution_id)

    feed = Large(memory_flow, interval=3600)
    await feed.subscribe(eid)
    first = feed.reads
    for _ in range(10):  # a change every 0.1 s for 1 s
        feed.touch(eid)
        await asyncio.sleep(0.1)
    # read, then a pause of 3 times as long: not 5 reads one after the other
    assert feed.reads - first <= 3
    steps.gate("large").set()
    await feed.close()


async def test_a_current_state_longer_than_the_queue_is_sent_whole(
    memory_api: Client, memory_flow: Flow
) -> None:
    """A map of 10,000 runs starts a stream with 10,000 step events: more than the
    events a subscriber may have waiting, yet no subscriber fell behind."""
    eid = await memory_api.start({})
    await memory_flow.wait(eid, timeout=10)
    feed = Feed(memory_flow, interval=3600, queue_size=2)
    events = await asyncio.wait_for(collect(await feed.subscribe(eid)), 5)
    started = [data["step_id"] for kind, data in events if kind == "step"]
    assert started == ["reserve", "charge", "ship", "notify"]
    assert events[-1] == ("end", {"id": eid, "status": "SUCCESS"})
    await feed.close()


@pytest.mark.parametrize("kind", [s for s in STORES if s != "memory"])
async def test_changes_by_another_process_arrive(kind: str, tmp_path: Path) -> None:
    """An API without a worker (serve --no-worker) sees what a worker elsewhere does,
    through the feed's periodic reads."""
    async with (
        empty_store(kind, tmp_path) as url,
        Flow(url, worker=False) as served,
        Flow(url, poll_interval=0.05) as worker,
        order_api(served) as api,
    ):
        eid = await api.start({"gate": "elsewhere"})
        await eventually(lambda: running(api, eid), timeout=10)
        stream = asyncio.create_task(api.get(f"/api/executions/{eid}/events"))
        await eventually(lambda: api.app.state.feed.subscribers == 1, timeout=10)
        steps.gate("elsewhere").set()
        await worker.wait(eid, timeout=10)
        events = parse_events((await asyncio.wait_for(stream, 5)).text)
        assert events[-1] == ("end", {"id": eid, "status": "SUCCESS"})


async def test_a_suspended_stream_lasts_until_its_running_steps_end(memory_api: Client) -> None:
    eid = await memory_api.start({"gate": "suspended"})
    await eventually(lambda: running(memory_api, eid), timeout=10)
    assert (await memory_api.post(f"/api/executions/{eid}/suspend")).status_code == 200
    stream = asyncio.create_task(memory_api.get(f"/api/executions/{eid}/events"))
    feed: Feed = memory_api.app.state.feed
    await eventually(lambda: feed.subscribers == 1, timeout=10)
    assert not stream.done()  # SUSPEND, but reserve still runs: its end is yet to come
    steps.gate("suspended").set()
    events = parse_events((await asyncio.wait_for(stream, 10)).text)
    assert ("reserve", "SUCCESS") in [
        (d["step_id"], d["step"]["status"]) for k, d in events if k == "step"
    ]
    assert events[-1] == ("end", {"id": eid, "status": "SUSPEND"})
