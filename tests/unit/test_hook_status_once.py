"""A hook hears of each status change of an execution once (``Hook.execution_status``),
though a change reaches the run several times: by the request, by the commit that
finds it, by the run's end."""

from __future__ import annotations

import asyncio

import pytest

from microsaga import ExecutionEvent, Flow, FunctionStep, Hook, Message, Status
from tests.helpers import eventually


class Statuses(Hook):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def execution_status(self, event: ExecutionEvent) -> None:
        self.seen.append(event.status.name)


@pytest.fixture
def gate() -> asyncio.Event:
    return asyncio.Event()


async def test_a_suspend_and_a_resume_are_each_told_once(gate: asyncio.Event) -> None:
    started = asyncio.Event()

    async def reserve(msg: Message) -> None:
        started.set()
        await gate.wait()

    async def ship(msg: Message) -> None:
        return None

    hook = Statuses()
    async with Flow("memory://", hooks=[hook], poll_interval=0.02) as flow:
        wf = await flow.workflow_create(
            "order",
            FunctionStep(reserve, id="reserve"),
            FunctionStep(ship, id="ship", requires=("reserve",)),
        )
        eid = await wf.execute({}, async_=True)
        await started.wait()
        await flow.suspend(eid)
        gate.set()  # the step ends; the run stops, suspended

        async def suspended() -> bool:
            return (await flow.execution(eid)).status is Status.SUSPEND

        await eventually(suspended)
        await asyncio.sleep(0.1)  # a few polls: the request is read again from the store
        await flow.resume(eid)
        assert (await flow.wait(eid, timeout=10)).status is Status.SUCCESS
    assert hook.seen == ["SUSPEND", "RUNNING", "SUCCESS"]


async def test_an_abort_without_compensation_tells_its_end_once(gate: asyncio.Event) -> None:
    started = asyncio.Event()

    async def reserve(msg: Message) -> None:
        started.set()
        await gate.wait()

    hook = Statuses()
    async with Flow("memory://", hooks=[hook], poll_interval=0.02) as flow:
        wf = await flow.workflow_create("order", FunctionStep(reserve, id="reserve"))
        eid = await wf.execute({}, async_=True)
        await started.wait()
        await flow.abort(eid, compensate=False)  # the status stays RUNNING until the end
        await asyncio.sleep(0.1)
        gate.set()
        assert (await flow.wait(eid, timeout=10)).status is Status.ABORTED
    assert hook.seen == ["ABORTED"]
