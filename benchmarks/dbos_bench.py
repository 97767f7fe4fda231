"""DBOS, the reference peer, on the benchmark workloads, printed as JSON.

    benchmarks/.venv-dbos/bin/python benchmarks/dbos_bench.py --store sqlite:///dbos.db

Runs in its own virtualenv (``dbos==3.4.0``), never in microsaga's. DBOS is used as its
documentation recommends: steps are ``@DBOS.step()``, workflows ``@DBOS.workflow()``,
called through the synchronous API (its fastest) from 64 threads for the concurrent
workloads. Each step's output is checkpointed in the system database before the next
step runs, as microsaga stores each step's response. The counts, the widths and the
output keys are those of ``microsaga_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads as w
from dbos import DBOS, DBOSConfig

FAN_WIDTH = 50
FAN_QUEUE = "fan_parts"  # used with --fan-out queue


@DBOS.step()
def reserve(data: dict[str, Any]) -> dict[str, Any]:
    return w.reserve(data)


@DBOS.step()
def charge(data: dict[str, Any]) -> dict[str, Any]:
    return w.charge(data)


@DBOS.step()
def ship(data: dict[str, Any]) -> dict[str, Any]:
    return w.ship(data)


@DBOS.step()
def notify(data: dict[str, Any]) -> dict[str, Any]:
    return w.notify(data)


@DBOS.step()
def release(data: dict[str, Any]) -> dict[str, Any]:
    return w.undo(data)


@DBOS.step()
def refund(data: dict[str, Any]) -> dict[str, Any]:
    return w.undo(data)


@DBOS.workflow()
def order_saga(data: dict[str, Any]) -> dict[str, Any]:
    reserved = reserve(data)
    charged = charge(reserved)
    try:
        shipped = ship(charged)
    except RuntimeError:
        # The saga as a DBOS user writes it: compensate what succeeded, in reverse
        # order, with the same {"request", "response"} input microsaga gives its
        # compensations, then fail the workflow.
        refund({"request": reserved, "response": charged})
        release({"request": data, "response": reserved})
        raise
    return notify(shipped)


@DBOS.step()
def fan_root(data: dict[str, Any]) -> dict[str, Any]:
    return data


@DBOS.step()
def fan_part(data: dict[str, Any], k: int) -> dict[str, Any]:
    return w.fan_part(data, k)


@DBOS.step()
def fan_join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"parts": len(parts)}


@DBOS.workflow()
def fan_out_queue(data: dict[str, Any]) -> dict[str, Any]:
    root = fan_root(data)
    queue = DBOS.retrieve_queue(FAN_QUEUE)
    assert queue is not None
    handles = [queue.enqueue(fan_part, root, k) for k in range(FAN_WIDTH)]
    return fan_join([h.get_result() for h in handles])


@DBOS.workflow()
def fan_out_start(data: dict[str, Any]) -> dict[str, Any]:
    root = fan_root(data)
    handles = [DBOS.start_workflow(fan_part, root, k) for k in range(FAN_WIDTH)]
    return fan_join([h.get_result() for h in handles])


FAN_OUT = {"queue": fan_out_queue, "start": fan_out_start}


def in_flight(pool: ThreadPoolExecutor, n: int, one: Callable[[int], object]) -> float:
    """Seconds to run ``one(i)`` for i < n on the pool's threads, all at once."""
    start = time.perf_counter()
    for future in [pool.submit(one, i) for i in range(n)]:
        future.result()
    return time.perf_counter() - start


def maybe_fail(i: int) -> None:
    try:
        order_saga(w.order(i, fail=i % 10 == 0))
    except RuntimeError:
        pass


def bench(n: int, one_at_a_time: int, fan: int, fan_mode: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for i in range(50):  # warm-up, as microsaga's
        order_saga(w.order(i))
    with ThreadPoolExecutor(64) as pool:
        elapsed = in_flight(pool, n, lambda i: order_saga(w.order(i)))
        out["order_saga_per_s"] = n / elapsed

    lat = []
    for i in range(one_at_a_time):
        t0 = time.perf_counter()
        order_saga(w.order(i))
        lat.append(time.perf_counter() - t0)
    lat.sort()
    out["one_p50_ms"] = statistics.median(lat) * 1000
    out["one_p99_ms"] = lat[int(len(lat) * 0.99) - 1] * 1000

    fan_out = FAN_OUT[fan_mode]
    with ThreadPoolExecutor(8) as pool:  # 8 in flight, as microsaga's
        elapsed = in_flight(pool, fan, lambda i: fan_out(w.order(i)))
        out["fanout_per_s"] = fan / elapsed

    with ThreadPoolExecutor(64) as pool:
        elapsed = in_flight(pool, n, maybe_fail)
        out["order_10pct_fail_per_s"] = n / elapsed
    return out


def use_wal(store: str) -> None:
    """Put a new SQLite system database in WAL mode before DBOS opens it.

    DBOS leaves SQLite in its default rollback-journal mode, where each commit costs
    several fsyncs (about 9 ms here against 1 ms in WAL). The mode is kept in the file,
    so DBOS's connections inherit it; ``synchronous`` stays at SQLite's default, FULL,
    the setting microsaga's store uses: same durability, DBOS's faster journal.
    """
    path = store.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def launch(store: str, pool_size: int | None, fan_mode: str) -> None:
    config: DBOSConfig = {
        "name": "microsaga-bench",
        "system_database_url": store,
        "log_level": "WARNING",
    }
    if pool_size is not None:
        config["sys_db_pool_size"] = pool_size
    DBOS(config=config)
    DBOS.launch()
    if fan_mode == "queue":
        # DBOS's other documented way to run steps in parallel. Polled every 10 ms
        # rather than every second, so its latency does not hide DBOS's cost per step;
        # registered only when used, as its polling thread queries the database.
        DBOS.register_queue(FAN_QUEUE, polling_interval_sec=0.01)
    # DBOS logs every failed step at WARNING/ERROR; (d) fails 10 % on purpose.
    logging.getLogger("dbos").setLevel(logging.CRITICAL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True, help="sqlite:///PATH or postgresql://...")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--fan-out", choices=sorted(FAN_OUT), default="start")
    parser.add_argument("--pool-size", type=int, help="system database pool (DBOS default: 20)")
    parser.add_argument(
        "--sqlite-journal",
        choices=["wal", "default"],
        default="wal",
        help="SQLite journal mode of the system database (default: wal, DBOS's fastest)",
    )
    args = parser.parse_args()
    n, one, fan = (200, 50, 10) if args.quick else (2000, 500, 100)
    if args.store.startswith("sqlite:///") and args.sqlite_journal == "wal":
        use_wal(args.store)
    launch(args.store, args.pool_size, args.fan_out)
    try:
        result = bench(n, one, fan, args.fan_out)
    finally:
        DBOS.destroy()
    print(json.dumps({"contender": "dbos", "store": args.store, **result}))


if __name__ == "__main__":
    main()
