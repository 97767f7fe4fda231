"""A memory store's executions cost the garbage collector nothing: its full
collections would otherwise walk every stored message (counts GC objects, so it lives
outside the unit tests)."""

from __future__ import annotations

import gc

from microsaga import Flow, FunctionStep, Message


async def add_item(m: Message) -> dict[str, object]:
    return {**m.json(), "item": "x"}


async def pay(m: Message) -> Message:
    return Message({**m.json(), "paid": True}, {"X-Receipt": ["r-1", "r-2"]})


def _tracked_after_collections() -> int:
    for _ in range(4):  # nested tuples are untracked one level per collection
        gc.collect()
    return len(gc.get_objects())


async def test_stored_executions_leave_nothing_for_the_garbage_collector() -> None:
    async with Flow("memory://", concurrency=64) as flow:
        a = FunctionStep(add_item, id="add")
        wf = await flow.workflow_create("cart", a, FunctionStep(pay, id="pay", requires=[a]))
        for i in range(20):
            await wf.execute({"n": i})
        before = _tracked_after_collections()
        for i in range(500):
            await wf.execute(Message({"n": i}, {"X-Trace": "t"}))
        grown = _tracked_after_collections() - before
        # a Message and its Metadata are always tracked: a store that kept them would
        # grow by several objects an execution
        assert grown < 100, f"{grown} more objects tracked after 500 executions"
