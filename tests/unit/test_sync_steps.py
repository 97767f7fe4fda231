"""Plain ``def`` step functions: off the event loop, retried and compensated like async ones."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading

import pytest

from microsaga import ExecutionFailedError, Flow, FunctionStep, Message, Retry, Status

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_a_blocking_sync_step_does_not_stall_the_loop(flow: Flow) -> None:
    release = threading.Event()

    def blocks(m: Message) -> str:
        release.wait(30)  # blocks its thread, never the loop
        return "released"

    async def quick(m: Message) -> str:
        return "quick"

    blocked = await flow.workflow_create("blocked", FunctionStep(blocks, id="b"))
    other = await flow.workflow_create("other", FunctionStep(quick, id="q"))
    held = asyncio.ensure_future(blocked.execute({}))
    # the loop goes on: another execution runs to the end while the first is blocked
    eid = await asyncio.wait_for(other.execute({}), 10)
    assert (await flow.execution(eid)).status is Status.SUCCESS
    assert not held.done()
    release.set()
    info = await flow.execution(await asyncio.wait_for(held, 10))
    assert info.steps["b"].response is not None
    assert info.steps["b"].response.json() == "released"


async def test_sync_steps_that_block_together_each_get_a_thread(flow: Flow) -> None:
    width = 12  # more than the threads started at once: the others when they block
    together = threading.Barrier(width, timeout=20)  # broken if any of them waits its turn

    def part(m: Message) -> int:
        return together.wait()

    steps = [FunctionStep(part, id=f"p{k}") for k in range(width)]
    wf = await flow.workflow_create("wide", *steps)
    info = await flow.execution(await asyncio.wait_for(wf.execute({}), 30))
    assert info.status is Status.SUCCESS
    assert sorted(r.response.json() for r in info.steps.values() if r.response) == list(
        range(width)
    )


async def test_one_execution_at_a_time_keeps_to_one_thread_after_a_busy_spell(
    flow: Flow,
) -> None:
    width = 12
    together = threading.Barrier(width, timeout=20)

    def part(m: Message) -> int:
        return together.wait()

    def where(m: Message) -> str:
        return threading.current_thread().name

    wide = await flow.workflow_create(
        "wide", *(FunctionStep(part, id=f"p{k}") for k in range(width))
    )
    await asyncio.wait_for(wide.execute({}), 30)  # a dozen threads started
    first = FunctionStep(where, id="a")
    chain = await flow.workflow_create(
        "chain", first, FunctionStep(where, id="b", requires=[first])
    )
    names = set()
    for _ in range(5):
        info = await flow.execution(await chain.execute({}))
        names |= {r.response.json() for r in info.steps.values() if r.response}
    assert len(names) == 1  # the thread used last, still warm


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and two CPUs",
)
async def test_sync_steps_running_together_may_use_every_cpu(flow: Flow) -> None:
    """A lone sync call runs on the loop's CPU (cheaper hops); steps that run at once,
    after one (a fan-out behind a lone step), run on any CPU again."""
    every = os.sched_getaffinity(0)
    together = threading.Barrier(3, timeout=10)

    def first(m: Message) -> int:
        return len(os.sched_getaffinity(0))

    def part(m: Message) -> int:
        together.wait()  # all three in flight at once
        return len(os.sched_getaffinity(0))

    parts = [FunctionStep(part, id=f"part{k}", requires=["first"]) for k in range(3)]
    wf = await flow.workflow_create("fan", FunctionStep(first, id="first"), *parts)
    for _ in range(3):  # the threads, pinned by a lone call, are set free by each fan-out
        info = await flow.execution(await wf.execute({}))
        assert info.response is not None
        assert info.response.json() == {f"part{k}": len(every) for k in range(3)}
        assert info.steps["first"].response is not None


async def test_a_failing_sync_step_is_retried(flow: Flow) -> None:
    attempts: list[str] = []

    def flaky(m: Message) -> str:
        attempts.append(threading.current_thread().name)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    step = FunctionStep(flaky, id="f", retry=Retry(max_attempts=3, initial_interval=0.0))
    wf = await flow.workflow_create("flaky", step)
    info = await flow.execution(await wf.execute({}))
    assert info.status is Status.SUCCESS
    assert info.steps["f"].attempts == 3
    assert all(name.startswith("microsaga-step") for name in attempts)


async def test_a_failing_sync_step_is_compensated(flow: Flow) -> None:
    undone: list[str] = []

    def reserve(m: Message) -> str:
        return "R-1"

    def release(m: Message) -> None:
        undone.append(m.json()["response"])

    def charge(m: Message) -> str:
        raise RuntimeError("card declined")

    r = FunctionStep(reserve, id="reserve", compensate=FunctionStep(release, id="release"))
    c = FunctionStep(charge, id="charge", requires=[r])
    wf = await flow.workflow_create("order", r, c)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute({})
    assert err.value.step_id == "charge"
    assert err.value.compensated
    assert "card declined" in str(err.value)
    assert undone == ["R-1"]
    info = await flow.execution(err.value.execution_id or "")
    assert info.steps["reserve"].status is Status.COMPENSATED


async def test_a_sync_step_sees_the_callers_context_variables(flow: Flow) -> None:
    def which(m: Message) -> str:
        return request_id.get()

    wf = await flow.workflow_create("ctx", FunctionStep(which, id="w"))
    token = request_id.set("req-42")
    try:
        info = await flow.execution(await wf.execute({}))
    finally:
        request_id.reset(token)
    assert info.steps["w"].response is not None
    assert info.steps["w"].response.json() == "req-42"


async def test_what_a_sync_function_returns_is_its_response_as_an_async_ones(
    flow: Flow,
) -> None:
    """Made a Message on its thread: a dict, a typed value, raw bytes; an awaitable it
    returns is awaited on the loop, its result taken as an async function's."""

    async def later(value: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"later": value}

    def typed(n: int) -> list[int]:
        return [n, n]

    steps = [
        FunctionStep(lambda m: {"n": m.json()}, id="dict"),
        FunctionStep(typed, id="typed"),
        FunctionStep(lambda m: b"\x00raw", id="raw"),
        FunctionStep(lambda m: later(m.json()), id="awaitable"),
    ]
    wf = await flow.workflow_create("returns", *steps)
    info = await flow.execution(await wf.execute(7))
    bodies = {sid: run.response.body for sid, run in info.steps.items() if run.response}
    assert bodies == {
        "dict": b'{"n":7}',
        "typed": b"[7,7]",
        "raw": b"\x00raw",
        "awaitable": b'{"later":7}',
    }


