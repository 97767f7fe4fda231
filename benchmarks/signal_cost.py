"""The cost of one ``flow.signal`` on an execution with many step runs, as JSON.

    python benchmarks/signal_cost.py [--store sqlite|postgres|URL] [--width 10000]
                                     [--signals 50]

An execution of a map of ``--width`` runs (finished) and a wait step beside it, parked
waiting for its signal; then a flow without a worker (nothing claims the execution
the signals wake) signals it ``--signals`` times (a second signal of an event is
ignored: each one checks the event and is stored). The median and the 90th
percentile of one ``flow.signal``, in milliseconds. ``sqlite`` and ``postgres`` make a
fresh store (``databases.py``).
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

from microsaga import Flow, FunctionStep, MapStep, Message, Status, WaitStep


async def root(msg: Message) -> list[int]:
    return list(range(msg.json()["width"]))


async def part(msg: Message) -> dict[str, int]:
    return {"part": msg.json()}


async def parked(url: str, width: int) -> str:
    """An execution whose map of ``width`` runs finished, waiting for "go"."""
    async with Flow(url) as flow:
        wf = await flow.workflow_create(
            "signal-cost",
            FunctionStep(root, id="root"),
            MapStep(FunctionStep(part, id="part"), over="steps.root", id="parts",
                    requires=["root"]),
            WaitStep("go", id="go"),
            FunctionStep(part, id="join", requires=["parts", "go"]),
        )  # fmt: skip
        eid = await wf.execute({"width": width}, async_=True)
        while True:
            info = await flow.execution(eid)
            done = info.steps.get("parts")
            if done is not None and done.status is Status.SUCCESS and info.note:
                return eid  # the map finished and the execution parked
            await asyncio.sleep(0.2)


async def signals(url: str, eid: str, count: int) -> list[float]:
    async with Flow(url, worker=False) as flow:
        times = []
        for _ in range(count + 1):
            started = time.perf_counter()
            await flow.signal(eid, "go", {"ok": True})
            times.append(time.perf_counter() - started)
        return times[1:]  # the first one warms the flow up (definition, statements)


def measure(url: str, width: int, count: int) -> dict[str, Any]:
    eid = asyncio.run(parked(url, width))
    times = sorted(asyncio.run(signals(url, eid, count)))
    return {
        "width": width,
        "signals": count,
        "signal_p50_ms": round(statistics.median(times) * 1000, 2),
        "signal_p90_ms": round(times[int(len(times) * 0.9) - 1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--width", type=int, default=10_000)
    parser.add_argument("--signals", type=int, default=50)
    args = parser.parse_args()
    with fresh_store(args.store, "signal") as url:
        print(json.dumps({"store": args.store, **measure(url, args.width, args.signals)}))


if __name__ == "__main__":
    main()
