"""Processes of one service sharing a SQLiteDedupeStore run a handler once per key even
when the same key reaches two of them at once (a step retried after a timeout while
its first attempt still runs elsewhere): the second is answered 503 ``in_progress``.

Each process is a Participant with its own store object (its own connection) on the
same file, as two uvicorn processes would have.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from microsaga import Message, StepError
from microsaga.participant import Participant, SQLiteDedupeStore

from ..helpers import eventually

KEY = {"Idempotency-Key": "e1:inventory.Inventory.Reserve"}


def _process(path: Path, ran: list[str], gate: asyncio.Event, **claims: float) -> Participant:
    service = Participant(dedupe=SQLiteDedupeStore(path, **claims), tracing=False)

    @service.handler("Inventory.Reserve")
    async def reserve(msg: Message) -> dict[str, str]:
        ran.append(msg.json()["by"])
        await gate.wait()
        if msg.json().get("fail"):
            raise StepError("warehouse busy")  # retryable: not kept
        return {"reservation": "R-1"}

    return service


def _error_code(body: bytes) -> str:
    code: str = msgspec.json.decode(body)["error"]["code"]
    return code


async def test_a_key_being_answered_by_one_process_is_not_run_by_another(
    tmp_path: Path,
) -> None:
    ran: list[str] = []
    gate = asyncio.Event()
    first = _process(tmp_path / "dedupe.db", ran, gate)
    second = _process(tmp_path / "dedupe.db", ran, gate)
    running = asyncio.create_task(first.handle("Inventory.Reserve", Message({"by": "first"}, KEY)))
    await eventually(lambda: ran == ["first"])

    async with asyncio.timeout(10):  # without claims it would run, and wait on the gate
        busy, replayed = await second.handle("Inventory.Reserve", Message({"by": "second"}, KEY))
    assert (busy.status, _error_code(busy.body), replayed) == (503, "in_progress", False)
    assert busy.header["Retry-After"] == ["1"]

    gate.set()
    answer, _ = await running
    again, replayed = await second.handle("Inventory.Reserve", Message({"by": "second"}, KEY))
    assert (again.status, again.body, replayed) == (200, answer.body, True)
    assert ran == ["first"]
    await first.dedupe.close()
    await second.dedupe.close()


async def test_after_a_retryable_failure_another_process_may_run_the_key(
    tmp_path: Path,
) -> None:
    ran: list[str] = []
    gate = asyncio.Event()
    gate.set()
    first = _process(tmp_path / "dedupe.db", ran, gate)
    second = _process(tmp_path / "dedupe.db", ran, gate)

    failed, _ = await first.handle("Inventory.Reserve", Message({"by": "1", "fail": 1}, KEY))
    answer, replayed = await second.handle("Inventory.Reserve", Message({"by": "2"}, KEY))
    assert (failed.status, answer.status, replayed, ran) == (503, 200, False, ["1", "2"])
    await first.dedupe.close()
    await second.dedupe.close()


async def test_the_claim_of_a_process_that_died_expires(tmp_path: Path) -> None:
    ran: list[str] = []
    gate = asyncio.Event()
    dead = _process(tmp_path / "dedupe.db", ran, gate, claim_ttl=0.3)
    alive = _process(tmp_path / "dedupe.db", ran, gate, claim_ttl=0.3)
    assert await dead.dedupe.claim("Inventory.Reserve " + KEY["Idempotency-Key"])
    await dead.dedupe.close()  # gone without answering or releasing
    gate.set()

    async def answered() -> bool:
        reply, _ = await alive.handle("Inventory.Reserve", Message({"by": "alive"}, KEY))
        return reply.status == 200

    await eventually(answered)
    assert ran == ["alive"]
    await alive.dedupe.close()


async def test_a_key_answered_between_looking_and_claiming_is_replayed(tmp_path: Path) -> None:
    ran: list[str] = []
    gate = asyncio.Event()
    gate.set()
    first = _process(tmp_path / "dedupe.db", ran, gate)
    second = _process(tmp_path / "dedupe.db", ran, gate)
    looked = second.dedupe.get

    async def then_answered_elsewhere(key: str) -> object:
        found = await looked(key)
        if found is None and not ran:  # `first` answers right after `second` looked
            await first.handle("Inventory.Reserve", Message({"by": "first"}, KEY))
        return found

    second.dedupe.get = then_answered_elsewhere  # type: ignore[method-assign]
    reply, replayed = await second.handle("Inventory.Reserve", Message({"by": "second"}, KEY))
    assert (reply.status, replayed, ran) == (200, True, ["first"])
    await first.dedupe.close()
    await second.dedupe.close()


async def test_a_claim_is_taken_at_once_only_from_a_process_known_dead(tmp_path: Path) -> None:
    """Claims as other processes leave them (``pid:start:machine:nonce``): one whose
    pid now runs another program (another start time) is dead and taken at once; one
    of another machine (or PID namespace) cannot be told dead, and holds until it
    expires."""
    import os
    import sqlite3

    from microsaga._process import machine, start_time

    here = machine()
    if here is None:
        pytest.skip("no /proc: nothing can be told of other processes")
    store = SQLiteDedupeStore(tmp_path / "dedupe.db")
    await store.get("warm-up")  # creates the tables
    pid, start = os.getpid(), start_time(os.getpid())
    assert start is not None
    reused = f"{pid}:{start + 1}:{here}:gone"
    elsewhere = f"{pid}:{start}:0123456789ab:far"
    with sqlite3.connect(tmp_path / "dedupe.db") as db:
        db.executemany(
            "INSERT INTO microsaga_dedupe_claims VALUES (?, ?, ?)",
            [("reused", reused, 1e12), ("elsewhere", elsewhere, 1e12)],
        )
    try:
        assert await store.claim("reused") is True
        assert await store.claim("elsewhere") is False
    finally:
        await store.close()