async def test_a_sync_function_whose_result_json_cannot_hold_fails_for_good(
    flow: Flow,
) -> None:
    calls: list[int] = []

    def odd(m: Message) -> object:
        calls.append(1)
        return threading.Lock()  # no JSON holds it

    retried = Retry(max_attempts=3, initial_interval=0.0)
    wf = await flow.workflow_create("odd", FunctionStep(odd, id="odd", retry=retried))
    with pytest.raises(ExecutionFailedError, match="cannot be encoded as JSON"):
        await wf.execute({})
    assert calls == [1]  # not retried: the same value would fail again


async def test_many_sync_executions_at_once_all_finish(flow: Flow) -> None:
    def double(m: Message) -> int:
        return int(m.json()) * 2

    first = FunctionStep(double, id="a")
    wf = await flow.workflow_create("many", first, FunctionStep(double, id="b", requires=[first]))
    eids = await asyncio.gather(*(wf.execute(i) for i in range(300)))
    infos = [await flow.execution(eid) for eid in eids]
    assert [i.response.json() if i.response else None for i in infos] == [i * 4 for i in range(300)]


async def test_a_flow_closes_while_a_sync_step_hangs(store_url: str) -> None:
    release = threading.Event()

    def hangs(m: Message) -> None:
        release.wait(30)

    try:
        async with Flow(store_url, poll_interval=0.05, lease_ttl=0.5) as flow:
            wf = await flow.workflow_create("hang", FunctionStep(hangs, id="h"))
            eid = await wf.execute({}, async_=True)
            while (await flow.execution(eid)).steps["h"].status is not Status.RUNNING:
                await asyncio.sleep(0.01)
        # closed without waiting for the function (after lease_ttl at most): the
        # execution is left to be resumed
    finally:
        release.set()
