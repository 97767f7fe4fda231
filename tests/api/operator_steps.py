"""Step functions of the dashboard's operator tests: importable by saved definitions."""

from __future__ import annotations

from typing import Any

from microsaga import Message, StepError


async def fail_with(msg: Message) -> Any:
    """Fails for good with the request's ``"error"``, if any; else echoes the request."""
    body = msg.json()
    if isinstance(body, dict) and body.get("error"):
        raise StepError(str(body["error"]), retryable=False)
    return body


async def item(msg: Message) -> Any:
    return {"done": msg.json()}
