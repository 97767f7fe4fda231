"""Steps for the recovery-limit test: ``crash`` kills the worker process running it,
every time. Imported by worker processes: must not import pytest."""

from __future__ import annotations

import os
import signal

from microsaga import Message


def _log(line: str) -> None:
    fd = os.open(os.environ["MICROSAGA_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


async def reserve(msg: Message) -> dict[str, str]:
    _log(f"reserve {msg.header.get('Idempotency-Key')}")
    return {"reserved": "yes"}


async def release(msg: Message) -> None:
    _log(f"release {msg.header.get('Idempotency-Key')}")


async def crash(msg: Message) -> None:
    _log(f"crash {msg.header.get('Idempotency-Key')} {os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)
