"""Step functions for process tests. They log each invocation, with its idempotency key,
to the file named by MICROSAGA_TEST_LOG; ``gate`` steps wait for a file to appear."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from microsaga import Message, StepError


def _log(name: str, msg: Message) -> None:
    path = os.environ["MICROSAGA_TEST_LOG"]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{name} {msg.header.get('Idempotency-Key', '-')}\n")
        fh.flush()
        os.fsync(fh.fileno())


async def _gate(name: str) -> None:
    gate = Path(os.environ["MICROSAGA_TEST_LOG"] + f".{name}.open")
    for _ in range(6000):
        if gate.exists():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"gate {gate} never opened")


async def reserve(msg: Message) -> dict[str, Any]:
    _log("reserve", msg)
    return {"order": msg.json(), "reservation": "R1"}


async def release(msg: Message) -> None:
    _log("release", msg)


async def charge(msg: Message) -> dict[str, Any]:
    _log("charge", msg)
    await _gate("charge")
    return {**msg.json(), "payment": "P1"}


async def refund(msg: Message) -> None:
    _log("refund", msg)


async def ship(msg: Message) -> dict[str, Any]:
    _log("ship", msg)
    if msg.json()["order"].get("fail"):
        raise StepError("no courier", retryable=False)
    return {"tracking": "T1"}


async def notify(msg: Message) -> None:
    _log("notify", msg)


DECLINED = "[declined] card refused [/red] by [bold]the bank"


async def decline(msg: Message) -> None:
    """Fails with text that looks like Rich markup, as a participant's '[code] message'."""
    raise StepError(DECLINED, retryable=False)


async def picky(msg: Message) -> dict[str, Any]:
    """Fails for good unless its request says ``ok``."""
    _log("picky", msg)
    body = msg.json() or {}
    if not body.get("ok"):
        raise StepError("not ok", retryable=False)
    return {"picked": True}
