"""Soak: order sagas with 10 % declined (rolled back) for a long time, watching the
process for leaks. What ``make bench`` runs for 3 minutes; 30 by default::

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--store sqlite|memory]
        [--in-flight 50] [--samples 10] [--seed N]

One process runs a worker on a fresh store and keeps ``--in-flight`` executions of
the order saga going (reserve, then charge and points, a publish, a confirmation that
declines 10 % of the orders, so three compensations run in reverse order). The
participants are in-memory (``MockClient``, ``MemoryBroker``): what grows is
microsaga's. Every ``minutes / samples`` it samples the resident memory (RSS), open
file descriptors, asyncio tasks, threads and the executions finished per second, and
prints a table. The first fifth is the warm-up; then:

- RSS growth from the end of the warm-up to the end: at most 5 %;
- file descriptors and threads: flat (the same at every sample after warm-up);
- asyncio tasks: bounded by what the executions in flight hold (each its caller, its
  run and at most two steps side by side: ``4 * in_flight``, plus the worker's own);
  how many are at their parallel steps when a sample is taken varies, a leak grows
  past the bound;
- throughput: flat (the slowest sample after warm-up at least 75 % of the fastest).

Exit status 1 when a verdict fails. A JSON line with every figure closes the output.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from microsaga import (
    CallStep,
    ExecutionFailedError,
    Flow,
    Message,
    PublishStep,
    Retry,
    StepError,
)
from microsaga.testing import MemoryBroker, MockClient


@dataclass
class Sample:
    minute: float
    executions: int
    failed: int
    per_second: float
    rss_mb: float
    fds: int
    tasks: int
    threads: int


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def answer(service: str, endpoint: str, msg: Message) -> Message:
    if endpoint == "Orders.Confirm" and msg.header.get("Micro-Flow-Execution", "").endswith("-f"):
        raise StepError("declined", code="declined", retryable=False)
    return Message({"service": service, "endpoint": endpoint})


def steps() -> list[Any]:
    retry = Retry(max_attempts=3, initial_interval=0.01)
    release = CallStep("inventory", "Inventory", "Release")
    reserve = CallStep("inventory", "Inventory", "Reserve", compensate=release)
    charge = CallStep(
        "payments", "Payments", "Charge", requires=[reserve], retry=retry,
        compensate=CallStep("payments", "Payments", "Refund"),
    )  # fmt: skip
    points = CallStep(
        "points", "Points", "Add", requires=[reserve],
        compensate=CallStep("points", "Points", "Remove"),
    )  # fmt: skip
    ship = PublishStep("shipping.requested", requires=[charge])
    confirm = CallStep("orders", "Orders", "Confirm", requires=[ship, points])
    return [reserve, charge, points, ship, confirm]


async def soak(args: argparse.Namespace) -> tuple[list[Sample], dict[str, Any]]:
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="microsaga-soak-"))
    store = "memory://soak" if args.store == "memory" else f"sqlite:///{folder / 'soak.db'}"
    broker = MemoryBroker()
    client = MockClient(answer)
    samples: list[Sample] = []
    done = failed = 0
    counter = 0
    async with Flow(store, client=client, broker=broker) as flow:
        wf = await flow.workflow_create("order", *steps())
        stop = time.monotonic() + args.minutes * 60
        every = args.minutes * 60 / args.samples

        async def one_at_a_time() -> None:
            nonlocal done, failed, counter
            while time.monotonic() < stop:
                counter += 1
                eid = f"s{counter:08d}" + ("-f" if rng.random() < 0.1 else "")
                try:
                    await wf.execute({"order": counter}, execution_id=eid)
                except ExecutionFailedError:
                    failed += 1
                done += 1

        runners = [asyncio.create_task(one_at_a_time()) for _ in range(args.in_flight)]
        started = time.monotonic()
        last_done, last_time = 0, started
        while time.monotonic() < stop:
            await asyncio.sleep(min(every, max(0.0, stop - time.monotonic())))
            # the test transports keep every call and message: not microsaga's memory
            broker.published.clear()
            client.calls.clear()
            gc.collect()
            now = time.monotonic()
            samples.append(
                Sample(
                    minute=round((now - started) / 60, 2),
                    executions=done,
                    failed=failed,
                    per_second=round((done - last_done) / (now - last_time), 1),
                    rss_mb=round(rss_mb(), 1),
                    fds=fds(),
                    tasks=len(asyncio.all_tasks()),
                    threads=threading.active_count(),
                )
            )
            last_done, last_time = done, now
            print(_row(samples[-1]), flush=True)
        await asyncio.gather(*runners)
    return samples, {"store": args.store, "folder": str(folder)}


WORKER_TASKS = 10  # the flow's own loops (claims, heartbeat, control) and this script's

HEADER = "minute  executions  failed  exec/s   RSS MB  fds  tasks  threads"


def _row(s: Sample) -> str:
    return (
        f"{s.minute:6.2f}  {s.executions:10d}  {s.failed:6d}  {s.per_second:6.1f}  "
        f"{s.rss_mb:7.1f}  {s.fds:3d}  {s.tasks:5d}  {s.threads:7d}"
    )


def verdicts(samples: list[Sample], in_flight: int) -> dict[str, Any]:
    warm = max(1, len(samples) // 5)
    after = samples[warm - 1 :]  # from the end of the warm-up
    base = after[0]
    growth = (samples[-1].rss_mb - base.rss_mb) / base.rss_mb * 100
    speeds = [s.per_second for s in samples[warm:]] or [base.per_second]
    flat_speed = min(speeds) / max(speeds) if max(speeds) else 0.0
    return {
        "rss_growth_percent": round(growth, 2),
        "rss_ok": growth <= 5.0,
        "fds_range": [min(s.fds for s in after), max(s.fds for s in after)],
        "fds_ok": max(s.fds for s in after) - min(s.fds for s in after) <= 1,
        "threads_range": [min(s.threads for s in after), max(s.threads for s in after)],
        "threads_ok": max(s.threads for s in after) == min(s.threads for s in after),
        "tasks_range": [min(s.tasks for s in after), max(s.tasks for s in after)],
        "tasks_bound": 4 * in_flight + WORKER_TASKS,
        "tasks_ok": max(s.tasks for s in after) <= 4 * in_flight + WORKER_TASKS,
        "throughput_min_over_max": round(flat_speed, 3),
        "throughput_ok": flat_speed >= 0.75,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(10**6)
    print(f"soak: {args.minutes:g} minutes, {args.store} store, {args.in_flight} in flight, "
          f"seed {args.seed}")  # fmt: skip
    print(HEADER)
    samples, info = asyncio.run(soak(args))
    result = verdicts(samples, args.in_flight)
    for key, value in result.items():
        if key.endswith("_ok"):
            print(f"{key[:-3]:>12}: {'ok' if value else 'FAILED'}")
    print(json.dumps({"args": vars(args), **info, **result,
                      "samples": [asdict(s) for s in samples]}))  # fmt: skip
    return 0 if all(v for k, v in result.items() if k.endswith("_ok")) else 1


if __name__ == "__main__":
    sys.exit(main())
