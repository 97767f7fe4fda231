"""microsaga against DBOS on the same workloads: what ``make bench`` runs.

    .venv/bin/python benchmarks/run.py [--quick] [--only sqlite,dbos-sqlite] [--runs 2]

Each contender runs as a subprocess of this one, one after the other, each store fresh
(a new SQLite file, a new PostgreSQL database), and every contender ``--runs`` times,
interleaved (A B C A B C) so that a slow spell of the shared machine does not fall on
one contender only. Then it prints the medians, microsaga's speed over DBOS's, the
project's performance targets and whether each is met, and writes the raw figures to
``benchmarks/results/<time>.json`` and ``benchmarks/results/latest.json``.

DBOS runs in its own virtualenv, ``benchmarks/.venv-dbos``, made here on first use:
it is the reference peer, never a dependency of microsaga.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from databases import Server, find_server, fresh_postgres, fresh_sqlite

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DBOS_VENV = HERE / ".venv-dbos"
DBOS_VERSION = "3.4.0"
DBOS_PACKAGES = [f"dbos=={DBOS_VERSION}", "psycopg[binary]"]


@dataclass(frozen=True)
class Contender:
    name: str
    engine: str  # "microsaga", "dbos" or "floor" (raw commits)
    store: str  # "asyncio", "memory", "sqlite" or "postgres"
    title: str
    # microsaga's steps: "plain" async FunctionSteps, "typed" @saga.step, "sync" plain def
    steps: str = "plain"


CONTENDERS = [
    Contender("asyncio", "microsaga", "asyncio", "plain asyncio"),
    Contender("memory", "microsaga", "memory", "microsaga memory"),
    Contender("memory-typed", "microsaga", "memory", "microsaga memory, typed", "typed"),
    Contender("memory-sync", "microsaga", "memory", "microsaga memory, sync", "sync"),
    Contender("sqlite", "microsaga", "sqlite", "microsaga SQLite"),
    Contender("sqlite-typed", "microsaga", "sqlite", "microsaga SQLite, typed", "typed"),
    Contender("sqlite-sync", "microsaga", "sqlite", "microsaga SQLite, sync", "sync"),
    Contender("dbos-sqlite", "dbos", "sqlite", "DBOS SQLite"),
    Contender("postgres", "microsaga", "postgres", "microsaga PostgreSQL"),
    Contender("postgres-sync", "microsaga", "postgres", "microsaga PostgreSQL, sync", "sync"),
    Contender("postgres-floor", "floor", "postgres", "PostgreSQL, 5 raw commits"),
    Contender("dbos-postgres", "dbos", "postgres", "DBOS PostgreSQL"),
]

# (key, label, higher is better)
WORKLOADS = [
    ("order_saga_per_s", "(a) order saga, executions/s", True),
    ("one_p50_ms", "(b) one at a time, p50 ms", False),
    ("one_p99_ms", "(b) one at a time, p99 ms", False),
    ("fanout_per_s", "(c) fan-out 1->50->1, executions/s", True),
    ("order_10pct_fail_per_s", "(d) order saga, 10 % compensated, executions/s", True),
]

# (ours, theirs, column title): microsaga's speed over its reference's, per row
COMPARISONS = [
    ("sqlite", "dbos-sqlite", "SQLite vs DBOS"),
    ("postgres", "dbos-postgres", "PostgreSQL vs DBOS"),
    ("memory", "asyncio", "memory vs asyncio"),
    ("memory-typed", "memory", "typed vs plain steps, memory"),
    ("sqlite-typed", "sqlite", "typed vs plain steps, SQLite"),
    ("memory-sync", "memory", "sync vs async steps, memory"),
    ("sqlite-sync", "dbos-sqlite", "sync, SQLite vs DBOS"),
    ("postgres-sync", "dbos-postgres", "sync, PostgreSQL vs DBOS"),
    ("postgres", "postgres-floor", "PostgreSQL vs its raw-commit floor"),
]


# the DBOS virtualenv --------------------------------------------------------------------


def _dbos_python() -> Path:
    return DBOS_VENV / "bin" / "python"


def _dbos_installed() -> bool:
    probe = "import dbos, psycopg; from importlib.metadata import version; print(version('dbos'))"
    if not _dbos_python().exists():
        return False
    found = subprocess.run([_dbos_python(), "-c", probe], capture_output=True, text=True)
    return found.returncode == 0 and found.stdout.strip() == DBOS_VERSION


def ensure_dbos() -> str | None:
    """Make DBOS's virtualenv if it is missing; None when ready, else why it is not."""
    if _dbos_installed():
        return None
    print(f"installing DBOS {DBOS_VERSION} into {DBOS_VENV} ...", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", str(DBOS_VENV)],
        [str(_dbos_python()), "-m", "pip", "install", "--quiet", *DBOS_PACKAGES],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            return f"could not install DBOS: {_last_line(done.stderr)}"
    return None if _dbos_installed() else "DBOS installed but does not import"


# one run ---------------------------------------------------------------------------------


@contextlib.contextmanager
def store_url(c: Contender, server: Server | None) -> Iterator[str]:
    if c.store in ("asyncio", "memory"):
        yield "asyncio" if c.store == "asyncio" else "memory://"
    elif c.store == "sqlite":
        with fresh_sqlite(c.name) as url:
            yield url
    else:
        assert server is not None
        with fresh_postgres(server, c.name) as url:
            yield url


def command(c: Contender, url: str, quick: bool) -> list[str]:
    if c.engine == "dbos":
        cmd = [str(_dbos_python()), str(HERE / "dbos_bench.py")]
    elif c.engine == "floor":
        cmd = [sys.executable, str(HERE / "commit_floor.py")]
    else:
        cmd = [sys.executable, str(HERE / "microsaga_bench.py")]
    typed = ["--steps", c.steps] if c.engine == "microsaga" and c.steps != "plain" else []
    return [*cmd, "--store", url, *typed, *(["--quick"] if quick else [])]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def run_one(c: Contender, server: Server | None, quick: bool) -> dict[str, Any]:
    """One run of a contender: its figures, or ``{"error": ...}``; never raises."""
    started = time.perf_counter()
    try:
        with store_url(c, server) as url:
            done = subprocess.run(
                command(c, url, quick),
                capture_output=True,
                text=True,
                timeout=300 if quick else 1800,
            )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {exc.timeout:.0f} s"}
    except Exception as exc:  # a store that cannot be made: report the row, go on
        return {"error": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 1)}
    if done.returncode != 0:
        out["error"] = f"exit {done.returncode}: {_last_line(done.stderr)}"
        return out
    try:
        out.update(json.loads(_last_line(done.stdout)))
    except json.JSONDecodeError:
        out["error"] = f"no JSON in output: {_last_line(done.stdout)}"
    return out


