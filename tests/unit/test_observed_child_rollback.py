"""The rollback of a sub-workflow's child, when its parent rolls back, is a compensation
attempt of the SubflowStep to hooks, as any step's compensation is (and as a map's
compensation of its runs): hooks saw the child's own steps undone but nothing of the
parent's step, so traces and metrics had no ``compensate`` phase for it."""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Hook,
    Message,
    Status,
    StepError,
    StepEvent,
    SubflowStep,
    WaitStep,
)
from tests.helpers import eventually

prometheus_client = pytest.importorskip("prometheus_client", reason="the prometheus extra")

from microsaga.observability import Metrics  # noqa: E402


class Steps(Hook):
    """The step attempts hooks are told of: (execution, step, phase, what)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []

    def step_started(self, event: StepEvent) -> None:
        self.seen.append((event.execution_id, event.step_id, str(event.phase), "started"))

    def step_finished(self, event: StepEvent) -> None:
        self.seen.append((event.execution_id, event.step_id, str(event.phase), event.status.name))


async def pay(msg: Message) -> dict[str, bool]:
    return {"paid": True}


async def refund(msg: Message) -> None:
    return None


async def decline(msg: Message) -> None:
    raise StepError("cannot ship")


def _compensations(hook: Steps) -> list[tuple[str, str, str, str]]:
    return [seen for seen in hook.seen if seen[2] == "compensate"]


async def _declined_order(flow: Flow, execution_id: str) -> None:
    """An order whose child payment succeeds, then whose shipping is declined: the
    child is rolled back with the parent."""
    payment = FunctionStep(pay, id="pay", compensate=FunctionStep(refund))
    await flow.workflow_save(await flow.workflow_create("payment", payment))
    wf = await flow.workflow_create(
        "order",
        SubflowStep("payment", id="charge"),
        FunctionStep(decline, id="ship", requires=["charge"]),
    )
    with pytest.raises(ExecutionFailedError):
        await wf.execute({}, execution_id=execution_id)


async def test_a_succeeded_childs_rollback_is_its_steps_compensation(store_url: str) -> None:
    hook, registry = Steps(), prometheus_client.CollectorRegistry()
    async with Flow(store_url, hooks=[hook, Metrics(registry)]) as flow:
        await _declined_order(flow, "o1")
    assert _compensations(hook) == [
        ("o1", "charge", "compensate", "started"),
        ("o1:charge", "pay", "compensate", "started"),
        ("o1:charge", "pay", "compensate", "SUCCESS"),
        ("o1", "charge", "compensate", "SUCCESS"),
    ]
    labels = {"workflow": "order", "step": "charge", "phase": "compensate", "outcome": "success"}
    assert registry.get_sample_value("microsaga_steps_total", labels) == 1
    duration = {"workflow": "order", "step": "charge", "phase": "compensate"}
    assert registry.get_sample_value("microsaga_step_duration_seconds_count", duration) == 1
    for status in ("SUCCESS", "ABORTED"):  # the child ended, then was rolled back
        ended = {"workflow": "payment", "status": status}
        assert registry.get_sample_value("microsaga_executions_finished_total", ended) == 1


async def test_a_given_up_childs_rollback_is_seen_as_the_childs_alone(store_url: str) -> None:
    hook = Steps()
    async with Flow(store_url, hooks=[hook], poll_interval=0.05) as flow:
        payment = [
            FunctionStep(pay, id="pay", compensate=FunctionStep(refund)),
            WaitStep("confirmed", requires=["pay"]),
        ]
        await flow.workflow_save(await flow.workflow_create("payment", *payment))
        wf = await flow.workflow_create("order", SubflowStep("payment", id="charge"))
        await wf.execute({}, execution_id="o2", async_=True)

        async def child_waits() -> bool:
            child = await flow.store.get_execution("o2:charge")
            return child is not None and child.steps["confirmed"].status is Status.WAITING

        await eventually(child_waits)
        await flow.abort("o2")
        assert (await flow.wait("o2", timeout=10)).status is Status.ABORTED
    # a step given up is never compensated: the child's rollback is the child's alone
    assert _compensations(hook) == [
        ("o2:charge", "pay", "compensate", "started"),
        ("o2:charge", "pay", "compensate", "SUCCESS"),
    ]


async def test_a_childs_rollback_has_a_span_of_its_steps_compensation(
    spans: tuple[Any, Any],
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk")
    from microsaga.observability import Tracing

    provider, exporter = spans
    async with Flow("memory://", hooks=[Tracing(tracer_provider=provider)]) as flow:
        await _declined_order(flow, "o3")
    undone = [
        (s.attributes["microsaga.execution_id"], s.attributes["microsaga.step_id"])
        for s in exporter.get_finished_spans()
        if s.name == "microsaga.step" and s.attributes["microsaga.phase"] == "compensate"
    ]
    assert sorted(undone) == [("o3", "charge"), ("o3:charge", "pay")]
