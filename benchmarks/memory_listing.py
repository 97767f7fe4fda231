"""Listings of the memory store holding many executions, as JSON.

    python benchmarks/memory_listing.py [--executions 100000] [--runs 21]

The store holds ``--executions`` executions of two workflows; each listing is timed
``--runs`` times and its median printed, in milliseconds: the newest 100, the same
without step runs, the newest 100 of one workflow, and a ``before`` page halfway back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from microsaga import Message, Status
from microsaga.stores.base import NewExecution
from microsaga.stores.memory import MemoryStore


def new(i: int) -> NewExecution:
    return NewExecution(
        id=f"e{i:07d}",
        workflow_id="odd" if i % 2 else "even",
        version=None,
        definition_hash="h",
        definition=b"{}",
        step_ids=["s"],
        request=Message(b"{}"),
        status=Status.PENDING,
        owner=None,
        lease_until=0.0,
        created_at=float(i),
    )


async def measure(count: int, runs: int) -> dict[str, Any]:
    store = MemoryStore()
    await store.commit([new(i) for i in range(count)])
    listings: dict[str, dict[str, Any]] = {
        "newest_ms": {"limit": 100},
        "newest_without_steps_ms": {"limit": 100, "steps": False},
        "newest_of_a_workflow_ms": {"workflow_id": "even", "limit": 100},
        "page_halfway_ms": {"limit": 100, "before": f"e{count // 2:07d}"},
    }
    out: dict[str, Any] = {"executions": count}
    for name, kwargs in listings.items():
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await store.list_executions(**kwargs)
            times.append(time.perf_counter() - started)
        out[name] = round(statistics.median(times) * 1000, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.executions, args.runs))))


if __name__ == "__main__":
    main()
