"""``/metrics`` serves the flow's metrics, parsed with prometheus-client's parser after
executions of each outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from microsaga import Flow
from microsaga.api import create_app

from . import steps
from .conftest import Client, client_for

prometheus_client = pytest.importorskip("prometheus_client", reason="the prometheus extra")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from microsaga.observability import Metrics  # noqa: E402


@pytest.fixture
async def metered() -> AsyncIterator[tuple[Client, Flow]]:
    registry = prometheus_client.CollectorRegistry()
    async with Flow("memory://", poll_interval=0.05, hooks=[Metrics(registry)]) as flow:
        client_of = client_for(create_app(flow))
        async with client_of as client:
            saved = await client.put("/api/workflows/order", json=steps.ORDER)
            assert saved.status_code == 200, saved.text
            yield client, flow


async def test_metrics_route_serves_the_flows_series(metered: tuple[Client, Flow]) -> None:
    client, flow = metered
    ok = await client.start({"order_id": 1})
    failed = await client.start({"order_id": 2, "fail": True})
    for eid in (ok, failed):
        await flow.wait(eid, timeout=10)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    finished = {
        s.labels["status"]: s.value
        for s in families["microsaga_executions_finished"].samples
        if s.name == "microsaga_executions_finished_total"
    }
    assert finished == {"SUCCESS": 1.0, "FAILURE": 1.0}
    started = families["microsaga_executions_started"].samples
    assert [(s.labels, s.value) for s in started if s.name.endswith("_total")] == [
        ({"workflow": "order"}, 2.0)
    ]
    assert families["microsaga_step_duration_seconds"].type == "histogram"
    assert ok not in response.text
    assert failed not in response.text


async def test_an_app_over_a_flow_without_metrics_adds_them() -> None:
    async with Flow("memory://") as flow:
        create_app(flow)
        assert any(isinstance(hook, Metrics) for hook in flow.hooks)
        registry = next(h.registry for h in flow.hooks if isinstance(h, Metrics))
        assert registry is prometheus_client.REGISTRY
