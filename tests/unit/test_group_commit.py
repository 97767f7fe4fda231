"""How the committer cuts its queue into batches (the real stores' group commit is in
tests/integration/test_store_group_commit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from microsaga._groupcommit import Committer
from microsaga.status import Status
from microsaga.stores.base import NewExecution, Transition, TransitionResult
from microsaga.stores.memory import MemoryStore


class HeldStore(MemoryStore):
    """A batching store whose commits wait until the test lets them through."""

    batching = True

    def __init__(self, concurrency: int, batch_split: int | None) -> None:
        super().__init__()
        self.commit_concurrency = concurrency
        self.batch_split = batch_split
        self.batches: list[list[tuple[str, float]]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()

    def commit_now(self, unit: NewExecution | Transition) -> None:
        return None

    async def commit(
        self, units: Sequence[NewExecution | Transition]
    ) -> list[bool | TransitionResult]:
        self.batches.append([(u.execution_id, u.at) for u in units if isinstance(u, Transition)])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await self.gate.wait()
        self.in_flight -= 1
        return await super().commit(units)


def unit(eid: str, n: float) -> Transition:
    return Transition(eid, 1, Status.RUNNING, at=n)


async def run(store: HeldStore, units: list[Transition]) -> None:
    committer = Committer(store)
    first = asyncio.create_task(committer.submit(units[0]))
    await asyncio.sleep(0)  # the first batch is in flight: the rest queues behind it
    rest = [asyncio.create_task(committer.submit(u)) for u in units[1:]]
    for _ in range(5):
        await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(first, *rest)
    # every submitter got its own answer: these executions are not in the store
    assert all(isinstance(r, TransitionResult) and not r.owned for r in results)


async def test_a_long_queue_is_cut_into_batches_committed_side_by_side() -> None:
    store = HeldStore(concurrency=3, batch_split=2)
    names = ["x", "a", "b", "a", "c", "d", "a"]
    await run(store, [unit(eid, n) for n, eid in enumerate(names)])
    assert store.batches == [
        [("x", 0)],
        # two units, and the other queued units of their executions, in their order
        [("a", 1), ("b", 2), ("a", 3), ("a", 6)],
        [("c", 4), ("d", 5)],
    ]
    assert store.most_in_flight == 3


async def test_without_a_limit_the_queue_is_one_batch() -> None:
    store = HeldStore(concurrency=3, batch_split=None)
    await run(store, [unit(eid, n) for n, eid in enumerate("xabcd")])
    assert store.batches == [[("x", 0)], [("a", 1), ("b", 2), ("c", 3), ("d", 4)]]
    assert store.most_in_flight == 2


async def test_a_long_queue_is_shared_evenly_among_the_commits_left() -> None:
    store = HeldStore(concurrency=3, batch_split=2)
    await run(store, [unit(eid, n) for n, eid in enumerate("xabcdefgh")])
    # 8 queued behind the first, 2 commits left: 4 each, not four batches of 2
    assert [len(b) for b in store.batches] == [1, 4, 4]
    assert store.most_in_flight == 3


@pytest.mark.parametrize(("concurrency", "batches"), [(1, [["a", "b"]]), (3, [["a"], ["b"]])])
async def test_a_store_of_one_commit_at_a_time_waits_a_turn_for_more(
    concurrency: int, batches: list[list[str]]
) -> None:
    # SQLite takes one commit at a time: a unit submitted in the turn of the loop after
    # the one that queued the first (a sync step function's result coming back) joins
    # its commit. PostgreSQL takes several: that commit goes out at once, the next beside
    # it.
    store = HeldStore(concurrency=concurrency, batch_split=None)
    store.gate.set()
    committer = Committer(store)

    async def later() -> TransitionResult:
        await asyncio.sleep(0)  # runs in the turn after the one that started the drain
        return await committer.submit(unit("b", 1))

    await asyncio.gather(committer.submit(unit("a", 0)), later())
    assert [[eid for eid, _ in batch] for batch in store.batches] == batches
