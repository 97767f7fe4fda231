"""What only the PostgreSQL store has: migrations, connection errors, wake-ups, and
several processes' worth of stores on one database."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import pytest

if not os.environ.get("CI"):  # under CI a missing driver fails the imports below
    pytest.importorskip("asyncpg", reason="needs asyncpg (pip install 'microsaga[postgres]')")

from microsaga import Flow, FunctionStep, Message, SchemaVersionError, Status, StoreError
from microsaga._urls import redact_url
from microsaga.errors import ConfigurationError
from microsaga.stores import _postgres_db, open_store
from microsaga.stores._postgres_db import Database, Q
from microsaga.stores.base import NewExecution, StepRecord, Transition, TransitionResult
from microsaga.stores.postgres import SCHEMA_VERSION, PostgresStore, retryable
from tests.helpers import eventually
from tests.integration import test_store_contract as contract
from tests.integration.pg import asyncpg, connect, fresh_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_database() as found:
        yield found


@pytest.fixture
async def store(url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def pending(eid: str, now: float = 100.0) -> NewExecution:
    return NewExecution(
        id=eid,
        workflow_id="order",
        version=None,
        definition_hash="h",
        definition=b"{}",
        step_ids=["a"],
        request=Message(b"{}"),
        status=Status.PENDING,
        owner=None,
        lease_until=0.0,
        created_at=now,
    )


# schema --------------------------------------------------------------------------------

# Everything a migration can create in the database's schema, as comparable rows.
CATALOG = {
    "columns": """
        SELECT table_name, column_name, ordinal_position, data_type, udt_name, is_nullable,
               column_default, is_identity, identity_generation
        FROM information_schema.columns WHERE table_schema = current_schema()
        ORDER BY table_name, column_name""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = current_schema() ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = current_schema() ORDER BY 1, 2""",
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.reloptions::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() ORDER BY 1""",
    "sequences": """
        SELECT sequence_name, data_type, start_value, increment
        FROM information_schema.sequences WHERE sequence_schema = current_schema()
        ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = current_schema() ORDER BY 1, 2""",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND NOT t.tgisinternal ORDER BY 1, 2""",
    "views": """
        SELECT viewname, definition FROM pg_views
        WHERE schemaname = current_schema() ORDER BY 1""",
    "types": """
        SELECT t.typname, t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = current_schema() AND t.typtype IN ('e', 'd', 'c')
          AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)
        ORDER BY 1""",
}


async def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await connect(url)
    try:
        return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in CATALOG.items()}
    finally:
        await conn.close()


def migration_scripts() -> list[tuple[int, str]]:
    folder = resources.files("microsaga.stores") / "sql" / "postgres" / "migrations"
    found = [(int(f.name.split("_", 1)[0]), f.read_text()) for f in folder.iterdir()]
    return sorted(v for v in found if v[1])


async def replay(url: str, upto: int) -> None:
    """Bring a database to version ``upto`` the way an older microsaga did."""
    conn = await connect(url)
    try:
        await conn.execute(
            "CREATE TABLE microsaga_schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, sql in migration_scripts():
            if version <= upto:
                await conn.execute(sql)
                await conn.execute("INSERT INTO microsaga_schema_version VALUES ($1)", version)
    finally:
        await conn.close()


async def test_fresh_schema_equals_the_replayed_migrations(url: str) -> None:
    scripts = migration_scripts()
    assert [v for v, _ in scripts] == list(range(1, SCHEMA_VERSION + 1))
    store = PostgresStore(url)
    await store.open()  # an empty database gets schema.sql
    await store.close()
    fresh = await catalog(url)
    assert any(r[0] == "microsaga_executions" for r in fresh["relations"])
    for upto in range(1, SCHEMA_VERSION + 1):
        async with fresh_database() as older:
            await replay(older, upto)
            upgraded = PostgresStore(older)
            await upgraded.open()  # runs the migrations after ``upto``
            await upgraded.close()
            assert await catalog(older) == fresh, f"replayed from version {upto}"
            conn = await connect(older)
            try:
                versions = await conn.fetch("SELECT version FROM microsaga_schema_version")
            finally:
                await conn.close()
            assert sorted(r[0] for r in versions) == list(range(1, SCHEMA_VERSION + 1))


async def test_opening_again_keeps_the_data(url: str) -> None:
    for _ in range(2):
        store = PostgresStore(url)
        await store.open()
        await store.commit([pending(f"e{_}")])
        await store.close()
    store = PostgresStore(url)
    await store.open()
    try:
        assert [e.id for e in await store.list_executions()] == ["e1", "e0"]
    finally:
        await store.close()


async def test_workers_starting_together_migrate_once(url: str) -> None:
    stores = [PostgresStore(url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    await asyncio.gather(*(s.close() for s in stores))
    conn = await connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM microsaga_schema_version") == 1
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    await store.close()
    conn = await connect(url)
    try:
        await conn.execute("INSERT INTO microsaga_schema_version VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(SchemaVersionError) as refused:
        await PostgresStore(url).open()
    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "upgrade microsaga" in message
    assert url in message
    with pytest.raises(SchemaVersionError):
        async with Flow(url):
            pass


# The statements that find executions by id, each run for every commit or every
# execution: their plans must look the rows up by id from the first statement on.
BY_ID = [
    "create_executions",
    "create_execution_one",
    "read_executions",
    "write_expected_one",
    "load_executions",
    "park",
    "park_blocked",
    "get_status",
    "lock_execution",
    "signal_row",
    "release",
]


# what a plan reads: a table (Seq Scan on) or an index
SCANS = re.compile(r"(?:Seq Scan on|Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)")


async def generic_plan(conn: Any, name: str) -> str:
    """The plan a store connection keeps for statement ``name`` (any values)."""
    count = max(int(n) for n in re.findall(r"\$(\d+)", Q[name]))
    await conn.execute(f"PREPARE {name} AS {Q[name].strip().rstrip(';')}")
    rows = await conn.fetch(f"EXPLAIN EXECUTE {name}({', '.join(['NULL'] * count)})")
    return "\n".join(r[0] for r in rows)


async def test_executions_are_found_by_id_from_the_first_statement_on(url: str) -> None:
    """A store connection prepares its statements on first use and keeps their generic
    plans (plan_cache_mode=force_generic_plan) until autoanalyze replans them. Made on
    a fresh, empty table, those plans must still find executions through the index on
    id: a scan of the table, or of another index, cheap while it is empty, would be kept
    once it holds a million rows."""
    db = Database(url)
    await db.open()  # creates the schema
    try:
        async with db.connection() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            for name in BY_ID:
                plan = await generic_plan(conn, name)
                scans = SCANS.findall(plan)
                found = [s for s in scans if s.startswith("microsaga_executions")]
                assert found, (name, plan)
                assert set(found) == {"microsaga_executions_id_key"}, (name, plan)
                await conn.execute(f"DEALLOCATE {name}")
    finally:
        await db.close()


async def test_statements_are_not_jit_compiled(url: str) -> None:
    """The server compiles (JIT) a plan whose cost estimate is high, on every execution:
    a prune batch (with its check of each child's ancestors) took 177 ms to compile for
    1 ms of work, 20 times slower than without. The store's connections turn it off,
    unless the URL says otherwise."""
    for given, expected in ((url, "off"), (f"{url}?jit=on", "on")):
        db = Database(given)
        await db.open()
        try:
            async with db.connection() as conn:
                assert await conn.fetchval("SHOW jit") == expected
        finally:
            await db.close()


# errors ----------------------------------------------------------------------------------


def test_passwords_are_hidden() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/orders?x=1") == (
        "postgresql://app:***@db:5432/orders?x=1"
    )
    assert redact_url("postgresql://app@db/orders") == "postgresql://app@db/orders"
    store = PostgresStore("postgresql://app:s3cret@db/orders?pool_size=3")
    assert (store.url, store.pool_size) == ("postgresql://app:***@db/orders?pool_size=3", 3)
    with pytest.raises(ConfigurationError, match="pool_size"):
        PostgresStore("postgresql://db/orders?pool_size=none")


async def test_a_refused_connection_is_one_line_naming_the_url() -> None:
    with pytest.raises(StoreError) as refused:
        await PostgresStore("postgresql://app:s3cret@127.0.0.1:1/orders").open()
    message = str(refused.value)
    assert message.startswith(
        "cannot open PostgreSQL store postgresql://app:***@127.0.0.1:1/orders"
    )
    assert "s3cret" not in message
    assert "\n" not in message
    assert refused.value.retryable  # the server may come up


def test_the_cli_reports_an_unreachable_store_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "microsaga", "--store", "postgresql://u:pw@127.0.0.1:1/x", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error[store_unavailable]: cannot open PostgreSQL store")
    assert "postgresql://u:***@127.0.0.1:1/x" in lines[0]


def test_driver_errors_are_retryable_when_the_server_is_away() -> None:
    away = [
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock"),
        asyncpg.exceptions.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
    ]
    wrong = [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.PostgresSyntaxError("syntax"),
        asyncpg.exceptions.InterfaceError("pool is closing"),
    ]
    assert [retryable(e) for e in away] == [True] * len(away)
    assert [retryable(e) for e in wrong] == [False] * len(wrong)


async def _backends(url: str, where: str) -> list[int]:
    conn = await connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            f" AND pid <> pg_backend_pid() AND {where}"
        )
        return [r[0] for r in rows]
    finally:
        await conn.close()


async def _terminate(url: str, pids: list[int]) -> None:
    conn = await connect(url)
    try:
        for pid in pids:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


async def test_a_statement_the_server_refuses_is_not_retryable_and_the_store_goes_on(
    store: PostgresStore,
) -> None:
    """The store keeps connections between uses: one whose statement failed is handed
    back, the error says what the server said (not a lost connection), and the next
    calls work."""
    for _ in range(3):
        with pytest.raises(StoreError) as refused:
            await store.remove_workflow("nul\x00")  # text cannot hold NUL
        assert not refused.value.retryable
        assert "0x00" in str(refused.value)
    await store.commit([pending("e1")])
    assert await store.get_status("e1") == (Status.PENDING, 0)


async def test_a_lost_connection_is_a_retryable_error_and_the_store_reconnects(
    store: PostgresStore, url: str
) -> None:
    await store.commit([pending("e1")])
    (claim,) = await store.claim("w1", 100.0, 10.0, 1)
    blocker = await connect(url)
    try:
        # hold the row, so the commit below waits on it, then kill the commit's backend
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM microsaga_executions WHERE id = 'e1' FOR UPDATE")
        unit = Transition("e1", claim.token, Status.RUNNING, status=Status.SUCCESS, release=True)
        committing = asyncio.ensure_future(store.commit([unit]))
        waiting = await eventually(lambda: _backends(url, "wait_event_type = 'Lock'"))
        await _terminate(url, waiting)
        with pytest.raises(StoreError) as lost:
            await committing
        assert lost.value.retryable
        assert url in str(lost.value)
        await tx.rollback()
    finally:
        await blocker.close()
    # every pooled connection dies (as in a server restart): the next calls reconnect
    await _terminate(url, await _backends(url, "application_name = 'microsaga'"))
    assert await store.get_status("e1") == (Status.RUNNING, 0)
    (result,) = await store.commit([unit])
    assert not isinstance(result, bool)
    assert (result.owned, result.status) == (True, Status.SUCCESS)


@pytest.mark.parametrize("server_cancels", [True, False], ids=["cancelled", "no-answer"])
async def test_a_statement_stuck_past_the_command_timeout_fails_retryable(
    url: str, monkeypatch: pytest.MonkeyPatch, server_cancels: bool
) -> None:
    """A statement left waiting (here on a row lock nobody releases) does not hang its
    worker: the server cancels it after the command timeout, and the commit fails
    with a retryable error, having written nothing. A server that does not even
    answer (here told not to cancel, ``?statement_timeout=0``) gets its connection
    closed after twice that. Either way the store goes on."""
    monkeypatch.setattr(_postgres_db, "_COMMAND_TIMEOUT", 0.3)
    monkeypatch.setattr(_postgres_db, "_WATCHDOG_EVERY", 0.1)
    store = PostgresStore(url if server_cancels else f"{url}?statement_timeout=0")
    await store.open()
    blocker = await connect(url)
    try:
        await store.commit([pending("e1")])
        (claim,) = await store.claim("w1", 100.0, 10.0, 1)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM microsaga_executions WHERE id = 'e1' FOR UPDATE")
        unit = Transition("e1", claim.token, Status.RUNNING, status=Status.SUCCESS, release=True)
        with pytest.raises(StoreError) as stuck:
            await store.commit([unit])
        assert stuck.value.retryable
        assert url in str(stuck.value)
        await tx.rollback()
        if server_cancels:
            (result,) = await store.commit([unit])
            assert result == TransitionResult(True, Status.SUCCESS, 0, True)
        else:  # the closed connection's statement may have run once the lock was free
            assert await store.get_status("e1") is not None
    finally:
        await blocker.close()
        await store.close()


async def test_a_commit_after_the_server_ended_every_session_needs_no_retry(
    store: PostgresStore, url: str
) -> None:
    """An operator's ``pg_terminate_backend`` on the store's sessions (or a restart)
    between two commits: the connection the store kept between uses is closed, and the
    next commit takes a fresh one instead of failing on it ("connection has been
    released back to the pool", a retryable error that every worker logged as the
    store being unavailable)."""
    await store.commit([pending("e1")])
    await _terminate(url, await _backends(url, "application_name = 'microsaga'"))

    async def ended() -> bool:
        return not await _backends(url, "application_name = 'microsaga'")

    await eventually(ended)
    assert await store.commit([pending("e2")]) == [True]
    assert await store.get_status("e2") == (Status.PENDING, 0)


@pytest.mark.parametrize("alone", [True, False], ids=["one-execution", "batch"])
@pytest.mark.parametrize("change", ["suspend", "takeover"])
async def test_a_row_changed_under_a_commit_is_decided_again(
    store: PostgresStore, url: str, change: str, alone: bool
) -> None:
    """A commit writes a row only if it is as its owner expects (or as read); a row
    another process changed under it is decided again on a fresh read. Alone, the
    transition goes in the statement for one execution; in a batch, in the other."""
    owned = pending("e1")
    owned.status, owned.owner, owned.lease_until = Status.RUNNING, "w1", 110.0
    await store.commit([owned, pending("e2")])
    (claim,) = await store.claim("w1", 100.0, 10.0, 1)
    assert claim.execution_id == "e2"
    blocker = await connect(url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM microsaga_executions WHERE id = 'e1' FOR UPDATE")
        done = StepRecord("a", 0, Status.SUCCESS, 1, Message(b"{}"), Message(b"[]"), None, 1, 2)
        units = [
            Transition("e1", 1, Status.RUNNING, Status.SUCCESS, [done], release=True, at=105.0),
            Transition("e2", 1, Status.RUNNING, records=[done], at=105.0),
        ]
        committing = asyncio.ensure_future(store.commit(units[:1] if alone else units))
        await eventually(lambda: _backends(url, "wait_event_type = 'Lock'"))
        if change == "suspend":
            await blocker.execute("UPDATE microsaga_executions SET status = 5 WHERE id = 'e1'")
        else:
            await blocker.execute(
                "UPDATE microsaga_executions SET owner = 'w2', lease_token = 2 WHERE id = 'e1'"
            )
        await tx.commit()
        first, *rest = await committing
    finally:
        await blocker.close()
    assert rest == ([] if alone else [TransitionResult(True, Status.RUNNING, 0, True)])
    records = await store.load("e1")
    assert records is not None
    if change == "suspend":
        # decided again: not applied (so not released), the step's result kept
        assert first == TransitionResult(True, Status.SUSPEND, 0, False)
        assert [r.status for r in records.records] == [Status.SUCCESS]
        assert await store.renew("w1", ["e1"], 106.0, 10.0) == {"e1"}
    else:
        assert isinstance(first, TransitionResult)
        assert (first.owned, first.applied) == (False, False)
        assert records.records == []
        assert await store.get_status("e1") == (Status.RUNNING, 0)


@pytest.mark.parametrize("alone", [True, False], ids=["one-execution", "batch"])
async def test_a_transition_that_cannot_be_written_leaves_nothing_written(
    store: PostgresStore, url: str, alone: bool
) -> None:
    """The execution rows and their step runs change in one statement: a step run the
    server refuses (here by a trigger) leaves every row of the commit as it was."""
    for eid in ("e1", "e2"):
        owned = pending(eid)
        owned.status, owned.owner, owned.lease_until = Status.RUNNING, "w1", 110.0
        await store.commit([owned])
    admin = await connect(url)
    try:
        await admin.execute(
            """
            CREATE FUNCTION refuse_b() RETURNS trigger AS $$ BEGIN
                IF NEW.step_id = 'b' THEN RAISE EXCEPTION 'step b refused'; END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER refuse_b BEFORE INSERT ON microsaga_step_runs
                FOR EACH ROW EXECUTE FUNCTION refuse_b();
            """
        )
    finally:
        await admin.close()
    ok = StepRecord("a", 0, Status.SUCCESS, 1, Message(b"{}"), Message(b"[]"), None, 1, 2)
    bad = StepRecord("b", 0, Status.SUCCESS, 1, Message(b"{}"), Message(b"[]"), None, 1, 2)
    units = [Transition("e1", 1, Status.RUNNING, Status.SUCCESS, [ok, bad], release=True)]
    if not alone:
        units.append(Transition("e2", 1, Status.RUNNING, Status.SUCCESS, [ok], release=True))
    with pytest.raises(StoreError, match="step b refused"):
        await store.commit(units)
    for eid in ("e1", "e2"):
        assert await store.get_status(eid) == (Status.RUNNING, 0)
        stored = await store.load(eid)
        assert stored is not None
        assert stored.records == []
    assert await store.renew("w1", ["e1", "e2"], 106.0, 10.0) == {"e1", "e2"}


async def test_concurrent_claims_take_different_executions(url: str) -> None:
    stores = [PostgresStore(url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].commit([pending(f"e{i:03}") for i in range(400)])
        rounds = await asyncio.gather(
            *(s.claim(f"w{n}", 100.0, 10.0, 25) for n, s in enumerate(stores) for _ in range(4))
        )
        claimed = [c.execution_id for claims in rounds for c in claims]
        assert len(claimed) == len(set(claimed)) == 400
    finally:
        await asyncio.gather(*(s.close() for s in stores))


# control requests and wake-ups -----------------------------------------------------------


async def test_control_sequence_order_is_commit_order(store: PostgresStore, url: str) -> None:
    """A request that commits late cannot hide behind a later one that a poller saw."""
    await store.commit([pending("e1"), pending("e2")])
    _, start = await store.controls(2**62)
    early = await connect(url)
    try:
        # another process is in the middle of a request: it holds the controls lock
        tx = early.transaction()
        await tx.start()
        await early.execute("SELECT pg_advisory_xact_lock(8307431127460185602)")
        await early.execute(
            "INSERT INTO microsaga_controls (execution_id, action, at) VALUES ('e1', 'x', 1)"
        )
        later = asyncio.ensure_future(store.request("e2", "suspend", 101.0))
        await eventually(lambda: _backends(url, "wait_event_type = 'Lock'"))
        assert not later.done()
        assert await store.controls(start) == ([], start)
        await tx.commit()
        assert await later is Status.SUSPEND
    finally:
        await early.close()
    ids, _ = await store.controls(start)
    assert ids == ["e1", "e2"]


async def test_watch_wakes_on_new_work_and_requests(store: PostgresStore, url: str) -> None:
    woken: list[int] = []
    await store.watch(lambda: woken.append(1))
    other = PostgresStore(url)
    await other.open()
    try:
        await eventually(lambda: woken)  # once when listening starts
        woken.clear()
        await other.commit([pending("e1")])
        await eventually(lambda: woken, timeout=2.0)
        woken.clear()
        await other.request("e1", "suspend", 101.0)
        await eventually(lambda: woken, timeout=2.0)
        # the listening connection dies (a restart): it comes back and wakes again
        listener = await _backends(url, "query LIKE 'LISTEN%'")
        assert len(listener) == 1
        await _terminate(url, listener)
        await eventually(
            lambda: _backends(url, "query LIKE 'LISTEN%' AND pid <> " + str(listener[0]))
        )
        woken.clear()
        await other.request("e1", "resume", 102.0)
        await eventually(lambda: woken, timeout=2.0)
        # a released lease: another worker may take the execution now
        woken.clear()
        await other.release("e1", 0, 0.0)
        await eventually(lambda: woken, timeout=2.0)
    finally:
        await other.close()


@pytest.mark.parametrize("why", ["wake", "signal"])
async def test_a_wake_while_a_park_commits_makes_the_execution_claimable(
    store: PostgresStore, url: str, why: str
) -> None:
    """A sub-workflow's child ends (a wake), or a signal comes, while its parent parks,
    after the park looked for them: the wake waits for the park's commit, then finds
    the parent parked and makes it claimable (a wake left it parked until its next look
    at the child, a minute later by default)."""
    await store.commit([contract.new("parent", owner="w1")])
    parking = await connect(url)
    try:
        tx = parking.transaction()
        await tx.start()  # the park, as Store.park makes it, not yet committed
        await parking.execute(Q["lock_execution"], "parent")
        assert await parking.fetchval(Q["park"], "parent", 1, 10**9, "waiting for a child")
        if why == "wake":
            waking = asyncio.create_task(store.wake("parent", 200.0))
        else:
            waking = asyncio.create_task(store.signal("parent", "go", Message(b"{}"), 200.0))
        # the wake waits for the park's row lock (or, wrongly, has finished already)
        await eventually(lambda: waking.done() or _backends(url, "wait_event_type = 'Lock'"))
        await tx.commit()
        await waking
    finally:
        await parking.close()
    claimed = await store.claim("w2", 201.0, 10.0, 10)
    assert [c.execution_id for c in claimed] == ["parent"]


async def test_a_new_execution_reaches_a_worker_without_polling(url: str) -> None:
    async with (
        Flow(url, poll_interval=30.0) as worker,
        Flow(url, worker=False) as client,
    ):
        wf = await client.workflow_create("echo", FunctionStep(echo))
        started = asyncio.get_running_loop().time()
        eid = await wf.execute({"n": 1}, async_=True)
        done = await worker.wait(eid, timeout=5.0)
        assert done.status is Status.SUCCESS
        assert asyncio.get_running_loop().time() - started < 5.0


async def echo(msg: Message) -> object:
    return msg.json()


async def test_open_store_picks_postgres(url: str) -> None:
    assert isinstance(open_store(url), PostgresStore)
    assert isinstance(open_store(url.replace("postgresql://", "postgres://")), PostgresStore)


async def test_a_creation_retried_after_a_lost_reply_counts_as_created(
    store: PostgresStore,
) -> None:
    owned = pending("e1")
    owned.status, owned.owner, owned.lease_until = Status.RUNNING, "w1", 110.0
    assert await store.commit([owned]) == [True]
    # the same unit again, as the group committer sends it when the reply was lost
    assert await store.commit([owned]) == [True]
    # anyone else's creation under that id is not
    other = pending("e1")
    other.status, other.owner, other.lease_until = Status.RUNNING, "w2", 110.0
    assert await store.commit([other, pending("e1")]) == [False, False]
