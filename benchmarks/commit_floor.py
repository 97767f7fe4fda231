"""The floor of one PostgreSQL execution at a time: five raw one-row commits, as JSON.

    python benchmarks/commit_floor.py --store postgresql://... [--quick]

An order saga one at a time makes five commits (the execution, then one per step);
nothing can do them faster than five ``INSERT``s of one row each, each its own
transaction, one after another on one asyncpg connection with a prepared statement.
``one_p50_ms`` is the median of those five commits' time, the figure microsaga's
``one_p50_ms`` on the same server is compared with (``run.py``'s ``postgres-floor``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

COMMITS = 5
ROW = b"x" * 100  # about a step's record, the benchmark's ~100-byte JSON


async def bench(url: str, rounds: int) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE floor_rows (id bigint PRIMARY KEY, body bytea)")
        insert = await conn.prepare("INSERT INTO floor_rows VALUES ($1, $2)")
        lat = []
        for i in range(50 + rounds):  # the first 50 warm up, as the others'
            t0 = time.perf_counter()
            for k in range(COMMITS):
                await insert.fetch(i * COMMITS + k, ROW)
            if i >= 50:
                lat.append(time.perf_counter() - t0)
    finally:
        await conn.close()
    lat.sort()
    return {
        "one_p50_ms": statistics.median(lat) * 1000,
        "one_p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True, help="postgresql://...")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    args = parser.parse_args()
    result = asyncio.run(bench(args.store, 50 if args.quick else 500))
    print(json.dumps({"contender": "floor", "store": args.store, **result}))


if __name__ == "__main__":
    main()
