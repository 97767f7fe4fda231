"""Traces of executions, checked with the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from microsaga import (
    CallStep,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    PublishStep,
    Retry,
    Status,
    StepError,
)
from microsaga.testing import MemoryBroker, MockClient, arm_fault
from tests.helpers import eventually, trace_ids

pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from microsaga.observability import Tracing

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _steps(found: list[ReadableSpan]) -> list[tuple[str, str, int, StatusCode]]:
    out = []
    for span in sorted(found, key=lambda s: s.start_time or 0):
        if span.name == "microsaga.step":
            attrs = span.attributes or {}
            out.append(
                (
                    str(attrs["microsaga.step_id"]),
                    str(attrs["microsaga.phase"]),
                    int(attrs["microsaga.attempt"]),  # type: ignore[arg-type]
                    span.status.status_code,
                )
            )
    return out


charges: list[int] = []


async def reserve(msg: Message) -> dict[str, str]:
    return {"reservation": "R1"}


async def charge(msg: Message) -> dict[str, str]:
    charges.append(1)
    if len(charges) == 1:
        raise StepError("card network busy", retryable=True)
    return {"payment": "P1"}


async def ship(msg: Message) -> None:
    raise StepError("no courier", retryable=False)


async def undo(msg: Message) -> None:
    return None


async def test_a_saga_with_a_retry_a_failure_and_its_compensation(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    charges.clear()
    async with Flow("memory://", hooks=[Tracing(provider)]) as flow:
        r = FunctionStep(reserve, id="reserve", compensate=FunctionStep(undo, id="release"))
        c = FunctionStep(
            charge,
            id="charge",
            requires=[r],
            retry=Retry(max_attempts=3, initial_interval=0.01, jitter=False),
            compensate=FunctionStep(undo, id="refund"),
        )
        s = FunctionStep(ship, id="ship", requires=[c])
        wf = await flow.workflow_create("order", r, c, s)
        with pytest.raises(ExecutionFailedError) as failed:
            await wf.execute({"order_id": 1})
        stored = await flow.execution(failed.value.execution_id)
    found = list(exporter.get_finished_spans())
    (execution,) = [s for s in found if s.name == "microsaga.execution"]
    assert execution.parent is None  # no incoming context: a root
    assert execution.attributes == {
        "microsaga.workflow_id": "order",
        "microsaga.execution_id": failed.value.execution_id,
        "microsaga.status": "FAILURE",
    }
    assert execution.status.status_code is StatusCode.ERROR
    assert "no courier" in (execution.status.description or "")
    assert [e.attributes for e in execution.events] == [
        {"microsaga.status": "COMPENSATING"},
        {"microsaga.status": "FAILURE"},
    ]
    # the execution's context is stored with it: every step request carries it
    assert stored.request is not None
    ctx = execution.context
    assert ctx is not None
    assert trace_ids(stored.request.header["traceparent"]) == (ctx.trace_id, ctx.span_id)
    steps = [s for s in found if s.name == "microsaga.step"]
    assert all(s.parent is not None and s.parent.span_id == ctx.span_id for s in steps)
    assert all(s.context is not None and s.context.trace_id == ctx.trace_id for s in steps)
    assert _steps(found) == [
        ("reserve", "forward", 1, StatusCode.UNSET),
        ("charge", "forward", 1, StatusCode.ERROR),
        ("charge", "forward", 2, StatusCode.UNSET),
        ("ship", "forward", 1, StatusCode.ERROR),
        ("charge", "compensate", 1, StatusCode.UNSET),
        ("reserve", "compensate", 1, StatusCode.UNSET),
    ]
    by_key = {(s.attributes or {})["microsaga.step_id"]: s for s in steps}
    ship_span = by_key["ship"]
    assert ship_span.attributes is not None
    assert ship_span.attributes["microsaga.workflow_id"] == "order"
    assert ship_span.attributes["microsaga.execution_id"] == failed.value.execution_id
    (event,) = ship_span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert "no courier" in str(event.attributes["exception.message"])
    first, second = sorted(
        (s for s in steps if (s.attributes or {})["microsaga.step_id"] == "charge"
         and (s.attributes or {})["microsaga.phase"] == "forward"),
        key=lambda s: s.start_time or 0,
    )  # fmt: skip
    assert (first.attributes or {})["microsaga.retrying"] is True
    # the backoff is the gap between the two attempts
    assert first.end_time is not None
    assert second.start_time is not None
    assert second.start_time >= first.end_time


async def test_participants_get_the_step_span_and_an_incoming_context_is_the_parent(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    received: list[Message] = []

    def service(name: str, endpoint: str, msg: Message) -> Message:
        received.append(msg)
        return Message({"ok": True})

    broker = MemoryBroker()
    async with Flow(
        "memory://", client=MockClient(service), broker=broker, hooks=[Tracing(provider)]
    ) as flow:
        call = CallStep("inventory", "Inventory", "Reserve")
        publish = PublishStep("shipping.requested", requires=[call])
        wf = await flow.workflow_create("order", call, publish)
        await wf.execute(Message({"order_id": 1}, {"traceparent": TRACEPARENT}))
    found = {s.name + str((s.attributes or {}).get("microsaga.step_id", "")): s for s in
             exporter.get_finished_spans()}  # fmt: skip
    execution = found["microsaga.execution"]
    assert execution.parent is not None
    assert (execution.parent.trace_id, execution.parent.span_id) == (
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
    )
    call_span = found["microsaga.stepinventory.Inventory.Reserve"]
    publish_span = found["microsaga.stepshipping.requested"]
    (request,) = received
    ((topic, published),) = broker.published
    assert topic == "shipping.requested"
    for msg, span in ((request, call_span), (published, publish_span)):
        ctx = span.context
        assert ctx is not None
        (sent,) = msg.header.getall("traceparent")
        assert trace_ids(sent) == (ctx.trace_id, ctx.span_id)


async def test_the_callers_span_parents_the_execution_and_steps_parent_their_spans(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")

    async def looks_up(msg: Message) -> None:
        with tracer.start_as_current_span("lookup"):
            pass

    def looks_up_in_a_thread(msg: Message) -> None:
        with tracer.start_as_current_span("lookup-sync"):
            pass

    async with Flow("memory://", hooks=[Tracing(provider)]) as flow:
        wf = await flow.workflow_create(
            "w",
            FunctionStep(looks_up, id="a"),
            FunctionStep(looks_up_in_a_thread, id="b", requires=["a"]),
        )
        with tracer.start_as_current_span("http request") as outer:
            await wf.execute({})
    found = {s.name: s for s in exporter.get_finished_spans()}
    execution = found["microsaga.execution"]
    assert execution.parent is not None
    assert execution.parent.span_id == outer.get_span_context().span_id
    steps = {(s.attributes or {})["microsaga.step_id"]: s for s in exporter.get_finished_spans()
             if s.name == "microsaga.step"}  # fmt: skip
    for name, step in (("lookup", "a"), ("lookup-sync", "b")):
        parent = found[name].parent
        assert parent is not None
        assert parent.span_id == steps[step].context.span_id  # type: ignore[union-attr]


async def test_without_a_tracer_provider_nothing_is_done_and_a_context_passes_through() -> None:
    received: list[Message] = []

    def service(name: str, endpoint: str, msg: Message) -> Message:
        received.append(msg)
        return Message()

    hook = Tracing(trace.NoOpTracerProvider())
    assert isinstance(hook, Tracing)
    assert not hook.traced  # a no-op provider: the hook listens to nothing
    async with Flow("memory://", client=MockClient(service), hooks=[hook]) as flow:
        wf = await flow.workflow_create("w", CallStep("svc", "S", "M"))
        eid = await wf.execute({})
        plain = await flow.execution(eid)
        await wf.execute(Message({}, {"traceparent": TRACEPARENT}))
    assert plain.request is not None
    assert "traceparent" not in plain.request.header
    assert "traceparent" not in received[0].header
    assert received[1].header.getall("traceparent") == [TRACEPARENT]
    assert not flow.hooks.step_started
    assert not flow.hooks.execution_header


async def test_a_run_taken_over_continues_the_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    arm_fault("step_recorded", "raise")  # the run stops as a crash would, after reserve
    async with Flow("memory://", lease_ttl=0.3, hooks=[Tracing(provider)]) as flow:
        wf = await flow.workflow_create(
            "w", FunctionStep(reserve, id="a"), FunctionStep(undo, id="b", requires=["a"])
        )
        eid = await wf.execute({}, async_=True)
        await flow.settle(eid)
        from microsaga import testing

        testing.disarm_faults()

        async def done() -> bool:
            return (await flow.execution(eid)).status is Status.SUCCESS

        await eventually(done, timeout=20)
    executions = [s for s in exporter.get_finished_spans() if s.name == "microsaga.execution"]
    first, second = sorted(executions, key=lambda s: s.start_time or 0)
    assert first.context is not None
    assert second.context is not None
    assert second.context.trace_id == first.context.trace_id
    assert second.parent is not None
    assert second.parent.span_id == first.context.span_id
    assert (second.attributes or {})["microsaga.taken_over"] is True
    assert (first.attributes or {})["microsaga.status"] == "RUNNING"  # left mid-run
    (b,) = [s for s in exporter.get_finished_spans() if (s.attributes or {}).get(
        "microsaga.step_id") == "b"]  # fmt: skip
    assert b.parent is not None
    assert b.parent.span_id == second.context.span_id


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_observability_hooks_neither_library_is_imported() -> None:
    done = _python(
        """
        import asyncio, sys
        from microsaga import Flow, FunctionStep
        import microsaga.observability, microsaga.participant, microsaga.cli

        async def a(msg):
            return {"a": 1}

        async def main():
            async with Flow("memory://") as flow:
                wf = await flow.workflow_create("w", FunctionStep(a))
                await wf.execute({})

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "prometheus"))))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_hooks_name_the_extra_when_the_library_is_missing() -> None:
    done = _python(
        """
        import sys

        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
                    raise ImportError(name)
                return None

        sys.meta_path.insert(0, Missing())
        from microsaga import ConfigurationError
        from microsaga.observability import Metrics, Tracing
        for hook in (Tracing, Metrics):
            try:
                hook()
            except ConfigurationError as exc:
                print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'microsaga[otel]'" in done.stdout
    assert "pip install 'microsaga[prometheus]'" in done.stdout
