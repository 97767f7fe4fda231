"""Module-level step functions: importable, so definitions can name them."""

from __future__ import annotations

from typing import Any

from microsaga import Message, StepError

CALLS: list[str] = []


async def reserve(msg: Message) -> dict[str, Any]:
    CALLS.append("reserve")
    return {"reserved": msg.json()}


async def release(msg: Message) -> None:
    CALLS.append("release")


def charge(msg: Message) -> dict[str, Any]:
    CALLS.append("charge")
    if msg.json()["reserved"].get("fail"):
        raise StepError("card declined", retryable=False)
    return {"charged": True}


class NotAnError:
    pass
