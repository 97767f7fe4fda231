"""The trace context reaches real participants: over HTTP, and over NATS JetStream,
where ``microsaga.participant`` continues it (its handler spans are children of the
step spans)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import microsaga
from microsaga import CallStep, Message, PublishStep
from microsaga.participant import Participant

from ..helpers import eventually
from .test_brokers import NatsEnv

pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from microsaga.observability import Tracing
from tests.helpers import trace_ids


def _step_span(spans: list[ReadableSpan], step_id: str) -> ReadableSpan:
    (found,) = [
        s
        for s in spans
        if s.name == "microsaga.step" and (s.attributes or {}).get("microsaga.step_id") == step_id
    ]
    return found


def _child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        span.parent is not None
        and parent.context is not None
        and span.parent.span_id == parent.context.span_id
        and span.context is not None
        and span.context.trace_id == parent.context.trace_id
    )


async def test_an_http_participant_continues_the_trace_of_the_step(
    serve: Any, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = spans
    inventory = Participant(tracer_provider=tracer_provider)
    tracer = tracer_provider.get_tracer("inventory")
    seen: list[Message] = []

    @inventory.handler("Inventory.Reserve")
    async def reserve(msg: Message) -> dict[str, str]:
        seen.append(msg)
        with tracer.start_as_current_span("reserve stock"):
            return {"reservation": "R1"}

    url = await serve(inventory)
    async with microsaga.Flow(
        "memory://", services={"inventory": url}, hooks=[Tracing(tracer_provider)]
    ) as flow:
        wf = await flow.workflow_create("order", CallStep("inventory", "Inventory", "Reserve"))
        await wf.execute({"order_id": 1})
    finished = list(exporter.get_finished_spans())
    step = _step_span(finished, "inventory.Inventory.Reserve")
    (msg,) = seen
    assert step.context is not None
    assert trace_ids(msg.header["traceparent"]) == (step.context.trace_id, step.context.span_id)
    (handler,) = [s for s in finished if s.name == "Inventory.Reserve"]
    assert _child_of(handler, step)
    assert (handler.attributes or {})["microsaga.step_id"] == "inventory.Inventory.Reserve"
    (own,) = [s for s in finished if s.name == "reserve stock"]
    assert _child_of(own, handler)


async def test_a_nats_subscriber_gets_the_traceparent_and_continues_the_trace(
    nats_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = spans
    env = NatsEnv(nats_url)
    await env.start()
    topic = f"trace.{uuid.uuid4().hex[:12]}"
    try:
        await env.prepare(topic)
        shipping = Participant(tracer_provider=tracer_provider)
        seen: list[Message] = []

        @shipping.handler(topic)
        async def ship(msg: Message) -> None:
            seen.append(msg)

        sub = await shipping.subscribe(nats_url, topic)
        try:
            async with microsaga.Flow(
                "memory://", broker=nats_url, hooks=[Tracing(tracer_provider)]
            ) as flow:
                wf = await flow.workflow_create("ship", PublishStep(topic))
                await wf.execute({"order_id": 1})
                await eventually(lambda: seen, timeout=20)
                await eventually(
                    lambda: any(s.name == topic for s in exporter.get_finished_spans()),
                    timeout=10,
                )
        finally:
            await sub.close()
        # the message as stored by JetStream carries the step's context too
        (stored,) = await env.messages(topic)
    finally:
        await env.close()
    finished = list(exporter.get_finished_spans())
    step = _step_span(finished, topic)
    assert step.context is not None
    (msg,) = seen
    assert trace_ids(msg.header["traceparent"]) == (step.context.trace_id, step.context.span_id)
    assert trace_ids(stored.header["traceparent"][0]) == (
        step.context.trace_id,
        step.context.span_id,
    )
    (handler,) = [s for s in finished if s.name == topic]
    assert _child_of(handler, step)
