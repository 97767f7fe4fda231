"""A map step's runs are step attempts to metrics and traces (docs/observability.md:
"the runs of a map step (``items[3]``) count under ``items[]``"), and the map step
itself a step that ends once.
"""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Hook,
    MapStep,
    Message,
    Retry,
    Status,
    StepEvent,
)

prometheus_client = pytest.importorskip("prometheus_client", reason="the prometheus extra")
pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from microsaga.observability import Metrics, Tracing  # noqa: E402
from microsaga.testing import FaultError, arm_fault, disarm_faults  # noqa: E402
from tests.helpers import eventually  # noqa: E402


async def reserve(msg: Message) -> dict[str, int]:
    return {"reserved": msg.json()}


def _map() -> MapStep:
    return MapStep(FunctionStep(reserve, id="item"), id="items", over="request.items")


async def test_the_runs_of_a_map_step_count_under_one_label() -> None:
    registry = prometheus_client.CollectorRegistry()
    async with Flow("memory://", hooks=[Metrics(registry)]) as flow:
        wf = await flow.workflow_create("stock", _map())
        await wf.execute({"items": [1, 2, 3]})
    steps = {
        (s.labels["step"], s.labels["outcome"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "microsaga_steps_total"
    }
    assert steps.get(("items[]", "success")) == 3
    assert steps.get(("items", "success")) == 1


async def test_the_runs_of_a_map_step_are_spans(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    async with Flow("memory://", hooks=[Tracing(provider)]) as flow:
        wf = await flow.workflow_create("stock", _map())
        await wf.execute({"items": [1, 2]})
    steps = {
        (s.attributes or {}).get("microsaga.step_id")
        for s in exporter.get_finished_spans()
        if s.name == "microsaga.step"
    }
    assert {"items[0]", "items[1]"} <= steps


AGAIN = Retry(max_attempts=2, initial_interval=0.0, jitter=False)


def _steps_total(registry: Any) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["step"], s.labels["phase"], s.labels["outcome"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "microsaga_steps_total"
    }


class Pairs(Hook):
    """Each attempt started, and each one finished, as (step, phase, attempt)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str, int]] = []
        self.finished: list[tuple[str, str, int, str, bool]] = []

    def step_started(self, event: StepEvent) -> None:
        self.started.append((event.step_id, str(event.phase), event.attempt))

    def step_finished(self, event: StepEvent) -> None:
        self.finished.append(
            (event.step_id, str(event.phase), event.attempt, event.status.name, event.retrying)
        )


async def test_a_retried_run_counts_its_attempts() -> None:
    tried: set[int] = set()

    async def flaky(msg: Message) -> int:
        n = msg.json()
        if n == 2 and n not in tried:
            tried.add(n)
            raise RuntimeError("not yet")
        return int(n)

    registry = prometheus_client.CollectorRegistry()
    pairs = Pairs()
    step = MapStep(FunctionStep(flaky, id="item", retry=AGAIN), id="items", over="request")
    async with Flow("memory://", hooks=[Metrics(registry), pairs]) as flow:
        wf = await flow.workflow_create("stock", step)
        eid = await wf.execute([1, 2, 3])
        assert (await flow.execution(eid)).status.name == "SUCCESS"
    steps = _steps_total(registry)
    assert steps[("items[]", "forward", "success")] == 3
    assert steps[("items[]", "forward", "retry")] == 1
    assert ("items[1]", "forward", 1, "FAILURE", True) in pairs.finished
    assert ("items[1]", "forward", 2, "SUCCESS", False) in pairs.finished
    assert sorted(pairs.started) == sorted(f[:3] for f in pairs.finished)


async def test_the_compensations_of_runs_count_under_one_label() -> None:
    async def undo(msg: Message) -> None:
        return None

    async def fail(msg: Message) -> None:
        raise RuntimeError("no stock")

    registry = prometheus_client.CollectorRegistry()
    pairs = Pairs()
    inner = FunctionStep(reserve, id="item", compensate=FunctionStep(undo, id="undo"))
    items = MapStep(inner, id="items", over="request.items")
    async with Flow("memory://", hooks=[Metrics(registry), pairs]) as flow:
        wf = await flow.workflow_create(
            "stock", items, FunctionStep(fail, id="ship", requires=("items",))
        )
        with pytest.raises(ExecutionFailedError):
            await wf.execute({"items": [1, 2, 3]})
    steps = _steps_total(registry)
    assert steps[("items[]", "forward", "success")] == 3
    assert steps[("items[]", "compensate", "success")] == 3
    assert steps[("items", "forward", "success")] == 1
    assert steps[("items", "compensate", "success")] == 1
    assert sorted(pairs.started) == sorted(f[:3] for f in pairs.finished)


async def test_a_failed_run_fails_the_map_step_in_metrics() -> None:
    async def bad(msg: Message) -> None:
        if msg.json() == 1:
            raise RuntimeError("broken")

    registry = prometheus_client.CollectorRegistry()
    async with Flow("memory://", hooks=[Metrics(registry)]) as flow:
        wf = await flow.workflow_create(
            "stock", MapStep(FunctionStep(bad, id="i"), id="m", over="request")
        )
        with pytest.raises(ExecutionFailedError):
            await wf.execute([0, 1])
    steps = _steps_total(registry)
    assert steps[("m[]", "forward", "failure")] == 1
    assert steps[("m", "forward", "failure")] == 1


async def test_a_fault_point_at_a_runs_start_stops_the_run_as_a_crash() -> None:
    starts: list[int] = []

    def second() -> None:  # the map step starts first, then its first run
        starts.append(1)
        if len(starts) == 2:
            raise FaultError("fault point step_started")

    arm_fault("step_started", second)
    try:
        async with Flow("memory://", lease_ttl=0.3, poll_interval=0.05) as flow:
            wf = await flow.workflow_create("stock", _map())
            eid = await wf.execute({"items": [1, 2]}, async_=True)

            async def finished() -> bool:
                return (await flow.execution(eid)).status.finished

            await eventually(finished, timeout=20)
            info = await flow.execution(eid)
    finally:
        disarm_faults()
    assert len(starts) > 2  # taken over: the map started again
    assert info.status is Status.SUCCESS  # recovered, not a failed map
