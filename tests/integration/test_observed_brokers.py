"""One saga on SQLite, observed as docs/observability.md says, over each real broker
(NATS JetStream, RabbitMQ, Redis Streams) and an HTTP participant: the trace context
in every request (read back with the broker's own client, and by a participant that
continues the trace), a woken execution continuing the trace, and the metrics of the
run."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import microsaga
from microsaga import CallStep, Message, PublishStep, Status, WaitStep
from microsaga.participant import Participant

from ..helpers import eventually
from .test_brokers import AmqpEnv, Env, NatsEnv, RedisEnv, _broker

pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")
prometheus_client = pytest.importorskip("prometheus_client", reason="the prometheus extra")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from microsaga.observability import Metrics, Tracing  # noqa: E402
from tests.helpers import metric_value, trace_ids  # noqa: E402

# the context of the caller's request: the execution span is its child
INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(params=["nats", "rabbitmq", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    kind = request.param
    url = request.getfixturevalue(f"{'amqp' if kind == 'rabbitmq' else kind}_url")
    made: Env = {"nats": NatsEnv, "rabbitmq": AmqpEnv, "redis": RedisEnv}[kind](url)
    await made.start()
    yield made
    await made.close()


def _context(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def _parent(span: ReadableSpan) -> tuple[int, int] | None:
    return (span.parent.trace_id, span.parent.span_id) if span.parent is not None else None


def _step(spans: list[ReadableSpan], step_id: str) -> ReadableSpan:
    (found,) = [
        s
        for s in spans
        if s.name == "microsaga.step" and (s.attributes or {}).get("microsaga.step_id") == step_id
    ]
    return found


def _value(registry: Any, name: str, suffix: str = "", **labels: str) -> float:
    text = prometheus_client.generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return metric_value(families, name, suffix, **labels)


async def test_a_saga_over_a_broker_and_http_is_one_trace_and_counted(
    broker: Env,
    serve: Any,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    tmp_path: Path,
) -> None:
    tracer_provider, exporter = spans
    registry = prometheus_client.CollectorRegistry()
    raw_topic, handled_topic = (f"microsaga.obs.{uuid.uuid4().hex[:12]}" for _ in range(2))
    for topic in (raw_topic, handled_topic):
        await broker.prepare(topic)
    inventory, shipping = (Participant(tracer_provider=tracer_provider) for _ in range(2))
    received: list[Message] = []

    @inventory.handler("Inventory.Reserve")
    async def reserve(msg: Message) -> dict[str, str]:
        received.append(msg)
        return {"reservation": "R1"}

    @shipping.handler(handled_topic)
    async def ship(msg: Message) -> None:
        received.append(msg)

    url = await serve(inventory)
    sub = await shipping.subscribe(broker.url, handled_topic)
    try:
        async with microsaga.Flow(
            f"sqlite:///{tmp_path / 'observed.db'}",
            services={"inventory": url},
            broker=broker.url,
            hooks=[Tracing(tracer_provider), Metrics(registry)],
        ) as flow:
            wf = await flow.workflow_create(
                "order",
                CallStep("inventory", "Inventory", "Reserve", id="reserve"),
                PublishStep(raw_topic, id="announce", requires=["reserve"]),
                PublishStep(handled_topic, id="ship", requires=["reserve"]),
                WaitStep("delivered", requires=["announce", "ship"]),
            )
            eid = await wf.execute(
                Message(b'{"order_id": 1}', {"traceparent": INCOMING}), async_=True
            )

            async def waiting() -> bool:
                info = await flow.execution(eid)
                return info.steps["delivered"].status is Status.WAITING

            await eventually(waiting, timeout=20)
            # parked: held by no process, so running here no more
            await eventually(lambda: _value(registry, "microsaga_executions_running") == 0)
            await flow.signal(eid, "delivered", {"at": "door"})
            await flow.wait(eid, timeout=20)
            await eventually(lambda: len(received) == 2, timeout=20)
            await eventually(
                lambda: any(s.name == handled_topic for s in exporter.get_finished_spans()),
                timeout=10,
            )
    finally:
        await sub.close()
    raw = await broker.messages(raw_topic)  # nobody consumed it: as the broker holds it
    finished = list(exporter.get_finished_spans())

    # the execution span: a child of the incoming context; parked, then woken
    first, woken = sorted(
        (s for s in finished if s.name == "microsaga.execution"), key=lambda s: s.start_time or 0
    )
    trace_id, incoming = trace_ids(INCOMING)
    assert _parent(first) == (trace_id, incoming)
    assert (first.attributes or {})["microsaga.status"] == "RUNNING"  # parked, not finished
    assert _parent(woken) == _context(first)
    assert (woken.attributes or {})["microsaga.taken_over"] is True
    assert (woken.attributes or {})["microsaga.status"] == "SUCCESS"
    assert all(s.context is not None and s.context.trace_id == trace_id for s in finished)

    # each request carries its step's span; each participant's span is that one's child
    for step_id, handler, kind in (
        ("reserve", "Inventory.Reserve", SpanKind.SERVER),
        ("ship", handled_topic, SpanKind.CONSUMER),
    ):
        step = _step(finished, step_id)
        assert _parent(step) == _context(first)
        (msg,) = [m for m in received if m.header.get("Micro-Flow-Step") == step_id]
        assert trace_ids(msg.header["traceparent"]) == _context(step)
        (handled,) = [s for s in finished if s.name == handler]
        assert handled.kind is kind
        assert _parent(handled) == _context(step)
        assert (handled.attributes or {})["microsaga.execution_id"] == eid
    (message,) = raw  # read with the broker's own client
    assert trace_ids(message.header["traceparent"][0]) == _context(_step(finished, "announce"))

    # the metrics of the run
    assert _value(registry, "microsaga_executions_started", workflow="order") == 1
    assert (
        _value(registry, "microsaga_executions_finished", workflow="order", status="SUCCESS") == 1
    )
    for step_id in ("reserve", "announce", "ship", "delivered"):
        assert _value(registry, "microsaga_steps", step=step_id, outcome="success") == 1, step_id
    assert _value(registry, "microsaga_executions_running") == 0
    assert _value(registry, "microsaga_lease_takeovers") == 0  # woken, not taken over
    commits = _value(registry, "microsaga_store_commit_seconds", "_count")
    assert commits > 0
    assert _value(registry, "microsaga_store_batch_size", "_count") == commits
    assert _value(registry, "microsaga_store_batch_size", "_sum") >= commits


async def test_a_redelivered_message_is_logged_with_its_execution(
    broker: Env, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"microsaga.obs.{uuid.uuid4().hex[:12]}"
    await broker.prepare(topic)
    kind = {NatsEnv: "nats", AmqpEnv: "rabbitmq", RedisEnv: "redis"}[type(broker)]
    consumer = Participant(tracing=False)
    attempts: list[Message] = []

    @consumer.handler(topic)
    async def audit(msg: Message) -> None:
        attempts.append(msg)
        if len(attempts) == 1:
            raise RuntimeError("audit database restarting")

    transport = _broker(broker)
    await transport.connect()
    try:
        sub = await consumer.subscribe(transport, topic)
        with caplog.at_level(logging.WARNING, logger="microsaga"):
            async with microsaga.Flow("memory://", broker=broker.url) as flow:
                wf = await flow.workflow_create("audit", PublishStep(topic, id="audit"))
                eid = await wf.execute({"event": "shipped"})
            await eventually(lambda: len(attempts) == 2, timeout=20)
        await sub.close()
    finally:
        await transport.close()
    # the participant's own record and the transport's, about the one message
    failed = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert {r.name for r in failed} >= {"microsaga.participant", f"microsaga.transports.{kind}"}
    for record in failed:
        assert getattr(record, "execution_id", None) == eid
        assert getattr(record, "workflow_id", None) == "audit"
        assert getattr(record, "step_id", None) == "audit"
