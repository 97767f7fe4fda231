"""Large payloads: a 10 MB request through a 4-step chain, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/payloads.py [--mb 10] [--runs 3] [--only sqlite,postgres]

Each run is a fresh process on a fresh store (a new SQLite file, a new PostgreSQL
database), interleaved (sqlite postgres sqlite postgres ...). A run warms up with a
small execution of the same chain, then measures one execution whose request is
``--mb`` megabytes of JSON (a string of random base64: it does not compress), passed
unchanged by each step (``echo``) to the next:

- seconds: the execution, from ``execute`` to its return;
- peer: one raw INSERT of the same bytes into a table of the same database and its
  commit, in the same process (sqlite3, asyncpg): ``x raw`` is seconds over that;
- peak RSS / payload: the peak resident memory (``VmHWM``, reset once the request is
  made) over the resident memory before the request was made, divided by the
  payload's size: the request itself counts 1;
- store growth / payload: how much the store grew (the SQLite file and its WAL, the
  PostgreSQL database's size) over the payload's size; one copy stored is 1.

Prints medians of ``--runs`` (3) and writes ``benchmarks/results/payloads-latest.json``.
Linux only (memory is read from ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from databases import find_server, fresh_postgres, fresh_sqlite

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STORES = ("sqlite", "postgres")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


async def _store_size(url: str) -> int:
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
        return size
    finally:
        await conn.close()


async def _raw_insert(url: str, body: bytes) -> float:
    """Seconds of one INSERT of ``body`` and its commit: the floor of storing it once."""
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (body BLOB)")
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO bench_raw VALUES (?)", (body,))
            conn.execute("COMMIT")
            took = time.perf_counter() - start
            conn.execute("DROP TABLE bench_raw")
            return took
        finally:
            conn.close()
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (body bytea)")
        start = time.perf_counter()
        await conn.execute("INSERT INTO bench_raw VALUES ($1)", body)
        took = time.perf_counter() - start
        await conn.execute("DROP TABLE bench_raw")
        return took
    finally:
        await conn.close()


def _random_json(size: int) -> bytes:
    """A JSON document of about ``size`` bytes that does not compress (as TOAST would)."""
    import base64

    out = bytearray(b'{"blob":"')
    out += base64.b64encode(os.urandom(size * 3 // 4))
    out += b'"}'
    return bytes(out)


async def echo(msg: Any) -> Any:
    return msg


async def child(url: str, mb: float) -> dict[str, float]:
    from microsaga import Flow, FunctionStep, Message

    async with Flow(url) as flow:
        steps = [FunctionStep(echo, id="s0")]
        for i in range(1, 4):
            steps.append(FunctionStep(echo, id=f"s{i}", requires=[steps[-1]]))
        wf = await flow.workflow_create("chain", *steps)
        await wf.execute({"warm": "up"})
        before_size = await _store_size(url)
        before_rss = _status_kb("VmRSS") * 1024
        body = _random_json(int(mb * 1_000_000))
        # the peak from now on: making the body is not the chain's
        Path("/proc/self/clear_refs").write_text("5")
        start = time.perf_counter()
        eid = await wf.execute(Message(body))
        seconds = time.perf_counter() - start
        peak = _status_kb("VmHWM") * 1024
        info = await flow.execution(eid)
        assert info.response is not None
        assert info.response.body == body
    grown = await _store_size(url) - before_size
    raw = await _raw_insert(url, body)
    return {
        "seconds": seconds,
        "raw_seconds": raw,
        "peak_rss_per_payload": (peak - before_rss) / len(body),
        "store_growth_per_payload": grown / len(body),
        "payload_bytes": len(body),
    }


def _run_child(url: str, mb: float) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", url, "--mb", str(mb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"run on {url} failed:\n{done.stderr[-2000:]}")
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(STORES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.mb))))
        return
    stores = [s for s in args.only.split(",") if s]
    server = find_server() if "postgres" in stores else None
    if isinstance(server, str):
        print(f"postgres: skipped, {server}", file=sys.stderr)
        stores.remove("postgres")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in stores}
    for i in range(args.runs):
        for store in stores:
            print(f"run {i + 1}/{args.runs}: {store}", file=sys.stderr)
            if store == "sqlite":
                with fresh_sqlite("payloads") as url:
                    runs[store].append(_run_child(url, args.mb))
            else:
                assert server is not None
                assert not isinstance(server, str)
                with fresh_postgres(server, "payloads") as url:
                    runs[store].append(_run_child(url, args.mb))
    medians = {
        store: {k: statistics.median(r[k] for r in found) for k in found[0]}
        for store, found in runs.items()
    }
    print(f"{args.mb:g} MB request through a 4-step chain, medians of {args.runs} runs")
    print(f"{'store':<10} {'seconds':>8} {'x raw':>7} {'peak RSS':>9} {'store':>7}")
    for store, m in medians.items():
        print(
            f"{store:<10} {m['seconds']:>8.3f} {m['seconds'] / m['raw_seconds']:>6.1f}x "
            f"{m['peak_rss_per_payload']:>8.2f}x {m['store_growth_per_payload']:>6.2f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {"date": time.strftime("%Y-%m-%d"), "mb": args.mb, "runs": runs, "medians": medians}
    (RESULTS / "payloads-latest.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
