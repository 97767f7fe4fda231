"""A store that goes away mid-run: nothing is acted on before it commits, nothing is
lost, and the execution finishes once the store is back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga.stores.base import Claim, NewExecution, Transition, TransitionResult
from microsaga.stores.sqlite import SQLiteStore


class FlakySQLite(SQLiteStore):
    """The real SQLite store whose writes fail while ``down`` is set."""

    down = False
    failures = 0

    def _check(self) -> None:
        if self.down:
            self.failures += 1
            raise self._error(sqlite3.OperationalError("disk I/O error"))

    async def commit(
        self, units: Sequence[NewExecution | Transition]
    ) -> list[bool | TransitionResult]:
        self._check()
        return await super().commit(units)

    def commit_now(self, unit: NewExecution | Transition) -> bool | TransitionResult | None:
        if self.down:
            self.failures += 1
            return None  # as a real failure there: the committer goes the usual way
        return super().commit_now(unit)

    async def claim(
        self, owner: str, now: float, ttl: float, limit: int, *, alive: Collection[str] = ()
    ) -> list[Claim]:
        self._check()
        return await super().claim(owner, now, ttl, limit, alive=alive)

    async def renew(
        self, owner: str, execution_ids: Collection[str], now: float, ttl: float
    ) -> set[str]:
        self._check()
        return await super().renew(owner, execution_ids, now, ttl)

    async def release(
        self, execution_id: str, token: int, until: float, note: str | None = None
    ) -> None:
        self._check()
        await super().release(execution_id, token, until, note)


async def test_commits_are_retried_while_the_store_is_away(tmp_path: Path) -> None:
    store = FlakySQLite(f"sqlite:///{tmp_path / 'flaky.db'}")
    calls: list[str] = []

    async def first(msg: Message) -> dict[str, int]:
        calls.append("first")
        store.down = True  # the store goes away while the step runs

        return {"n": 1}

    async def second(msg: Message) -> dict[str, int]:
        calls.append("second")
        return {"n": 2}

    async def bring_back() -> None:
        while store.failures < 3:
            await asyncio.sleep(0.01)
        store.down = False

    async with Flow(store) as flow:
        a = FunctionStep(first, id="first")
        wf = await flow.workflow_create("flaky", a, FunctionStep(second, id="second", requires=[a]))
        back = asyncio.create_task(bring_back())
        eid = await asyncio.wait_for(wf.execute(), 20)
        await back
        info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    assert calls == ["first", "second"]  # nothing ran twice, nothing ran before its commit
    assert store.failures >= 3


async def test_a_store_away_longer_than_the_retries_resumes_later(tmp_path: Path) -> None:
    store = FlakySQLite(f"sqlite:///{tmp_path / 'away.db'}")
    calls: list[str] = []

    async def first(msg: Message) -> None:
        calls.append("first")
        if len(calls) == 1:
            store.down = True  # away while the first attempt runs

    async def second(msg: Message) -> None:
        calls.append("second")

    async def bring_back() -> None:
        while store.failures < 5:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # past store_retry_for: the run gives the execution up
        store.down = False

    async with Flow(store, store_retry_for=0.1, lease_ttl=0.5, poll_interval=0.05) as flow:
        a = FunctionStep(first, id="first")
        wf = await flow.workflow_create("away", a, FunctionStep(second, id="second", requires=[a]))
        back = asyncio.create_task(bring_back())
        eid = await asyncio.wait_for(wf.execute(), 30)  # taken over again once the lease ends
        await back
        info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    # first's result was never stored: it ran again (same idempotency key), then second
    assert calls == ["first", "first", "second"]


async def test_an_outage_is_said_once_when_it_starts_and_once_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakySQLite(f"sqlite:///{tmp_path / 'flaky.db'}")

    async def step(msg: Message) -> dict[str, int]:
        store.down = True
        return {"n": 1}

    async with Flow(store, poll_interval=0.01, heartbeat_interval=0.02, lease_ttl=5.0) as flow:
        wf = await flow.workflow_create("w", FunctionStep(step, id="a"))
        caplog.set_level(logging.DEBUG, logger="microsaga")
        running = asyncio.create_task(wf.execute({}))
        while store.failures < 30:  # many failed commits, polls and renewals
            await asyncio.sleep(0.01)
        store.down = False
        await asyncio.wait_for(running, 10)
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(",")[0].split(" after")[0] for r in said] == [
        "store unavailable",
        "store available again",
    ], [r.getMessage() for r in said]
    assert "disk I/O error" in said[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)  # no traceback
