"""The embedded store: one SQLite file, WAL mode, ``synchronous=FULL`` by default.

``sqlite:///orders.db`` is a path relative to the working directory,
``sqlite:////var/lib/app/orders.db`` an absolute one. ``?synchronous=NORMAL`` trades
the durability of the last commits on power loss (not on a process crash) for speed.

Writes go through one connection on one thread, reads through another: WAL lets
them run side by side, and lets other processes open the same file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from ..codecs import PayloadCodec
from ..errors import (
    ConfigurationError,
    ExecutionNotFoundError,
    InvalidTransitionError,
    SchemaVersionError,
    StoreError,
)
from ..execution import Execution
from ..message import Message
from ..payloads import Bodies, Pending
from ..status import Status
from ._rows import SQLITE, STEP_IDS, RowMapping, briefs_of_rows
from ._sql import LISTINGS, load_queries, migrations, statements
from .base import (
    COMP_UNDOING,
    UNDOING,
    Abort,
    Claim,
    ControlAction,
    MapBrief,
    NewExecution,
    Store,
    StoredDefinition,
    StoredExecution,
    StoredWorkflow,
    Transition,
    TransitionResult,
    migrated_since,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")
Q = load_queries("sqlite")
_MIGRATIONS = migrations("sqlite")
SCHEMA_VERSION = _MIGRATIONS[-1][0]
_encode = msgspec.json.Encoder().encode
_SYNC = ("OFF", "NORMAL", "FULL", "EXTRA")
_OPTIONS = ("inline_commit", "synchronous")
_NO_BEFORE = 2**62
_UNDOING = _encode(sorted(UNDOING))  # what the map_runs query lists
_COMP_UNDOING = _encode(sorted(COMP_UNDOING))


def _path_of(url: str, setting: str) -> str:
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc:
        raise ConfigurationError(setting, f"{url}: use sqlite:///relative.db or sqlite:////abs.db")
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ConfigurationError(setting, f"{url}: no file path")
    return path


def _transition_statement(
    unit: Transition, rows: RowMapping, pending: Pending
) -> tuple[str, dict[str, Any]]:
    """The UPDATE of an execution's row for ``unit``, with its parameters."""
    params: dict[str, Any] = {
        "id": unit.execution_id,
        "token": unit.token,
        "at": unit.at,
        "expect": int(unit.expect),
        "abort": int(unit.abort),
    }
    resp = unit.response
    if unit.status is None and resp is None and unit.error is None and not unit.release:
        return Q["transition_records"], params  # sets no indexed column
    params["status"] = None if unit.status is None else int(unit.status)
    params["has_response"] = resp is not None
    eid = unit.execution_id
    params["response_body"] = rows.body_out(resp.body, eid, pending) if resp is not None else None
    params["response_header"] = rows.header_out(resp.header) if resp is not None else None
    params["error"] = unit.error
    params["release"] = unit.release
    return Q["transition"], params


