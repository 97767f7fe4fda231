"""The wire protocol's names: headers and topics that microsaga, its transports and
the participants on the other side agree on (``docs/transports.md`` describes them
for participants in any language)."""

from __future__ import annotations

__all__ = [
    "CORRELATION_HEADER",
    "ERROR_HEADER",
    "EXECUTION_HEADER",
    "IDEMPOTENCY_HEADER",
    "REPLY_TOPIC_PREFIX",
    "REPLY_TO_HEADER",
    "STEP_HEADER",
    "WORKFLOW_HEADER",
]

WORKFLOW_HEADER = "Micro-Flow-Workflow"
"""The workflow id, on every step request."""
EXECUTION_HEADER = "Micro-Flow-Execution"
"""The execution id, on every step request."""
STEP_HEADER = "Micro-Flow-Step"
"""The step id, on every step request."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
"""``<execution id>:<step id>`` (``:compensate`` for a compensation): the same on every
attempt and after a crash, so a participant can deduplicate."""

REPLY_TO_HEADER = "Micro-Flow-Reply-To"
"""The topic a request-reply publish step waits on for its reply."""
CORRELATION_HEADER = "Micro-Flow-Correlation-Id"
"""Ties a reply to its request."""
ERROR_HEADER = "Micro-Flow-Error"
"""Set on a reply that reports a failure; its value is the error code."""
REPLY_TOPIC_PREFIX = "microsaga.reply."
"""The start of the reply topics microsaga's brokers make for themselves."""
