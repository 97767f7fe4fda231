"""What only the SQLite store does: commits on the loop's thread that never wait for a
lock, WAL with synchronous=FULL, its URL options."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from microsaga import ConfigurationError, Flow, FunctionStep, Message, Status, WaitStep
from microsaga.stores.sqlite import Q, SQLiteStore
from tests.helpers import eventually


async def test_a_database_locked_by_another_process_does_not_block_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    async with Flow(f"sqlite:///{path}") as flow:

        async def step(msg: Message) -> dict[str, bool]:
            return {"ok": True}

        wf = await flow.workflow_create("locked", FunctionStep(step, id="step"))
        other = sqlite3.connect(path, isolation_level=None)  # "another process"
        other.execute("BEGIN IMMEDIATE")
        running = asyncio.create_task(wf.execute())
        ticks = 0
        for _ in range(20):  # the loop keeps running while the commit waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not running.done()
        other.execute("COMMIT")
        other.close()
        eid = await asyncio.wait_for(running, 10)
        assert ticks == 20
        assert (await flow.execution(eid)).status is Status.SUCCESS


async def test_wal_and_full_sync_by_default(tmp_path: Path) -> None:
    path = tmp_path / "pragmas.db"
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    try:
        assert store.synchronous == "FULL"
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("query", "words"),
    [("?synchronous=SOMETIMES", "synchronous"), ("?inline_commit=maybe", "inline_commit")],
)
def test_bad_url_options_name_the_option(tmp_path: Path, query: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        SQLiteStore(f"sqlite:///{tmp_path / 'x.db'}{query}")


@pytest.mark.parametrize("query", ["?foo=1", "?synchronous=FULL&busy", "?Synchronous=FULL"])
def test_unknown_url_options_are_refused_naming_the_known_ones(tmp_path: Path, query: str) -> None:
    name = query[1:].split("&")[-1].split("=")[0]
    with pytest.raises(ConfigurationError) as wrong:
        SQLiteStore(f"sqlite:///{tmp_path / 'x.db'}{query}")
    assert f"unknown option {name!r}; known: inline_commit, synchronous" in str(wrong.value)


@pytest.mark.parametrize(
    "url",
    ["sqlite://host/x.db", "sqlite://", "sqlite:///x.db?foo=1", "sqlite:///x.db?synchronous=no"],
)
def test_configuration_errors_name_the_setting_the_caller_gives(url: str) -> None:
    with pytest.raises(ConfigurationError) as default:
        SQLiteStore(url)
    assert default.value.setting == "store"
    with pytest.raises(ConfigurationError) as named:
        SQLiteStore(url, setting="MICROSAGA_STORE")
    assert named.value.setting == "MICROSAGA_STORE"
    assert str(named.value) == f"MICROSAGA_STORE: {default.value.reason}"


async def test_a_transition_writing_only_step_records_rewrites_no_index(tmp_path: Path) -> None:
    # SQLite rewrites the entries of every index whose column an UPDATE sets, even to
    # the value it had: most transitions (a response and the next start) set none
    path = tmp_path / "plan.db"
    async with Flow(f"sqlite:///{path}"):
        pass  # the schema
    conn = sqlite3.connect(path)

    def index_writes(sql: str) -> int:
        ops = [row[1] for row in conn.execute("EXPLAIN " + sql, dict.fromkeys(_PARAMS))]
        return sum(op in ("IdxInsert", "IdxDelete") for op in ops)

    assert index_writes(Q["transition_records"]) == 0
    assert index_writes(Q["transition"]) > 0  # the statement that ends or releases
    conn.close()


async def test_a_claim_reads_only_due_executions(tmp_path: Path) -> None:
    # parked executions (waiting steps) are RUNNING with their timer as lease_until: a
    # claim must not read them all
    path = tmp_path / "plan.db"
    async with Flow(f"sqlite:///{path}"):
        pass
    conn = sqlite3.connect(path)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN " + Q["claim"],
        {"owner": "w", "until": 1, "now": 1, "limit": 1, "alive": "[]", "only": None, "skip": "[]"},
    ).fetchall()
    details = [row[-1] for row in plan]
    conn.close()
    assert any("executions_claimable (lease_until<?)" in d for d in details), details
    assert not any("executions_by_status" in d for d in details), details


_PARAMS = (
    "id", "token", "at", "expect", "abort", "status", "has_response", "response_body",
    "response_header", "error", "release",
)  # fmt: skip


async def test_a_store_of_schema_4_gets_the_index_of_redrives(tmp_path: Path) -> None:
    from microsaga.stores._sql import migrations, statements

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for version, sql in migrations("sqlite"):
        if version <= 4:  # a store written before the redrives were indexed
            for statement in statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    async with Flow(f"sqlite:///{path}") as flow:
        assert await flow.executions(redrive_of="any") == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    plan = conn.execute(
        "EXPLAIN QUERY PLAN " + Q["list_executions_by_redrive"],
        {"redrive_of": "e1", "workflow_id": None, "status": None, "before": 9, "limit": 5},
    ).fetchall()
    conn.close()
    details = [row[-1] for row in plan]
    assert any("executions_by_redrive (redrive_of=? AND seq<?)" in d for d in details), details


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"workflow_id": "order"}, "executions_by_workflow"),
        ({"status": Status.FAILURE}, "executions_by_status"),
        ({"workflow_id": "order", "status": Status.FAILURE}, "executions_by_"),
    ],
)
async def test_a_filtered_listing_reads_the_index_of_its_filter(
    tmp_path: Path, filters: dict[str, object], index: str
) -> None:
    # a listing by a rare workflow or status read every execution when the filter was
    # written ":x IS NULL OR ...", which SQLite's planner cannot serve from an index
    path = tmp_path / "s.db"
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    try:
        sent: list[str] = []
        store.r.set_trace_callback(sent.append)
        await store.list_executions(**filters)  # type: ignore[arg-type]
        store.r.set_trace_callback(None)
    finally:
        await store.close()
    listing = next(s for s in sent if "ORDER BY e.seq DESC" in s)
    conn = sqlite3.connect(path)
    details = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + listing)]
    conn.close()
    assert any(f"USING INDEX {index}" in d for d in details), (listing, details)


async def test_giving_up_unread_steps_leaves_a_live_execution_alone(tmp_path: Path) -> None:
    """Store.give_up_unread_steps touches only an execution ABORTED without
    compensation: one still waiting keeps its waiting step."""
    async with Flow(f"sqlite:///{tmp_path / 'flow.db'}", poll_interval=0.05) as flow:

        async def first(msg: Message) -> dict[str, bool]:
            return {"ok": True}

        wf = await flow.workflow_create(
            "held", FunctionStep(first, id="first"), WaitStep("go", requires=["first"])
        )
        live = await wf.execute({}, async_=True)

        async def waits() -> bool:
            return (await flow.execution(live)).steps["go"].status is Status.WAITING

        await eventually(waits)
        await flow.store.give_up_unread_steps(live, "not read", 1.0)
        info = await flow.execution(live)
        assert (info.status, info.steps["go"].status) == (Status.RUNNING, Status.WAITING)
