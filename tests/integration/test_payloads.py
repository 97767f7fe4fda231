"""Large bodies stored once, pruned with the last execution that refers to them, and
encrypted at rest: on SQLite and PostgreSQL alike (the memory store keeps nothing at
rest; ``tests/unit/test_payloads.py`` covers it)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message
from microsaga.codecs import AesGcmCodec
from tests.integration.pg import connect, empty_store

BIG = {"blob": "x" * 200_000}


async def echo(msg: Message) -> Message:
    return msg


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with empty_store(request.param, tmp_path) as url:
        yield url


async def table(store: str, name: str) -> list[tuple[object, ...]]:
    if store.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(store.removeprefix("sqlite:///")) as conn:
            return conn.execute(f"SELECT * FROM {name}").fetchall()
    conn = await connect(store)
    try:
        return [tuple(r) for r in await conn.fetch(f"SELECT * FROM microsaga_{name}")]
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_payloads_are_stored_once_and_pruned_with_their_last_reference(
    store: str,
) -> None:
    now = [1_000_000.0]
    codec = AesGcmCodec({"k1": os.urandom(32)})
    async with Flow(store, clock=lambda: now[0], lease_ttl=10**6, codec=codec) as flow:
        a = FunctionStep(echo, id="a")
        wf = await flow.workflow_create("chain", a, FunctionStep(echo, id="b", requires=[a]))
        await wf.execute(BIG)
        now[0] += 3600
        second = await wf.execute(Message(BIG, {"X-Tenant": "acme"}))
        payloads = await table(store, "payloads")
        assert len(payloads) == 1
        assert b"xxxxxxxx" not in bytes(payloads[0][1])  # type: ignore[arg-type]
        assert await flow.prune(600) == 1  # the first, which stored the payload
        info = await flow.execution(second)
        assert info.steps["b"].response is not None
        assert info.steps["b"].response.json() == BIG
        assert info.steps["b"].request is not None
        assert info.steps["b"].request.header["x-tenant"] == "acme"
        now[0] += 3600
        assert await flow.prune(600) == 1
    assert await table(store, "payloads") == []
    assert await table(store, "payload_refs") == []


@pytest.mark.timeout(60)
async def test_prune_keeps_a_payload_a_commit_is_about_to_refer_to(tmp_path: Path) -> None:
    """PostgreSQL: a commit that found a payload stored sends no copy of it; a prune
    running meanwhile must not delete it under the commit's feet."""
    from microsaga.stores._postgres_db import Q

    now = [1_000_000.0]
    async with (
        empty_store("postgres", tmp_path) as store,
        Flow(store, clock=lambda: now[0], lease_ttl=10**6) as flow,
    ):
        wf = await flow.workflow_create("one", FunctionStep(echo, id="a"))
        await wf.execute(BIG)
        [(digest, _)] = await table(store, "payloads")
        now[0] += 3600
        conn = await connect(store)
        try:
            async with conn.transaction():  # a commit in flight, past its check
                found = await conn.fetch(Q["existing_payloads"], [digest])
                assert [r[0] for r in found] == [digest]
                assert await flow.prune(600) == 1
        finally:
            await conn.close()
        assert len(await table(store, "payloads")) == 1
