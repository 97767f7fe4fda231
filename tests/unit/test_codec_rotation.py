"""Rotating an AesGcmCodec's key as docs/python.md says (a new key first, the old one
kept until nothing stored needs it, i.e. until the executions written before the
rotation are pruned) leaves every execution written after it readable with the new
key alone, large bodies (stored once, by reference) included."""

from __future__ import annotations

import os
from pathlib import Path

from microsaga import Flow, FunctionStep, Message, Status, WaitStep
from microsaga.codecs import AesGcmCodec

from ..helpers import eventually

BIG = {"blob": "x" * 100_000}  # over the 32 KiB stored by reference


async def echo(msg: Message) -> Message:
    return msg


async def test_a_large_body_written_after_a_rotation_needs_only_the_new_key(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    old, new = os.urandom(32), os.urandom(32)
    async with Flow(store, codec=AesGcmCodec({"old": old})) as flow:
        wf = await flow.workflow_create("echo", FunctionStep(echo, id="echo"))
        before = await wf.execute(Message(BIG))
    async with Flow(store, codec=AesGcmCodec({"new": new, "old": old})) as flow:
        wf = await flow.workflow_create("echo", FunctionStep(echo, id="echo"))
        after = await wf.execute(Message(BIG))  # the same body as before the rotation
        waits = await flow.workflow_create("wait", WaitStep("go", id="w"))
        waiting = await waits.execute(Message(BIG), async_=True)

        async def is_waiting() -> bool:
            return (await flow.execution(waiting)).steps["w"].status == Status.WAITING

        await eventually(is_waiting)
    # the old key dropped (once `before` is pruned, nothing needs it)
    async with Flow(store, codec=AesGcmCodec({"new": new})) as flow:
        assert (await flow.execution(before)).request.json() == "[encrypted]"
        info = await flow.execution(after)
        assert info.request.json() == BIG
        assert info.response is not None
        assert info.response.json() == BIG
        await flow.signal(waiting, "go", {"ok": True})
        done = await flow.wait(waiting, timeout=30)
        assert done.status == Status.SUCCESS
        assert done.request.json() == BIG
