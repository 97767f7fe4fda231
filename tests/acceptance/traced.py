"""``python -m tests.acceptance.traced ARGS``: the microsaga CLI with an OpenTelemetry
SDK whose spans go, as each ends, to the JSON-lines file named by
``MICROSAGA_TEST_SPANS`` (one object a span), so that a test can read the spans of a
process even after it was killed."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLines(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as fh:
            for span in spans:
                assert span.context is not None
                fh.write(json.dumps(span_dict(span)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return SpanExportResult.SUCCESS


def span_dict(span: ReadableSpan) -> dict[str, object]:
    assert span.context is not None
    return {
        "name": span.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


def main() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(os.environ["MICROSAGA_TEST_SPANS"])))
    trace.set_tracer_provider(provider)
    from microsaga.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
