"""Prune and sub-workflows, on every store: a finished child execution is pruned only
with its ancestors, since a parent still stored may yet compensate it as a unit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Status
from microsaga.stores import open_store
from microsaga.stores.base import Store
from tests.integration.pg import empty_store
from tests.integration.test_store_contract import new, succeeded, transition

EVERY = [Status.SUCCESS, Status.FAILURE, Status.ABORTED]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with empty_store(request.param, tmp_path) as url:
        opened = open_store(url)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()


async def finish(store: Store, eid: str, at: float, parent: str | None = None) -> None:
    created = new(eid, owner="w1", starts=("a",))
    created.parent_id = parent
    await store.commit([created])
    await store.commit([transition(eid, status=Status.SUCCESS, records=[succeeded("a")], at=at)])


async def test_a_child_is_pruned_only_with_its_ancestors(store: Store) -> None:
    await store.commit([new("p", owner="w1", starts=("a",))])  # still running
    await finish(store, "p:pay", 110.0, parent="p")
    await finish(store, "p:pay:inner", 110.0, parent="p:pay")
    await finish(store, "q", 110.0)  # finished recently
    await finish(store, "q:pay", 105.0, parent="q")
    await finish(store, "r:pay", 105.0, parent="r")  # its parent is gone
    await finish(store, "s", 101.0)  # the first of the store: parents come first
    await finish(store, "s:pay", 101.0, parent="s")

    assert await store.prune(108.0, EVERY, 10) == 3  # r:pay, s and its child
    for gone in ("r:pay", "s", "s:pay"):
        assert await store.get_status(gone) is None
    for kept in ("p", "p:pay", "p:pay:inner", "q", "q:pay"):
        assert await store.get_status(kept) is not None, kept

    assert await store.prune(1e9, EVERY, 10) == 2  # q and its child; p still runs
    assert await store.get_status("p:pay") is not None
    assert await store.get_status("p:pay:inner") is not None
    await store.commit([transition("p", status=Status.FAILURE, at=120.0)])
    assert await store.prune(1e9, [Status.SUCCESS], 10) == 0  # p is kept: so are they
    assert await store.prune(1e9, EVERY, 10) == 3


async def test_children_held_back_do_not_stop_a_batch(store: Store) -> None:
    """A batch fills with what may go: children held back by a running parent do not
    take its places (a paced prune stops at the first batch short of its limit)."""
    await store.commit([new("p", owner="w1", starts=("a",))])
    for n in range(3):
        await finish(store, f"p:c{n}", 101.0, parent="p")
    for n in range(3):
        await finish(store, f"e{n}", 102.0)
    assert await store.prune(1e9, EVERY, 3) == 3
    assert [await store.get_status(f"e{n}") for n in range(3)] == [None] * 3
