"""Executions of many steps: the cost per step as the number of steps grows, as JSON.

    python benchmarks/many_steps.py [--store memory|sqlite|postgres|URL] [--quick]
                                    [--sizes 100,1000,10000] [--runs 3]

Two shapes, each at every size N: a chain of N steps (each requires the one before)
and a fan-out 1 -> N -> 1 (a root, N parts requiring it, a join requiring them all).
Every step is an async function returning a small JSON object. For each, the
microseconds per step of one execution (the median of ``--runs`` executions after
one warm-up), and the bytes the store holds per step for it (SQLite and PostgreSQL:
the pages in use, growing by whole pages; memory: not measured). ``sqlite`` and
``postgres`` make a fresh store (``databases.py``). The target: the cost per step at
10,000 steps within 2x of that at 100, and the stored bytes per step flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from databases import fresh_store

from microsaga import Flow, FunctionStep, Message, Workflow


async def link(m: Message) -> Any:
    return {"n": 1}


async def join(m: Message) -> Any:
    return {"parts": len(m.json())}


def chain(n: int) -> list[FunctionStep]:
    steps = [FunctionStep(link, id="s00000")]
    for k in range(1, n):
        steps.append(FunctionStep(link, id=f"s{k:05d}", requires=[steps[-1]]))
    return steps


def fan(n: int) -> list[FunctionStep]:
    root = FunctionStep(link, id="root")
    parts = [FunctionStep(link, id=f"p{k:05d}", requires=[root]) for k in range(n)]
    return [root, *parts, FunctionStep(join, id="join", requires=parts)]


async def stored_bytes(flow: Flow, store: str) -> int | None:
    """The bytes of the store's tables and indexes in use now (None: memory)."""
    if store.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(store.removeprefix("sqlite:///").split("?")[0])
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the pages, all in the file
            pages, free, size = (
                conn.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("page_count", "freelist_count", "page_size")
            )
            return int((pages - free) * size)
        finally:
            conn.close()
    if store.startswith(("postgresql://", "postgres://")):
        import asyncpg

        conn = await asyncpg.connect(store.split("?")[0])
        try:
            size: int = await conn.fetchval(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "WHERE c.relname LIKE 'microsaga_%' AND c.relkind = 'r'"
            )
            return size
        finally:
            await conn.close()
    return None


async def measure(flow: Flow, store: str, wf: Workflow, steps: int, runs: int) -> dict[str, Any]:
    await wf.execute({"order_id": 0})  # warm-up: the plan is made once per workflow
    times = []
    before = await stored_bytes(flow, store)
    for i in range(runs):
        t0 = time.perf_counter()
        await wf.execute({"order_id": i})
        times.append(time.perf_counter() - t0)
    after = await stored_bytes(flow, store)
    out: dict[str, Any] = {"us_per_step": statistics.median(times) / steps * 1e6}
    if before is not None and after is not None:
        out["bytes_per_step"] = (after - before) / runs / steps
    return out


async def bench(store: str, sizes: list[int], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Flow(store, concurrency=256) as flow:
        for n in sizes:
            wf = await flow.workflow_create(f"chain{n}", *chain(n))
            out[f"chain_{n}"] = await measure(flow, store, wf, n, runs)
            wf = await flow.workflow_create(f"fan{n}", *fan(n))
            out[f"fan_{n}"] = await measure(flow, store, wf, n + 2, runs)
            print(f"{n}: {out[f'chain_{n}']} {out[f'fan_{n}']}", file=sys.stderr)
    for shape in ("chain", "fan"):
        first, last = out[f"{shape}_{sizes[0]}"], out[f"{shape}_{sizes[-1]}"]
        out[f"{shape}_growth"] = last["us_per_step"] / first["us_per_step"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="memory", help="memory, sqlite, postgres or a URL")
    parser.add_argument("--quick", action="store_true", help="sizes 100 and 1,000 only")
    parser.add_argument("--sizes", help="comma-separated numbers of steps")
    parser.add_argument("--runs", type=int, default=3, help="executions per size (3)")
    args = parser.parse_args()
    sizes = [100, 1000] if args.quick else [100, 1000, 10000]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    with fresh_store(args.store, "many-steps") as url:
        result = asyncio.run(bench(url, sizes, args.runs))
    print(json.dumps({"store": args.store, **result}))


if __name__ == "__main__":
    main()
