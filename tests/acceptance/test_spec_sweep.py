"""SPEC.md read from a fresh user's side: each test calls the public names exactly as
the contract writes them, for what the sweep found wrong (the rest has tests of its
own elsewhere)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from microsaga import CallStep, Flow, FunctionStep, Message, Status, WaitStep
from microsaga.testing import MockClient
from tests.helpers import eventually


@pytest.fixture(params=["memory", "sqlite"])
async def flow(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Flow]:
    store = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'f.db'}"
    async with Flow(store, poll_interval=0.05) as f:
        yield f


def first(msg: Message) -> int:
    return 1


async def second(msg: Message) -> int:
    return 2


# SPEC §2: "wf.status: the status of the latest execution started through this
# object"; §1: a step's .status/.request/.response are "the last run seen by this
# process". An execution that stops running and goes on later (resume, a signal)
# must not leave them frozen where its first run stopped.


async def test_wf_status_and_step_status_follow_a_resumed_execution(flow: Flow) -> None:
    gate = asyncio.Event()

    async def held(msg: Message) -> int:
        await gate.wait()
        return 1

    a = FunctionStep(held, id="a")
    b = FunctionStep(second, id="b", requires=[a])
    wf = await flow.workflow_create("resumed", a, b)
    eid = await wf.execute({"order_id": 42}, async_=True)
    await eventually(lambda: a.status is Status.RUNNING)
    await wf.suspend(eid)
    gate.set()
    await eventually(lambda: a.status is Status.SUCCESS)
    assert wf.status is Status.SUSPEND
    await wf.resume(eid)
    await eventually(lambda: wf.status is Status.SUCCESS)
    assert b.status is Status.SUCCESS
    assert b.response is not None
    assert b.response.json() == 2


async def test_wf_status_and_step_status_follow_a_signalled_execution(flow: Flow) -> None:
    start = FunctionStep(first, id="start")
    confirmed = WaitStep("payment.confirmed", requires=[start])
    wf = await flow.workflow_create("signalled", start, confirmed)
    eid = await wf.execute({"order_id": 42}, async_=True)
    await eventually(lambda: confirmed.status is Status.WAITING)
    assert wf.status is Status.RUNNING
    await flow.signal(eid, "payment.confirmed", {"paid": True})
    await eventually(lambda: wf.status is Status.SUCCESS)
    assert confirmed.status is Status.SUCCESS
    assert confirmed.response is not None
    assert confirmed.response.json() == {"paid": True}


# SPEC §10: "Traces: with a tracer provider configured, a span microsaga.execution per
# execution ... and a child microsaga.step per attempt"; the span context goes to
# participants as W3C traceparent. A user who configures OpenTelemetry and opens a
# Flow gets them, with no microsaga hook to add.


@pytest.fixture
def global_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # what trace.set_tracer_provider(provider) does, undone after the test (the real
    # one can be called once per process)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


async def test_a_configured_tracer_provider_traces_executions(
    global_provider: InMemorySpanExporter,
) -> None:
    received: list[Message] = []

    def service(name: str, endpoint: str, msg: Message) -> Message:
        received.append(msg)
        return Message({"reserved": True})

    async with Flow("memory://", client=MockClient(service)) as flow:
        reserve = CallStep("inventory", "Inventory", "Reserve")
        wf = await flow.workflow_create("order", reserve, FunctionStep(first, requires=[reserve]))
        eid = await wf.execute({"order_id": 42})
    spans = global_provider.get_finished_spans()
    (execution,) = [s for s in spans if s.name == "microsaga.execution"]
    assert execution.attributes is not None
    assert execution.attributes["microsaga.workflow_id"] == "order"
    assert execution.attributes["microsaga.execution_id"] == eid
    steps = sorted(
        (str(s.attributes["microsaga.step_id"]), s.attributes["microsaga.phase"])
        for s in spans
        if s.name == "microsaga.step" and s.attributes is not None
    )
    assert steps == [("first", "forward"), ("inventory.Inventory.Reserve", "forward")]
    assert all(s.parent is not None for s in spans if s.name == "microsaga.step")
    assert received[0].header.get("traceparent") is not None


async def test_without_a_configured_tracer_provider_a_flow_adds_no_hook() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("order", FunctionStep(first))
        await wf.execute({"order_id": 42})
        assert list(flow.hooks) == []


# SPEC §10: "Logs: loggers under microsaga, every record about an execution with
# extra={"execution_id", "workflow_id", "step_id"}".


async def test_the_record_of_a_parked_execution_carries_its_ids(
    flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="microsaga")
    wf = await flow.workflow_create("approval", WaitStep("approved"))
    eid = await wf.execute({"order_id": 42}, async_=True)

    def parked() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "parked" in r.getMessage()]

    (record,) = await eventually(parked)
    assert record.name.startswith("microsaga")
    assert record.execution_id == eid  # type: ignore[attr-defined]
    assert record.workflow_id == "approval"  # type: ignore[attr-defined]
    assert record.step_id is None  # type: ignore[attr-defined]
