"""Logs: what a record about an execution carries, JSON lines, and no secrets.

microsaga logs under the ``microsaga`` logger (``microsaga.run``,
``microsaga.worker``, ``microsaga.store``, ``microsaga.participant`` ...). Every
record about an execution has ``execution_id``, ``workflow_id`` and ``step_id``
attributes (``extra``; ``step_id`` None when it is about no step in particular, and
``workflow_id`` None when the logger does not know it).

:class:`JsonFormatter` writes a record as one JSON object; :class:`TextFormatter`
as the CLI's one line. Both pass what they write through :func:`redact`: passwords
in URLs, ``Bearer``/``Basic`` credentials, ``password=``/``token=`` values and the
secrets registered with :func:`add_secret` (the API token of ``microsaga serve``)
become ``***``. :func:`configure_logging` is what ``microsaga --log-format json``
does.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "about",
    "about_request",
    "add_secret",
    "configure_logging",
    "redact",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def about(
    execution_id: str, workflow_id: str | None = None, step_id: str | None = None
) -> dict[str, str | None]:
    """The ``extra`` of a record about an execution (and one of its steps)."""
    return {"execution_id": execution_id, "workflow_id": workflow_id, "step_id": step_id}


def about_request(header: Mapping[str, str]) -> dict[str, str | None]:
    """The ``extra`` of a record about a step request (its ``Micro-Flow-*`` headers),
    for transports and participants; empty ids are None."""
    return about(
        header.get("Micro-Flow-Execution") or "",
        header.get("Micro-Flow-Workflow"),
        header.get("Micro-Flow-Step"),
    )


# secrets -------------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*):[^\s/?#@]+@")
_CREDENTIALS = re.compile(r"(?i)\b(?P<head>bearer|basic)(?P<gap>\s+|%20)[A-Za-z0-9._~+/=:-]+")
_PARAMETER = re.compile(
    r"(?i)(?P<head>\b(?:password|passwd|pwd|token|access_token|api_key|apikey|secret|"
    r"client_secret)(?:\"|')?\s*[=:]\s*(?:\"|')?)(?P<value>[^\s&\"',;}]+)"
)
_secrets: set[str] = set()


def add_secret(secret: str) -> None:
    """Never write ``secret`` in a log line (an API token, say): it becomes ``***``."""
    if secret and len(secret) >= 4:
        _secrets.add(secret)


def redact(text: str) -> str:
    """``text`` without the secrets it may hold (see the module docstring)."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    text = _CREDENTIALS.sub(r"\g<1>\g<gap>***", text)
    return _PARAMETER.sub(r"\g<head>***", text)


# formatters ----------------------------------------------------------------------------

# the attributes every LogRecord has: the rest came through ``extra``
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_ABOUT = ("execution_id", "workflow_id", "step_id")
_LEFT_OUT = frozenset({"color_message"})  # uvicorn's message again, with terminal colours


class TextFormatter(logging.Formatter):
    """The CLI's text lines (``time LEVEL logger: message``), redacted."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then ``execution_id``, ``workflow_id``, ``step_id`` when the record
    is about an execution, the other ``extra`` fields, ``trace_id`` and ``span_id``
    when a span is current (OpenTelemetry), and ``exception`` (the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = vars(record)
        for key in _ABOUT:
            if key in fields:
                out[key] = fields[key]
        for key, value in fields.items():
            if key not in _RECORD_FIELDS and key not in _LEFT_OUT and key not in out:
                out[key] = _plain(value)
        if record.name == "uvicorn.access":
            out.update(_access_fields(record.args))
        trace = _current_trace()
        if trace is not None:
            out.update(trace)
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def _access_fields(args: Any) -> dict[str, Any]:
    """An access line's request as fields a log shipper filters on (``status >= 500``)
    without parsing the message: uvicorn passes them as the record's arguments,
    ``(client, method, path, http_version, status)``."""
    if not isinstance(args, tuple) or len(args) != 5:
        return {}
    client, method, path, _, status = args
    return {"client": _plain(client), "method": _plain(method), "path": _plain(path),
            "status": status if isinstance(status, int) else _plain(status)}  # fmt: skip


def _utc(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return redact(str(value))


def _current_trace() -> dict[str, str] | None:
    """The current span's ids, when OpenTelemetry is in use (never imported here)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def configure_logging(
    log_format: str = "text", level: int = logging.WARNING, stream: IO[str] | None = None
) -> logging.Handler:
    """Log to ``stream`` (stderr) in ``log_format`` (``"text"`` or ``"json"``) at
    ``level``, through the root logger; returns the handler."""
    if log_format not in ("text", "json"):
        from ..errors import ConfigurationError

        raise ConfigurationError("--log-format", f"must be text or json, not {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
