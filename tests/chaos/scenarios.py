"""The chaos scenarios: what each injects, and its short (CI) and long sizes.

=====================  =============================================================
scenario               fault
=====================  =============================================================
worker-kill            ``kill -9`` of a random worker every 1-5 s (SQLite store)
postgres-restart       the harness's PostgreSQL ``stop -m immediate``, 0-2 s down, then
                       started again, every 5-40 s (2-6 s in the short version)
redis-restart          the harness's Redis (the broker) killed and restarted mid-run
nats-restart           the harness's NATS JetStream server killed and restarted
rabbitmq-restart       the harness's RabbitMQ node killed and restarted
sqlite-disk-full       the SQLite store on a small tmpfs, filled to the last byte for
                       2-6 s at a time
sqlite-readonly        the SQLite file's folder made read-only (``chmod 555``) for 2-6 s
                       at a time, a worker killed and started inside each window; the
                       workers run without root's power to ignore file modes
participant-faults     a proxy before two participants: slow answers, resets after the
                       effect, garbage instead of HTTP, 502 pages
=====================  =============================================================

Every scenario runs the order saga of :mod:`tests.chaos.harness` with 10 % of the
orders declined (rolled back) and a publish step on the scenario's broker (Redis unless
the scenario restarts another).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from tests.chaos.harness import Params, Report, Run, new_folder, remove_folder
from tests.chaos.servers import Postgres, Unavailable

__all__ = ["SCENARIOS", "Scenario", "run_scenario"]


async def pause(run: Run, seconds: float, count: int) -> bool:
    """Wait ``seconds``, or less when the run may stop; True when it may."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        if run.should_stop(count):
            return True
        await asyncio.sleep(0.1)
    return run.should_stop(count)


# faults -------------------------------------------------------------------------------


async def kill_workers(run: Run) -> None:
    kills = 0
    while not await pause(run, run.rng.uniform(1.0, 5.0), kills):
        assert run.workers is not None
        alive = run.workers.alive()
        if not alive:
            continue
        victim = run.rng.choice(alive)
        run.fault("kill", f"worker {victim.pid}")
        await asyncio.to_thread(run.workers.kill, victim)
        kills += 1
    run.details["kills"] = kills


async def restart_postgres(run: Run) -> None:
    """Every 5-40 s (2-6 s in the short version, to fit in CI's minutes)."""
    low, high = (5.0, 40.0) if run.long else (2.0, 6.0)
    restarts = 0
    server: Postgres = run.details["postgres"]
    while not await pause(run, run.rng.uniform(low, high), restarts):
        down = run.rng.uniform(0.0, 2.0)
        since = time.time()
        await asyncio.to_thread(server.restart, down)
        run.fault("restart", f"postgres down {down:.1f} s", since)
        restarts += 1
    run.details["restarts"] = restarts


async def restart_broker(run: Run) -> None:
    restarts = 0
    server = run.details["broker"]
    while not await pause(run, run.rng.uniform(2.0, 8.0), restarts):
        down = run.rng.uniform(0.0, 2.0)
        since = time.time()
        await asyncio.to_thread(server.restart, down, False)
        run.fault("restart", f"broker killed, down {down:.1f} s", since)
        restarts += 1
    run.details["restarts"] = restarts


def _fill(folder: str) -> int:
    """Write a file in ``folder`` until the disk is full; the bytes written."""
    written = 0
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    fh.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += size
    return written


async def fill_disk(run: Run) -> None:
    fills = 0
    store = str(run.folder / "store")
    while not await pause(run, run.rng.uniform(2.0, 6.0), fills):
        hold = run.rng.uniform(2.0, 6.0)
        since = time.time()
        written = await asyncio.to_thread(_fill, store)
        fills += 1
        await asyncio.sleep(hold)
        os.remove(os.path.join(store, "filler"))
        run.fault("disk_full", f"{written} bytes, held {hold:.1f} s", since)
    run.details["fills"] = fills


async def read_only_folder(run: Run) -> None:
    windows = 0
    store = run.folder / "store"
    while not await pause(run, run.rng.uniform(2.0, 6.0), windows):
        hold = run.rng.uniform(2.0, 6.0)
        since = time.time()
        store.chmod(0o555)
        assert run.workers is not None
        alive = run.workers.alive()
        if alive:  # a worker started now opens the store inside the window
            victim = run.rng.choice(alive)
            await asyncio.to_thread(run.workers.kill, victim)
            run.fault("kill", f"worker {victim.pid} in the read-only window")
        windows += 1
        await asyncio.sleep(hold)
        store.chmod(0o755)
        run.fault("read_only", f"held {hold:.1f} s", since)
    run.details["windows"] = windows