class SQLiteStore(Store):
    """Keeps everything in one SQLite file.

    Args:
        url: ``sqlite:///PATH``, options ``synchronous`` and ``inline_commit``.
        setting: the name of the setting the URL came from, for configuration errors
            (``--store``, ``MICROSAGA_STORE``).

    Raises:
        ConfigurationError: the URL has no path, a host, or an unknown or wrong option.
    """

    def __init__(self, url: str, *, setting: str = "store") -> None:
        self.url = url
        self.setting = setting
        self.path = _path_of(url, setting)
        query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        for name in query:
            if name not in _OPTIONS:
                raise ConfigurationError(
                    setting, f"{url}: unknown option {name!r}; known: {', '.join(_OPTIONS)}"
                )
        sync = query.get("synchronous", "FULL").upper()
        if sync not in _SYNC:
            raise ConfigurationError(
                setting, f"{url}: synchronous must be one of {', '.join(_SYNC)}"
            )
        self.synchronous = sync
        inline = query.get("inline_commit", "1")
        if inline not in ("0", "1"):
            raise ConfigurationError(setting, f"{url}: inline_commit must be 0 or 1")
        self.inline_commit = inline == "1"
        # one transaction at a time on the writer connection, whichever thread runs it
        self._tx_lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="microsaga-sqlite-w")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="microsaga-sqlite-r")
        self._w: sqlite3.Connection | None = None
        self._w_loop: sqlite3.Connection | None = None  # commits on the loop's thread
        self._r: sqlite3.Connection | None = None
        # definitions never change once stored
        self._definitions: dict[str, StoredDefinition] = {}
        self._rows = SQLITE.with_bodies(Bodies())

    def use_codec(self, codec: PayloadCodec | None) -> None:
        self._rows = SQLITE.with_bodies(Bodies(codec))

    # plumbing ------------------------------------------------------------------------

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> StoreError:
        retryable = isinstance(exc, sqlite3.OperationalError)
        return StoreError(f"SQLite store {self.path}: {exc}", retryable=retryable)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._in(self._writer, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._in(self._reader, fn, *args)

    def _connect(self, busy_ms: int = 30000) -> sqlite3.Connection:
        # check_same_thread off: opened in one thread, used in another (see _commit_here)
        conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=busy_ms / 1000, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    @property
    def w(self) -> sqlite3.Connection:
        if self._w is None:
            raise StoreError(f"SQLite store {self.path} is closed", retryable=False)
        return self._w

    @property
    def r(self) -> sqlite3.Connection:
        if self._r is None:
            raise StoreError(f"SQLite store {self.path} is closed", retryable=False)
        return self._r

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._tx_lock:
            return self._tx_locked(fn)

    def _tx_locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self.w
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    # lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        folder = Path(self.path).parent
        if not folder.is_dir():  # no retry makes it: the URL names the wrong place
            raise ConfigurationError(self.setting, f"{self.url}: folder {folder} does not exist")
        try:
            await self._write(self._open_writer)
            await self._read(self._open_reader)
            if self.inline_commit:
                self._w_loop = await self._read(self._connect, 0)
        except SchemaVersionError:
            await self.close()
            raise
        except StoreError as exc:
            await self.close()
            cause = exc.__cause__
            if getattr(cause, "sqlite_errorname", None) == "SQLITE_NOTADB":
                raise ConfigurationError(
                    self.setting, f"{self.url}: {self.path} is not a SQLite database"
                ) from exc
            raise StoreError(
                f"cannot open SQLite store {self.path}: {exc.__cause__ or exc}", retryable=False
            ) from exc

    def _open_writer(self) -> None:
        conn = self._connect()
        self._w = conn
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL journal mode (got {mode})")
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute(Q["schema_version"]).fetchone()[0]
            if current > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"SQLite store {self.path} has schema version {current}, newer than the "
                    f"{SCHEMA_VERSION} this microsaga knows: upgrade microsaga"
                )
            for version, sql in _MIGRATIONS:
                if version > current:
                    for statement in statements(sql):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _open_reader(self) -> None:
        self._r = self._connect()

    async def check_schema(self) -> None:
        def read() -> int:
            return int(self.r.execute(Q["schema_version"]).fetchone()[0])

        current = await self._read(read)
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                migrated_since(f"SQLite store {self.path}", current, SCHEMA_VERSION)
            )

    async def close(self) -> None:
        def close_w() -> None:
            if self._w is not None:
                self._w.close()
                self._w = None

        def close_r() -> None:
            if self._r is not None:
                self._r.close()
                self._r = None
            if self._w_loop is not None:
                with self._tx_lock:
                    self._w_loop.close()
                    self._w_loop = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, close_w)
        await loop.run_in_executor(self._reader, close_r)
        self._writer.shutdown(wait=False)
        self._reader.shutdown(wait=False)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="microsaga-sqlite-w")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="microsaga-sqlite-r")

    # workflows ------------------------------------------------------------------------

    async def save_workflow(self, workflow_id: str, hash: str, body: bytes, now: float) -> int:
        def save(conn: sqlite3.Connection) -> int:
            latest = conn.execute(Q["save_workflow_latest"], (workflow_id,)).fetchone()
            if latest is not None and latest[1] == hash:
                return int(latest[0])
            version = latest[0] + 1 if latest is not None else 1
            conn.execute(Q["insert_workflow"], (workflow_id, version, hash, body, now))
            return int(version)

        return await self._write(self._tx, save)

    async def load_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> StoredWorkflow | None:
        def load() -> StoredWorkflow | None:
            if version is None:
                row = self.r.execute(Q["load_workflow_latest"], (workflow_id,)).fetchone()
            else:
                row = self.r.execute(Q["load_workflow_version"], (workflow_id, version)).fetchone()
            return None if row is None else self._rows.workflow(row)

        return await self._read(load)

    async def list_workflows(self) -> list[StoredWorkflow]:
        def rows() -> list[StoredWorkflow]:
            return [self._rows.workflow(r) for r in self.r.execute(Q["list_workflows"])]

        return await self._read(rows)

    async def remove_workflow(self, workflow_id: str) -> bool:
        def remove(conn: sqlite3.Connection) -> bool:
            return conn.execute(Q["remove_workflow"], (workflow_id,)).rowcount > 0

        return await self._write(self._tx, remove)

    # running ------------------------------------------------------------------------------

    async def commit(
        self, units: Sequence[NewExecution | Transition]
    ) -> list[bool | TransitionResult]:
        done = self._commit_here(units)
        if done is not None:
            return done
        return await self._write(self._tx, lambda conn: self._apply(conn, units))

    def commit_now(self, unit: NewExecution | Transition) -> bool | TransitionResult | None:
        done = self._commit_here([unit])
        return None if done is None else done[0]

    def _commit_here(
        self, units: Sequence[NewExecution | Transition]
    ) -> list[bool | TransitionResult] | None:
        """Commit on the event loop's thread, or None to go through the writer thread.

        Why: the writer thread gives back the GIL at every statement and waits for it at
        every return, and with the event loop running Python that costs more than the
        commit itself. The loop does wait for the disk's sync; it never waits for a
        lock: this connection does not wait (busy_timeout 0), so when the writer thread
        or another process holds the database, the commit goes to the writer thread,
        which waits there. Off with ``?inline_commit=0`` (``docs/stores.md``).
        """
        conn = self._w_loop
        if conn is None or not self._tx_lock.acquire(blocking=False):
            return None
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return None  # locked by another process: wait in the writer thread
            try:
                out = self._apply(conn, units)
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                return None  # the writer thread tries again, and reports, as usual
            return out
        finally:
            self._tx_lock.release()

    def _apply(
        self, conn: sqlite3.Connection, units: Sequence[NewExecution | Transition]
    ) -> list[bool | TransitionResult]:
        results: list[bool | TransitionResult] = []
        rows: list[tuple[Any, ...]] = []
        pending = Pending()
        mapping = self._rows
        for unit in units:
            if isinstance(unit, NewExecution):
                results.append(self._create(conn, unit, rows, pending))
                continue
            found = conn.execute(*_transition_statement(unit, mapping, pending)).fetchone()
            if found is None:  # fenced: another worker holds the lease now
                now = conn.execute(Q["get_status"], (unit.execution_id,)).fetchone()
                status = Status(now[0]) if now is not None else Status.PENDING
                results.append(TransitionResult(False, status, Abort(now[1] if now else 0), False))
                continue
            status = Status(found[0])
            applied = bool(found[2])
            eid = unit.execution_id
            rows.extend(mapping.step_row(eid, r, pending) for r in unit.records)
            if applied and unit.starts and status in (Status.RUNNING, Status.COMPENSATING):
                rows.extend(mapping.step_row(eid, r, pending) for r in unit.starts)
            results.append(TransitionResult(True, status, Abort(found[1]), applied))
        if rows:
            conn.executemany(Q["upsert_step"], rows)
        if pending:
            self._put_payloads(conn, pending)
        return results

    def _put_payloads(self, conn: sqlite3.Connection, pending: Pending) -> None:
        """Store the payloads a commit refers to, each once (in its transaction)."""
        hashes = _encode(list(pending.payloads))
        stored = {row[0] for row in conn.execute(Q["existing_payloads"], (hashes,))}
        payload_out = self._rows.bodies.payload_out
        for digest, body in pending.payloads.items():
            if digest not in stored:
                conn.execute(Q["insert_payload"], (digest, payload_out(body)))
        conn.executemany(Q["insert_payload_ref"], [(eid, h) for h, eid in pending.refs])

    def _payloads(self, conn: sqlite3.Connection, *row_lists: list[Any]) -> dict[str, bytes]:
        """The stored payloads that rows refer to, by hash."""
        refs = self._rows.bodies.refs(r for rows in row_lists for r in rows)
        if not refs:
            return {}
        return dict(conn.execute(Q["load_payloads"], (_encode(list(refs)),)).fetchall())

    def _create(
        self,
        conn: sqlite3.Connection,
        new: NewExecution,
        rows: list[tuple[Any, ...]],
        pending: Pending,
    ) -> bool:
        # no body: the flow believes it stored, and a lookup costs less than an idle insert
        if (
            new.definition is not None
            or conn.execute(Q["has_definition"], (new.definition_hash,)).fetchone() is None
        ):
            conn.execute(Q["insert_definition"], self._rows.definition_row(new))
        took = Pending()  # kept only when the execution is created
        cur = conn.execute(Q["insert_execution"], self._rows.new_execution_row(new, took))
        if cur.rowcount != 1:
            return False
        rows.extend(self._rows.step_row(new.id, r, took) for r in new.starts)
        pending.payloads.update(took.payloads)
        pending.refs.update(took.refs)
        return True

    async def claim(
        self,
        owner: str,
        now: float,
        ttl: float,
        limit: int,
        *,
        alive: Collection[str] = (),
        only: Collection[str] | None = None,
        skip: Collection[str] = (),
    ) -> list[Claim]:
        def claim(conn: sqlite3.Connection) -> list[Claim]:
            params = {
                "owner": owner,
                "until": now + ttl,
                "now": now,
                "limit": limit,
                "alive": _encode(sorted(alive)),
                "only": None if only is None else _encode(sorted(only)),
                "skip": _encode(sorted(skip)),
            }
            rows = conn.execute(Q["claim"], params)
            return [Claim(eid, token, attempts) for eid, token, attempts in rows]

        return await self._write(self._tx, claim)

    async def renew(
        self, owner: str, execution_ids: Collection[str], now: float, ttl: float
    ) -> set[str]:
        def renew(conn: sqlite3.Connection) -> set[str]:
            params = {"owner": owner, "until": now + ttl, "ids": _encode(list(execution_ids))}
            return {row[0] for row in conn.execute(Q["renew"], params)}

        return await self._write(self._tx, renew)

    async def release(
        self, execution_id: str, token: int, until: float, note: str | None = None
    ) -> None:
        def release(conn: sqlite3.Connection) -> None:
            params = {"id": execution_id, "token": token, "until": until, "note": note}
            conn.execute(Q["release"], params)

        await self._write(self._tx, release)

    async def give_up_unread_steps(self, execution_id: str, error: str, at: float) -> None:
        def give_up(conn: sqlite3.Connection) -> None:
            conn.execute(Q["give_up_unread_steps"], {"id": execution_id, "error": error, "at": at})

        await self._write(self._tx, give_up)

    async def release_all(self, owner: str) -> int:
        def release_all(conn: sqlite3.Connection) -> int:
            return conn.execute(Q["release_all"], (owner,)).rowcount

        return await self._write(self._tx, release_all)

    async def lease_owners(self) -> set[str]:
        def owners() -> set[str]:
            return {row[0] for row in self.r.execute(Q["lease_owners"])}

        return await self._read(owners)

    async def held_by(self, owner: str) -> dict[str, tuple[int, float]]:
        def held() -> dict[str, tuple[int, float]]:
            rows = self.r.execute(Q["held_by"], (owner,))
            return {row[0]: (int(row[1]), float(row[2])) for row in rows}

        return await self._read(held)

    async def due_between(self, since: float, now: float) -> bool:
        def due() -> bool:
            return self.r.execute(Q["due_between"], (since, now)).fetchone() is not None

        return await self._read(due)

    async def lease_expiry(self, owner: str) -> float | None:
        def latest() -> float | None:
            row = self.r.execute(Q["lease_expiry"], (owner,)).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._read(latest)

    async def load(self, execution_id: str) -> StoredExecution | None:
        return (await self.load_many([execution_id])).get(execution_id)

    async def load_many(self, execution_ids: Sequence[str]) -> dict[str, StoredExecution]:
        def load() -> dict[str, StoredExecution]:
            conn = self.r
            conn.execute("BEGIN")
            try:
                rows = conn.execute(
                    Q["load_executions"], (_encode(list(execution_ids)),)
                ).fetchall()
                found = self._payloads(conn, rows)
            finally:
                conn.execute("COMMIT")
            missing = self._rows.definition_hashes(rows) - self._definitions.keys()
            if missing:
                for d in conn.execute(Q["load_definitions"], (_encode(list(missing)),)):
                    self._definitions[d[0]] = self._rows.definition(d)
            return self._rows.stored_executions(rows, self._definitions, found)

        return await self._read(load)

    async def definition_of(self, execution_id: str) -> tuple[Status, StoredDefinition] | None:
        def read() -> tuple[Status, StoredDefinition] | None:
            row = self.r.execute(Q["definition_of"], (execution_id,)).fetchone()
            if row is None:
                return None
            status, hash = row
            if hash not in self._definitions:
                for d in self.r.execute(Q["load_definitions"], (_encode([hash]),)):
                    self._definitions[d[0]] = self._rows.definition(d)
            found = self._definitions.get(hash)  # None: pruned meanwhile
            return None if found is None else (Status(status), found)

        return await self._read(read)

    # control ----------------------------------------------------------------------------

    async def request(
        self,
        execution_id: str,
        action: ControlAction,
        now: float,
        reason: str | None = None,
        *,
        steps: Sequence[str] | None = None,
        body: bytes | None = None,
    ) -> Status:
        def request(conn: sqlite3.Connection) -> Status:
            row = conn.execute(Q["control_row"], (execution_id,)).fetchone()
            if row is None:
                raise ExecutionNotFoundError(execution_id)
            change = self._rows.control_change(action, row, now)
            conn.execute(
                Q["control_update"],
                {
                    "id": execution_id,
                    "status": int(change.status),
                    "abort": change.abort,
                    "now": now,
                    "reason": reason,
                    "free": change.free_lease or change.final,
                },
            )
            if change.retry_compensations:
                conn.execute(Q["retry_compensations"], (execution_id,))
            if change.retry_steps:
                pending = Pending()
                params = {
                    "id": execution_id,
                    "all": steps is None,
                    "steps": _encode(list(steps or ())),
                    "body": None
                    if body is None
                    else self._rows.body_out(body, execution_id, pending),
                }
                conn.execute(Q["retry_steps"], params)
                if pending:
                    self._put_payloads(conn, pending)
            conn.execute(Q["insert_control"], (execution_id, action, now))
            return change.status

        return await self._write(self._tx, request)

    async def controls(self, after: int) -> tuple[list[str], int]:
        def controls() -> tuple[list[str], int]:
            if after >= _NO_BEFORE:
                return [], int(self.r.execute(Q["last_control"]).fetchone()[0])
            rows = self.r.execute(Q["controls_after"], (after,)).fetchall()
            return [r[1] for r in rows], (rows[-1][0] if rows else after)

        return await self._read(controls)

    async def prune(self, before: float, statuses: Collection[Status], limit: int) -> int:
        def prune(conn: sqlite3.Connection) -> int:
            params = {
                "statuses": _encode([int(s) for s in statuses]),
                "before": before,
                "limit": limit,
            }
            ids = [row[0] for row in conn.execute(Q["prune_executions"], params)]
            if ids:
                conn.execute(Q["prune_step_runs"], (_encode(ids),))
                conn.execute(Q["prune_signals"], (_encode(ids),))
                held = [row[0] for row in conn.execute(Q["prune_payload_refs"], (_encode(ids),))]
                if held:
                    conn.execute(Q["prune_payloads"], (_encode(held),))
            return len(ids)

        return await self._write(self._tx, prune)

    async def prune_controls(self, before: float) -> None:
        def prune(conn: sqlite3.Connection) -> None:
            conn.execute(Q["prune_controls"], (before,))

        await self._write(self._tx, prune)

    # waiting -----------------------------------------------------------------------------

    async def signal(self, execution_id: str, event: str, payload: Message, now: float) -> None:
        header = self._rows.header_out(payload.header)

        def signal(conn: sqlite3.Connection) -> None:
            row = conn.execute(Q["signal_row"], (execution_id,)).fetchone()
            if row is None:
                raise ExecutionNotFoundError(execution_id)
            if Status(row[0]).finished:
                raise InvalidTransitionError(
                    f"cannot signal an execution that is {Status(row[0]).name}"
                )
            body = self._rows.body_out(payload.body, execution_id, None)
            conn.execute(Q["insert_signal"], (execution_id, event, body, header, now))
            conn.execute(Q["wake"], (execution_id,))
            conn.execute(Q["insert_control"], (execution_id, "signal", now))

        await self._write(self._tx, signal)

    async def signals(self, execution_id: str) -> dict[str, Message]:
        def signals() -> dict[str, Message]:
            rows = self.r.execute(Q["signals_of"], (execution_id,)).fetchall()
            return {event: self._rows.message(body, h) for event, body, h in rows}

        return await self._read(signals)

    async def park(
        self,
        execution_id: str,
        token: int,
        until: float,
        events: Collection[str],
        children: Collection[str],
        note: str,
    ) -> bool:
        def park(conn: sqlite3.Connection) -> bool:
            look = {
                "id": execution_id,
                "events": _encode(list(events)),
                "children": _encode(list(children)),
            }
            if conn.execute(Q["park_blocked"], look).fetchone()[0]:
                return False
            params = {"id": execution_id, "token": token, "until": until, "note": note}
            return conn.execute(Q["park"], params).fetchone() is not None

        return await self._write(self._tx, park)

    async def wake(self, execution_id: str, now: float) -> None:
        def wake(conn: sqlite3.Connection) -> None:
            conn.execute(Q["wake"], (execution_id,))
            conn.execute(Q["insert_control"], (execution_id, "wake", now))

        await self._write(self._tx, wake)

    # queries ------------------------------------------------------------------------------

    async def get_status(self, execution_id: str) -> tuple[Status, Abort] | None:
        def get() -> tuple[Status, Abort] | None:
            row = self.r.execute(Q["get_status"], (execution_id,)).fetchone()
            return None if row is None else self._rows.status(row)

        return await self._read(get)

    async def count_waiting(self) -> int:
        def count() -> int:
            return int(self.r.execute(Q["count_waiting"]).fetchone()[0])

        return await self._read(count)

    async def get_execution(self, execution_id: str) -> Execution | None:
        found = await self._read(self._execution, execution_id, None)
        return None if found is None else found[0]

    async def get_execution_in_brief(
        self, execution_id: str, map_runs: int
    ) -> tuple[Execution, dict[str, MapBrief]] | None:
        return await self._read(self._execution, execution_id, map_runs)

    def _execution(
        self, execution_id: str, map_runs: int | None
    ) -> tuple[Execution, dict[str, MapBrief]] | None:
        """One execution, read in one snapshot: with every step run, or (``map_runs``)
        with its maps of more runs in brief and only the runs they list."""
        conn = self.r
        conn.execute("BEGIN")
        try:
            row = conn.execute(Q["get_execution"], (execution_id,)).fetchone()
            if row is None:
                return None
            maps: dict[str, MapBrief] = {}
            if map_runs is None:
                steps = conn.execute(Q["step_rows_of_many"], (_encode([execution_id]),)).fetchall()
            else:
                params = {
                    "id": execution_id,
                    "steps": row[STEP_IDS],
                    "limit": map_runs,
                    "undoing": _UNDOING,
                    "comp_undoing": _COMP_UNDOING,
                }
                maps, runs = briefs_of_rows(conn.execute(Q["map_runs"], params), map_runs)
                ids = self._rows.decode_ids(row[STEP_IDS]) + runs
                named = {"id": execution_id, "ids": _encode(ids)}
                steps = conn.execute(Q["step_rows_named"], named).fetchall()
            found = self._payloads(conn, [row], steps)
        finally:
            conn.execute("COMMIT")
        return self._rows.executions([row], steps, found)[0], maps

    async def list_executions(
        self,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 100,
        before: str | None = None,
        *,
        redrive_of: str | None = None,
        steps: bool = True,
    ) -> list[Execution]:
        def listing() -> list[Execution]:
            conn = self.r
            conn.execute("BEGIN")
            try:
                bound = _NO_BEFORE
                if before is not None:
                    found = conn.execute(Q["seq_of"], (before,)).fetchone()
                    if found is None:
                        raise ExecutionNotFoundError(before)
                    bound = found[0]
                params = {
                    "workflow_id": workflow_id,
                    "status": None if status is None else int(status),
                    "redrive_of": redrive_of,
                    "before": bound,
                    "limit": limit,
                }
                if redrive_of is not None:
                    name = "list_executions_by_redrive"
                else:
                    name = LISTINGS[workflow_id is not None, status is not None]
                rows = conn.execute(Q[name], params).fetchall()
                ids = _encode([r[0] for r in rows])
                step_rows = (
                    conn.execute(Q["step_rows_of_many"], (ids,)).fetchall()
                    if rows and steps
                    else []
                )
                found = self._payloads(conn, rows, step_rows)
            finally:
                conn.execute("COMMIT")
            listed = self._rows.executions(rows, step_rows, found)
            return listed if steps else [dataclasses.replace(e, steps={}) for e in listed]

        return await self._read(listing)
