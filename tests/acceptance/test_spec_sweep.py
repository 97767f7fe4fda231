"""SPEC.md read from a fresh user's side: each test calls the public names exactly as
the contract writes them, for what the sweep found wrong (the rest has tests of its
own elsewhere)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message, Status, WaitStep
from tests.helpers import eventually


@pytest.fixture(params=["memory", "sqlite"])
async def flow(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Flow]:
    store = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'f.db'}"
    async with Flow(store, poll_interval=0.05) as f:
        yield f


def first(msg: Message) -> int:
    return 1


async def second(msg: Message) -> int:
    return 2


# SPEC §2: "wf.status: the status of the latest execution started through this
# object"; §1: a step's .status/.request/.response are "the last run seen by this
# process". An execution that stops running and goes on later (resume, a signal)
# must not leave them frozen where its first run stopped.


async def test_wf_status_and_step_status_follow_a_resumed_execution(flow: Flow) -> None:
    gate = asyncio.Event()

    async def held(msg: Message) -> int:
        await gate.wait()
        return 1

    a = FunctionStep(held, id="a")
    b = FunctionStep(second, id="b", requires=[a])
    wf = await flow.workflow_create("resumed", a, b)
    eid = await wf.execute({"order_id": 42}, async_=True)
    await eventually(lambda: a.status is Status.RUNNING)
    await wf.suspend(eid)
    gate.set()
    await eventually(lambda: a.status is Status.SUCCESS)
    assert wf.status is Status.SUSPEND
    await wf.resume(eid)
    await eventually(lambda: wf.status is Status.SUCCESS)
    assert b.status is Status.SUCCESS
    assert b.response is not None
    assert b.response.json() == 2


async def test_wf_status_and_step_status_follow_a_signalled_execution(flow: Flow) -> None:
    start = FunctionStep(first, id="start")
    confirmed = WaitStep("payment.confirmed", requires=[start])
    wf = await flow.workflow_create("signalled", start, confirmed)
    eid = await wf.execute({"order_id": 42}, async_=True)
    await eventually(lambda: confirmed.status is Status.WAITING)
    assert wf.status is Status.RUNNING
    await flow.signal(eid, "payment.confirmed", {"paid": True})
    await eventually(lambda: wf.status is Status.SUCCESS)
    assert confirmed.status is Status.SUCCESS
    assert confirmed.response is not None
    assert confirmed.response.json() == {"paid": True}
