"""Traces, metrics and logs of executions (docs/observability.md).

::

    from microsaga import Flow
    from microsaga.observability import Metrics, Tracing

    async with Flow("sqlite:///orders.db", hooks=[Tracing(), Metrics()]) as flow: ...

- :class:`Tracing` (``pip install 'microsaga[otel]'``): OpenTelemetry spans of
  executions and step attempts, the trace context stored with each execution and
  sent to participants (W3C ``traceparent``), which continue it.
- :class:`Metrics` (``pip install 'microsaga[prometheus]'``): Prometheus counters,
  histograms and gauges of executions, steps and store commits;
  :func:`serve_metrics` serves them.
- :mod:`~microsaga.observability.logs`: the context of log records, JSON lines, and
  secrets kept out of them.

Both are hooks (:class:`microsaga.Hook`); importing this package imports neither
OpenTelemetry nor prometheus-client: making a hook does.
"""

from .logs import JsonFormatter, TextFormatter, configure_logging, redact
from .metrics import Metrics, serve_metrics
from .propagation import outgoing
from .tracing import Tracing

__all__ = [
    "JsonFormatter",
    "Metrics",
    "TextFormatter",
    "Tracing",
    "configure_logging",
    "outgoing",
    "redact",
    "serve_metrics",
]
