"""Scale of state: a worker's memory over a large store, and recovery after a kill.

    .venv/bin/python benchmarks/scale.py [--quick] [--only sqlite,postgres]

For each store (SQLite, and PostgreSQL when reachable), each check on a fresh one:

- memory: fill the store with 100,000 finished executions and 10,000 suspended ones
  through microsaga's public API, start a worker process (``python -m microsaga
  --store URL worker``) and report its resident memory once it has settled, beside
  that of a worker on an empty store. Target: at most 150 MB.
- recovery: a process starts 10,000 executions whose first step hangs and is killed
  with SIGKILL once they are stored; then a worker process starts and we report the
  seconds until all 10,000 have finished. Target: at most 10 s. The restarted worker
  runs on the same machine, so it sees that the killed process is gone and frees its
  leases at once (default worker ids; ``--worker-id`` gives both the same stable id,
  whose leases a restart frees too). Were it elsewhere it would wait for them to expire
  (``lease_ttl``, 10 s by default), and that wait would be counted.

Prints progress on stderr and the figures with the targets; writes them as JSON to
``benchmarks/results/scale-<time>.json`` and ``benchmarks/results/scale-latest.json``.
Linux only (resident memory is read from ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_steps
import workloads as w
from databases import find_server, fresh_postgres, fresh_sqlite

from microsaga import Flow, Status

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RSS_TARGET_MB = 150
RECOVERY_TARGET_S = 10
UNFINISHED = (Status.PENDING, Status.RUNNING, Status.COMPENSATING)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of the worker and the killed process: scale_steps importable."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    return env


# filling the store ---------------------------------------------------------------------


async def bounded(n: int, width: int, one: Any, label: str) -> None:
    """Run ``one(i)`` for i < n, ``width`` at a time, logging progress every 10 %."""
    sem = asyncio.Semaphore(width)
    started = time.perf_counter()
    step = max(n // 10, 1)
    done = 0

    async def go(i: int) -> None:
        nonlocal done
        async with sem:
            await one(i)
        done += 1
        if done % step == 0 or done == n:
            rate = done / (time.perf_counter() - started)
            log(f"  {label}: {done:,}/{n:,} ({rate:,.0f}/s)")

    await asyncio.gather(*(go(i) for i in range(n)))


async def fill(url: str, finished: int, suspended: int) -> None:
    async with Flow(url, concurrency=256) as flow:
        wf = await flow.workflow_create("scale_finished", *scale_steps.finished_steps())
        await bounded(finished, 256, lambda i: wf.execute(w.order(i)), "finished")
    # Created by a flow that runs nothing, so they are PENDING until suspended.
    async with Flow(url, worker=False) as flow:
        wf = await flow.workflow_create("scale_suspended", *scale_steps.two_steps())

        async def suspend(i: int) -> None:
            await flow.suspend(await wf.execute(w.order(i), async_=True))

        await bounded(suspended, 64, suspend, "suspended")


# the worker process ----------------------------------------------------------------------


def start_worker(url: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "microsaga", "--store", url, "worker"]
    return subprocess.Popen(cmd, env=subprocess_env(), stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return {"rss_mb": fields["VmRSS"], "peak_mb": fields["VmHWM"]}


def settled_memory(url: str, at_least: float = 5.0, limit: float = 60.0) -> dict[str, float]:
    """A worker's memory once it has stopped changing (3 s within 1 MB), or at ``limit``."""
    proc = start_worker(url)
    started = time.monotonic()
    samples: list[float] = []
    try:
        while True:
            time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with status {proc.returncode}")
            mem = memory_mb(proc.pid)
            samples.append(mem["rss_mb"])
            elapsed = time.monotonic() - started
            recent = samples[-6:]
            steady = len(recent) == 6 and max(recent) - min(recent) < 1.0
            if (elapsed >= at_least and steady) or elapsed >= limit:
                return {**mem, "after_s": round(elapsed, 1)}
    finally:
        stop(proc)


