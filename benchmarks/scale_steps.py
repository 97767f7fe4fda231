"""The steps of ``scale.py``'s workflows, in a module of their own so that the worker
process it starts (``python -m microsaga worker``, with ``benchmarks/`` on PYTHONPATH)
can import them from the definitions stored with each execution."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from microsaga import FunctionStep, Message

# Set in the process that scale.py kills: its steps hang, so its executions are left
# unfinished, some with a step RUNNING, as a crash would leave them.
HOLD = "MICROSAGA_SCALE_HOLD"


async def echo(m: Message) -> Any:
    return m.json()


async def hold(m: Message) -> Any:
    if os.environ.get(HOLD):
        await asyncio.sleep(3600)
    return m.json()


async def done(m: Message) -> Any:
    return {"order_id": m.json()["order_id"], "done": True}


def finished_steps() -> list[FunctionStep]:
    """One trivial step: what fills the store with finished executions fastest."""
    return [FunctionStep(echo)]


def two_steps() -> list[FunctionStep]:
    """A step that hangs in the killed process, then one after it."""
    first = FunctionStep(hold)
    return [first, FunctionStep(done, requires=[first])]
