"""Waiting steps at scale (issue 14): executions parked in the store, signals, timers,
and a 1 -> 1,000 -> 1 map beside DBOS's fan-out to 1,000 child workflows.

    .venv/bin/python benchmarks/waits.py [--quick] [--only sqlite,postgres]

For each store (SQLite, and PostgreSQL when reachable), each on a fresh one:

- parked: fill the store with 100,000 executions waiting for a signal (``WaitStep``),
  then start a worker process on it and report its resident memory once settled.
  Target: at most 150 MB.
- signal: with those executions parked, signal 200 of them one at a time from the
  worker's own process and time each from ``signal`` to the step's SUCCESS seen by
  ``flow.wait``; p50 and p99. Target (SQLite): p50 at most 5 ms.
- timers: 10,000 executions sleeping until the same time, parked; then one worker
  whose clock has passed that time; the seconds until all have finished. Target: at
  most 10 s.
- map (SQLite): a workflow whose ``MapStep`` runs a function step over 1,000 elements
  and joins them, one execution at a time, beside DBOS 3.4 starting 1,000 child
  workflows from one workflow and joining them (``dbos_waits.py``), in the same run;
  seconds per execution, medians. Target: microsaga at least 10x faster.

Prints progress on stderr and the figures as JSON on stdout, and writes them to
``benchmarks/results/waits-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from databases import find_server
from run import _dbos_python, ensure_dbos
from scale import fresh_store, log, settled_memory

from microsaga import Flow, FunctionStep, MapStep, Message, SleepStep, Status, WaitStep

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGETS = {"rss_mb": 150, "signal_p50_ms": 5, "timers_s": 10, "map_ratio": 10}


async def bounded(n: int, width: int, one: Any, label: str) -> None:
    """Run ``one(i)`` for i < n, ``width`` callers at a time, each taking the next i
    (not n tasks queued on a semaphore, whose wake-ups cost O(n) each on Python 3.11);
    progress every 10 %."""
    started = time.perf_counter()
    step = max(n // 10, 1)
    next_i = 0
    done = 0

    async def caller() -> None:
        nonlocal next_i, done
        while next_i < n:
            i, next_i = next_i, next_i + 1
            await one(i)
            done += 1
            if done % step == 0 or done == n:
                rate = done / (time.perf_counter() - started)
                log(f"  {label}: {done:,}/{n:,} ({rate:,.0f}/s)")

    await asyncio.gather(*(caller() for _ in range(width)))


async def fill_parked(url: str, count: int) -> list[str]:
    """``count`` executions waiting for "go", parked (their runs ended)."""
    ids: list[str] = []
    async with Flow(url, concurrency=256, max_executions=256) as flow:
        wf = await flow.workflow_create("waits", WaitStep("go"))
        worker = flow._running()  # a benchmark looks inside: each run's end is parked

        async def one(i: int) -> None:
            eid = await wf.execute({"n": i}, async_=True)
            run = worker.runs.get(eid)
            if run is not None:
                await run.stopped()
            ids.append(eid)

        await bounded(count, 256, one, "parked")
    return ids


async def signal_latency(url: str, ids: list[str], count: int) -> dict[str, float]:
    async with Flow(url) as flow:
        await asyncio.sleep(1.0)  # its first polls
        times = []
        for eid in ids[:count]:
            started = time.perf_counter()
            await flow.signal(eid, "go", {"ok": True})
            done = await flow.wait(eid, timeout=30)
            times.append(time.perf_counter() - started)
            assert done.status is Status.SUCCESS, done
    times.sort()
    return {
        "signal_p50_ms": round(statistics.median(times) * 1000, 2),
        "signal_p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 2),
    }


async def timers(url: str, count: int) -> dict[str, float]:
    at = 4_000_000_000.0  # a time the flows' clocks say it is
    async with Flow(url, concurrency=256, clock=lambda: at, lease_ttl=3600) as flow:
        wf = await flow.workflow_create("timers", SleepStep(until=at + 60, id="nap"))
        worker = flow._running()

        async def one(i: int) -> None:
            eid = await wf.execute({"n": i}, async_=True)
            run = worker.runs.get(eid)
            if run is not None:
                await run.stopped()

        await bounded(count, 256, one, "sleeping")
    started = time.perf_counter()
    async with Flow(url, clock=lambda: at + 61, lease_ttl=3600) as flow:
        while await flow.executions(workflow_id="timers", status=Status.RUNNING, limit=1):
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        left = await flow.executions(workflow_id="timers", status=Status.SUCCESS, limit=count)
        assert len(left) == count, len(left)
    return {"timers": count, "timers_s": round(seconds, 2)}


async def map_root(msg: Message) -> list[int]:
    return list(range(msg.json()["width"]))


async def map_part(msg: Message) -> dict[str, int]:
    return {"part": msg.json()}


async def map_join(msg: Message) -> int:
    return len(msg.json())


async def map_runs(url: str, width: int, count: int) -> list[float]:
    async with Flow(url) as flow:
        wf = await flow.workflow_create(
            "map",
            FunctionStep(map_root, id="root"),
            MapStep(FunctionStep(map_part, id="part"), over="steps.root", id="parts",
                    requires=["root"]),
            FunctionStep(map_join, id="join", requires=["parts"]),
        )  # fmt: skip
        times = []
        for _ in range(count):
            started = time.perf_counter()
            eid = await wf.execute({"width": width})
            times.append(time.perf_counter() - started)
            info = await flow.execution(eid)
            assert info.response is not None
            assert info.response.json() == width
    return times


def dbos_map(url: str, width: int, count: int) -> list[float] | str:
    problem = ensure_dbos()
    if problem is not None:
        return problem
    cmd = [str(_dbos_python()), str(HERE / "dbos_waits.py"), "--store", url,
           "--width", str(width), "--count", str(count)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return f"dbos_waits.py failed: {done.stderr.strip().splitlines()[-1:]}"
    found: list[float] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return found


def check(kind: str, server: Any, quick: bool) -> dict[str, Any]:
    parked, signals, sleeping = (10_000, 50, 2_000) if quick else (100_000, 200, 10_000)
    out: dict[str, Any] = {"store": kind}
    with fresh_store(kind, server) as url:
        log(f"{kind}: parking {parked:,} executions ...")
        ids = asyncio.run(fill_parked(url, parked))
        log(f"{kind}: memory of a worker on that store ...")
        out["parked"] = parked
        out["worker"] = settled_memory(url)
        log(f"{kind}: signal -> SUCCESS, {signals} one at a time ...")
        out.update(asyncio.run(signal_latency(url, ids, signals)))
    with fresh_store(kind, server) as url:
        log(f"{kind}: {sleeping:,} timers due at once ...")
        out.update(asyncio.run(timers(url, sleeping)))
    return out


def compare_map(quick: bool) -> dict[str, Any]:
    width, count = (1000, 2) if quick else (1000, 3)
    out: dict[str, Any] = {"width": width}
    microsaga: list[float] = []
    peer: list[float] = []
    for turn in range(count):  # interleaved, one execution of each at a time
        with fresh_store("sqlite", None) as url:
            microsaga += asyncio.run(map_runs(url, width, 1))
        with fresh_store("sqlite", None) as url:
            found = dbos_map(url, width, 1)
        if isinstance(found, str):
            out["dbos"] = found
            break
        peer += found
        log(f"map turn {turn + 1}: microsaga {microsaga[-1]:.3f} s, DBOS {peer[-1]:.3f} s")
    out["microsaga_s"] = round(statistics.median(microsaga), 4)
    if peer:
        out["dbos_s"] = round(statistics.median(peer), 4)
        out["map_ratio"] = round(out["dbos_s"] / out["microsaga_s"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--only", help="comma-separated: sqlite, postgres, map")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"sqlite", "postgres", "map"}
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "targets": TARGETS}
    if "sqlite" in only:
        result["sqlite"] = check("sqlite", None, args.quick)
    if "postgres" in only:
        server = find_server()
        if isinstance(server, str):
            result["postgres"] = f"not run: {server}"
        else:
            result["postgres"] = check("postgres", server, args.quick)
    if "map" in only:
        result["map"] = compare_map(args.quick)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "waits-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
