"""A worker without the key an execution was encrypted under (a key rotation that
dropped the old key too early) leaves that execution for a worker that has it, saying
why, and runs the executions it can read, even those claimed with it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga.codecs import AesGcmCodec
from tests.helpers import eventually


async def ok(msg: Message) -> dict[str, bool]:
    return {"ok": True}


async def test_an_execution_under_a_missing_key_does_not_hold_back_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="microsaga")
    url = f"sqlite:///{tmp_path / 's.db'}"
    old, new = AesGcmCodec({"k1": os.urandom(32)}), AesGcmCodec({"k2": os.urandom(32)})
    async with Flow(url, worker=False, codec=old) as before:
        wf = await before.workflow_create("w", FunctionStep(ok, id="ok"))
        await before.workflow_save(wf)
        stuck = await wf.execute({"n": 1}, async_=True, execution_id="under-k1")
    async with Flow(url, worker=False, codec=new) as after:
        fine = await (await after.workflow_load("w")).execute(
            {"n": 2}, async_=True, execution_id="under-k2"
        )
    # one worker claims both at once; it has only the new key
    async with Flow(url, codec=new, poll_interval=0.05) as worker:
        done = await worker.wait(fine, timeout=10)
        assert done.status is Status.SUCCESS

        async def noted() -> str | None:
            return (await worker.execution(stuck)).note

        note = await eventually(noted)
    assert "key 'k1'" in note
    assert "MICROSAGA_CODEC_KEYS" in note
    said = [r.getMessage() for r in caplog.records if stuck in r.getMessage()]
    assert said == [f"execution {stuck} cannot run in this worker: {note.split(': ', 1)[1]}"]


async def test_a_worker_without_a_codec_says_which_setting_it_lacks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    async with Flow(url, worker=False, codec=AesGcmCodec({"k1": os.urandom(32)})) as before:
        wf = await before.workflow_create("w", FunctionStep(ok, id="ok"))
        stuck = await wf.execute({"n": 1}, async_=True)
    async with Flow(url, poll_interval=0.05) as worker:

        async def noted() -> str | None:
            return (await worker.execution(stuck)).note

        note = await eventually(noted)
    assert note == (
        "waits for a worker that can run it: a stored body is encrypted and this process "
        "has no codec keys: give it MICROSAGA_CODEC_KEYS (in Python, Flow(codec=...))"
    )
