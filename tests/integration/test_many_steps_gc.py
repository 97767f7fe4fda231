"""A fan-out of thousands of steps holds a task for as many steps as the worker runs
at once, not one for each of its steps: the garbage collector's full collections
would otherwise walk them all, more often the wider the fan (counts GC objects, so it
lives outside the unit tests)."""

from __future__ import annotations

import asyncio
import gc

from microsaga import Flow, FunctionStep, Message

PARTS = 2000
tracked: list[int] = []


async def part(m: Message) -> dict[str, int]:
    return {"n": 1}


async def last_part(m: Message) -> dict[str, int]:
    tracked.append(len(gc.get_objects()))
    return {"n": 1}


async def join(m: Message) -> dict[str, int]:
    return {"parts": len(m.json())}


def _tracked_after_collections() -> int:
    for _ in range(4):  # nested tuples are untracked one level per collection
        gc.collect()
    return len(gc.get_objects())


async def test_a_wide_fan_out_holds_few_objects_per_step() -> None:
    async with Flow("memory://", concurrency=16) as flow:
        root = FunctionStep(part, id="root")
        parts = [FunctionStep(part, id=f"p{k:04d}", requires=[root]) for k in range(PARTS - 1)]
        parts.append(FunctionStep(last_part, id=f"p{PARTS - 1:04d}", requires=[root]))
        join_step = FunctionStep(join, id="join", requires=parts)
        wf = await flow.workflow_create("fan", root, *parts, join_step)
        await wf.execute({})  # the plan is made once per workflow
        await asyncio.sleep(0.01)  # the worker lets go of the finished run
        before = _tracked_after_collections()
        await wf.execute({})  # raises unless it succeeded
        per_step = (tracked[-1] - before) / PARTS
        # each finished step keeps its request and response (a Message and a Metadata
        # each: 4 objects); a task for each step would add more than as many again
        assert per_step < 6, f"{per_step:.1f} more objects tracked per step"
