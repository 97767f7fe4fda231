"""Prometheus metrics of executions, read back with prometheus-client's parser."""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    Status,
    StepError,
)
from microsaga.testing import arm_fault, disarm_faults
from tests.helpers import eventually

prometheus_client = pytest.importorskip("prometheus_client", reason="the prometheus extra")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from microsaga.observability import Metrics  # noqa: E402
from microsaga.observability import metrics as metrics_module  # noqa: E402

SERIES = {
    "microsaga_executions_started": ("counter", {"workflow"}),
    "microsaga_executions_finished": ("counter", {"workflow", "status"}),
    "microsaga_steps": ("counter", {"workflow", "step", "phase", "outcome"}),
    "microsaga_step_duration_seconds": ("histogram", {"workflow", "step", "phase"}),
    "microsaga_execution_duration_seconds": ("histogram", {"workflow", "status"}),
    "microsaga_executions_running": ("gauge", set()),
    "microsaga_steps_waiting": ("gauge", set()),
    "microsaga_store_commit_seconds": ("histogram", set()),
    "microsaga_store_batch_size": ("histogram", set()),
    "microsaga_lease_takeovers": ("counter", set()),
}


def scrape(registry: Any) -> dict[str, Any]:
    text = prometheus_client.generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    family = families[name]
    wanted = name + (suffix or ("_total" if family.type == "counter" else ""))
    return sum(
        s.value
        for s in family.samples
        if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items())
    )


tries: list[int] = []


async def ok(msg: Message) -> dict[str, int]:
    return {"ok": 1}


async def flaky(msg: Message) -> dict[str, int]:
    tries.append(1)
    if len(tries) % 2:
        raise StepError("busy", retryable=True)
    return {"ok": 2}


async def broken(msg: Message) -> None:
    raise StepError("no", retryable=False)


async def undo(msg: Message) -> None:
    return None


async def test_executions_of_each_outcome_in_the_series_of_the_spec() -> None:
    registry = prometheus_client.CollectorRegistry()
    tries.clear()
    async with Flow("memory://", hooks=[Metrics(registry)]) as flow:
        a = FunctionStep(ok, id="a", compensate=FunctionStep(undo))
        b = FunctionStep(
            flaky, id="b", requires=[a], retry=Retry(max_attempts=2, initial_interval=0)
        )
        good = await flow.workflow_create("good", a, b)
        await good.execute({})
        await good.execute({})
        c = FunctionStep(ok, id="c", compensate=FunctionStep(undo))
        d = FunctionStep(broken, id="d", requires=[c])
        bad = await flow.workflow_create("bad", c, d)
        with pytest.raises(ExecutionFailedError):
            await bad.execute({})
        e = FunctionStep(broken, id="e", fallback=FunctionStep(ok, id="e-fallback"))
        saved = await flow.workflow_create("saved", e)
        await saved.execute({})
        eid = await good.execute({}, async_=True)
        await flow.suspend(eid)
        await flow.settle(eid)
        await flow.abort(eid)
        await flow.wait(eid, timeout=10)
    families = scrape(registry)
    for name, (kind, labels) in SERIES.items():
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    assert value(families, "microsaga_executions_started", workflow="good") == 3
    assert value(families, "microsaga_executions_finished", workflow="good", status="SUCCESS") == 2
    assert value(families, "microsaga_executions_finished", workflow="good", status="ABORTED") == 1
    assert value(families, "microsaga_executions_finished", workflow="bad", status="FAILURE") == 1
    assert value(families, "microsaga_executions_finished", workflow="saved", status="SUCCESS") == 1
    steps = "microsaga_steps"
    assert value(families, steps, workflow="good", step="b", outcome="retry") == 2
    assert value(families, steps, workflow="good", step="b", outcome="success") == 2
    assert value(families, steps, workflow="bad", step="d", outcome="failure") == 1
    assert value(families, steps, workflow="bad", step="c", phase="compensate") == 1
    assert value(families, steps, workflow="saved", step="e", outcome="fallback") == 1
    # a histogram's count is the attempts it timed
    assert (
        value(families, "microsaga_step_duration_seconds", "_count", workflow="good", step="b") == 4
    )
    assert value(families, "microsaga_execution_duration_seconds", "_count", workflow="good") == 3
    assert value(families, "microsaga_executions_running") == 0
    assert value(families, "microsaga_lease_takeovers") == 0
    # the memory store commits each unit alone
    assert value(families, "microsaga_store_batch_size", "_count") > 0
    assert value(families, "microsaga_store_commit_seconds", "_count") == value(
        families, "microsaga_store_batch_size", "_count"
    )
    text = prometheus_client.generate_latest(registry).decode()
    assert eid not in text  # never an execution id in a label


async def test_a_run_taken_over_mid_run_counts_as_a_lease_takeover() -> None:
    registry = prometheus_client.CollectorRegistry()
    arm_fault("step_recorded", "raise")  # the run stops as a crash would
    async with Flow("memory://", lease_ttl=0.3, hooks=[Metrics(registry)]) as flow:
        wf = await flow.workflow_create(
            "w", FunctionStep(ok, id="a"), FunctionStep(undo, id="b", requires=["a"])
        )
        eid = await wf.execute({}, async_=True)
        await flow.settle(eid)
        disarm_faults()

        async def done() -> bool:
            return (await flow.execution(eid)).status is Status.SUCCESS

        await eventually(done, timeout=20)
        resumed = await wf.execute({}, async_=True)
        await flow.suspend(resumed)
        await flow.settle(resumed)
        await flow.resume(resumed)  # taken up again, but nothing was interrupted
        await flow.wait(resumed, timeout=10)
    families = scrape(registry)
    assert value(families, "microsaga_lease_takeovers") == 1
    assert value(families, "microsaga_executions_running") == 0


async def test_labels_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = prometheus_client.CollectorRegistry()
    monkeypatch.setattr(metrics_module, "MAX_LABEL_SETS", 3)
    hook = Metrics(registry)
    from microsaga import Phase, StepEvent

    for i in range(10):
        for status in (Status.RUNNING, Status.SUCCESS):
            event = StepEvent(
                execution_id=f"e{i}",
                workflow_id=f"w{i}",
                step_id=f"items[{i}]",
                phase=Phase.FORWARD,
                attempt=1,
                status=status,
                at=float(i),
            )
            (hook.step_started if status is Status.RUNNING else hook.step_finished)(event)
    families = scrape(registry)
    workflows = {s.labels["workflow"] for s in families["microsaga_steps"].samples}
    steps = {s.labels["step"] for s in families["microsaga_steps"].samples}
    assert workflows == {"w0", "w1", "w2", "_other"}
    assert steps == {"items[]", "_other"}  # a map step's runs count as one step


def test_hooks_on_one_registry_share_its_series() -> None:
    registry = prometheus_client.CollectorRegistry()
    Metrics(registry)
    Metrics(registry)  # no "Duplicated timeseries"