# figures ---------------------------------------------------------------------------------


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in runs if "error" not in r]
    return {
        key: statistics.median(r[key] for r in ok)
        for key, _, _ in WORKLOADS
        if ok and all(key in r for r in ok)
    }


def speedup(med: dict[str, dict[str, float]], ours: str, theirs: str, key: str) -> float | None:
    """How many times microsaga's figure beats the reference's (> 1: microsaga faster)."""
    a, b = med.get(ours, {}).get(key), med.get(theirs, {}).get(key)
    if not a or not b:
        return None
    higher_is_better = next(h for k, _, h in WORKLOADS if k == key)
    return a / b if higher_is_better else b / a


def _ratio(med: dict[str, dict[str, float]], a: str, b: str, key: str) -> float | None:
    """``a``'s figure over ``b``'s, as measured (for latencies: how many times slower)."""
    x, y = med.get(a, {}).get(key), med.get(b, {}).get(key)
    return x / y if x and y else None


def targets(med: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The project's performance targets, each with the measured figure and whether it is met."""
    rows: list[tuple[str, float | None, Callable[[float], bool]]] = [
        (
            "order saga on SQLite >= 20x DBOS on SQLite",
            speedup(med, "sqlite", "dbos-sqlite", "order_saga_per_s"),
            lambda x: x >= 20,
        ),
        (
            "order saga on PostgreSQL >= 20x DBOS on PostgreSQL",
            speedup(med, "postgres", "dbos-postgres", "order_saga_per_s"),
            lambda x: x >= 20,
        ),
        (
            "fan-out on SQLite >= 20x DBOS on SQLite",
            speedup(med, "sqlite", "dbos-sqlite", "fanout_per_s"),
            lambda x: x >= 20,
        ),
        (
            "fan-out on PostgreSQL >= 20x DBOS on PostgreSQL",
            speedup(med, "postgres", "dbos-postgres", "fanout_per_s"),
            lambda x: x >= 20,
        ),
        (
            "one execution p50 on SQLite <= 2 ms",
            med.get("sqlite", {}).get("one_p50_ms"),
            lambda x: x <= 2,
        ),
        (
            "order saga of typed @saga.step functions >= 1/1.1 of FunctionSteps (memory)",
            speedup(med, "memory-typed", "memory", "order_saga_per_s"),
            lambda x: x >= 1 / 1.1,
        ),
        (
            "order saga of typed @saga.step functions >= 1/1.1 of FunctionSteps (SQLite)",
            speedup(med, "sqlite-typed", "sqlite", "order_saga_per_s"),
            lambda x: x >= 1 / 1.1,
        ),
        (
            "memory store >= 1/3 of plain asyncio (order saga)",
            speedup(med, "memory", "asyncio", "order_saga_per_s"),
            lambda x: x >= 1 / 3,
        ),
        (
            "order saga of sync functions on SQLite >= 25x DBOS on SQLite",
            speedup(med, "sqlite-sync", "dbos-sqlite", "order_saga_per_s"),
            lambda x: x >= 25,
        ),
        (
            "order saga of sync functions on PostgreSQL >= 25x DBOS on PostgreSQL",
            speedup(med, "postgres-sync", "dbos-postgres", "order_saga_per_s"),
            lambda x: x >= 25,
        ),
        (
            "order saga of sync functions >= 1/2 of async functions (memory)",
            speedup(med, "memory-sync", "memory", "order_saga_per_s"),
            lambda x: x >= 1 / 2,
        ),
        (
            "one execution of sync functions p50 <= 3x async functions' (memory)",
            _ratio(med, "memory-sync", "memory", "one_p50_ms"),
            lambda x: x <= 3,
        ),
        (
            "one execution p50 on PostgreSQL <= 1.5x five raw one-row commits",
            _ratio(med, "postgres", "postgres-floor", "one_p50_ms"),
            lambda x: x <= 1.5,
        ),
    ]
    return [
        {"target": label, "measured": value, "met": None if value is None else met(value)}
        for label, value, met in rows
    ]


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}" if value < 1 else f"{value:.1f}"


