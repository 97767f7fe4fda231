"""Step functions for the crash and control tests of ``test_process_recovery``.

Each invocation appends ``NAME KEY PID`` to the file named by MICROSAGA_TEST_LOG (KEY is
the request's Idempotency-Key, PID the invoking process). ``held`` steps then wait for
the file ``<log>.<KEY>.open`` to appear, so a test can kill a worker in the middle of
them. Imported by worker processes: it must not import pytest.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from microsaga import Message, StepError


def _log(name: str, msg: Message) -> str:
    key = msg.header.get("Idempotency-Key", "-")
    # one write() of a short line to an O_APPEND file: lines of several processes
    # never interleave
    fd = os.open(os.environ["MICROSAGA_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{name} {key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return key


async def _gate(key: str) -> None:
    gate = Path(f"{os.environ['MICROSAGA_TEST_LOG']}.{key}.open")
    for _ in range(12000):
        if gate.exists():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"gate {gate} never opened")


async def work(msg: Message) -> Any:
    _log("work", msg)
    return msg.json()


async def held(msg: Message) -> Any:
    await _gate(_log("held", msg))
    return msg.json()


async def undo(msg: Message) -> None:
    _log("undo", msg)


async def held_undo(msg: Message) -> None:
    await _gate(_log("held_undo", msg))


async def refuse(msg: Message) -> None:
    _log("refuse", msg)
    raise StepError("refused", retryable=False)


async def picky(msg: Message) -> Any:
    """Fails for good unless its request says ``ok``."""
    _log("picky", msg)
    body = msg.json()
    if not (isinstance(body, dict) and body.get("ok")):
        raise StepError("not ok", retryable=False)
    return body


async def item(msg: Message) -> Any:
    """A map run: waits for its gate when its element says ``hold``."""
    key = _log("item", msg)
    body = msg.json()
    if body.get("hold"):
        await _gate(key)
    return body


async def stubborn_undo(msg: Message) -> None:
    """A compensation that fails for good until its gate is open."""
    key = _log("stubborn_undo", msg)
    if not Path(f"{os.environ['MICROSAGA_TEST_LOG']}.{key}.open").exists():
        raise StepError("still stuck", retryable=False)
