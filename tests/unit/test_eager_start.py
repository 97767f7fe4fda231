"""A waited-for execution starts in the caller's call (eager start) and behaves as if it
ran in a task of its own: timeouts, cancellation and context variables stay its own."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga._aio import start_task

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_a_task_that_never_waits_is_over_when_it_is_made() -> None:
    seen: list[asyncio.Task[object] | None] = []

    async def body() -> str:
        seen.append(asyncio.current_task())
        return "done"

    caller = asyncio.current_task()
    task = start_task(asyncio.get_running_loop(), body(), "eager")
    assert seen == [task]  # it ran at once, as its own task
    assert asyncio.current_task() is caller  # and the caller is the current task again
    assert await task == "done"


async def test_a_task_that_waits_goes_on_in_its_own_task() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def body() -> str:
        steps.append("started")
        got = await gate
        steps.append(f"resumed with {got}")
        assert asyncio.current_task() is task
        return got

    task = start_task(asyncio.get_running_loop(), body(), "eager")
    assert steps == ["started"]
    assert not task.done()
    gate.set_result("x")
    assert await task == "x"
    assert steps == ["started", "resumed with x"]


async def test_a_timeout_taken_before_the_first_wait_cancels_the_task_not_the_caller() -> None:
    async def body() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            return "timed out"
        return "slept"

    task = start_task(asyncio.get_running_loop(), body(), "eager")
    assert await asyncio.wait_for(task, 2) == "timed out"
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_cancelling_the_task_reaches_what_it_waits_on() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    caught: list[str] = []

    async def body() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            caught.append("cancelled")
            raise

    task = start_task(asyncio.get_running_loop(), body(), "eager")
    task.cancel()  # before the task's first step
    with pytest.raises(asyncio.CancelledError):
        await task
    assert caught == ["cancelled"]
    assert gate.cancelled()


async def test_an_error_before_the_first_wait_ends_the_task_with_it() -> None:
    async def body() -> None:
        raise ValueError("bad")

    task = start_task(asyncio.get_running_loop(), body(), "eager")
    with pytest.raises(ValueError, match="bad"):
        await task


async def test_the_task_keeps_its_own_context() -> None:
    async def body() -> str:
        request_id.set("inner")
        return request_id.get()

    request_id.set("outer")
    task = start_task(asyncio.get_running_loop(), body(), "eager")
    assert await task == "inner"
    assert request_id.get() == "outer"


async def slow_step(m: Message) -> object:
    async with asyncio.timeout(0.05):  # a timeout the function takes before it waits
        await asyncio.sleep(0.01)
    return {**m.json(), "slow": True}


async def sets_context(m: Message) -> object:
    request_id.set("from the step")
    return m.json()


async def test_an_execution_that_waits_inside_its_steps_runs_on_after_an_eager_start() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create(
            "slow", FunctionStep(slow_step), FunctionStep(sets_context, requires=["slow_step"])
        )
        request_id.set("caller")
        eid = await wf.execute({"n": 1})
        assert request_id.get() == "caller"  # the steps ran in their own context
        done = await flow.execution(eid)
        assert done.status is Status.SUCCESS
        assert done.response is not None
        assert done.response.json() == {"n": 1, "slow": True}


async def test_cancelling_the_caller_stops_only_the_waiting() -> None:
    started = asyncio.Event()

    async def waits(m: Message) -> object:
        started.set()
        await asyncio.sleep(0.05)
        return {"waited": True}

    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("w", FunctionStep(waits, id="waits"))
        caller = asyncio.create_task(wf.execute({}, execution_id="e1"))
        await started.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        done = await flow.wait("e1", timeout=5)
        assert done.status is Status.SUCCESS
        assert done.steps["waits"].response is not None
        assert done.steps["waits"].response.json() == {"waited": True}


async def test_executions_that_never_wait_let_other_tasks_run() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def quick(m: Message) -> object:
        return m.json()

    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("q", FunctionStep(quick))
        other = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        loop = asyncio.get_running_loop()
        until = loop.time() + 0.1
        while loop.time() < until:  # 100 ms of executions, one after another
            await wf.execute({"n": 1})
        other.cancel()
        # the loop was given back at least every few milliseconds
        assert ticks - before >= 5