def check_memory(kind: str, finished: int, suspended: int, server: Any) -> dict[str, Any]:
    log(f"{kind}: memory of a worker on an empty store ...")
    with fresh_store(kind, server) as url:
        empty = settled_memory(url)
    log(f"{kind}: filling a store with {finished:,} finished, {suspended:,} suspended ...")
    with fresh_store(kind, server) as url:
        started = time.perf_counter()
        asyncio.run(fill(url, finished, suspended))
        fill_s = time.perf_counter() - started
        log(f"{kind}: memory of a worker on that store ...")
        full = settled_memory(url)
    return {
        "finished": finished,
        "suspended": suspended,
        "fill_s": round(fill_s, 1),
        "empty_store": empty,
        "full_store": full,
        "met": full["peak_mb"] <= RSS_TARGET_MB,  # the peak: stricter than the settled size
    }


# recovery after a kill --------------------------------------------------------------------


async def leave_unfinished(url: str, count: int) -> None:
    """The process that gets killed: stores ``count`` executions, says so, then hangs."""
    flow = Flow(url)
    await flow.open()
    wf = await flow.workflow_create("scale_recover", *scale_steps.two_steps())
    for start in range(0, count, 500):
        await asyncio.gather(
            *(wf.execute(w.order(i), async_=True) for i in range(start, min(start + 500, count)))
        )
    print("ready", flush=True)
    await asyncio.sleep(3600)


async def unfinished_left(flow: Flow) -> bool:
    for status in UNFINISHED:
        if await flow.executions("scale_recover", status, limit=1):
            return True
    return False


async def count_finished(flow: Flow) -> int:
    total, before = 0, None
    while page := await flow.executions("scale_recover", Status.SUCCESS, 1000, before):
        total += len(page)
        before = page[-1].id
    return total


async def watch_recovery(url: str, started: float, limit: float) -> dict[str, Any]:
    """Poll the store until no execution is left unfinished; the seconds it took."""
    first = None
    async with Flow(url, worker=False) as flow:
        while time.monotonic() - started < limit:
            if first is None and await flow.executions("scale_recover", Status.SUCCESS, 1):
                first = time.monotonic() - started
            if not await unfinished_left(flow):
                break
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
        finished = await count_finished(flow)
    return {"all_finished_s": round(elapsed, 2), "first_finished_s": first, "finished": finished}


