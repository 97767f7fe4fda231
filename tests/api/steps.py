"""Step functions of the API's tests: importable, so saved definitions can name them.

``held`` waits while the gate named by its request's ``"gate"`` is closed, so a test
can watch an execution while a step runs. Gates are asyncio events of the loop that
runs the flow: open one from another thread with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from microsaga import Message, StepError

GATES: dict[str, asyncio.Event] = {}


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


async def held(msg: Message) -> Any:
    body = msg.json()
    name = body.get("gate") if isinstance(body, dict) else None
    if name:
        await gate(name).wait()
    return body


async def charge(msg: Message) -> dict[str, Any]:
    body = msg.json()
    if isinstance(body, dict) and body.get("fail"):
        raise StepError("card declined", retryable=False)
    return {"charged": True}


async def release(msg: Message) -> None:
    return None


async def notify(msg: Message) -> dict[str, Any]:
    return {"sent": True}


# reserve (held) -> charge -> ship, notify; reserve and charge are compensated
ORDER: dict[str, Any] = {
    "id": "order",
    "description": "reserve, charge, then ship and notify",
    "steps": [
        {
            "function": "tests.api.steps:held",
            "id": "reserve",
            "compensate": {"function": "tests.api.steps:release"},
        },
        {
            "function": "tests.api.steps:charge",
            "id": "charge",
            "requires": ["reserve"],
            "compensate": {"function": "tests.api.steps:release"},
        },
        {"function": "tests.api.steps:notify", "id": "ship", "requires": ["charge"]},
        {"function": "tests.api.steps:notify", "id": "notify", "requires": ["charge"]},
    ],
}


async def held_or_failed(msg: Message) -> Any:
    """``held``, then fails for good with the request's ``"error"``, if any."""
    body = await held(msg)
    if isinstance(body, dict) and body.get("error"):
        raise StepError(str(body["error"]), retryable=False)
    return body


async def undo_or_failed(msg: Message) -> None:
    """A compensation that fails for good when what it undoes asked for it."""
    if "undo_error" in msg.body.decode():
        raise StepError("cannot undo", retryable=False)


# a map of held_or_failed over the request's items (at most `concurrency` at once)
def mapped(concurrency: int | None = None) -> dict[str, Any]:
    inner: dict[str, Any] = {
        "over": "request.items",
        "step": {"function": f"{__name__}:held_or_failed"},
    }
    if concurrency is not None:
        inner["concurrency"] = concurrency
    return {"id": "mapped", "steps": [{"map": inner, "id": "m"}]}
