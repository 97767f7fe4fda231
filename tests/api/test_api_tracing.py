"""Under an HTTP server instrumented with OpenTelemetry (a request span current while
the app runs, as ``opentelemetry-instrument`` makes one), an execution started through
the API is a child of the request's span (docs/observability.md, "The parent of an
execution")."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from microsaga import Flow
from microsaga.api import create_app

pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from microsaga.observability import Tracing

NOTIFY = {"id": "notify", "steps": [{"function": "tests.api.steps:notify", "id": "notify"}]}


async def test_an_execution_started_by_the_api_is_a_child_of_the_request_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("server")
    async with Flow("memory://", hooks=[Tracing(provider)]) as flow:
        app = create_app(flow)

        async def instrumented(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            name = f"{scope['method']} {scope['path']}"
            with tracer.start_as_current_span(name, kind=SpanKind.SERVER):
                await app(scope, receive, send)

        transport = httpx.ASGITransport(instrumented)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
                saved = await http.put("/api/workflows/notify", json=NOTIFY)
                assert saved.status_code == 200, saved.text
                started = await http.post(
                    "/api/workflows/notify/executions", json={"input": {"order_id": 1}}
                )
                assert started.status_code == 202, started.text
                eid = started.json()["id"]
                await flow.wait(eid, timeout=10)
        finally:
            await app.state.feed.close()
    found = exporter.get_finished_spans()
    (request,) = [s for s in found if s.name == "POST /api/workflows/notify/executions"]
    (execution,) = [s for s in found if s.name == "microsaga.execution"]
    assert request.context is not None
    assert execution.parent is not None
    assert (execution.parent.trace_id, execution.parent.span_id) == (
        request.context.trace_id,
        request.context.span_id,
    )
    assert (execution.attributes or {})["microsaga.execution_id"] == eid
    assert (execution.attributes or {})["microsaga.status"] == "SUCCESS"
