"""The memory store keeps finished executions cheaply: readable, and off the GC's books."""

from __future__ import annotations

import asyncio
import gc

from microsaga import Flow, FunctionStep, Message, Status


async def add_item(m: Message) -> dict[str, object]:
    return {**m.json(), "item": "x"}


async def pay(m: Message) -> Message:
    return Message({**m.json(), "paid": True}, {"X-Receipt": ["r-1", "r-2"]})


def settle() -> None:
    # each collection untracks one more level of nested tuples, at least
    for _ in range(6):
        gc.collect()


async def test_stored_executions_read_back_whole_and_leave_the_collector_alone() -> None:
    async with Flow("memory://", concurrency=64) as flow:
        a = FunctionStep(add_item, id="add")
        wf = await flow.workflow_create("cart", a, FunctionStep(pay, id="pay", requires=[a]))
        await wf.execute({"n": 0}, execution_id="first")
        settle()
        before = len(gc.get_objects())
        for i in range(500):
            await wf.execute(Message({"n": i}, {"X-Trace": "t"}))
        await asyncio.sleep(0)  # the tasks of runs that ended at once take their last step
        settle()
        grown = len(gc.get_objects()) - before
        # a full collection walks every tracked object; a stored execution that kept
        # its records and headers in tracked containers costs ten objects or more; a row is one
        assert grown <= 2 * 500, f"{grown} tracked objects for 500 stored executions"

        done = await flow.execution("first")
        assert done.status is Status.SUCCESS
        assert done.response is not None
        assert done.response.json() == {"n": 0, "item": "x", "paid": True}
        assert done.response.header.getall("x-receipt") == ["r-1", "r-2"]
        pay_request = done.steps["pay"].request
        assert pay_request is not None
        assert pay_request.header["Idempotency-Key"] == "first:pay"
        assert list(pay_request.header)[:1] == ["Micro-Flow-Workflow"]
