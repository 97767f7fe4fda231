"""A waited-for execution starts in the caller's call (eager start) and behaves as if it
ran in a task of its own: timeouts, cancellation and context variables stay its own."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga._eager import EagerStarter

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_a_coroutine_that_never_waits_is_over_when_it_is_started() -> None:
    seen: list[asyncio.Task[object] | None] = []
    done: list[str] = []

    async def body() -> None:
        seen.append(asyncio.current_task())
        done.append("done")

    caller = asyncio.current_task()
    starter = EagerStarter("idle")
    assert starter.start(body(), "eager") is None  # no task: it ran to its end
    assert done == ["done"]
    assert seen[0] is not None
    assert seen[0] is not caller  # it ran as a task of its own,
    assert asyncio.current_task() is caller  # and the caller is the current task again
    starter.close()


async def test_a_coroutine_that_waits_goes_on_in_the_task_it_started_in() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []
    tasks: list[asyncio.Task[object] | None] = []

    async def body() -> str:
        tasks.append(asyncio.current_task())
        steps.append("started")
        got = await gate
        tasks.append(asyncio.current_task())
        steps.append(f"resumed with {got}")
        return got

    starter = EagerStarter("idle")
    task = starter.start(body(), "eager")
    assert task is not None
    assert steps == ["started"]
    assert not task.done()
    assert task.get_name() == "eager"
    gate.set_result("x")
    assert await task == "x"
    assert steps == ["started", "resumed with x"]
    assert tasks == [task, task]
    # the next start gets a new host: the one above is taken
    gate = asyncio.get_running_loop().create_future()
    again = starter.start(body(), "again")
    assert again is not None
    assert again is not task
    again.cancel()
    starter.close()


async def test_a_timeout_taken_before_the_first_wait_cancels_the_task_not_the_caller() -> None:
    async def body() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            return "timed out"
        return "slept"

    starter = EagerStarter("idle")
    task = starter.start(body(), "eager")
    assert task is not None
    assert await asyncio.wait_for(task, 2) == "timed out"
    current = asyncio.current_task()
    assert current is not None
    assert not current.cancelling()
    starter.close()


async def test_cancelling_the_task_reaches_what_the_coroutine_waits_on() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    caught: list[str] = []

    async def body() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            caught.append("cancelled")
            raise

    starter = EagerStarter("idle")
    task = starter.start(body(), "eager")
    assert task is not None
    task.cancel()  # before the task's first step
    with pytest.raises(asyncio.CancelledError):
        await task
    assert caught == ["cancelled"]
    assert gate.cancelled()
    starter.close()


async def test_a_coroutine_that_cancels_its_task_before_waiting_is_cancelled_when_it_waits() -> (
    None
):
    caught: list[str] = []

    async def body() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            caught.append("cancelled")
            raise

    starter = EagerStarter("idle")
    task = starter.start(body(), "eager")
    assert task is not None
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert caught == ["cancelled"]
    starter.close()


async def test_an_error_after_the_first_wait_ends_the_task_with_it() -> None:
    async def body() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    starter = EagerStarter("idle")
    task = starter.start(body(), "eager")
    assert task is not None
    with pytest.raises(ValueError, match="bad"):
        await task
    starter.close()


async def test_the_coroutine_keeps_its_own_context() -> None:
    got: list[str] = []

    async def body() -> None:
        request_id.set("inner")
        await asyncio.sleep(0)
        got.append(request_id.get())

    request_id.set("outer")
    starter = EagerStarter("idle")
    task = starter.start(body(), "eager")
    assert request_id.get() == "outer"
    assert task is not None
    await task
    assert got == ["inner"]
    assert request_id.get() == "outer"
    starter.close()


async def test_a_start_inside_a_start_gets_its_own_host() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    starter = EagerStarter("idle")
    inner_task: list[asyncio.Task[object] | None] = []

    async def inner() -> str:
        await gate
        return "inner"

    async def outer() -> str:
        inner_task.append(starter.start(inner(), "inner"))
        await asyncio.sleep(0)
        return "outer"

    outer_task = starter.start(outer(), "outer")
    assert outer_task is not None
    assert inner_task[0] is not None
    assert inner_task[0] is not outer_task
    gate.set_result(None)
    assert await outer_task == "outer"
    assert await inner_task[0] == "inner"
    starter.close()


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
