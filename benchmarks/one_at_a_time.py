"""One execution at a time, each figure beside its peer in the same process, as JSON.

    .venv/bin/python benchmarks/one_at_a_time.py [--quick] [--only sync,postgres] [--grown]

The two latency targets of ``run.py`` compare figures measured in separate processes,
minutes apart on a shared machine. Here each pair alternates in blocks of ten in one
process, so both sides see the same moment:

- ``sync``: the order saga of plain ``def`` functions against the same saga of async
  functions, on the memory store (target: p50 at most 3x). ``--grown`` first runs
  2,000 executions of each with 64 in flight, as ``run.py`` does before its one at a
  time: that phase starts more step threads.
- ``postgres``: the order saga on PostgreSQL against five raw one-row commits on a
  connection of the same database (target: p50 at most 1.5x), with the CPU each side
  spends per execution, in this process and in the database's server processes (read
  from ``/proc``, so on Linux with the server on this machine only). ``--no-flush``
  runs both sides with ``synchronous_commit=off``: without the WAL flush both wait
  for, what is left is what microsaga adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import microsaga_bench as mb
import workloads as w
from databases import find_server, fresh_postgres

from microsaga import Flow

BLOCK = 10


async def _alternate(
    sides: dict[str, Callable[[int], Awaitable[None]]],
    blocks: int,
    cpu: Callable[[], tuple[float, float]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each side's latencies, the sides taking turns in blocks of BLOCK; and, with
    ``cpu`` (CPU seconds used so far, here and in the server), each side's total CPU
    (read around each block, outside the timed calls)."""
    lat: dict[str, list[float]] = {name: [] for name in sides}
    used: dict[str, list[float]] = {name: [0.0, 0.0] for name in sides}
    i = 0
    for _ in range(blocks):
        for name, one in sides.items():
            before = cpu() if cpu else (0.0, 0.0)
            for _ in range(BLOCK):
                i += 1
                t0 = time.perf_counter()
                await one(i)
                lat[name].append(time.perf_counter() - t0)
            after = cpu() if cpu else (0.0, 0.0)
            used[name][0] += after[0] - before[0]
            used[name][1] += after[1] - before[1]
    return lat, used


def _p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


async def sync_against_async(blocks: int, grown: bool = False) -> dict[str, float]:
    # grown: run.py's flow (concurrency 256), after its 2,000 executions with 64 in flight
    async with Flow("memory://", concurrency=256 if grown else None) as flow:
        plain = await flow.workflow_create("async", *mb.order_steps())
        sync = await flow.workflow_create("sync", *mb.sync_order_steps())
        for i in range(50):  # warm-up, the step threads started
            await plain.execute(w.order(i))
            await sync.execute(w.order(i))
        if grown:
            for workflow in (plain, sync):
                await mb.in_flight(2000, 64, lambda i, wf=workflow: wf.execute(w.order(i)))
        threads = sum(t.name.startswith("microsaga-step") for t in threading.enumerate())

        async def a(i: int) -> None:
            await plain.execute(w.order(i))

        async def s(i: int) -> None:
            await sync.execute(w.order(i))

        lat, _ = await _alternate({"async": a, "sync": s}, blocks)
    out = {"async_p50_ms": _p50_ms(lat["async"]), "sync_p50_ms": _p50_ms(lat["sync"])}
    out["sync_over_async"] = out["sync_p50_ms"] / out["async_p50_ms"]
    out["step_threads"] = threads  # alive when the one-at-a-time sagas ran
    return out


def _server_cpu(pids: list[int]) -> float:
    """CPU seconds the server processes ``pids`` used so far (0 where unreadable)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def postgres_against_floor(url: str, blocks: int, flush: bool) -> dict[str, float]:
    import asyncpg

    database = url.rsplit("/", 1)[1]
    settings = {} if flush else {"synchronous_commit": "off"}
    floor = await asyncpg.connect(url, server_settings=settings)
    try:
        await floor.execute("CREATE TABLE floor_rows (id bigint PRIMARY KEY, body bytea)")
        insert = await floor.prepare("INSERT INTO floor_rows VALUES ($1, $2)")
        row = b"x" * 100
        async with Flow(url if flush else f"{url}?synchronous_commit=off") as flow:
            order = await flow.workflow_create("order", *mb.order_steps())
            for i in range(50):
                await order.execute(w.order(i))
            pids = [
                r[0]
                for r in await floor.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1", database
                )
            ]

            async def saga(i: int) -> None:
                await order.execute(w.order(i))

            async def commits(i: int) -> None:
                for k in range(5):
                    await insert.fetch(i * 5 + k, row)

            def cpu() -> tuple[float, float]:
                return time.process_time(), _server_cpu(pids)

            lat, used = await _alternate({"saga": saga, "floor": commits}, blocks, cpu)
    finally:
        await floor.close()
    n = blocks * BLOCK / 1e6  # per execution, in microseconds
    out = {"saga_p50_ms": _p50_ms(lat["saga"]), "floor_p50_ms": _p50_ms(lat["floor"])}
    out["saga_over_floor"] = out["saga_p50_ms"] / out["floor_p50_ms"]
    for side, (client, server) in used.items():
        out[f"{side}_client_cpu_us"] = client / n
        out[f"{side}_server_cpu_us"] = server / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer executions")
    parser.add_argument("--only", default="sync,postgres", help="sync, postgres or both")
    parser.add_argument(
        "--no-flush", action="store_true", help="PostgreSQL with synchronous_commit=off"
    )
    parser.add_argument(
        "--grown", action="store_true", help="sync: 2,000 executions 64 in flight first"
    )
    args = parser.parse_args()
    blocks = 10 if args.quick else 50
    result: dict[str, Any] = {}
    wanted = {name.strip() for name in args.only.split(",")}
    if "sync" in wanted:
        result["sync"] = asyncio.run(sync_against_async(blocks, args.grown))
    if "postgres" in wanted:
        server = find_server()
        if isinstance(server, str):
            result["postgres"] = {"error": server}
        else:
            with fresh_postgres(server, "one") as url:
                result["postgres"] = asyncio.run(
                    postgres_against_floor(url, blocks, not args.no_flush)
                )
    result["loadavg"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
