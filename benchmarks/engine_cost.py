"""What the engine costs per execution on the memory store, beside plain asyncio.

    python benchmarks/engine_cost.py                  # both measures, about a minute
    python benchmarks/engine_cost.py --only gc        # the garbage collector's share
    python benchmarks/engine_cost.py --only typed     # typed @saga.step over FunctionStep
    python benchmarks/engine_cost.py --only observability  # Tracing, Metrics hooks
    python benchmarks/engine_cost.py --only postgres  # the client's share on PostgreSQL

``instructions``: ``valgrind --tool=callgrind`` counts the instructions of two runs of
the order saga (workload (a) of ``run.py``) with different counts and divides the
difference by the difference of the counts, for microsaga on ``memory://`` and for
plain asyncio calling the same four functions. ``typed``: the same count for the order
saga written as typed ``@saga.step`` functions (``microsaga_bench.py --steps typed``),
beside the FunctionSteps of Message functions. ``observability``: the same count with
``Tracing()`` (OpenTelemetry installed, no tracer provider configured: the no-op
tracer) and with ``Metrics()``, beside no hook. Counted instructions do not depend on
what else the machine is doing, unlike seconds: the ratio is repeatable on a busy host.

``postgres``: the instructions of this process (the client: engine, store, driver,
event loop; not the server's) per order saga on PostgreSQL, one execution at a time,
beside five raw one-row commits through a prepared asyncpg statement, the floor of
``one_at_a_time.py --only postgres``. Only with ``--only postgres``.

``gc``: the share of wall time spent in the garbage collector's collections (timed with
``gc.callbacks``) while a memory store fills with order sagas, and how many objects
the collector tracks per stored execution.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import microsaga_bench as b  # noqa: E402
import workloads as w  # noqa: E402

from microsaga import Flow  # noqa: E402


async def _order_sagas(store: str, n: int) -> None:
    if store == "asyncio":
        await b.plain_asyncio(50, 64)
        await b.plain_asyncio(n, 64)
        return
    typed = store == "memory-typed"
    hooks: list[Any] = []
    if store == "memory-traced":
        from microsaga.observability import Tracing

        hooks.append(Tracing())  # no tracer provider is configured: the no-op tracer
    elif store == "memory-traced-sdk":
        from opentelemetry.sdk.trace import TracerProvider

        from microsaga.observability import Tracing

        hooks.append(Tracing(TracerProvider()))  # spans made and ended, exported nowhere
    elif store == "memory-empty-hook":
        from microsaga import Hook

        class Empty(Hook):  # what the engine's events cost, for a hook that does nothing
            def execution_header(self, event: Any) -> None:
                return None

            def execution_created(self, event: Any) -> None: ...
            def run_started(self, event: Any) -> None: ...
            def run_stopped(self, event: Any) -> None: ...
            def execution_status(self, event: Any) -> None: ...
            def step_started(self, event: Any) -> None: ...
            def step_finished(self, event: Any) -> None: ...

        hooks.append(Empty())
    elif store == "memory-metrics":
        import prometheus_client

        from microsaga.observability import Metrics

        hooks.append(Metrics(prometheus_client.CollectorRegistry()))
    if store.startswith("memory-"):
        store = "memory://"
    async with Flow(store, concurrency=256, hooks=hooks) as flow:
        if typed:
            order = await flow.workflow_add(b.typed)
        else:
            order = await flow.workflow_create("order", *b.order_steps())
        for i in range(50):
            await order.execute(w.order(i))
        await b.in_flight(n, 64, lambda i: order.execute(w.order(i)))


async def _postgres_sagas(kind: str, url: str, n: int) -> None:
    """``n`` order sagas one at a time (``kind`` "saga"), or ``n`` times five raw commits."""
    if kind == "floor":
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS floor_rows (id bigint, body bytea)")
            insert = await conn.prepare("INSERT INTO floor_rows VALUES ($1, $2)")
            for i in range(n * 5):
                await insert.fetch(i, b"x" * 100)
        finally:
            await conn.close()
        return
    async with Flow(url) as flow:
        order = await flow.workflow_create("order", *b.order_steps())
        for i in range(n):
            await order.execute(w.order(i))


def _instructions(store: str, n: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--child", store, str(n)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def per_execution(store: str, small: int, large: int) -> float:
    return (_instructions(store, large) - _instructions(store, small)) / (large - small)


def _settle() -> None:
    for _ in range(6):  # nested tuples are untracked one level per collection
        gc.collect()


async def gc_share(rounds: int, n: int) -> dict[str, float]:
    spent = [0.0]
    started = [0.0]

    def timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - started[0]

    async with Flow("memory://", concurrency=256) as flow:
        order = await flow.workflow_create("order", *b.order_steps())
        await b.in_flight(n, 64, lambda i: order.execute(w.order(i)))
        _settle()
        before = len(gc.get_objects())
        gc.callbacks.append(timer)
        wall = 0.0
        try:
            for _ in range(rounds):
                wall += await b.in_flight(n, 64, lambda i: order.execute(w.order(i)))
        finally:
            gc.callbacks.remove(timer)
        _settle()
        tracked = (len(gc.get_objects()) - before) / (rounds * n)
    return {
        "executions": rounds * n,
        "order_saga_per_s": rounds * n / wall,
        "gc_share_of_wall_time": spent[0] / wall,
        "tracked_objects_per_stored_execution": tracked,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--only", choices=["instructions", "gc", "typed", "observability", "postgres"]
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        store, n = args.child[0], int(args.child[1])
        if store.startswith(("saga:", "floor:")):
            kind, url = store.split(":", 1)
            asyncio.run(_postgres_sagas(kind, url, n))
        else:
            asyncio.run(_order_sagas(store, n))
        return
    result: dict[str, Any] = {}
    if args.only == "postgres":
        from databases import find_server, fresh_postgres

        server = find_server()
        if isinstance(server, str):
            raise SystemExit(f"postgres: {server}")
        if shutil.which("valgrind") is None:
            raise SystemExit("postgres: valgrind is not installed")
        with fresh_postgres(server, "cost") as url:
            saga = per_execution(f"saga:{url}", 50, 250)
            floor = per_execution(f"floor:{url}", 50, 250)
        result["postgres"] = {
            "saga_per_execution": round(saga),
            "five_commits": round(floor),
            "ratio_saga_over_five_commits": round(saga / floor, 2),
        }
    if args.only in (None, "instructions"):
        if shutil.which("valgrind") is None:
            print("instructions: valgrind is not installed, skipped", file=sys.stderr)
        else:
            ours = per_execution("memory://", 200, 1200)
            floor = per_execution("asyncio", 1000, 6000)
            result["instructions"] = {
                "memory_per_execution": round(ours),
                "asyncio_per_execution": round(floor),
                "ratio_asyncio_over_memory": round(floor / ours, 3),
            }
    if args.only in (None, "typed"):
        if shutil.which("valgrind") is None:
            print("typed: valgrind is not installed, skipped", file=sys.stderr)
        else:
            plain = per_execution("memory://", 200, 1200)
            typed = per_execution("memory-typed", 200, 1200)
            result["typed"] = {
                "function_steps_per_execution": round(plain),
                "typed_steps_per_execution": round(typed),
                "ratio_typed_over_function_steps": round(typed / plain, 3),
            }
    if args.only in (None, "observability"):
        if shutil.which("valgrind") is None:
            print("observability: valgrind is not installed, skipped", file=sys.stderr)
        else:
            plain = per_execution("memory://", 200, 1200)
            found = {
                "noop_tracing": per_execution("memory-traced", 200, 1200),
                "empty_hook": per_execution("memory-empty-hook", 200, 1200),
                "sdk_tracing": per_execution("memory-traced-sdk", 200, 1200),
                "metrics": per_execution("memory-metrics", 200, 1200),
            }
            result["observability"] = {"no_hook_per_execution": round(plain)} | {
                f"{name}_cost": round(count / plain - 1, 4) for name, count in found.items()
            }
    if args.only in (None, "gc"):
        result["gc"] = asyncio.run(gc_share(5, 2000))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