def kill_after_storing(url: str, count: int, lease_ttl: float | None) -> float:
    """Run the process that leaves ``count`` executions unfinished and SIGKILL it."""
    extra = {scale_steps.HOLD: "1"}
    if lease_ttl is not None:
        extra["MICROSAGA_LEASE_TTL"] = str(lease_ttl)
    cmd = [sys.executable, __file__, "--leave", url, "--unfinished", str(count)]
    proc = subprocess.Popen(cmd, env=subprocess_env(**extra), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the process to kill did not store its executions: {line!r}")
    finally:
        proc.kill()
        proc.wait()
    return time.monotonic()


def check_recovery(kind: str, count: int, lease_ttl: float | None, server: Any) -> dict[str, Any]:
    with fresh_store(kind, server) as url:
        log(f"{kind}: a process stores {count:,} executions and is killed ...")
        killed_at = kill_after_storing(url, count, lease_ttl)
        log(f"{kind}: a worker restarts and resumes them ...")
        worker = start_worker(url)
        started = time.monotonic()
        try:
            found = asyncio.run(watch_recovery(url, started, limit=300))
        finally:
            stop(worker)
    return {
        "unfinished": count,
        "lease_ttl_s": lease_ttl if lease_ttl is not None else 10.0,
        "restart_after_kill_s": round(started - killed_at, 2),
        **found,
        "met": found["finished"] == count and found["all_finished_s"] <= RECOVERY_TARGET_S,
    }


# main -------------------------------------------------------------------------------------


def fresh_store(kind: str, server: Any) -> Any:
    return fresh_sqlite("scale") if kind == "sqlite" else fresh_postgres(server, "scale")


def _memory_cells(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return ["not run", "not run"]
    empty, full = m["empty_store"], m["full_store"]
    return [
        f"{empty['rss_mb']:.0f} MB",
        f"{full['rss_mb']:.0f} MB (peak {full['peak_mb']:.0f})",
    ]


def _recovery_cells(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return ["not run", "not run"]
    first = r["first_finished_s"]
    return [
        f"{r['all_finished_s']:.1f} s ({r['finished']:,}/{r['unfinished']:,} finished)",
        f"{first:.1f} s (lease_ttl {r['lease_ttl_s']:g} s)" if first is not None else "none",
    ]


def print_summary(results: dict[str, Any]) -> None:
    head = [
        "store",
        "worker RSS, empty store",
        "worker RSS, full store",
        "restart -> all finished",
        "restart -> first finished",
    ]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for kind, r in results.items():
        if "error" in r:
            cells = [f"unavailable: {r['error']}", "", "", ""]
        else:
            cells = _memory_cells(r.get("memory")) + _recovery_cells(r.get("recovery"))
        print("| " + " | ".join([kind, *cells]) + " |")
    print(
        f"\nTargets: worker RSS <= {RSS_TARGET_MB} MB; all resumed and finished within "
        f"{RECOVERY_TARGET_S} s of a restart."
    )
    for kind, r in results.items():
        for check in ("memory", "recovery"):
            if check in r:
                verdict = "MET" if r[check]["met"] else "NOT MET"
                print(f"  {verdict:8} {kind} {check}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="sqlite,postgres", help="stores: sqlite,postgres")
    parser.add_argument("--checks", default="memory,recovery", help="memory,recovery")
    parser.add_argument("--quick", action="store_true", help="a tenth of the counts")
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--suspended", type=int, default=10_000)
    parser.add_argument("--unfinished", type=int, default=10_000)
    parser.add_argument(
        "--lease-ttl", type=float, help="lease_ttl of the killed process (microsaga's default)"
    )
    parser.add_argument(
        "--worker-id",
        help="a stable worker id for the killed process and the restarted worker "
        "(MICROSAGA_WORKER_ID): the restart takes its executions back without waiting "
        "for their leases",
    )
    parser.add_argument("--leave", metavar="URL", help=argparse.SUPPRESS)  # the killed process
    args = parser.parse_args()
    if args.quick:
        args.finished, args.suspended, args.unfinished = (
            args.finished // 10,
            args.suspended // 10,
            args.unfinished // 10,
        )
    return args


def main() -> None:
    args = parse_args()
    if args.worker_id:
        os.environ["MICROSAGA_WORKER_ID"] = args.worker_id  # both processes inherit it
    if args.leave:
        asyncio.run(leave_unfinished(args.leave, args.unfinished))
        return
    results: dict[str, Any] = {}
    for kind in [k.strip() for k in args.only.split(",") if k.strip()]:
        server = None
        if kind == "postgres":
            server = find_server()
            if isinstance(server, str):
                results[kind] = {"error": server}
                continue
        try:
            results[kind] = {}
            if "memory" in args.checks:
                found = check_memory(kind, args.finished, args.suspended, server)
                results[kind]["memory"] = found
            if "recovery" in args.checks:
                found = check_recovery(kind, args.unfinished, args.lease_ttl, server)
                results[kind]["recovery"] = found
        except Exception as exc:  # report the store, go on with the next
            results[kind] = {"error": f"{type(exc).__name__}: {exc}"}
    print_summary(results)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps({"started": stamp, "quick": args.quick, "results": results}, indent=2)
    (RESULTS / f"scale-{stamp}.json").write_text(text)
    (RESULTS / "scale-latest.json").write_text(text)
    print(f"\nraw figures: {RESULTS / f'scale-{stamp}.json'}")


if __name__ == "__main__":
    main()
