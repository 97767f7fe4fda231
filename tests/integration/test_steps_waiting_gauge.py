"""``microsaga_steps_waiting`` (SPEC section 10): the steps waiting in the store a
worker's flow uses, parked or not, the same on every worker of that store; counted
on memory, SQLite and PostgreSQL (skipped, with the reason, without the server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from microsaga import Flow, FunctionStep, Message, Phase, Status, WaitStep
from microsaga.stores.base import Store
from microsaga.worker import Worker
from tests.helpers import eventually
from tests.integration import test_store_contract as contract
from tests.integration.pg import empty_store

prometheus_client = pytest.importorskip("prometheus_client", reason="the prometheus extra")

from microsaga.observability import Metrics  # noqa: E402

KINDS = [
    pytest.param("memory"),
    pytest.param("sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=KINDS)
async def url(request: Any, tmp_path: Path) -> AsyncIterator[str]:
    async with empty_store(request.param, tmp_path) as found:
        yield found


store_url = contract.store_url  # every store, each fresh
store = contract.store


@pytest.fixture(autouse=True)
def count_at_each_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Worker, "waiting_every", 0.0)


async def ship(msg: Message) -> None:
    return None


def gauge(registry: Any) -> float | None:
    return registry.get_sample_value("microsaga_steps_waiting")


async def test_the_gauge_counts_the_waiting_steps_on_every_worker(url: str) -> None:
    one, two = prometheus_client.CollectorRegistry(), prometheus_client.CollectorRegistry()
    options: dict[str, Any] = {"lease_ttl": 0.6, "poll_interval": 0.05}
    async with (
        Flow(url, hooks=[Metrics(one)], **options) as flow,
        Flow(url, hooks=[Metrics(two)], **options),
    ):
        wf = await flow.workflow_create(
            "order", WaitStep("paid"), FunctionStep(ship, id="ship", requires=("paid",))
        )
        eids = [await wf.execute({}, async_=True) for _ in range(3)]

        # store-wide: the worker that started them and the one that runs none agree
        await eventually(lambda: gauge(one) == 3, timeout=20)
        await eventually(lambda: gauge(two) == 3, timeout=20)
        await flow.signal(eids[0], "paid")

        async def shipped() -> bool:
            return (await flow.execution(eids[0])).status.name == "SUCCESS"

        await eventually(shipped, timeout=20)
        await eventually(lambda: gauge(one) == 2, timeout=20)
        await eventually(lambda: gauge(two) == 2, timeout=20)


def waiting(step: str, phase: Phase = Phase.FORWARD) -> Any:
    return replace(contract.running(step, phase=phase), status=Status.WAITING)


async def test_a_store_counts_the_waiting_steps_of_running_executions(store: Store) -> None:
    for eid in ("e1", "e2", "e3"):
        await store.commit([contract.new(eid, owner="w1")])
    assert await store.count_waiting() == 0
    await contract.commit_one(
        store, contract.transition("e1", records=[waiting("a"), waiting("b")])
    )
    await contract.commit_one(store, contract.transition("e2", records=[waiting("a")]))
    await contract.commit_one(store, contract.transition("e3", records=[waiting("a")]))
    assert await store.park("e1", 1, 10**15, ["a", "b"], [], "waiting for a, b")
    assert await store.count_waiting() == 4  # parked or not
    # a suspended or finished execution waits for nothing any more
    await contract.commit_one(store, contract.transition("e2", status=Status.SUSPEND))
    await contract.commit_one(store, contract.transition("e3", status=Status.FAILURE, release=True))
    assert await store.count_waiting() == 2
