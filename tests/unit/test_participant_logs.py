"""A participant's log records about a step request carry the execution's ids (from
the request's ``Micro-Flow-*`` headers), as every record about an execution does."""

from __future__ import annotations

import logging

import pytest

from microsaga import Message, StepError
from microsaga.participant import Participant

HEADER = {
    "Micro-Flow-Execution": "e1",
    "Micro-Flow-Workflow": "ship",
    "Micro-Flow-Step": "notify",
    "Idempotency-Key": "e1:notify",
}


def _about(record: logging.LogRecord) -> tuple[object, object, object]:
    return (
        getattr(record, "execution_id", None),
        getattr(record, "workflow_id", None),
        getattr(record, "step_id", None),
    )


async def test_a_dropped_message_is_logged_with_its_execution(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipping = Participant(tracing=False)

    @shipping.handler("orders.ship")
    async def ship(msg: Message) -> None:
        raise StepError("no courier", retryable=False)

    handle = shipping.message_handler("orders.ship")
    with caplog.at_level(logging.WARNING, logger="microsaga"):
        assert await handle(Message(b"{}", HEADER)) is None  # final: dropped, not redelivered
    (dropped,) = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped.name == "microsaga.participant"
    assert _about(dropped) == ("e1", "ship", "notify")


async def test_a_handler_that_crashes_is_logged_with_its_execution(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipping = Participant(tracing=False)

    @shipping.handler("Shipping.Ship")
    async def ship(msg: Message) -> None:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.WARNING, logger="microsaga"):
        reply, _ = await shipping.handle("Shipping.Ship", Message(b"{}", HEADER))
    assert reply.status == 500
    (crashed,) = [r for r in caplog.records if "failed" in r.getMessage()]
    assert _about(crashed) == ("e1", "ship", "notify")