async def proxy_faults(run: Run) -> None:
    while True:
        count = sum(len(p.faults) for p in run.details.get("proxies", []))
        if await pause(run, 0.5, count):
            return


# stores ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def own_postgres(run: Run) -> AsyncIterator[None]:
    server = Postgres(run.folder / "postgres")
    await asyncio.to_thread(server.start)
    run.details["postgres"] = server
    run.store_url = server.url
    try:
        yield
    finally:
        run.details.pop("postgres", None)
        with contextlib.suppress(Unavailable):
            await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def tmpfs_store(run: Run, size_mb: int) -> AsyncIterator[None]:
    folder = run.folder / "store"
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        raise Unavailable("the disk-full scenario needs mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield
    finally:  # the store outlives the mount, for the checker's problems to be read
        with contextlib.suppress(OSError):
            shutil.copytree(
                folder, run.folder / "store-copy", ignore=shutil.ignore_patterns("filler")
            )
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@contextlib.asynccontextmanager
async def unprivileged_store(run: Run) -> AsyncIterator[None]:
    """Root ignores file modes: the workers run as root without the capabilities that
    bypass them (``setpriv``), so a folder made read-only is read-only to them."""
    if os.geteuid() != 0:
        raise Unavailable("the read-only scenario drops root's file capabilities: run as root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise Unavailable("the read-only scenario needs setpriv (util-linux)")
    run.worker_prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    try:
        yield
    finally:
        (run.folder / "store").chmod(0o755)


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: Callable[[Run], Coroutine[Any, Any, None]]
    short: Params
    long: Params
    store: Callable[[Run], contextlib.AbstractAsyncContextManager[None]] | None = None
    broker: str = "redis"
    proxied: tuple[str, ...] = ()
    needs: str = ""  # what it needs beyond Python, for the skip reason

    async def run(self, seed: str, long: bool = False, **overrides: Any) -> Report:
        params = replace(self.long if long else self.short, **overrides)
        folder = new_folder(self.name)
        run = Run(self.name, seed, params, folder)
        run.long = long
        report = await run.execute(
            self.faults, store=self.store, broker=self.broker, proxied=self.proxied
        )
        if report.counters.ok and not os.environ.get("CHAOS_KEEP"):
            remove_folder(folder)
        return report


SHORT = Params(executions=200, in_flight=100, min_faults=3, drain_timeout=120)
LONG = Params(executions=3000, in_flight=1000, min_faults=20, drain_timeout=900, max_duration=3600)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "worker-kill",
            kill_workers,
            short=replace(SHORT, min_faults=5),
            long=replace(LONG, executions=1000, min_faults=100),
        ),
        Scenario(
            "postgres-restart",
            restart_postgres,
            short=replace(SHORT, min_faults=2),
            long=replace(LONG, min_faults=15),
            store=own_postgres,
        ),
        Scenario("redis-restart", restart_broker, short=replace(SHORT, min_faults=2), long=LONG),
        Scenario(
            "nats-restart",
            restart_broker,
            short=replace(SHORT, min_faults=2),
            long=LONG,
            broker="nats",
        ),
        Scenario(
            "rabbitmq-restart",
            restart_broker,
            short=replace(SHORT, min_faults=1),
            long=replace(LONG, min_faults=10),
            broker="rabbitmq",
        ),
        Scenario(
            "sqlite-disk-full",
            fill_disk,
            short=SHORT,
            long=LONG,
            store=lambda run: tmpfs_store(run, 64),
        ),
        Scenario(
            "sqlite-readonly", read_only_folder, short=SHORT, long=LONG, store=unprivileged_store
        ),
        Scenario(
            "participant-faults",
            proxy_faults,
            short=replace(SHORT, min_faults=20),
            long=replace(LONG, min_faults=500),
            proxied=("inventory", "payments"),
        ),
    )
}


async def run_scenario(name: str, seed: str, long: bool = False, **overrides: Any) -> Report:
    return await SCENARIOS[name].run(seed, long, **overrides)
