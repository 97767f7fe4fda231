"""Steps run by the worker processes of ``test_postgres_workers``.

Each invocation appends ``start KEY TOKEN`` when it begins and ``done KEY TOKEN`` when
it returns to the file named by ``MICROSAGA_TEST_LOG`` (``KEY`` is the request's
Idempotency-Key, ``TOKEN`` names this invocation: ``pid-n``), and answers with its
token and the token of the step before it, so the test can tell which invocation's
result the store recorded. Imported by the workers as ``tests.integration.pg_steps``:
it must not import pytest.
"""

from __future__ import annotations

import asyncio
import itertools
import os

from microsaga import Message

_count = itertools.count(1)


def _append(line: str) -> None:
    # one write() of a short line to an O_APPEND file: lines of several processes
    # never interleave
    fd = os.open(os.environ["MICROSAGA_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def _step(name: str, msg: Message) -> object:
    key = msg.header.get("Idempotency-Key")
    token = f"{os.getpid()}-{next(_count)}"
    _append(f"start {key} {token}\n")
    await asyncio.sleep(float(os.environ.get("MICROSAGA_TEST_STEP_DELAY", "0.02")))
    _append(f"done {key} {token}\n")
    previous = msg.json()
    return {
        "step": name,
        "by": token,
        "prev": previous.get("by") if isinstance(previous, dict) else None,
    }


async def reserve(msg: Message) -> object:
    return await _step("reserve", msg)


async def charge(msg: Message) -> object:
    return await _step("charge", msg)


async def ship(msg: Message) -> object:
    return await _step("ship", msg)


async def notify(msg: Message) -> object:
    return await _step("notify", msg)


async def release(msg: Message) -> object:
    """The compensation of ``reserve``."""
    return await _step("release", msg)


async def flaky(msg: Message) -> object:
    """Fails every time, after logging its start (it never logs ``done``)."""
    key = msg.header.get("Idempotency-Key")
    _append(f"start {key} {os.getpid()}-{next(_count)}\n")
    raise RuntimeError("flaky: fails every time")
