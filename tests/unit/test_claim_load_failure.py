"""A worker that claimed executions but could not read them back logs which ones, and
leaves them for a later claim: the execution still finishes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from microsaga import Flow, FunctionStep, Message, Status, StoreError


async def ok(msg: Message) -> dict[str, bool]:
    return {"ok": True}


async def test_a_claim_that_cannot_be_read_names_its_executions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="microsaga")
    url = f"sqlite:///{tmp_path / 's.db'}"
    async with Flow(url, worker=False) as enqueuer:
        wf = await enqueuer.workflow_create("w", FunctionStep(ok, id="ok"))
        await enqueuer.workflow_save(wf)
        eid = await wf.execute({}, async_=True)
    async with Flow(url, poll_interval=0.05) as flow:
        store: Any = flow.store
        real = store.load_many
        failures = [StoreError("disk I/O error", retryable=True)]

        async def load_many(ids: list[str]) -> Any:
            if failures:
                raise failures.pop()
            return await real(ids)

        store.load_many = load_many
        done = await flow.wait(eid, timeout=30)
    assert done.status is Status.SUCCESS
    [said] = [r.getMessage() for r in caplog.records if "could not load" in r.getMessage()]
    assert f"could not load 1 claimed executions ({eid}), left for a later claim" in said
    assert said.endswith("disk I/O error")
