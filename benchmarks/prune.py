"""Pruning a large PostgreSQL store while order sagas run (issue 15).

    .venv/bin/python benchmarks/prune.py [--finished 1000000] [--seconds 20]

On a fresh PostgreSQL database: one order saga runs through microsaga, then
``--finished`` copies of it (finished two days ago, with their four step runs each) are
written with one SQL statement per table. A flow that is a worker then runs order
sagas, 64 in flight, for ``--seconds`` (the baseline), and again while
``flow.prune(older_than=1 day)`` deletes every old execution from another flow, a
thousand a time. It reports both throughputs, their ratio and how long the prune took.
Target: the sagas' throughput while pruning at least half the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import microsaga_bench as b
import workloads as w
from databases import find_server, fresh_postgres

from microsaga import Flow, Status

TARGET = 0.5
TWO_DAYS = 2 * 86400

COPY_EXECUTIONS = """
INSERT INTO microsaga_executions (
    id, workflow_id, version, definition, status, request_body, request_header,
    response_body, response_header, created_at, updated_at)
SELECT 'old-' || g, e.workflow_id, e.version, e.definition, e.status, e.request_body,
       e.request_header, e.response_body, e.response_header, $2, $2
FROM microsaga_executions e, generate_series(1, $3) g
WHERE e.id = $1
"""
COPY_STEPS = """
INSERT INTO microsaga_step_runs (
    execution_id, step_id, phase, status, attempts, request_body, request_header,
    response_body, response_header, error, started_at, finished_at)
SELECT 'old-' || g, s.step_id, s.phase, s.status, s.attempts, s.request_body,
       s.request_header, s.response_body, s.response_header, s.error, $2, $2
FROM microsaga_step_runs s, generate_series(1, $3) g
WHERE s.execution_id = $1
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def fill(url: str, count: int) -> None:
    async with Flow(url) as flow:
        wf = await flow.workflow_create("order", *b.order_steps())
        template = await wf.execute(w.order(0))
    conn = await asyncpg.connect(url)
    try:
        old = time.time() - TWO_DAYS
        started = time.perf_counter()
        await conn.execute(COPY_EXECUTIONS, template, old, count)
        await conn.execute(COPY_STEPS, template, old, count)
        await conn.execute("ANALYZE")
        log(f"  {count:,} finished executions written in {time.perf_counter() - started:.0f} s")
    finally:
        await conn.close()


async def sagas_per_second(wf: Any, seconds: float, stop: asyncio.Event | None) -> float:
    """Order sagas, 64 in flight, for ``seconds`` (or until ``stop``); per second."""
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def caller(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < deadline and not (stop is not None and stop.is_set()):
            await wf.execute(w.order(i))
            done += 1
            i += 64

    await asyncio.gather(*(caller(k) for k in range(64)))
    return done / (time.perf_counter() - started)


async def measure(url: str, seconds: float) -> dict[str, Any]:
    async with Flow(url) as runner, Flow(url, worker=False) as pruner:
        wf = await runner.workflow_create("order", *b.order_steps())
        for i in range(200):  # warm-up
            await wf.execute(w.order(i))
        log(f"  baseline: order sagas for {seconds:g} s ...")
        baseline = await sagas_per_second(wf, seconds, None)
        log(f"  baseline {baseline:,.0f}/s; pruning meanwhile ...")
        stop = asyncio.Event()
        prune_started = time.perf_counter()

        async def prune() -> int:
            try:
                return await pruner.prune(86400, status=[Status.SUCCESS])
            finally:
                stop.set()

        pruning = asyncio.ensure_future(prune())
        during = await sagas_per_second(wf, 3600, stop)
        pruned = await pruning
        prune_s = time.perf_counter() - prune_started
    return {
        "baseline_per_s": round(baseline),
        "while_pruning_per_s": round(during),
        "ratio": round(during / baseline, 2),
        "pruned": pruned,
        "prune_s": round(prune_s, 1),
        "pruned_per_s": round(pruned / prune_s),
        "met": during / baseline >= TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="of the baseline")
    args = parser.parse_args()
    server = find_server()
    if isinstance(server, str):
        sys.exit(f"not run: {server}")
    with fresh_postgres(server, "prune") as url:
        log(f"PostgreSQL: writing {args.finished:,} finished executions ...")
        asyncio.run(fill(url, args.finished))
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "finished": args.finished}
        result.update(asyncio.run(measure(url, args.seconds)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
