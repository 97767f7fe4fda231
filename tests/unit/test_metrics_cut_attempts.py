"""``Metrics`` forgets an attempt cut short (a lost lease, a stopped worker): its start
was kept for the attempt's duration, and an attempt that never finishes would keep it
for the life of the process."""

from __future__ import annotations

import asyncio

import pytest

from microsaga import Flow, FunctionStep, Message

prometheus_client = pytest.importorskip("prometheus_client", reason="the prometheus extra")

from microsaga.observability import Metrics  # noqa: E402


async def test_an_attempt_cut_short_is_forgotten_when_its_run_stops() -> None:
    started = asyncio.Event()

    async def hang(msg: Message) -> None:
        started.set()
        await asyncio.Event().wait()  # never returns: the worker's stop cuts it short

    hook = Metrics(prometheus_client.CollectorRegistry())
    async with Flow("memory://", hooks=[hook], lease_ttl=0.3) as flow:
        wf = await flow.workflow_create("stuck", FunctionStep(hang, id="hang"))
        await wf.execute({}, async_=True)
        await started.wait()
        assert len(hook._attempts) == 1  # the attempt runs: its start is kept
    assert hook._attempts == {}
