"""What PostgreSQL itself spends on an order saga's commits, beside raw commits, as JSON.

    .venv/bin/python benchmarks/pg_statements.py [--seconds 4] [--rounds 3]

The target "one execution at a time on PostgreSQL <= 1.5x five raw one-row commits"
compares microsaga's five commits of an order saga (the creation with the first step,
then four transitions) with five one-row ``INSERT`` commits. This measures the server's
share alone: ``pgbench`` (PostgreSQL's own C client, one connection, prepared
statements) runs, each for ``--seconds``, ``--rounds`` times interleaved (the median
counts), a raw one-row commit and the store's own
statements from ``queries.sql`` with an order saga's values: ``create_execution_one``
(a new execution each time) and ``write_expected_one`` (a step ended, the next one
started, the execution's row fenced and updated). No Python runs in the timed part.

``saga_server_ms`` is one creation and four transitions, ``floor_ms`` five raw commits;
``server_only_ratio`` their ratio: what the saga would measure against the floor with a
client that cost nothing beyond the raw commits' own. Needs ``pgbench`` (Debian's
``postgresql-client``) and the server on ``PGHOST:PGPORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from databases import find_server, fresh_postgres

from microsaga.stores._sql import load_queries

BODY = r"\x7b226f72646572223a317d"  # {"order":1}, as the bytea literal of its bytes
HEADER = '{"Micro-Flow-Step":["reserve"]}'


def _bind(sql: str, values: dict[int, str]) -> str:
    """``sql`` with each ``$n`` replaced by ``values[n]`` (SQL text, a pgbench variable
    or a literal)."""
    return re.sub(r"\$(\d+)", lambda m: values[int(m.group(1))], sql)


def _step(eid: str, step: str, status: int, finished: bool) -> list[str]:
    """A step_runs row's twelve values: a step ended (with its response) or started."""
    return [
        eid,
        step,
        "0",
        str(status),
        "1",
        f"'{BODY}'",
        f"'{HEADER}'",
        f"'{BODY}'" if finished else "NULL",
        f"'{HEADER}'" if finished else "NULL",
        "NULL",
        "1.0",
        "2.0" if finished else "NULL",
    ]


def scripts() -> dict[str, str]:
    """The pgbench scripts: the floor and the store's two statements of an order saga."""
    q = load_queries("postgres")
    new_id = "('e' || :id)"
    create = [  # $1 .. $4 the definition, $5 .. $21 the execution, $22 .. $33 its step
        "'hash-1'", "'order'", "NULL", "'[\"reserve\",\"charge\",\"ship\",\"notify\"]'",
        new_id, "'order'", "NULL", "'hash-1'", "1", f"'{BODY}'", "NULL",
        "NULL", "false", "NULL", "NULL", "'w1'", "1", "1e12", "1.0", "NULL", "NULL",
        *_step(new_id, "'reserve'", 1, False),
        "'microsaga'",
    ]  # fmt: skip
    transition = [  # $1 .. $10 the execution, two step runs, $35 the abort
        "'fixed'", "1", "1", "1", "false", "NULL", "NULL", "NULL", "false", "2.0",
        *_step("'fixed'", "'reserve'", 2, True),
        *_step("'fixed'", "('s' || :id)", 1, False),
        "0",
    ]  # fmt: skip
    every = "\\set id random(1, 9000000000000000000)\n"  # no two alike
    return {
        "floor": every + f"INSERT INTO floor_rows VALUES (:id, '{BODY}');\n",
        "create": every + _bind(q["create_execution_one"], dict(enumerate(create, 1))) + ";\n",
        "transition": every
        + _bind(q["write_expected_one"], dict(enumerate(transition, 1)))
        + ";\n",
    }


def pgbench(url: str, script: Path, seconds: int) -> float:
    """The mean latency of ``script``'s transaction, in milliseconds."""
    done = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-c", "1", "-T", str(seconds), "-f", str(script), url],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed on {script.name}: {done.stderr.strip()[-500:]}")
    out = done.stdout
    found = re.search(r"latency average = ([\d.]+) ms", out)
    if found is None:
        raise SystemExit(f"pgbench printed no latency:\n{out}")
    return float(found.group(1))


async def _written(url: str) -> tuple[int, int]:
    """The executions created and the step runs written: proof that the statements
    wrote (a fence that refused every transition would measure nothing)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        executions = await conn.fetchval("SELECT count(*) FROM microsaga_executions")
        steps = await conn.fetchval(
            "SELECT count(*) FROM microsaga_step_runs WHERE execution_id = 'fixed'"
        )
        return int(executions), int(steps)
    finally:
        await conn.close()


async def _prepare(url: str) -> None:
    """The store's schema, the floor's table, and the execution the transitions fence."""
    import asyncpg

    from microsaga import Flow

    async with Flow(url, worker=False):
        pass  # opening the store migrates the database
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE floor_rows (id bigint PRIMARY KEY, body bytea)")
        await conn.execute(
            "INSERT INTO microsaga_definitions VALUES ('hash-1', 'order', NULL, '{reserve}')"
        )
        await conn.execute(
            "INSERT INTO microsaga_executions (id, workflow_id, definition, status,"
            " request_body, owner, lease_token, lease_until, created_at, updated_at)"
            " VALUES ('fixed', 'order', 'hash-1', 1, '\\x7b7d', 'w1', 1, 1e12, 1, 1)"
        )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=4, help="each statement's run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each")
    args = parser.parse_args()
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench is not installed (apt-get install postgresql-client)")
    server = find_server()
    if isinstance(server, str):
        raise SystemExit(server)
    with fresh_postgres(server, "statements") as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_prepare(url))
        runs: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, text in scripts().items():
                path = Path(tmp) / f"{name}.sql"
                path.write_text(text)
                runs.setdefault(name, []).append(pgbench(url, path, args.seconds))
        executions, steps = asyncio.run(_written(url))
    if executions < 2 or steps < 2:
        raise SystemExit(f"the statements wrote nothing: {executions} executions, {steps} steps")
    ms = {name: round(statistics.median(values), 3) for name, values in runs.items()}
    saga = ms["create"] + 4 * ms["transition"]
    floor = 5 * ms["floor"]
    print(
        json.dumps(
            {
                "floor_commit_ms": ms["floor"],
                "create_ms": ms["create"],
                "transition_ms": ms["transition"],
                "saga_server_ms": round(saga, 3),
                "floor_ms": round(floor, 3),
                "server_only_ratio": round(saga / floor, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
