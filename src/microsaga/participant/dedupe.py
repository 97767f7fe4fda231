"""What a participant answered, kept per idempotency key: :class:`Reply` and the stores.

:class:`MemoryDedupeStore` (the default) keeps answers in this process;
:class:`SQLiteDedupeStore` in a file, so they survive a restart and are shared by the
processes of a service on one host. Both forget a key ``ttl`` seconds (a day by
default) after its answer was kept. Another store (Redis, PostgreSQL ...) implements
:class:`DedupeStore`: ``get``, ``put`` keeping the first answer, ``close``; and, when
processes share it, ``claim`` and ``release``, so that a key being answered by one is
not run by another meanwhile.
"""

from __future__ import annotations

import abc
import asyncio
import os
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .._process import alive, machine, start_time
from ..message import Message, encode_json

__all__ = ["DedupeStore", "MemoryDedupeStore", "Reply", "SQLiteDedupeStore", "error_answer"]

_headers_json = msgspec.json.Decoder(dict[str, list[str]])


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one request, as sent and as kept for deduplication.

    Attributes:
        status: an HTTP status code, also for broker requests (200, 4xx, 5xx).
        body: the raw JSON body.
        header: ``{key: [values]}`` sent with the body.
    """

    status: int
    body: bytes = b""
    header: dict[str, list[str]] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """Whether another attempt would get the same answer (kept for replay)."""
        return self.status < 500

    def message(self) -> Message:
        """The answer as a :class:`~microsaga.Message`."""
        return Message(self.body, self.header)


def error_answer(
    status: int, code: str, message: str, header: dict[str, list[str]] | None = None
) -> Reply:
    """An error answer: ``{"error": {"code", "message", "retryable"}}``, retryable
    when the status is 5xx."""
    body = encode_json({"error": {"code": code, "message": message, "retryable": status >= 500}})
    return Reply(status, body, header or {})


class DedupeStore(abc.ABC):
    """Where a participant keeps the final answer given for each idempotency key."""

    @abc.abstractmethod
    async def get(self, key: str) -> Reply | None:
        """The answer kept for ``key``, None when there is none (or it expired)."""

    @abc.abstractmethod
    async def put(self, key: str, reply: Reply) -> Reply:
        """Keep ``reply`` for ``key`` unless an answer is kept already.

        Returns:
            The answer kept for ``key``: ``reply``, or the one another process
            stored first.
        """

    async def claim(self, key: str) -> bool:
        """Mark ``key`` as being answered here, so that other processes sharing the
        store do not run its handler meanwhile; False when another process has it, or
        has answered it since ``get`` (the caller then looks again).

        A store used by one process only needs none (the default: always True):
        requests of one process with the same key already wait for the first.
        ``put`` and :meth:`release` end the claim; a process that dies leaves it to
        expire.
        """
        return True

    async def release(self, key: str) -> None:  # noqa: B027 - optional hook
        """End this process's claim on ``key`` without keeping an answer (after a
        retryable failure, the next attempt runs the handler again)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class MemoryDedupeStore(DedupeStore):
    """Answers kept in this process, the oldest dropped beyond ``max_entries``.

    Args:
        ttl: seconds an answer is kept; None keeps it until evicted.
        max_entries: answers kept at most.
    """

    def __init__(self, *, ttl: float | None = 86400.0, max_entries: int = 100_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: OrderedDict[str, tuple[float, Reply]] = OrderedDict()

    def _purge(self, now: float) -> None:
        # insertion order is expiry order, as every entry gets the same ttl
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= self.max_entries:
                return
            del self._entries[key]

    async def get(self, key: str) -> Reply | None:
        found = self._entries.get(key)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    async def put(self, key: str, reply: Reply) -> Reply:
        now = time.monotonic()
        found = self._entries.get(key)
        if found is not None and found[0] > now:
            return found[1]
        self._entries[key] = (now + self.ttl if self.ttl is not None else float("inf"), reply)
        self._entries.move_to_end(key)
        self._purge(now)
        return reply


_SCHEMA = """
CREATE TABLE IF NOT EXISTS microsaga_dedupe (
    key TEXT PRIMARY KEY,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    header TEXT NOT NULL,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS microsaga_dedupe_claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
)
"""


def _holder() -> str:
    """Who holds a claim: ``pid:start:machine:nonce`` on a machine whose processes can
    be told (see :mod:`microsaga._process`), else a nonce alone."""
    nonce = uuid.uuid4().hex
    here, pid = machine(), os.getpid()
    start = start_time(pid) if here is not None else None
    return nonce if here is None or start is None else f"{pid}:{start}:{here}:{nonce}"


def _dead(holder: str) -> bool:
    """Whether the process that holds a claim is gone: one of this machine (boot and
    PID namespace) whose pid no longer runs, or runs another program (another start
    time). Any other holder (another machine, a nonce alone) is not known dead."""
    parts = holder.split(":")
    if len(parts) != 4 or parts[2] != machine() or not parts[0].isdigit():
        return False
    pid = int(parts[0])
    if not alive(pid):
        return True
    start = start_time(pid)  # None: cannot be read (another user's process)
    return start is not None and str(start) != parts[1]


class SQLiteDedupeStore(DedupeStore):
    """Answers kept in a SQLite file (table ``microsaga_dedupe``), so they survive a
    restart and are shared by the processes of a service on one host.

    A request being answered claims its key (table ``microsaga_dedupe_claims``): the
    same key reaching another process meanwhile is answered 503 ``in_progress`` (with
    ``Retry-After: 1``), so the handler does not run twice at once.

    Args:
        path: the database file (created when missing).
        ttl: seconds an answer is kept; None keeps it forever.
        claim_ttl: seconds a claim holds at most (a minute by default, twice
            HttpClient's call timeout); a handler running longer loses its claim. A
            claim of a process that died is taken at once when that process ran on
            this machine (its pid gone, or running another program); one of another
            PID namespace (a container of its own) or without ``/proc`` expires.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: float | None = 86400.0,
        claim_ttl: float = 60.0,
    ) -> None:
        self.path = os.fspath(path)
        self.ttl = ttl
        self.claim_ttl = claim_ttl
        self._owner = _holder()
        # one connection used from one thread: sqlite3 objects are not shared across threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="microsaga-dedupe")
        self._conn: sqlite3.Connection | None = None
        self._next_purge = self._next_claim_purge = 0.0

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def _select(self, key: str, now: float) -> Reply | None:
        row = (
            self._db()
            .execute(
                "SELECT status, body, header FROM microsaga_dedupe "
                "WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, now),
            )
            .fetchone()
        )
        if row is None:
            return None
        return Reply(row[0], bytes(row[1]), _headers_json.decode(row[2]))

    def _get(self, key: str) -> Reply | None:
        return self._select(key, time.time())

    def _put(self, key: str, reply: Reply) -> Reply:
        db, now = self._db(), time.time()
        expires = now + self.ttl if self.ttl is not None else None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM microsaga_dedupe WHERE key = ? AND expires_at <= ?", (key, now))
            db.execute(
                "INSERT OR IGNORE INTO microsaga_dedupe VALUES (?, ?, ?, ?, ?)",
                (key, reply.status, reply.body, encode_json(reply.header).decode(), expires),
            )
            db.execute("DELETE FROM microsaga_dedupe_claims WHERE key = ?", (key,))
            if now >= self._next_purge:
                db.execute("DELETE FROM microsaga_dedupe WHERE expires_at <= ?", (now,))
                self._next_purge = now + 60.0
            kept = self._select(key, now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return kept if kept is not None else reply

    def _claim(self, key: str) -> bool:
        db, now = self._db(), time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._select(key, now) is not None:  # answered since the caller looked
                db.execute("COMMIT")
                return False
            held = db.execute(
                "SELECT owner, expires_at FROM microsaga_dedupe_claims WHERE key = ?", (key,)
            ).fetchone()
            if held is not None and (held[1] <= now or _dead(held[0])):
                db.execute("DELETE FROM microsaga_dedupe_claims WHERE key = ?", (key,))
            db.execute(
                "INSERT OR IGNORE INTO microsaga_dedupe_claims VALUES (?, ?, ?)",
                (key, self._owner, now + self.claim_ttl),
            )
            row = db.execute(
                "SELECT owner FROM microsaga_dedupe_claims WHERE key = ?", (key,)
            ).fetchone()
            if now >= self._next_claim_purge:
                db.execute("DELETE FROM microsaga_dedupe_claims WHERE expires_at <= ?", (now,))
                self._next_claim_purge = now + 60.0
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row is not None and row[0] == self._owner

    def _release(self, key: str) -> None:
        self._db().execute(
            "DELETE FROM microsaga_dedupe_claims WHERE key = ? AND owner = ?", (key, self._owner)
        )

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def get(self, key: str) -> Reply | None:
        found: Reply | None = await self._run(self._get, key)
        return found

    async def put(self, key: str, reply: Reply) -> Reply:
        kept: Reply = await self._run(self._put, key, reply)
        return kept

    async def claim(self, key: str) -> bool:
        claimed: bool = await self._run(self._claim, key)
        return claimed

    async def release(self, key: str) -> None:
        await self._run(self._release, key)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)
