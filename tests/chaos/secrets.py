"""Where a known secret shows up after a run: log lines, command output, store rows.

For issue 20 item 5 (payload codec and redacted headers): a run whose request carries
a secret (an ``Authorization`` header, say) must leave it in no log line, no output of
``show``/``list``/the API, and no store row in plain text. :func:`find_secret` is the
check, reusable by any test or harness run::

    found = find_secret("s3cr3t-token", texts={"show": out}, files=[log], store=url)
    assert found == [], found

It looks for the secret as is and in the forms a store or a log may hold it: JSON-
escaped, base64, and UTF-8 bytes in a BLOB.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["find_secret", "forms", "store_rows"]


def forms(secret: str) -> list[bytes]:
    """The byte strings that betray ``secret``."""
    raw = secret.encode()
    out = {raw, json.dumps(secret)[1:-1].encode(), base64.b64encode(raw)}
    return sorted(out)


def _hits(value: Any, wanted: list[bytes]) -> bool:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, memoryview | bytearray):
        value = bytes(value)
    elif not isinstance(value, bytes):
        value = str(value).encode()
    return any(w in value for w in wanted)


def store_rows(store: str) -> Iterable[tuple[str, tuple[Any, ...]]]:
    """Every row of every table of a ``sqlite:///PATH`` store (or a file path), as
    ``(table, row)``; for ``postgresql://`` use :func:`postgres_rows`."""
    path = store.removeprefix("sqlite:///").split("?")[0]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                yield table, tuple(row)
    finally:
        conn.close()


async def postgres_rows(url: str) -> list[tuple[str, tuple[Any, ...]]]:
    """Every row of every table of the database's current schema, as text."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        out = []
        for (table,) in tables:
            for row in await conn.fetch(f'SELECT t::text FROM "{table}" t'):
                out.append((table, tuple(row)))
        return out
    finally:
        await conn.close()


def find_secret(
    secret: str,
    *,
    texts: Mapping[str, str] | None = None,
    files: Iterable[Path] = (),
    store: str | None = None,
    rows: Iterable[tuple[str, tuple[Any, ...]]] = (),
) -> list[str]:
    """Where ``secret`` was found: ``"show output"``, ``"worker.log line 3"``,
    ``"store table step_runs"`` ... (empty when nowhere).

    Args:
        texts: named outputs (a command's stdout and stderr, an API body).
        files: log files, read line by line.
        store: a SQLite store URL whose every row is read.
        rows: rows read otherwise (:func:`postgres_rows`).
    """
    wanted = forms(secret)
    found: list[str] = []
    for name, text in (texts or {}).items():
        if _hits(text, wanted):
            found.append(f"{name} output")
    for path in files:
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if _hits(line, wanted):
                found.append(f"{path.name} line {n}")
    every = list(rows)
    if store is not None:
        every += list(store_rows(store))
    for table, row in every:
        if any(_hits(value, wanted) for value in row if value is not None):
            found.append(f"store table {table}")
    return sorted(set(found), key=found.index)
