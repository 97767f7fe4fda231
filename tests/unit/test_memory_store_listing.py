"""The memory store lists executions newest first by walking back from the newest: a
listing of the newest few never sorts the whole store (it sorted every execution at
every listing), and it keeps every listing rule (creation order whatever the ids,
filters, ``before`` pages, pruned executions gone, ``steps=False``)."""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import Status
from microsaga.stores import memory
from microsaga.stores.memory import MemoryStore
from tests.integration.test_store_contract import commit_one, new, transition

IDS = ["m", "z", "a", "k", "b", "y"]  # created in this order, which no sort of ids gives


async def stored(ids: list[str] = IDS) -> MemoryStore:
    store = MemoryStore()
    for i, eid in enumerate(ids):
        await store.commit([new(eid, owner="w1", workflow="odd" if i % 2 else "even")])
    return store


async def test_a_listing_sorts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    store = await stored()

    def no_sort(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the listing sorted the store")

    monkeypatch.setattr(memory, "sorted", no_sort, raising=False)
    assert [e.id for e in await store.list_executions(limit=2)] == ["y", "b"]
    assert [e.id for e in await store.list_executions(limit=2, before="k")] == ["a", "z"]


async def test_creation_order_with_filters_and_pages() -> None:
    store = await stored()
    assert [e.id for e in await store.list_executions()] == IDS[::-1]
    assert [e.id for e in await store.list_executions("odd")] == ["y", "k", "z"]
    assert [e.id for e in await store.list_executions("even", before="b")] == ["a", "m"]
    assert await store.list_executions(before="m") == []
    await commit_one(store, transition("a", status=Status.SUCCESS, release=True, at=101.0))
    assert [e.id for e in await store.list_executions(status=Status.SUCCESS)] == ["a"]
    pages, before = [], None
    while page := await store.list_executions(limit=4, before=before):
        pages.append([e.id for e in page])
        before = page[-1].id
    assert pages == [["y", "b", "k", "a"], ["z", "m"]]


async def test_pruned_executions_are_not_listed_and_new_ones_come_first() -> None:
    store = await stored()
    for eid in ("k", "y"):
        await commit_one(store, transition(eid, status=Status.SUCCESS, release=True, at=101.0))
    assert await store.prune(200.0, [Status.SUCCESS], 10) == 2
    await store.commit([new("c", owner="w1")])
    assert [e.id for e in await store.list_executions()] == ["c", "b", "a", "z", "m"]
    assert [e.id for e in await store.list_executions(limit=2, before="b")] == ["a", "z"]


async def test_without_steps_the_same_executions_without_step_runs() -> None:
    store = await stored()
    full = await store.list_executions(limit=3)
    bare = await store.list_executions(limit=3, steps=False)
    assert [e.id for e in bare] == [e.id for e in full] == ["y", "b", "k"]
    assert all(e.steps == {} for e in bare)
    assert all(e.steps for e in full)
    assert [(e.status, e.request, e.note) for e in bare] == [
        (e.status, e.request, e.note) for e in full
    ]