def table(names: list[str], med: dict[str, dict[str, float]]) -> str:
    """The medians and the speed-ups as a Markdown table (pastes into the docs)."""
    by_name = {c.name: c for c in CONTENDERS}
    comparisons = [cmp for cmp in COMPARISONS if cmp[0] in names and cmp[1] in names]
    head = ["workload", *(by_name[n].title for n in names), *(t for _, _, t in comparisons)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, _ in WORKLOADS:
        cells = [label, *(_num(med.get(n, {}).get(key)) for n in names)]
        for ours, theirs, _ in comparisons:
            x = speedup(med, ours, theirs, key)
            cells.append("n/a" if x is None else f"{x:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(names: list[str], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {n: medians(runs[n]) for n in names}
    print()
    print(table(names, med))
    print("\nRatios are microsaga's speed over the reference's (> 1: microsaga faster);")
    print("for latency rows, the reference's milliseconds over microsaga's.")
    for n in names:
        errors = {r["error"] for r in runs[n] if "error" in r}
        for error in sorted(errors):
            print(f"  {n}: unavailable: {error}")
    print("\nTargets:")
    found = targets(med)
    for t in found:
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        print(f"  {verdict:8} {t['target']}: measured {_num(t['measured'])}")
    return {"medians": med, "targets": found}


# main ------------------------------------------------------------------------------------


def availability(names: list[str]) -> tuple[Server | None, dict[str, str]]:
    """The PostgreSQL server (if any) and, per contender that cannot run, why."""
    unavailable: dict[str, str] = {}
    server: Server | None = None
    on_postgres = [c.name for c in CONTENDERS if c.store == "postgres"]
    if any(n in on_postgres for n in names):
        found = find_server()
        if isinstance(found, str):
            unavailable.update(dict.fromkeys(on_postgres, found))
        else:
            server = found
    if any(n.startswith("dbos") for n in names):
        why = ensure_dbos()
        if why is not None:
            unavailable.update(dict.fromkeys(("dbos-sqlite", "dbos-postgres"), why))
    return server, unavailable


def parse_args() -> argparse.Namespace:
    known = [c.name for c in CONTENDERS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--runs", type=int, default=2, help="runs of each contender (2)")
    parser.add_argument("--only", help=f"comma-separated contenders, of: {','.join(known)}")
    args = parser.parse_args()
    args.names = known if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(known)}")
    args.names = [n for n in known if n in args.names]  # the table's order
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    by_name = {c.name: c for c in CONTENDERS}
    server, unavailable = availability(args.names)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in args.names}
    load_before = os.getloadavg()
    for i in range(args.runs):
        for name in args.names:
            if name in unavailable:
                runs[name].append({"error": unavailable[name]})
                continue
            print(f"[run {i + 1}/{args.runs}] {name} ...", end=" ", file=sys.stderr, flush=True)
            result = run_one(by_name[name], server, args.quick)
            runs[name].append(result)
            print(result.get("error") or f"{result['seconds']} s", file=sys.stderr)
    summary = report(args.names, runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    document = {
        "started": stamp,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "runs": runs,
        **summary,
    }
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(document, indent=2)
    (RESULTS / f"{stamp}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    print(f"\nraw figures: {RESULTS / f'{stamp}.json'}")


if __name__ == "__main__":
    main()
