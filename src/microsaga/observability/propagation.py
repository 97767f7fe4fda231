"""The W3C trace context on the wire: what steps send and participants read.

Nothing here imports OpenTelemetry: :class:`~microsaga.observability.Tracing` installs
an injector when it is made, and until then :func:`outgoing` hands the message back
as it is.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

from ..message import Message

__all__ = ["TRACE_HEADERS", "install", "outgoing"]

# the headers a trace context travels in (W3C Trace Context, and W3C Baggage)
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

Injector = Callable[[MutableMapping[str, str]], None]

_inject: Injector | None = None


def install(inject: Injector | None) -> None:
    """Use ``inject`` (which writes the current trace context into a carrier) for
    every step request sent from now on; None stops it."""
    global _inject
    _inject = inject


def outgoing(message: Message) -> Message:
    """``message`` with the current trace context in its header, ready to be sent.

    Called by the steps that send requests (``CallStep``, ``PublishStep``) just
    before their transport sends them, in the task of the step's attempt, where the
    attempt's span is current; a custom step that sends requests itself calls it
    too. The header entries it sets replace those of the same name (the execution's
    own context, carried by every step request). Without tracing it is ``message``.
    """
    inject = _inject
    if inject is None:
        return message
    carrier: dict[str, str] = {}
    inject(carrier)
    if not carrier:
        return message
    header = message.header.copy()
    for key, value in carrier.items():
        header.set(key, value)
    return Message(message.body, header)
