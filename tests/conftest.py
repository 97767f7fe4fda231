"""Shared test set-up: every test starts with a clean environment and no armed faults."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from microsaga import testing


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's MICROSAGA_* settings."""
    for name in list(os.environ):
        if name.startswith("MICROSAGA_"):
            monkeypatch.delenv(name)
    yield
    testing.disarm_faults()


@pytest.fixture
def spans() -> Iterator[tuple[Any, Any]]:
    """An OpenTelemetry SDK ``TracerProvider`` whose spans end in an in-memory exporter:
    ``(provider, exporter)``."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()
