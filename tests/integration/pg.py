"""The PostgreSQL server of the test machine: a throwaway database per test.

Tests that need the server call :func:`server` (or use :func:`fresh_database`): it
skips the test with the reason when no server answers on 127.0.0.1:5432, and fails
it when ``CI`` is set, where the server is part of the machine.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    import asyncpg
except ImportError:  # the memory and SQLite variants of the contract tests still run
    asyncpg = None

HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ.get("PGPORT", "5432"))


@dataclass(frozen=True)
class Server:
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{HOST}:{PORT}/{database}"


_found: Server | str | None = None  # the server, or why there is none
_NO_DRIVER = "asyncpg is not installed (pip install 'microsaga[postgres]')"


def skip_or_fail(reason: str) -> None:
    """Skip the test with ``reason``; fail it when ``CI`` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


async def _probe() -> Server | str:
    users = [u for u in (os.environ.get("PGUSER"), "postgres", "root") if u]
    errors = []
    for user in dict.fromkeys(users):
        try:
            conn = await asyncpg.connect(
                host=HOST, port=PORT, user=user, database="postgres", timeout=5
            )
        except Exception as exc:
            errors.append(f"{user}: {type(exc).__name__}: {exc}")
            continue
        try:
            can_create = await conn.fetchval(
                "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
            )
        finally:
            await conn.close()
        if can_create:
            return Server(user)
        errors.append(f"{user}: may not create databases")
    return f"no PostgreSQL server usable on {HOST}:{PORT} ({'; '.join(errors)})"


async def server() -> Server:
    """The server, or skip (fail under ``CI``) with the reason."""
    global _found
    if _found is None:
        if asyncpg is None:
            _found = _NO_DRIVER
        else:
            _found = await _probe()
    if isinstance(_found, str):
        skip_or_fail(_found)
        raise AssertionError("unreachable")
    return _found


async def admin(srv: Server) -> Any:
    return await asyncpg.connect(
        host=HOST, port=PORT, user=srv.user, database="postgres", timeout=10
    )


async def create_database(srv: Server) -> str:
    name = f"microsaga_test_{uuid.uuid4().hex[:16]}"
    conn = await admin(srv)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(srv: Server, name: str) -> None:
    conn = await admin(srv)
    try:
        # FORCE: a worker process killed by a test may leave a session behind
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped on exit."""
    srv = await server()
    name = await create_database(srv)
    try:
        yield srv.url(name)
    finally:
        await drop_database(srv, name)


@asynccontextmanager
async def fresh_schema(url: str) -> AsyncIterator[str]:
    """The URL of a new, empty schema in the database at ``url`` (a store opened on it
    keeps its tables there), dropped on exit: cheaper than a database per example."""
    name = f"microsaga_test_{uuid.uuid4().hex[:16]}"
    conn = await connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield f"{url}?search_path={name}"
        finally:
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def empty_store(kind: str, folder: Path) -> AsyncIterator[str]:
    """The URL of an empty store of ``kind`` (``memory``, ``sqlite`` or ``postgres``):
    every Flow or store opened on it shares its data; a database is dropped on exit."""
    if kind == "memory":
        yield f"memory://test-{uuid.uuid4().hex}"
    elif kind == "sqlite":
        yield f"sqlite:///{folder / 'store.db'}"
    else:
        async with fresh_database() as url:
            yield url


async def connect(url: str) -> Any:
    return await asyncpg.connect(url, timeout=10)
