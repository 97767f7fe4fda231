"""Fresh stores for benchmark runs: a new SQLite file or a new PostgreSQL database each.

The PostgreSQL server is the one on ``PGHOST:PGPORT`` (127.0.0.1:5432); the role is
``PGUSER``, else the first of ``postgres`` and ``root`` that may create databases.
Runs in microsaga's virtualenv (it uses asyncpg, microsaga's PostgreSQL driver).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ.get("PGPORT", "5432"))


@dataclass(frozen=True)
class Server:
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{HOST}:{PORT}/{database}"


async def _can_create(user: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(host=HOST, port=PORT, user=user, database="postgres", timeout=5)
    try:
        allowed: bool = await conn.fetchval(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
        return allowed
    finally:
        await conn.close()


def find_server() -> Server | str:
    """The PostgreSQL server, or why there is none (a one-line reason)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'microsaga[postgres]')"
    errors = []
    for user in dict.fromkeys(u for u in (os.environ.get("PGUSER"), "postgres", "root") if u):
        try:
            if asyncio.run(_can_create(user)):
                return Server(user)
            errors.append(f"{user}: may not create databases")
        except Exception as exc:
            errors.append(f"{user}: {type(exc).__name__}: {exc}")
    return f"no PostgreSQL server usable on {HOST}:{PORT} ({'; '.join(errors)})"


async def _admin(user: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=HOST, port=PORT, user=user, database="postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_postgres(server: Server, label: str) -> Iterator[str]:
    """The URL of a new, empty database, dropped afterwards (with its connections)."""
    name = f"bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(server.user, f'CREATE DATABASE "{name}"'))
    try:
        yield server.url(name)
    finally:
        asyncio.run(_admin(server.user, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_sqlite(label: str) -> Iterator[str]:
    """The URL of a new SQLite file in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{label}-"))
    try:
        yield f"sqlite:///{folder / 'store.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def fresh_store(store: str, label: str) -> Iterator[str]:
    """The URL a benchmark's ``--store`` names: a new SQLite file for ``sqlite``, a new
    database for ``postgres`` (exits saying why when there is no server), ``memory://``
    for ``memory``, else the URL given."""
    if store == "sqlite":
        with fresh_sqlite(label) as url:
            yield url
    elif store == "postgres":
        server = find_server()
        if isinstance(server, str):
            sys.exit(server)
        with fresh_postgres(server, label) as url:
            yield url
    else:
        yield "memory://" if store == "memory" else store
