"""Pruning a large PostgreSQL store while order sagas run (issue 15).

    .venv/bin/python benchmarks/prune.py [--finished 1000000] [--seconds 15] [--rounds 3]
                                         [--until-done] [--rest F]

On a fresh PostgreSQL database: one order saga runs through microsaga, then
``--finished`` copies of it (finished two days ago, with their four step runs each) are
written with one ``INSERT ... SELECT ... generate_series`` per table. A flow that is a
worker then runs order sagas, 64 in flight, in rounds of two windows of ``--seconds``
each: the sagas alone, then the sagas while ``flow.prune(older_than=1 day)`` (another
flow in the same process, as a worker's retention is) deletes the old executions; the
prune is stopped (cancelled) at the end of its window and resumed in the next round.

Reported: both throughputs of each round, the median of the rounds' ratios (target:
at least 0.5) and their mean weighted by the rounds' pruning time (the last round may
be short), the executions pruned per second of pruning, and the time pruning all
``--finished`` takes at that rate: projected after ``--rounds`` rounds, or measured
(the pruning windows added up) with ``--until-done``, which goes on until none is left.
``--rest F`` sets the rest after each batch to F times the batch's time (the library's
``PRUNE_REST``), to compare pacings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import microsaga_bench as b
import workloads as w
from databases import find_server, fresh_postgres

import microsaga.stores.base
from microsaga import Flow, Status

TARGET = 0.5
DAY = 86400

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
LEFT = "SELECT count(*) FROM microsaga_executions WHERE updated_at < $1"


async def count_left(url: str, before: float) -> int:
    """The old executions not pruned yet (a connection of its own each time: another
    helper's chaos run may restart the server between two rounds)."""
    conn = await asyncpg.connect(url)
    try:
        found: int = await conn.fetchval(LEFT, before)
        return found
    finally:
        await conn.close()


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def fill(url: str, count: int) -> None:
    async with Flow(url) as flow:
        wf = await flow.workflow_create("order", *b.order_steps())
        template = await wf.execute(w.order(0))
    conn = await asyncpg.connect(url)
    try:
        old = time.time() - 2 * DAY
        started = time.perf_counter()
        await conn.execute(COPY_EXECUTIONS, template, old, count)
        await conn.execute(COPY_STEPS, template, old, count)
        await conn.execute("ANALYZE")
        log(f"  {count:,} finished executions written in {time.perf_counter() - started:.0f} s")
    finally:
        await conn.close()


async def sagas_per_second(
    wf: Any, seconds: float, beside: asyncio.Future[int] | None = None
) -> float:
    """Order sagas, 64 in flight, for ``seconds`` (or until ``beside`` is done); per second."""
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def caller(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < deadline and not (beside is not None and beside.done()):
            await wf.execute(w.order(i))
            done += 1
            i += 64

    await asyncio.gather(*(caller(k) for k in range(64)))
    return done / (time.perf_counter() - started)


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.seconds
    before = time.time() - DAY
    rounds: list[dict[str, Any]] = []
    async with Flow(url) as runner, Flow(url, worker=False) as pruner:
        wf = await runner.workflow_create("order", *b.order_steps())
        for i in range(200):  # warm-up
            await wf.execute(w.order(i))
        left = await count_left(url, before)
        pruning_s = 0.0
        while left and (args.until_done or len(rounds) < args.rounds):
            alone = await sagas_per_second(wf, seconds)
            task = asyncio.ensure_future(pruner.prune(DAY, status=[Status.SUCCESS]))
            started = time.perf_counter()
            during = await sagas_per_second(wf, seconds, task)
            window = time.perf_counter() - started
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            pruning_s += window
            now_left = await count_left(url, before)
            rounds.append(
                {
                    "alone_per_s": round(alone),
                    "while_pruning_per_s": round(during),
                    "ratio": round(during / alone, 2),
                    "pruned": left - now_left,
                    "pruning_s": round(window, 1),
                }
            )
            left = now_left
            log(f"  round {len(rounds)}: {json.dumps(rounds[-1])}; {left:,} left")
    pruned = args.finished - left
    rate = pruned / pruning_s
    ratio = statistics.median(r["ratio"] for r in rounds)
    # each round's ratio weighted by its pruning window (the last one may be short)
    weighted = sum(r["ratio"] * r["pruning_s"] for r in rounds) / pruning_s
    return {
        "rest": microsaga.stores.base.PRUNE_REST,
        "batch": microsaga.stores.base.PRUNE_BATCH,
        "rounds": rounds,
        "ratio_median": ratio,
        "ratio_weighted": round(weighted, 2),
        "pruned": pruned,
        "pruned_per_s": round(rate),
        "all_pruned_s" if not left else "all_pruned_projected_s": round(args.finished / rate),
        "met": ratio >= TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=15.0, help="of each window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--until-done", action="store_true", help="prune all of them")
    parser.add_argument("--rest", type=float, help="rest after a batch, times its time")
    args = parser.parse_args()
    if args.rest is not None:
        microsaga.stores.base.PRUNE_REST = args.rest
    server = find_server()
    if isinstance(server, str):
        sys.exit(f"not run: {server}")
    with fresh_postgres(server, "prune") as url:
        log(f"PostgreSQL: writing {args.finished:,} finished executions ...")
        asyncio.run(fill(url, args.finished))
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "finished": args.finished,
            "load_before": [round(x, 2) for x in os.getloadavg()],
        }
        result.update(asyncio.run(measure(url, args)))
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
