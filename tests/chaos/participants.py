"""The participants of the chaos order saga: real HTTP services built on
:mod:`microsaga.participant`, each keeping its own durable records.

Run as a process of its own (the harness kills workers, never this)::

    python -m tests.chaos.participants --dir DIR --ports-file DIR/ports.json

Services (each a :class:`~microsaga.participant.Participant` deduplicating through a
:class:`~microsaga.participant.SQLiteDedupeStore` of its own):

- ``inventory``: ``Inventory.Reserve`` / ``Inventory.Release``
- ``payments``:  ``Payments.Charge`` / ``Payments.Refund``
- ``points``:    ``Points.Add`` / ``Points.Remove``
- ``orders``:    ``Orders.Confirm``, which declines (a final failure, so the saga rolls
  back) every execution whose id ends with ``-f``

Every request received is written to ``DIR/records.db`` (table ``invocations``: time,
idempotency key, endpoint, whether the answer was a replay) when it is answered, and
every effect a handler applies is written there (table ``effects``) inside the
handler, before it answers: the checker reads both. The file ``--ports-file`` gets
``{"inventory": "http://127.0.0.1:PORT", ...}`` once every service listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import signal
import sqlite3
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from microsaga import Message, StepError
from microsaga.participant import Participant, SQLiteDedupeStore
from microsaga.participant.asgi import Receive, Scope, Send

__all__ = ["ENDPOINTS", "Records", "read_records"]

ENDPOINTS = {
    "inventory": ("Inventory.Reserve", "Inventory.Release"),
    "payments": ("Payments.Charge", "Payments.Refund"),
    "points": ("Points.Add", "Points.Remove"),
    "orders": ("Orders.Confirm",),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    t REAL NOT NULL, answered REAL NOT NULL, key TEXT NOT NULL, endpoint TEXT NOT NULL,
    status INTEGER NOT NULL, replayed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS effects (
    t REAL NOT NULL, key TEXT NOT NULL, endpoint TEXT NOT NULL, pid INTEGER NOT NULL
);
"""


class Records:
    """The participants' own records: one SQLite file, written on the event loop."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def effect(self, key: str, endpoint: str) -> None:
        self.db.execute(
            "INSERT INTO effects VALUES (?, ?, ?, ?)", (time.time(), key, endpoint, os.getpid())
        )

    def invocation(self, t: float, key: str, endpoint: str, status: int, replayed: bool) -> None:
        self.db.execute(
            "INSERT INTO invocations VALUES (?, ?, ?, ?, ?, ?)",
            (t, time.time(), key, endpoint, status, int(replayed)),
        )


def read_records(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``(invocations, effects)`` rows: ``(t, key, endpoint, replayed)`` and
    ``(t, key, endpoint)``."""
    db = sqlite3.connect(path)
    try:
        calls = db.execute("SELECT t, key, endpoint, replayed FROM invocations").fetchall()
        done = db.execute("SELECT t, key, endpoint FROM effects").fetchall()
    finally:
        db.close()
    return calls, done


def build(folder: Path, records: Records) -> dict[str, Participant]:
    """The four services, their handlers recording each effect."""
    services: dict[str, Participant] = {}
    for name, endpoints in ENDPOINTS.items():
        service = Participant(dedupe=SQLiteDedupeStore(str(folder / f"{name}-dedupe.db")))
        for endpoint in endpoints:
            service.add_handler(endpoint, _handler(endpoint, records))
        services[name] = service
    return services


def _handler(endpoint: str, records: Records) -> Any:
    async def handle(msg: Message) -> Any:
        key = msg.header.get("Idempotency-Key") or "-"
        eid = msg.header.get("Micro-Flow-Execution") or ""
        if endpoint == "Orders.Confirm" and eid.endswith("-f"):
            raise StepError("order declined by the chaos harness", code="declined", retryable=False)
        records.effect(key, endpoint)
        return {"endpoint": endpoint, "key": key}

    return handle


class Recorded:
    """ASGI middleware: write down each request a service received, when answered."""

    def __init__(self, app: Participant, records: Records) -> None:
        self.app, self.records = app, records

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = time.time()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        answer: dict[str, Any] = {"status": 0, "replayed": False}

        async def watch(event: MutableMapping[str, Any]) -> None:
            if event["type"] == "http.response.start":
                answer["status"] = event["status"]
                answer["replayed"] = any(
                    k.lower() == b"idempotent-replayed" for k, _ in event.get("headers", [])
                )
            await send(event)

        try:
            await self.app(scope, receive, watch)
        finally:
            endpoint = scope["path"].strip("/").replace("/", ".")
            self.records.invocation(
                received,
                headers.get("idempotency-key", "-"),
                endpoint,
                answer["status"],
                answer["replayed"],
            )


async def serve(folder: Path, ports_file: Path) -> None:
    records = Records(folder / "records.db")
    services = build(folder, records)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from microsaga.participant.asgi import serve as serve_asgi

    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for name, service in services.items():
            urls[name] = await stack.enter_async_context(serve_asgi(Recorded(service, records)))
        tmp = ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(urls))
        tmp.replace(ports_file)
        await stop.wait()
    for service in services.values():
        await service.dedupe.close()
    records.db.close()


def main() -> None:
    # the harness's watchdog sends SIGUSR1 when the services stop answering: the
    # stacks of every thread go to the log
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--ports-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.dir, args.ports_file))


if __name__ == "__main__":
    main()
