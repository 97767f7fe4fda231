"""``flow.signal`` reads only the execution's status and definition (never its step
runs: a map's 10,000 of them were read at every signal), in every store; and every
refusal of a signal still comes (unknown id, finished execution, unknown event)."""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import (
    ConfigurationError,
    ExecutionNotFoundError,
    Flow,
    FunctionStep,
    InvalidTransitionError,
    MapStep,
    Message,
    Status,
    WaitStep,
)
from microsaga.stores.base import Store
from microsaga.stores.memory import MemoryStore
from tests.integration import test_store_contract as contract
from tests.integration.test_store_contract import commit_one, new, running, transition

store_url = contract.store_url  # the same fixtures: every store, each fresh
store = contract.store


async def parts(msg: Message) -> list[int]:
    return [1, 2, 3]


async def part(msg: Message) -> int:
    return int(msg.json())


async def finish(msg: Message) -> Any:
    return msg.json()


def _no_loads(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    async def load(*args: Any) -> Any:
        raise AssertionError("a signal read the execution's step runs")

    monkeypatch.setattr(store, "load", load)
    monkeypatch.setattr(store, "load_many", load)


async def test_definition_of_is_the_status_and_definition(store: Store) -> None:
    assert await store.definition_of("nope") is None
    await store.commit([new("e1", owner="w1", starts=("a",))])
    await commit_one(store, transition("e1", records=[running("b")]))
    found = await store.definition_of("e1")
    assert found is not None
    status, definition = found
    assert status is Status.RUNNING
    assert (definition.hash, definition.workflow_id) == ("hash-1", "order")
    assert definition.body == b'{"id": "order"}'
    assert definition.step_ids == ["a", "b", "c"]
    await commit_one(store, transition("e1", status=Status.SUCCESS, release=True, at=101.0))
    found = await store.definition_of("e1")
    assert found is not None
    assert found[0] is Status.SUCCESS


async def test_a_signal_reads_no_step_run_and_still_refuses(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        Flow(store_url, poll_interval=0.05, lease_ttl=5.0) as runner,
        Flow(store_url, worker=False) as other,
    ):
        wf = await runner.workflow_create(
            "order",
            FunctionStep(parts, id="parts"),
            MapStep(FunctionStep(part, id="part"), over="steps.parts", id="each",
                    requires=["parts"]),
            WaitStep("paid"),
            FunctionStep(finish, id="done", requires=["each", "paid"]),
        )  # fmt: skip
        eid = await wf.execute({}, async_=True)
        _no_loads(monkeypatch, other.store)
        with pytest.raises(ExecutionNotFoundError):
            await other.signal("nope", "paid")
        with pytest.raises(ConfigurationError, match="waits for 'payed'"):
            await other.signal(eid, "payed")
        assert await other.store.signals(eid) == {}  # nothing kept
        await other.signal(eid, "paid", 7)
        done = await runner.wait(eid, timeout=10)
        assert done.status is Status.SUCCESS
        assert done.steps["each"].response is not None
        with pytest.raises(InvalidTransitionError, match="SUCCESS"):
            await other.signal(eid, "paid", 8)


async def test_a_store_written_before_definition_of_still_answers() -> None:
    class Older(MemoryStore):  # the Store default: everything loaded
        definition_of = Store.definition_of

    store = Older()
    assert await store.definition_of("nope") is None
    await store.commit([new("e1", owner="w1", starts=("a",))])
    found = await store.definition_of("e1")
    assert found is not None
    assert (found[0], found[1].hash) == (Status.RUNNING, "hash-1")
