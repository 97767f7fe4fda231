"""A step run in a task of its own (steps in parallel) that raises outside the step's
code: a store error while recording a retry, a fault point. The run must stop and hand
the execution back for recovery, not wait for ever while its worker renews the lease
(the sqlite-disk-full chaos scenario: steps RUNNING for minutes, no call, no timeout)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga.testing import FaultError, arm_fault, disarm_faults
from tests.helpers import eventually


@pytest.fixture(autouse=True)
def _disarmed() -> Iterator[None]:
    yield
    disarm_faults()


async def left(msg: Message) -> object:
    return {"left": True}


async def right(msg: Message) -> object:
    return {"right": True}


async def test_a_step_task_that_raises_stops_the_run_and_the_execution_recovers() -> None:
    raised = []

    def once() -> None:  # the first start of a step only
        if not raised:
            raised.append(True)
            raise FaultError("fault point step_started")

    arm_fault("step_started", once)
    async with Flow("memory://", lease_ttl=0.3, poll_interval=0.05) as flow:
        # two roots: each runs in a task of its own
        wf = await flow.workflow_create(
            "parallel", FunctionStep(left, id="left"), FunctionStep(right, id="right")
        )
        eid = await wf.execute({}, async_=True)

        async def finished() -> bool:
            return (await flow.execution(eid)).status.finished

        await eventually(finished, timeout=20)
        info = await flow.execution(eid)
    assert raised
    assert info.status is Status.SUCCESS
    assert {s: r.status for s, r in info.steps.items()} == {
        "left": Status.SUCCESS,
        "right": Status.SUCCESS,
    }
