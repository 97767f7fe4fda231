"""How a backlog spreads over 1, 2 and 4 workers on PostgreSQL.

    .venv/bin/python benchmarks/backlog.py [--executions 400] [--step-delay 0.05]
        [--workers 1,2,4] [--repeat 3] [--max-executions N]

Each run gets a new database (as ``postgres_workers.py``): ``--executions`` order sagas
(4 steps of ``--step-delay`` seconds each) are queued first, then the workers start with
their default settings (64 steps at once, claiming about what they can start). The
figures: seconds from the workers' start to the last execution's end, and each worker's
share of the step invocations (the most and the least busy worker). Not a test: it
prints a table of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import postgres_workers as pw  # noqa: E402


async def one_run(
    user: str, executions: int, workers: int, delay: float, held: int | None
) -> tuple[float, list[int]]:
    async with pw.fresh_database(user) as url:
        await pw.create_executions(url, executions)
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "steps.log"
            env = {k: v for k, v in pw.os.environ.items() if not k.startswith("MICROSAGA_")}
            env["PYTHONPATH"] = str(HERE)
            env["MICROSAGA_BENCH_STEP_DELAY"] = str(delay)
            env["MICROSAGA_BENCH_LOG"] = str(log)
            if held is not None:
                env["MICROSAGA_MAX_EXECUTIONS"] = str(held)
            started = time.monotonic()
            procs = pw.start_workers(url, workers, env)
            try:
                async with pw.Progress(url) as progress:
                    while (await progress.finished())[0] < executions:
                        await asyncio.sleep(0.05)
                took = time.monotonic() - started
            finally:
                pw.stop_workers(procs)
            counts = collections.Counter(log.read_text().split())
    shares = sorted((counts.get(str(p.pid), 0) for p in procs), reverse=True)
    return took, shares


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=400)
    parser.add_argument("--step-delay", type=float, default=0.05)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--max-executions", type=int, help="executions a worker holds (default: concurrency)"
    )
    args = parser.parse_args()
    user = await pw._user()
    print(f"{args.executions} order sagas queued, 4 steps of {args.step_delay}s each")
    print("| workers | seconds (median) | steps by the busiest / the least busy worker |")
    print("|---|---|---|")
    for count in (int(n) for n in args.workers.split(",")):
        runs = [
            await one_run(user, args.executions, count, args.step_delay, args.max_executions)
            for _ in range(args.repeat)
        ]
        took = statistics.median(t for t, _ in runs)
        busiest = statistics.median(s[0] for _, s in runs)
        least = statistics.median(s[-1] for _, s in runs)
        print(f"| {count} | {took:.2f} | {busiest:.0f} / {least:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
