"""The ``microsaga.status`` events of an execution span: one per status change."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from microsaga import Flow, FunctionStep, Message

pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from microsaga.observability import Tracing


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
async def test_a_suspend_is_one_status_event(
    store: str, spans: tuple[TracerProvider, InMemorySpanExporter], tmp_path: object
) -> None:
    provider, exporter = spans
    url = store if store != "sqlite" else f"sqlite:///{tmp_path}/status.db"
    gate = asyncio.Event()

    async def pack(msg: Message) -> dict[str, int]:
        await gate.wait()
        return {"parcel": 1}

    async def ship(msg: Message) -> None:
        return None

    async with Flow(url, hooks=[Tracing(provider)]) as flow:
        wf = await flow.workflow_create(
            "order", FunctionStep(pack, id="pack"), FunctionStep(ship, id="ship", requires=["pack"])
        )
        eid = await wf.execute({}, async_=True)
        await flow.suspend(eid)  # while pack runs
        gate.set()
        await flow.settle(eid)
    (execution,) = [s for s in exporter.get_finished_spans() if s.name == "microsaga.execution"]
    statuses = [
        (event.attributes or {})["microsaga.status"]
        for event in execution.events
        if event.name == "microsaga.status"
    ]
    assert statuses == ["SUSPEND"]
    assert (execution.attributes or {})["microsaga.status"] == "SUSPEND"
