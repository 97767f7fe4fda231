"""How the flow's step threads serve sync step functions of three kinds, as JSON.

    python benchmarks/sync_threads.py [--kind quick,io,hash,python] [--width 16]
                                      [--count 400]

Executions of two sync FunctionSteps in a chain, ``--width`` in flight on the memory
store, for each kind of function: ``quick`` returns at once, ``io`` sleeps 5 ms (a
service call), ``hash`` takes the SHA-256 of 8 MB (CPU work that lets go of the GIL),
``python`` computes in Python for about as long (holding the GIL). For each kind:
executions per second, the p50 and the slowest execution in milliseconds, and how many
step threads were running at the end (a flow starts them as its functions need).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from microsaga import Flow, FunctionStep, Message

_DATA = b"x" * 8_000_000


def quick(msg: Message) -> dict[str, int]:
    return {"ok": 1}


def io(msg: Message) -> dict[str, int]:
    time.sleep(0.005)
    return {"ok": 1}


def hashes(msg: Message) -> dict[str, str]:
    return {"sha256": hashlib.sha256(_DATA).hexdigest()}


def python(msg: Message) -> dict[str, int]:
    return {"sum": sum(i * i for i in range(100_000))}


KINDS: dict[str, Callable[[Message], Any]] = {
    "quick": quick,
    "io": io,
    "hash": hashes,
    "python": python,
}


async def measure(kind: str, width: int, count: int) -> dict[str, float]:
    fn = KINDS[kind]
    async with Flow("memory://", concurrency=256) as flow:
        first = FunctionStep(fn, id="a")
        wf = await flow.workflow_create(kind, first, FunctionStep(fn, id="b", requires=[first]))
        slots = asyncio.Semaphore(width)
        took: list[float] = []

        async def one() -> None:
            async with slots:
                t0 = time.perf_counter()
                await wf.execute({})
                took.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - t0
        running = sum(t.name.startswith("microsaga-step") for t in threading.enumerate())
    took.sort()
    return {
        "executions_per_s": count / elapsed,
        "p50_ms": statistics.median(took) * 1000,
        "max_ms": took[-1] * 1000,
        "step_threads": running,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--width", type=int, default=16, help="executions in flight")
    parser.add_argument(
        "--count", type=int, default=400, help="executions of each kind (quick: 50 times as many)"
    )
    args = parser.parse_args()
    result: dict[str, Any] = {"width": args.width, "count": args.count}
    for kind in args.kind.split(","):
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        count = args.count * 50 if kind == "quick" else args.count  # quick ones take no time
        result[kind] = asyncio.run(measure(kind, args.width, count))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
