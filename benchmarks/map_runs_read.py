"""The read of a finished map of many runs in brief (``GET /api/executions/{id}?map_runs=``).

    python benchmarks/map_runs_read.py [--store sqlite|postgres|URL] [--width 10000]
                                       [--map-runs 50] [--reads 7]

An execution whose map of ``--width`` runs finished (its last run failed), then, read
``--reads`` times in turn, the median in milliseconds of

- ``every_run``: the execution read whole and its map counted in Python (what the API
  did before ``Store.get_execution_in_brief``; the answer is the same);
- ``store``: ``Store.get_execution_in_brief``, the database counting the runs and
  reading only those the brief lists;
- ``get``: the API's answer, from the app in-process (httpx's ASGI transport).

``sqlite`` and ``postgres`` make a fresh store (``databases.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from databases import fresh_store

from microsaga import Flow, FunctionStep, MapStep, Message, StepError
from microsaga.api import create_app, models
from microsaga.stores.base import map_briefs


async def root(msg: Message) -> list[dict[str, Any]]:
    width = msg.json()["width"]
    return [{"n": i, "sku": f"SKU-{i:06d}", "last": i == width - 1} for i in range(width)]


async def part(msg: Message) -> dict[str, Any]:
    body: dict[str, Any] = msg.json()
    if body["last"]:
        raise StepError("out of stock", retryable=False)
    return body


async def finished(flow: Flow, width: int) -> str:
    wf = await flow.workflow_create(
        "map-runs-read",
        FunctionStep(root, id="root"),
        MapStep(FunctionStep(part, id="part"), over="steps.root", id="parts",
                requires=["root"]),
    )  # fmt: skip
    eid = await wf.execute({"width": width}, async_=True)
    while not (await flow.execution(eid)).status.finished:
        await asyncio.sleep(0.2)
    return eid


async def measure(url: str, width: int, map_runs: int, reads: int) -> dict[str, Any]:
    async with Flow(url) as flow:
        eid = await finished(flow, width)
        found = await flow.store.definition_of(eid)
        assert found is not None
        step_ids = found[1].step_ids

        async def every_run() -> Any:
            whole = await flow.execution(eid)
            maps, hidden = map_briefs(whole, map_runs, step_ids)
            shown = {sid: run for sid, run in whole.steps.items() if sid not in hidden}
            return models.execution(replace(whole, steps=shown), maps)

        async def store() -> Any:
            got = await flow.store.get_execution_in_brief(eid, map_runs)
            assert got is not None
            return models.execution(*got)

        transport = httpx.ASGITransport(app=create_app(flow))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:

            async def get() -> Any:
                got = await http.get(f"/api/executions/{eid}", params={"map_runs": map_runs})
                assert got.status_code == 200
                return got.json()

            assert await every_run() == await store()  # the same answer
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "every_run": every_run,
                "store": store,
                "get": get,
            }
            timed: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(reads):
                for name, call in calls.items():
                    began = time.perf_counter()
                    await call()
                    timed[name].append((time.perf_counter() - began) * 1000)
    medians = {f"{name}_ms": round(statistics.median(t), 1) for name, t in timed.items()}
    return {"width": width, "map_runs": map_runs, "reads": reads, **medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--width", type=int, default=10_000)
    parser.add_argument("--map-runs", type=int, default=50)
    parser.add_argument("--reads", type=int, default=7)
    args = parser.parse_args()
    with fresh_store(args.store, "map-runs") as url:
        figures = asyncio.run(measure(url, args.width, args.map_runs, args.reads))
        print(json.dumps({"store": args.store, **figures}))


if __name__ == "__main__":
    main()
