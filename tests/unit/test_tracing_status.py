"""Execution and step spans as docs/observability.md describes them: one
``microsaga.status`` event per status change, a custom step's own request, a retried
attempt, and a flow that runs nothing handing the trace to a worker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    Status,
    StepError,
    SubflowStep,
)

pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from microsaga.observability import Tracing, outgoing


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


sent: list[Message] = []
raised: list[int] = []


async def notify(msg: Message) -> None:
    """A step that sends a request itself (a client of its own, say)."""
    sent.append(outgoing(Message(b'{"to": "customer"}')))


async def picky(msg: Message) -> None:
    raised.append(1)
    if len(raised) == 1:
        raise ValueError("bad address")  # not microsaga's: retried


async def deliver(msg: Message) -> None:
    return None


async def test_a_custom_steps_own_request_carries_its_attempts_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    sent.clear()
    raised.clear()
    async with Flow("memory://", hooks=[Tracing(provider)]) as flow:
        wf = await flow.workflow_create(
            "order",
            FunctionStep(notify, id="notify"),
            FunctionStep(picky, id="label", retry=Retry(max_attempts=2, initial_interval=0)),
        )
        await wf.execute({})
    found = exporter.get_finished_spans()
    (step,) = [s for s in found if (s.attributes or {}).get("microsaga.step_id") == "notify"]
    assert step.context is not None
    (message,) = sent
    _, trace_id, span_id, _ = message.header["traceparent"].split("-")
    assert (int(trace_id, 16), int(span_id, 16)) == (step.context.trace_id, step.context.span_id)
    first, second = sorted(
        (s for s in found if (s.attributes or {}).get("microsaga.step_id") == "label"),
        key=lambda s: s.start_time or 0,
    )
    assert (first.attributes or {})["microsaga.retrying"] is True
    assert first.status.status_code is StatusCode.ERROR
    (event,) = first.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "ValueError"
    assert "bad address" in str((event.attributes or {})["exception.message"])
    assert (second.attributes or {})["microsaga.attempt"] == 2
    assert second.status.status_code is StatusCode.UNSET
    assert "microsaga.retrying" not in (second.attributes or {})


async def test_a_flow_that_runs_nothing_ends_its_span_and_the_worker_continues_it(
    spans: tuple[TracerProvider, InMemorySpanExporter], tmp_path: object
) -> None:
    provider, exporter = spans
    url = f"sqlite:///{tmp_path}/handoff.db"
    tracer = provider.get_tracer("shop")
    with tracer.start_as_current_span("POST /orders") as request_span:
        async with Flow(url, worker=False, hooks=[Tracing(provider)]) as front:
            wf = await front.workflow_create("order", FunctionStep(deliver, id="ship"))
            eid = await wf.execute({}, async_=True)
    (stored,) = [s for s in exporter.get_finished_spans() if s.name == "microsaga.execution"]
    assert (stored.attributes or {})["microsaga.status"] == "PENDING"  # ended once stored
    assert stored.parent is not None
    assert stored.parent.span_id == request_span.get_span_context().span_id
    async with Flow(url, hooks=[Tracing(provider)]) as worker:
        await worker.workflow_create("order", FunctionStep(deliver, id="ship"))
        assert (await worker.wait(eid, timeout=20)).status is Status.SUCCESS
    ran = [s for s in exporter.get_finished_spans() if s.name == "microsaga.execution"][1:]
    (taken,) = ran
    assert stored.context is not None
    assert taken.parent is not None
    assert (taken.parent.trace_id, taken.parent.span_id) == (
        stored.context.trace_id,
        stored.context.span_id,
    )
    assert (taken.attributes or {})["microsaga.taken_over"] is True


def _execution_span(spans: Sequence[ReadableSpan], eid: str) -> ReadableSpan:
    (found,) = [
        s
        for s in spans
        if s.name == "microsaga.execution"
        and (s.attributes or {}).get("microsaga.execution_id") == eid
    ]
    return found


def _step_spans(spans: Sequence[ReadableSpan], eid: str) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.name == "microsaga.step" and (s.attributes or {}).get("microsaga.execution_id") == eid
    ]


declines: list[int] = []


async def decline_once(msg: Message) -> dict[str, int]:
    declines.append(1)
    if len(declines) == 1:
        raise StepError("declined", retryable=False)
    return {"payment": 1}


async def test_a_child_execution_and_a_redrive_are_traced_in_the_trace_they_came_from(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    declines.clear()
    async with Flow("memory://", hooks=[Tracing(provider)]) as flow:
        await flow.workflow_save(
            await flow.workflow_create("payment", FunctionStep(deliver, id="charge"))
        )
        wf = await flow.workflow_create(
            "order", FunctionStep(deliver, id="reserve"), SubflowStep("payment", id="pay")
        )
        parent = await wf.execute({})
        child = (await flow.execution(parent)).steps["pay"]
        assert child.status is Status.SUCCESS
        failing = await flow.workflow_create("retry", FunctionStep(decline_once, id="pay"))
        with pytest.raises(ExecutionFailedError) as failed:
            await failing.execute({})
        again = await flow.redrive(failed.value.execution_id)
        assert (await flow.wait(again, timeout=10)).status is Status.SUCCESS
        # the context stored with each (read back by a worker that takes it over)
        stored = {
            eid: (await flow.execution(eid)).request.header.get("traceparent")
            for eid in (f"{parent}:pay", again)
        }
    found = exporter.get_finished_spans()

    top = _execution_span(found, parent)
    assert top.context is not None
    kid = _execution_span(found, f"{parent}:pay")  # the child's id (SPEC section 8)
    assert kid.context is not None
    assert kid.context.trace_id == top.context.trace_id
    assert kid.parent is not None
    assert kid.parent.span_id == top.context.span_id  # the context its request carries
    assert (kid.attributes or {})["microsaga.workflow_id"] == "payment"
    (charge,) = _step_spans(found, f"{parent}:pay")
    assert charge.parent is not None
    assert charge.parent.span_id == kid.context.span_id
    kid_context = f"00-{kid.context.trace_id:032x}-{kid.context.span_id:016x}-"
    assert (stored[f"{parent}:pay"] or "").startswith(kid_context)

    first = _execution_span(found, failed.value.execution_id)
    second = _execution_span(found, again)
    assert first.context is not None
    assert second.context is not None
    assert second.context.trace_id == first.context.trace_id
    assert (second.attributes or {})["microsaga.status"] == "SUCCESS"
    (pay,) = _step_spans(found, again)
    assert pay.parent is not None
    assert pay.parent.span_id == second.context.span_id
    again_context = f"00-{second.context.trace_id:032x}-{second.context.span_id:016x}-"
    assert (stored[again] or "").startswith(again_context)
