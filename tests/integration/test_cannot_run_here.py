"""An execution a worker cannot run (it lacks a codec key, a function, a service) is
left for other workers at once: a worker that can run it, started afterwards, takes it
within a poll, where no worker claimed it for three lease TTLs. The worker that left
it does not claim it again meanwhile (it would read it at every poll for nothing)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga.codecs import AesGcmCodec
from microsaga.stores.base import Claim, Store
from tests.helpers import eventually
from tests.integration.pg import empty_store
from tests.integration.test_store_contract import new

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
EVERY_STORE = ["memory", *STORES]
TTL = 60.0  # three of them: longer than any test waits


@pytest.fixture(params=STORES)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with empty_store(request.param, tmp_path) as found:
        yield found


@pytest.fixture(params=EVERY_STORE)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    from microsaga.stores import open_store

    async with empty_store(request.param, tmp_path) as found:
        opened = open_store(found)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()


async def ok(msg: Message) -> dict[str, bool]:
    return {"ok": True}


def _claims(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ids each claim on ``store`` takes from now on, a list per claim."""
    seen: list[list[str]] = []
    real = store.claim

    async def claim(*args: object, **kwargs: object) -> list[Claim]:
        taken = await real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append([c.execution_id for c in taken])
        return taken

    monkeypatch.setattr(store, "claim", claim)
    return seen


async def test_a_worker_that_can_run_it_takes_it_within_a_poll(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = AesGcmCodec({"k1": os.urandom(32)})
    async with Flow(url, worker=False, codec=key) as before:
        wf = await before.workflow_create("w", FunctionStep(ok, id="ok"))
        stuck = await wf.execute({"n": 1}, async_=True)
    options = {"poll_interval": 0.05, "lease_ttl": TTL}
    async with Flow(url, codec=AesGcmCodec({"k2": os.urandom(32)}), **options) as lacking:
        claims = _claims(lacking.store, monkeypatch)

        async def noted() -> str | None:
            return (await lacking.execution(stuck)).note

        note = await eventually(noted)
        assert note.startswith("waits for a worker that can run it: ")
        polls = len(claims)

        async def polled_thrice() -> bool:
            return len(claims) >= polls + 3

        await eventually(polled_thrice)
        # the worker that left it did not take it again (nor read it) at its polls since
        assert [ids for ids in claims[polls:] if stuck in ids] == []
        # a worker with the key, started now: it takes the execution at its first polls
        async with Flow(url, codec=key, **options) as able:
            done = await able.wait(stuck, timeout=10)
        assert done.status is Status.SUCCESS
        assert done.note is None


async def test_a_claim_skips_the_executions_named(store: Store) -> None:
    await store.commit([new("e1"), new("e2"), new("e3")])
    taken = await store.claim("w1", 200.0, 10.0, 10, skip=["e1", "e3"])
    assert [c.execution_id for c in taken] == ["e2"]
    taken = await store.claim("w2", 200.0, 10.0, 10, skip=[], only=["e1", "e2"])
    assert [c.execution_id for c in taken] == ["e1"]
    taken = await store.claim("w2", 200.0, 10.0, 10, skip=())
    assert [c.execution_id for c in taken] == ["e3"]
