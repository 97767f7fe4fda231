"""OpenTelemetry traces of executions: the :class:`Tracing` hook.

The spans (docs/observability.md draws the tree):

- ``microsaga.execution``: one per execution in each process that runs it. The one
  the creating process starts is a child of the ``traceparent`` in the execution's
  request header, else of the caller's current span, else a root; its context is
  stored in the request header (``traceparent``, ``tracestate``), so that every
  step request carries it and a worker that takes the execution over (after a
  crash, a suspend, a lost lease) continues the same trace: its own
  ``microsaga.execution`` span is a child of the stored one, marked
  ``microsaga.taken_over``. The span ends when this process stops running the
  execution, with error status when the execution ended FAILURE.
- ``microsaga.step``: one per attempt of a step or of its compensation, a child of
  the execution span, current while the attempt runs, so that the request a
  ``CallStep`` or ``PublishStep`` sends carries its context (see
  :func:`~microsaga.observability.propagation.outgoing`) and spans made by a
  function step are its children. Error status and an ``exception`` event when the
  attempt failed; the gap between two attempts is the retry's backoff.

Attributes: ``microsaga.workflow_id``, ``microsaga.execution_id`` on both;
``microsaga.step_id``, ``microsaga.attempt``, ``microsaga.phase`` (``forward`` or
``compensate``) on steps; ``microsaga.status`` (the status name) on an execution span
when it ends.

With no tracer provider configured, OpenTelemetry's no-op tracer makes no span, and
an execution without a parent context costs one dictionary look-up per hook call.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..hooks import ExecutionEvent, Hook, StepEvent
from ..message import Metadata
from ..status import Status
from . import propagation
from ._events import fallback_used

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["Tracing", "participant_failed", "participant_span", "participant_tracer"]

log = logging.getLogger("microsaga.observability")

_PENDING_MAX = 4096  # spans of executions asked for but not (yet) created


def _otel() -> Any:
    try:
        import opentelemetry.trace  # noqa: F401
        from opentelemetry import context, propagate, trace
    except ImportError:
        from ..errors import ConfigurationError

        raise ConfigurationError(
            "tracing", "needs OpenTelemetry: pip install 'microsaga[otel]'"
        ) from None
    return context, propagate, trace


def _version() -> str:
    from .. import __version__

    return __version__


class Tracing(Hook):
    """Traces executions with OpenTelemetry: ``Flow(hooks=[Tracing()])``.

    Args:
        tracer_provider: where spans go; the global one by default (set by your
            OpenTelemetry SDK setup, or ``opentelemetry-instrument``).

    Making one also makes the requests of every ``CallStep`` and ``PublishStep`` of
    the process carry the current trace context (W3C ``traceparent``).

    The provider is looked at when the hook is made: with none configured (nor
    passed), OpenTelemetry's no-op tracer would make no span, and the hook listens to
    nothing, at no cost (``traced`` is False; a ``traceparent`` in an execution's
    request header still reaches its participants, as any header does). So configure
    OpenTelemetry first (``opentelemetry-instrument`` does it before your code runs).

    Raises:
        ConfigurationError: OpenTelemetry is not installed (``microsaga[otel]``).
    """

    traced = True

    def __new__(cls, tracer_provider: TracerProvider | None = None) -> Tracing:
        if cls is Tracing and not _configured(tracer_provider):
            return super().__new__(_Untraced)
        return super().__new__(cls)

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        context, propagate, trace = _otel()
        self._context = context
        self._propagate = propagate
        self._trace = trace
        self._tracer = trace.get_tracer("microsaga", _version(), tracer_provider=tracer_provider)
        # the execution span of each execution this process runs, by execution id
        self._executions: dict[str, Span] = {}
        # the status of each of those last added as an event: a change is told to
        # hooks more than once (by the request, by the run that obeys it)
        self._statuses: dict[str, Status] = {}
        # spans started for executions asked for, until their creation is committed
        self._pending: OrderedDict[str, Span] = OrderedDict()
        # the span of each attempt running, with the token of its attached context
        self._steps: dict[tuple[str, str, int], tuple[Span, object]] = {}
        propagation.install(propagate.inject)

    # executions -------------------------------------------------------------------

    def execution_header(self, event: ExecutionEvent) -> Mapping[str, str] | None:
        span = self._start(event)
        if span is None:
            return None
        found = span.get_span_context()
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
        self._pending[format(found.span_id, "016x")] = span
        if len(self._pending) > _PENDING_MAX:  # executions whose id existed already
            self._pending.popitem(last=False)
        return carrier

    def execution_created(self, event: ExecutionEvent) -> None:
        span = self._pending_span(event)
        if span is None:
            if event.status is Status.PENDING:  # a worker's span will continue the trace
                return
            # started without asking the hooks for a header (a child execution, a
            # redrive): a span of its own, in the trace of the context in its request
            span = self._start(event)
            if span is None:
                return
        span.set_attribute("microsaga.execution_id", event.execution_id)
        if event.status is Status.PENDING:  # a worker elsewhere runs it
            span.set_attribute("microsaga.status", event.status.name)
            span.end()
        else:
            self._executions[event.execution_id] = span

    def _start(self, event: ExecutionEvent) -> Span | None:
        """The span of a new execution: a child of the ``traceparent`` in its request
        header, else of the current span, else a root; None when none is made."""
        parent = self._context.get_current()
        if event.request is not None and "traceparent" in event.request.header:
            parent = self._propagate.extract(event.request.header, context=parent)
        span = self._tracer.start_span(
            "microsaga.execution",
            context=parent,
            attributes={"microsaga.workflow_id": event.workflow_id},
        )
        return span if span.get_span_context().is_valid else None

    def _pending_span(self, event: ExecutionEvent) -> Span | None:
        if not self._pending or event.request is None:
            return None
        parent = event.request.header.get("traceparent")
        if not isinstance(parent, str) or len(parent) < 52:
            return None
        return self._pending.pop(parent[36:52], None)

    def run_started(self, event: ExecutionEvent) -> None:
        if not event.taken_over or event.execution_id in self._executions:
            return
        header = event.request.header if event.request is not None else Metadata()
        # the stored context: the span of the process that started the execution
        parent = self._propagate.extract(header, context=self._context.Context())
        span = self._tracer.start_span(
            "microsaga.execution",
            context=parent,
            attributes={
                "microsaga.workflow_id": event.workflow_id,
                "microsaga.execution_id": event.execution_id,
                "microsaga.taken_over": True,
            },
        )
        if span.get_span_context().is_valid:
            self._executions[event.execution_id] = span

    def execution_status(self, event: ExecutionEvent) -> None:
        span = self._executions.get(event.execution_id)
        if span is not None and self._statuses.get(event.execution_id) is not event.status:
            self._statuses[event.execution_id] = event.status
            span.add_event("microsaga.status", {"microsaga.status": event.status.name})

    def run_stopped(self, event: ExecutionEvent) -> None:
        eid = event.execution_id
        span = self._executions.pop(eid, None)
        self._statuses.pop(eid, None)
        if self._steps:
            # attempts cut short (the run lost its lease, was cancelled): their tasks
            # are gone, and their contexts with them
            for key in [key for key in self._steps if key[0] == eid]:
                step, _ = self._steps.pop(key)
                step.set_attribute("microsaga.interrupted", True)
                step.end()
        if span is None:
            return
        span.set_attribute("microsaga.status", event.status.name)
        if event.status is Status.FAILURE:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, event.error))
        span.end()

    # steps ------------------------------------------------------------------------

    def step_started(self, event: StepEvent) -> None:
        parent = self._executions.get(event.execution_id)
        if parent is None:
            return
        set_span = self._trace.set_span_in_context
        span = self._tracer.start_span(
            "microsaga.step",
            context=set_span(parent),
            attributes={
                "microsaga.workflow_id": event.workflow_id,
                "microsaga.execution_id": event.execution_id,
                "microsaga.step_id": event.step_id,
                "microsaga.attempt": event.attempt,
                "microsaga.phase": str(event.phase),
            },
        )
        token = self._context.attach(set_span(span))
        self._steps[event.execution_id, event.step_id, event.phase] = (span, token)

    def step_finished(self, event: StepEvent) -> None:
        found = self._steps.pop((event.execution_id, event.step_id, event.phase), None)
        if found is None:
            return
        span, token = found
        self._context.detach(token)
        if event.status is Status.FAILURE:
            error = event.error or "failed"
            span.add_event("exception", _exception_attributes(error))
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
            if event.retrying:
                span.set_attribute("microsaga.retrying", True)
        elif fallback_used(event.error):
            span.add_event("microsaga.fallback", {"exception.message": event.error})
        span.end()


def _configured(tracer_provider: TracerProvider | None) -> bool:
    """Whether spans would be made: a provider given or set globally, not a no-op."""
    _, _, trace = _otel()
    found = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    return not isinstance(found, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class _Untraced(Tracing):
    """``Tracing()`` with no tracer provider: listens to nothing (see :class:`Tracing`)."""

    traced = False
    execution_header = Hook.execution_header
    execution_created = Hook.execution_created
    run_started = Hook.run_started
    execution_status = Hook.execution_status
    run_stopped = Hook.run_stopped
    step_started = Hook.step_started
    step_finished = Hook.step_finished

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        pass


def _exception_attributes(error: str) -> dict[str, str]:
    """The ``exception`` event's attributes from a step's one-line error
    (``"TypeError: ..."`` for an exception that is not microsaga's)."""
    kind, sep, _ = error.partition(": ")
    if sep and kind.isidentifier():
        return {"exception.type": kind, "exception.message": error}
    return {"exception.message": error}


# participants -----------------------------------------------------------------------


def participant_tracer(tracer_provider: TracerProvider | None = None) -> Any:
    """The tracer of participants' handler spans (from ``tracer_provider``, else the
    global one); None when OpenTelemetry is not installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("microsaga.participant", _version(), tracer_provider=tracer_provider)


@contextmanager
def participant_span(tracer: Any, name: str, header: Metadata, *, kind: str) -> Iterator[Span]:
    """The span of a participant's handler, a child of the step span whose context
    came in the request's ``header``, current while the handler runs (so that the
    handler's own spans are its children).

    ``tracer``: from :func:`participant_tracer`; ``kind``: ``"server"`` (HTTP) or
    ``"consumer"`` (a broker).
    """
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(header)
    span_kind = trace.SpanKind.SERVER if kind == "server" else trace.SpanKind.CONSUMER
    attributes = {"microsaga.handler": name}
    for attribute, key in (
        ("microsaga.workflow_id", "Micro-Flow-Workflow"),
        ("microsaga.execution_id", "Micro-Flow-Execution"),
        ("microsaga.step_id", "Micro-Flow-Step"),
    ):
        value = header.get(key)
        if isinstance(value, str):
            attributes[attribute] = value
    span = tracer.start_span(name, context=parent, kind=span_kind, attributes=attributes)
    token = context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    finally:
        context.detach(token)
        span.end()


def participant_failed(span: Span | None, exc: BaseException) -> None:
    """Mark a participant's span failed by ``exc`` (its handler raised)."""
    if span is None:
        return
    from opentelemetry import trace

    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
