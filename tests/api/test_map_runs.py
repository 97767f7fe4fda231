"""A map of many runs in brief (``?map_runs=``): its counts and the runs worth a look,
from ``GET /api/executions/{id}`` and its event stream, instead of every run."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import msgspec

from microsaga import Flow, Status
from microsaga.api import models
from microsaga.api.events import Feed, settled
from microsaga.stores.base import map_briefs
from tests.helpers import eventually

from . import steps
from .conftest import Client
from .openapi_check import parse_events
from .test_events import collect


async def start_mapped(api: Client, items: list[Any], concurrency: int | None = None) -> str:
    saved = await api.put("/api/workflows/mapped", json=steps.mapped(concurrency))
    assert saved.status_code == 200, saved.text
    started = await api.post("/api/workflows/mapped/executions", json={"input": {"items": items}})
    assert started.status_code == 202, started.text
    eid: str = started.json()["id"]
    return eid


async def brief(api: Client, eid: str, map_runs: int) -> dict[str, Any]:
    got = await api.get(f"/api/executions/{eid}", params={"map_runs": map_runs})
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


async def test_a_running_map_in_brief_has_its_counts_and_failed_runs(
    api: Client, flow: Flow
) -> None:
    # two runs wait for their gate, 22 succeed, the last fails: the execution runs
    items: list[Any] = [{"gate": "late"}, {"gate": "late"}]
    items += [{} for _ in range(22)] + [{"error": "out of stock"}]
    eid = await start_mapped(api, items)
    counts = {"RUNNING": 2, "SUCCESS": 22, "FAILURE": 1}  # in the order of their first run

    async def counted() -> bool:
        maps = (await brief(api, eid, 5))["maps"]
        return "m" in maps and maps["m"]["statuses"] == counts

    await eventually(counted, timeout=10)
    got = await brief(api, eid, 5)
    assert got["status"] == "RUNNING"
    assert got["maps"] == {
        "m": {
            "runs": 25,
            "statuses": counts,
            "compensations": {},
            "notable": 1,
            "listed": ["m[24]"],
        }
    }
    assert list(got["steps"]) == ["m", "m[24]"]  # the others left out
    assert got["steps"]["m[24]"]["error"] == "out of stock"
    # by default every run, and no brief: the response as it always was
    whole = (await api.get(f"/api/executions/{eid}")).json()
    assert "maps" not in whole
    assert len(whole["steps"]) == 26
    # a map of no more runs than map_runs is whole
    assert len((await brief(api, eid, 25))["steps"]) == 26

    # the stream in brief: the map's counts, the failed run, never the others
    stream = asyncio.create_task(api.get(f"/api/executions/{eid}/events?map_runs=5"))
    feed: Feed = api.app.state.feed
    await eventually(lambda: feed.subscribers == 1, timeout=10)
    steps.gate("late").set()
    events = parse_events((await asyncio.wait_for(stream, 15)).text)
    assert {d["step_id"] for k, d in events if k == "step"} == {"m", "m[24]"}
    maps = [d["runs"] for k, d in events if k == "map"]
    assert maps[0]["statuses"] == counts  # the current state first
    assert maps[-1]["statuses"] == {"SUCCESS": 24, "FAILURE": 1}
    assert events[-1] == ("end", {"id": eid, "status": "FAILURE"})


async def test_a_map_growing_past_map_runs_turns_brief_live(
    memory_api: Client, memory_flow: Flow
) -> None:
    """Runs one at a time: the first two come as step events, the third makes the map
    one of more runs, then a map event (no run failed: none listed) and no more runs."""
    items = [{"gate": f"one{i}"} for i in range(3)]
    eid = await start_mapped(memory_api, items, concurrency=1)
    feed = Feed(memory_flow, interval=3600)  # reads when this process changes it
    sub = await feed.subscribe(eid, map_runs=2)
    stream = asyncio.create_task(collect(sub))

    async def running(i: int) -> bool:
        run = (await brief(memory_api, eid, 3))["steps"].get(f"m[{i}]")
        return run is not None and run["status"] == "RUNNING"

    for i in range(3):
        await eventually(lambda i=i: running(i), timeout=10)
        read = feed.reads
        feed.touch(eid)
        await eventually(lambda read=read: feed.reads > read, timeout=10)  # seen
        steps.gate(f"one{i}").set()
    events = await asyncio.wait_for(stream, 10)
    runs = [(d["step_id"], d["step"]["status"]) for k, d in events if k == "step"]
    assert ("m[0]", "RUNNING") in runs
    assert ("m[1]", "RUNNING") in runs
    assert "m[2]" not in {sid for sid, _ in runs}
    maps = [d["runs"] for k, d in events if k == "map"]
    assert maps[0]["runs"] == 3
    assert maps[-1] == {
        "runs": 3,
        "statuses": {"SUCCESS": 3},
        "compensations": {},
        "notable": 0,
        "listed": [],
    }
    assert events[-1] == ("end", {"id": eid, "status": "SUCCESS"})
    await feed.close()


async def test_a_bad_map_runs_is_400(memory_api: Client) -> None:
    eid = await memory_api.start()
    for path in (f"/api/executions/{eid}", f"/api/executions/{eid}/events"):
        got = await memory_api.get(path, params={"map_runs": "-1"})
        assert got.status_code == 400, got.text
        assert "map_runs: expected `int` >= 0" in got.json()["detail"]


async def test_a_whole_and_a_brief_stream_of_one_execution(
    memory_api: Client, memory_flow: Flow
) -> None:
    items = [{"gate": "both"} for _ in range(3)]
    eid = await start_mapped(memory_api, items)
    feed = Feed(memory_flow, interval=3600)

    async def started() -> bool:
        return len((await brief(memory_api, eid, 3))["steps"]) == 4

    await eventually(started, timeout=10)
    whole = asyncio.create_task(collect(await feed.subscribe(eid)))
    short = asyncio.create_task(collect(await feed.subscribe(eid, map_runs=1)))
    assert feed.watched == 1  # one execution, seen two ways
    steps.gate("both").set()
    whole_events, short_events = await asyncio.wait_for(asyncio.gather(whole, short), 10)
    runs = {d["step_id"] for k, d in whole_events if k == "step"}
    assert runs == {"m", "m[0]", "m[1]", "m[2]"}
    assert "map" not in {k for k, _ in whole_events}
    assert {d["step_id"] for k, d in short_events if k == "step"} == {"m"}
    assert [d["runs"]["statuses"] for k, d in short_events if k == "map"][-1] == {"SUCCESS": 3}
    assert whole_events[-1] == short_events[-1] == ("end", {"id": eid, "status": "SUCCESS"})
    assert feed.watched == 0
    await feed.close()


async def test_steps_named_like_runs_are_no_map_in_brief(memory_api: Client) -> None:
    """Steps ``shard[0]``... beside a step ``shard`` that is no map: the definition says
    they are steps of their own, each given whole (a stream in brief too)."""
    shards = [{"function": "tests.api.steps:notify", "id": "shard"}]
    shards += [
        {"function": "tests.api.steps:notify", "id": f"shard[{i}]", "requires": ["shard"]}
        for i in range(25)
    ]
    saved = await memory_api.put("/api/workflows/shards", json={"id": "shards", "steps": shards})
    assert saved.status_code == 200, saved.text
    started = await memory_api.post("/api/workflows/shards/executions", json={})
    eid = started.json()["id"]

    async def done() -> bool:
        return (await brief(memory_api, eid, 5))["status"] == "SUCCESS"

    await eventually(done, timeout=10)
    got = await brief(memory_api, eid, 5)
    assert got["maps"] == {}
    assert len(got["steps"]) == 26
    events = parse_events((await memory_api.get(f"/api/executions/{eid}/events?map_runs=5")).text)
    assert len([k for k, _ in events if k == "step"]) == 26
    assert "map" not in {k for k, _ in events}


# two maps and two steps named like runs of one: m's runs fail (two), succeed, and are
# compensated (some compensations fail), its step `after` fails; s has 3 runs
COUNTED: dict[str, Any] = {
    "id": "counted",
    "steps": [
        {
            "id": "m",
            "map": {
                "over": "request.items",
                "step": {
                    "function": f"{steps.__name__}:held_or_failed",
                    "compensate": {"function": f"{steps.__name__}:undo_or_failed"},
                },
            },
        },
        {
            "id": "s",
            "map": {"over": "request.small", "step": {"function": f"{steps.__name__}:held"}},
        },
        {"id": "shard", "function": f"{steps.__name__}:notify"},
        {"id": "shard[0]", "function": f"{steps.__name__}:notify", "requires": ["shard"]},
        {"id": "shard[1]", "function": f"{steps.__name__}:notify", "requires": ["shard"]},
    ],
}


async def test_the_store_counts_maps_as_counting_every_run_does(api: Client, flow: Flow) -> None:
    """The maps in brief that the store counts (SQL on SQLite and PostgreSQL) and the
    runs it reads are those of every run read and counted here, for any ``map_runs``:
    the API answers the same."""
    items: list[Any] = [{"n": i} for i in range(40)]
    for i in (3, 11, 17, 29):
        items[i]["undo_error"] = True
    for i in (7, 23):  # they fail once every run started
        items[i].update(error="out of stock", gate="fail")
    saved = await api.put("/api/workflows/counted", json=COUNTED)
    assert saved.status_code == 200, saved.text
    body = {"input": {"items": items, "small": [1, 2, 3]}}
    started = await api.post("/api/workflows/counted/executions", json=body)
    eid = started.json()["id"]

    async def all_started() -> bool:
        return sum(sid.startswith("m[") for sid in (await flow.execution(eid)).steps) == 40

    await eventually(all_started, timeout=20)
    steps.gate("fail").set()

    async def done() -> bool:
        return settled(await flow.execution(eid))

    await eventually(done, timeout=20)
    whole = await flow.execution(eid)
    assert whole.status is Status.FAILURE
    undone = {r.compensation.status for r in whole.steps.values() if r.compensation}
    assert undone == {Status.SUCCESS, Status.FAILURE}
    found = await flow.store.definition_of(eid)
    assert found is not None
    for limit in (0, 1, 2, 3, 5, 39, 40, 100):
        maps, hidden = map_briefs(whole, limit, found[1].step_ids)
        shown = {sid: run for sid, run in whole.steps.items() if sid not in hidden}
        expected = msgspec.to_builtins(models.execution(replace(whole, steps=shown), maps))
        got = await brief(api, eid, limit)
        assert got == expected, limit
        assert list(got["steps"]) == list(expected["steps"]), limit  # in the same order
    brief5 = (await brief(api, eid, 5))["maps"]
    assert list(brief5) == ["m"]  # s has 3 runs; shard[0] and shard[1] are steps
    assert brief5["m"]["notable"] >= 3  # 2 failed, and compensations that failed
    assert {"m[7]", "m[23]"} <= set(brief5["m"]["listed"])
    assert brief5["m"]["compensations"]["FAILURE"] >= 1
