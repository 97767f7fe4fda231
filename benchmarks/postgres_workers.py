"""Order sagas per second on PostgreSQL with one and two worker processes, and how long
a SIGKILLed worker's executions take to finish elsewhere.

    .venv/bin/python benchmarks/postgres_workers.py [--executions 2000] [--repeat 3]
        [--json results.json]

Each run gets a new database on PGHOST:PGPORT (127.0.0.1:5432; role PGUSER, else
``postgres`` or ``root``), dropped afterwards. The order saga is 4 FunctionSteps in a
chain (reserve -> charge -> ship -> notify) on ~100-byte JSON (``workloads.py``).

Throughput: the executions are created first (``Flow(url, worker=False)``,
``execute(async_=True)``), then ``microsaga worker`` processes are started; the rate is
measured between the 10th and the 90th percentile of the executions' finishing times,
so process start-up and the last stragglers do not count. Takeover: two workers run
executions whose steps take ``--step-delay`` seconds; one is SIGKILLed after 30 % have
finished; the figure is the time from the kill to the finish of the last execution it
held. Twice: with default worker ids the survivor sees at its next heartbeat
(``lease_ttl / 3``) that the killed process of its machine is gone and frees its leases;
with stable ids (``worker --id``), which nobody takes for dead, it waits for them to
expire (about the lease TTL, ``--lease-ttl``, plus the work left), as a worker on
another machine would.

Not a test: it prints a table of medians (and JSON with every sample on request).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ.get("PGPORT", "5432"))


# the steps, imported by the workers as postgres_workers:NAME ------------------------


async def _pause() -> None:
    delay = float(os.environ.get("MICROSAGA_BENCH_STEP_DELAY", "0") or 0)
    if delay:
        await asyncio.sleep(delay)
    log = os.environ.get("MICROSAGA_BENCH_LOG")
    if log:  # which process ran the step (backlog.py counts them)
        with open(log, "a", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")


async def reserve(msg: Any) -> Any:
    await _pause()
    return workloads.reserve(msg.json())


async def charge(msg: Any) -> Any:
    await _pause()
    return workloads.charge(msg.json())


async def ship(msg: Any) -> Any:
    await _pause()
    return workloads.ship(msg.json())


async def notify(msg: Any) -> Any:
    await _pause()
    return workloads.notify(msg.json())


# harness --------------------------------------------------------------------------------


async def _user() -> str:
    import asyncpg

    errors = []
    for user in dict.fromkeys(u for u in (os.environ.get("PGUSER"), "postgres", "root") if u):
        try:
            conn = await asyncpg.connect(
                host=HOST, port=PORT, user=user, database="postgres", timeout=5
            )
        except Exception as exc:
            errors.append(f"{user}: {exc}")
            continue
        await conn.close()
        return user
    raise SystemExit(f"no PostgreSQL server on {HOST}:{PORT}: {'; '.join(errors)}")


@asynccontextmanager
async def fresh_database(user: str) -> AsyncIterator[str]:
    import asyncpg

    name = f"bench_workers_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(host=HOST, port=PORT, user=user, database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://{user}@{HOST}:{PORT}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def start_workers(
    url: str, count: int, env: dict[str, str], ids: list[str] | None = None
) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes, with default ids or those given."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "microsaga", "--store", url, "worker"]
            + (["--id", ids[n]] if ids else []),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(count)
    ]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_env(args: argparse.Namespace, step_delay: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSAGA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env["MICROSAGA_LEASE_TTL"] = str(args.lease_ttl)
    env["MICROSAGA_MAX_EXECUTIONS"] = str(args.max_executions)
    env["MICROSAGA_BENCH_STEP_DELAY"] = str(step_delay)
    return env


async def create_executions(url: str, count: int) -> None:
    from microsaga import Flow, FunctionStep

    steps = importlib.import_module("postgres_workers")  # importable name, not __main__
    async with Flow(url, worker=False) as flow:
        first = FunctionStep(steps.reserve)
        second = FunctionStep(steps.charge, requires=[first])
        third = FunctionStep(steps.ship, requires=[second])
        fourth = FunctionStep(steps.notify, requires=[third])
        wf = await flow.workflow_create("order", first, second, third, fourth)
        for start in range(0, count, 250):
            await asyncio.gather(
                *(
                    wf.execute(workloads.order(i), async_=True)
                    for i in range(start, min(count, start + 250))
                )
            )


class Progress:
    """Counts finished executions over one connection (a new one per look would cost
    the server a process start each time, and skew what is measured)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    async def __aenter__(self) -> Progress:
        import asyncpg

        self.conn = await asyncpg.connect(self.url, timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def finished(self) -> tuple[int, int]:
        """(finished, failed) executions."""
        row = await self.conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status IN (2, 3, 4)),"
            " count(*) FILTER (WHERE status IN (2, 4))"
            " FROM microsaga_executions"
        )
        return row[0], row[1]

    async def wait(self, count: int, procs: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + 600
        while True:
            done, failed = await self.finished()
            if failed:
                raise SystemExit(f"{failed} executions did not succeed")
            if done >= count:
                return
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a worker exited")
            if time.monotonic() > deadline:
                raise SystemExit(f"only {done} of {count} executions finished in 600 s")
            await asyncio.sleep(0.1)


async def throughput(args: argparse.Namespace, user: str, workers: int) -> dict[str, float]:
    async with fresh_database(user) as url:
        await create_executions(url, args.executions)
        procs = start_workers(url, workers, worker_env(args, 0.0))
        try:
            async with Progress(url) as progress:
                await progress.wait(args.executions, procs)
                rows = await progress.conn.fetch("SELECT updated_at FROM microsaga_executions")
        finally:
            stop_workers(procs)
    ends = sorted(r[0] for r in rows)
    n = len(ends)
    low, high = ends[n // 10], ends[(9 * n) // 10]
    return {
        "executions_per_second": (0.8 * n) / (high - low),
        "seconds_10_to_90": high - low,
    }


async def takeover(args: argparse.Namespace, user: str, *, stable_ids: bool) -> dict[str, float]:
    ids = [f"bench-{uuid.uuid4().hex[:8]}-{n}" for n in range(2)] if stable_ids else None
    async with fresh_database(user) as url:
        await create_executions(url, args.executions)
        procs = start_workers(url, 2, worker_env(args, args.step_delay), ids)
        try:
            async with Progress(url) as progress:
                while (await progress.finished())[0] < 0.3 * args.executions:
                    await asyncio.sleep(0.02)
                victim = procs[0]
                victim.send_signal(signal.SIGKILL)
                killed_at = time.time()
                victim.wait()
                held = [
                    r[0]
                    for r in await progress.conn.fetch(
                        "SELECT id FROM microsaga_executions"
                        " WHERE owner LIKE $1 AND status IN (0, 1, 6)",
                        ids[0] if ids else f"%:{victim.pid}:%",
                    )
                ]
                await progress.wait(args.executions, procs[1:])
                last = await progress.conn.fetchval(
                    "SELECT max(updated_at) FROM microsaga_executions WHERE id = ANY($1::text[])",
                    held,
                )
        finally:
            stop_workers(procs)
    return {"takeover_seconds": (last or killed_at) - killed_at, "held": float(len(held))}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    user = await _user()
    samples: dict[str, list[dict[str, float]]] = {
        "1 worker": [],
        "2 workers": [],
        "kill": [],
        "kill, stable ids": [],
    }
    for round_ in range(args.repeat):
        for workers in (1, 2):
            result = await throughput(args, user, workers)
            samples[f"{workers} worker{'s' if workers > 1 else ''}"].append(result)
            print(
                f"round {round_ + 1}: {workers} worker(s) "
                f"{result['executions_per_second']:.0f} executions/s",
                file=sys.stderr,
            )
        if not args.no_kill:
            for stable_ids, name in ((False, "kill"), (True, "kill, stable ids")):
                result = await takeover(args, user, stable_ids=stable_ids)
                samples[name].append(result)
                print(
                    f"round {round_ + 1}: {name}: takeover {result['takeover_seconds']:.2f}s "
                    f"({result['held']:.0f} executions held by the killed worker)",
                    file=sys.stderr,
                )
    one = statistics.median(s["executions_per_second"] for s in samples["1 worker"])
    two = statistics.median(s["executions_per_second"] for s in samples["2 workers"])
    summary: dict[str, Any] = {
        "executions": args.executions,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "lease_ttl": args.lease_ttl,
        "max_executions": args.max_executions,
        "one_worker_per_second": one,
        "two_workers_per_second": two,
        "ratio_two_to_one": two / one,
    }
    if samples["kill"]:
        summary["takeover_seconds"] = statistics.median(
            s["takeover_seconds"] for s in samples["kill"]
        )
        summary["takeover_seconds_stable_ids"] = statistics.median(
            s["takeover_seconds"] for s in samples["kill, stable ids"]
        )
        summary["step_delay"] = args.step_delay
    summary["samples"] = samples
    return summary


def table(summary: dict[str, Any]) -> str:
    rows = [
        ("order sagas/s, 1 worker process", f"{summary['one_worker_per_second']:.0f}"),
        ("order sagas/s, 2 worker processes", f"{summary['two_workers_per_second']:.0f}"),
        ("ratio two / one", f"{summary['ratio_two_to_one']:.2f}"),
    ]
    if "takeover_seconds" in summary:
        lease = f"lease {summary['lease_ttl']:g} s"
        rows += [
            (
                f"SIGKILL -> last taken-over execution done, same machine ({lease})",
                f"{summary['takeover_seconds']:.2f} s",
            ),
            (
                f"  the same with stable worker ids: lease expiry ({lease})",
                f"{summary['takeover_seconds_stable_ids']:.2f} s",
            ),
        ]
    width = max(len(r[0]) for r in rows)
    head = (
        f"PostgreSQL workers: medians of {summary['repeat']} runs, "
        f"{summary['executions']} executions each, {summary['cpus']} CPUs"
    )
    return "\n".join([head, *(f"  {name:<{width}}  {value:>10}" for name, value in rows)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lease-ttl", type=float, default=10.0, help="worker lease TTL (s)")
    parser.add_argument(
        "--max-executions",
        type=int,
        default=256,
        help="executions a worker claims at once (MICROSAGA_MAX_EXECUTIONS)",
    )
    parser.add_argument(
        "--step-delay", type=float, default=0.02, help="seconds each step takes in the kill run"
    )
    parser.add_argument("--no-kill", action="store_true", help="skip the takeover measurement")
    parser.add_argument("--json", type=Path, help="also write every sample as JSON here")
    options = parser.parse_args()
    result = asyncio.run(main(options))
    print(table(result))
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
