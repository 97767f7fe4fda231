"""Group commit on the real stores: the transitions of many executions running at once
share transactions, so a worker is not held to one commit per transition."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message, Status, Workflow
from microsaga.stores.base import NewExecution, Store, Transition, TransitionResult
from tests.helpers import eventually
from tests.integration.pg import empty_store

EXECUTIONS = 200
STEPS = ("reserve", "charge", "ship", "notify")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty store; every Flow or store opened on it shares its data."""
    async with empty_store(request.param, tmp_path) as url:
        yield url


class Commits:
    """The commits the worker makes on the store, and the units they carry."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.units = 0
        commit, commit_now = store.commit, store.commit_now

        async def batch(
            units: Sequence[NewExecution | Transition],
        ) -> list[bool | TransitionResult]:
            results = await commit(units)
            self.count += 1
            self.units += len(units)
            return results

        def one(unit: NewExecution | Transition) -> bool | TransitionResult | None:
            result = commit_now(unit)
            if result is not None:
                self.count += 1
                self.units += 1
            return result

        monkeypatch.setattr(store, "commit", batch)
        monkeypatch.setattr(store, "commit_now", one)

    def assert_shared(self) -> None:
        # a creation and a transition per step result: five units an execution
        assert self.units == EXECUTIONS * (1 + len(STEPS))
        # one commit per unit would be a thousand; shared, they are a few dozen at most (a
        # PostgreSQL commit is at most three statements, a SQLite one a transaction)
        assert self.count * 10 <= self.units, f"{self.count} commits for {self.units} transitions"


async def _order(flow: Flow, fn: Callable[[Message], Awaitable[object]]) -> Workflow:
    """The order workflow: STEPS in a chain, each running ``fn``."""
    steps: list[FunctionStep] = []
    for name in STEPS:
        steps.append(FunctionStep(fn, id=name, requires=steps[-1:]))
    return await flow.workflow_create("order", *steps)


async def _step(msg: Message) -> object:
    await asyncio.sleep(0.005)  # a participant's round trip
    return {"ok": True}


async def test_many_executions_share_transactions(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Flow(store_url, concurrency=EXECUTIONS) as flow:
        wf = await _order(flow, _step)
        commits = Commits(flow.store, monkeypatch)
        ids = await asyncio.gather(
            *(wf.execute({"order": n}, async_=True) for n in range(EXECUTIONS))
        )

        async def all_finished() -> bool:
            done = await flow.executions(status=Status.SUCCESS, limit=EXECUTIONS)
            return len(done) == EXECUTIONS

        await eventually(all_finished, timeout=60)
        for eid in ids[:: EXECUTIONS // 10]:
            info = await flow.execution(eid)
            assert [info.steps[s].status for s in STEPS] == [Status.SUCCESS] * len(STEPS)
    commits.assert_shared()


async def _quick(msg: Message) -> object:
    return {"ok": True}  # a local function that never waits


async def test_callers_that_wait_share_transactions_when_steps_never_wait(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # callers waiting for their executions (the usual execute()), steps that never wait:
    # a run must not do all its commits alone, one after another, in its caller's call
    async with Flow(store_url, concurrency=EXECUTIONS) as flow:
        wf = await _order(flow, _quick)
        commits = Commits(flow.store, monkeypatch)
        ids = await asyncio.gather(*(wf.execute({"order": n}) for n in range(EXECUTIONS)))
        assert len(set(ids)) == EXECUTIONS
        done = await flow.executions(status=Status.SUCCESS, limit=EXECUTIONS)
        assert len(done) == EXECUTIONS
    commits.assert_shared()
