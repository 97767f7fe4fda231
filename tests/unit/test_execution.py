"""Dataflow, inputs, headers, retries, timeouts and fallbacks, on memory and SQLite."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import warnings
from typing import Any

import pytest

from microsaga import (
    CallStep,
    ConfigurationError,
    ExecutionConflictError,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    MissingClientError,
    PublishStep,
    Retry,
    Status,
    Step,
    StepContext,
    StepError,
    StepNotExistsError,
    WaitStep,
)
from microsaga.flow import new_execution_id
from microsaga.testing import MemoryBroker, MockClient


def fn(sid: str, body: Any = None, **opts: Any) -> FunctionStep:
    async def run(msg: Message) -> Any:
        return body if body is not None else {sid: msg.json()}

    run.__qualname__ = sid
    return FunctionStep(run, id=sid, **opts)


async def test_chain_passes_each_response_to_the_next_step(flow: Flow) -> None:
    async def double(msg: Message) -> dict[str, int]:
        return {"n": msg.json()["n"] * 2}

    a = FunctionStep(double, id="a")
    b = FunctionStep(double, id="b", requires=[a])
    c = FunctionStep(double, id="c", requires=[b])
    wf = await flow.workflow_create("chain", a, b, c)
    eid = await wf.execute({"n": 1})
    info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    assert info.response is not None
    assert info.response.json() == {"n": 8}
    assert info.steps["a"].request is not None
    assert info.steps["a"].request.json() == {"n": 1}
    assert info.steps["b"].request.json() == {"n": 2}  # type: ignore[union-attr]
    assert info.steps["c"].response.json() == {"n": 8}  # type: ignore[union-attr]
    assert all(r.attempts == 1 for r in info.steps.values())
    assert all(r.started_at and r.finished_at for r in info.steps.values())
    assert wf.status is Status.SUCCESS
    assert b.status is Status.SUCCESS
    assert b.response == info.steps["b"].response


async def test_independent_steps_run_at_the_same_time(flow: Flow) -> None:
    arrived = 0
    both = asyncio.Event()

    async def meet(msg: Message) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)  # deadlocks unless both run at once

    wf = await flow.workflow_create(
        "fan", FunctionStep(meet, id="left"), FunctionStep(meet, id="right")
    )
    eid = await wf.execute()
    assert (await flow.execution(eid)).status is Status.SUCCESS


async def test_no_barrier_between_levels(flow: Flow) -> None:
    # slow is on level 0, after is on level 1: after must start while slow still runs
    after_started = asyncio.Event()

    async def slow(msg: Message) -> str:
        await asyncio.wait_for(after_started.wait(), 5)
        return "slow"

    async def fast(msg: Message) -> str:
        return "fast"

    async def after(msg: Message) -> str:
        after_started.set()
        return "after"

    s = FunctionStep(slow, id="slow")
    f = FunctionStep(fast, id="fast")
    a = FunctionStep(after, id="after", requires=[f])
    wf = await flow.workflow_create("dataflow", s, f, a)
    assert [[x.id for x in lvl] for lvl in wf.steps()] == [["fast", "slow"], ["after"]]
    eid = await wf.execute()
    info = await flow.execution(eid)
    assert info.response is not None
    assert info.response.json() == {"after": "after", "slow": "slow"}


async def test_concurrency_bounds_running_steps(store_url: str) -> None:
    running = peak = 0

    async def work(msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    async with Flow(store_url, concurrency=2) as flow:
        steps = [FunctionStep(work, id=f"s{i}") for i in range(6)]
        wf = await flow.workflow_create("bounded", *steps)
        await wf.execute()
    assert peak == 2


async def test_inputs_single_and_several_parents(flow: Flow) -> None:
    seen: dict[str, Any] = {}

    def record(sid: str, out: Any) -> FunctionStep:
        async def run(msg: Message) -> Any:
            seen[sid] = msg.body
            return out

        return FunctionStep(run, id=sid)

    root = record("root", {"r": 1})
    empty = record("empty", None)
    text = record("text", Message(b"not json"))
    one = record("one", {"one": True})
    one.require(root)
    empty.require(root)
    text.require(root)
    join = record("join", "done")
    join.require(one, empty, text)
    wf = await flow.workflow_create("inputs", root, empty, text, one, join)
    eid = await wf.execute(Message(b'{"order": 7}'))
    assert seen["root"] == b'{"order": 7}'  # the request, byte for byte
    assert seen["one"] == b'{"r":1}'  # the single parent's response
    assert Message(seen["join"]).json() == {"one": {"one": True}, "empty": None, "text": "not json"}
    info = await flow.execution(eid)
    assert info.steps["empty"].response == Message()  # an empty response, not None
    assert info.response is not None
    assert info.response.json() == "done"


async def test_response_of_several_leaves_is_an_object(flow: Flow) -> None:
    wf = await flow.workflow_create("leaves", fn("x", {"v": "x"}), fn("y", {"v": "y"}))
    info = await flow.execution(await wf.execute())
    assert info.response is not None
    assert info.response.json() == {"x": {"v": "x"}, "y": {"v": "y"}}


async def test_headers_carry_ids_and_the_idempotency_key(flow: Flow) -> None:
    headers: list[dict[str, list[str]]] = []

    async def look(msg: Message, ctx: StepContext) -> None:
        headers.append(msg.header.to_dict())
        assert msg.header["Idempotency-Key"] == ctx.idempotency_key

    a = FunctionStep(look, id="a")
    b = FunctionStep(look, id="b", requires=[a])
    wf = await flow.workflow_create("hdr", a, b)
    eid = await wf.execute(Message(b"{}", {"traceparent": "00-abc-01", "X-Tenant": ["t1", "t2"]}))
    assert len(headers) == 2
    for sid, header in zip(["a", "b"], headers, strict=True):
        assert header["traceparent"] == ["00-abc-01"]
        assert header["X-Tenant"] == ["t1", "t2"]
        assert header["Micro-Flow-Workflow"] == ["hdr"]
        assert header["Micro-Flow-Execution"] == [eid]
        assert header["Micro-Flow-Step"] == [sid]
        assert header["Idempotency-Key"] == [f"{eid}:{sid}"]


async def test_each_execution_of_a_workflow_has_its_own_ids(flow: Flow) -> None:
    seen: list[dict[str, list[str]]] = []

    async def look(msg: Message) -> None:
        seen.append(msg.header.to_dict())

    a = FunctionStep(look, id="a")
    b = FunctionStep(look, id="b", requires=[a])
    wf = await flow.workflow_create("ids", a, b)
    first, second = await wf.execute(), await wf.execute()  # requests without a header
    expected = [
        {
            "Micro-Flow-Workflow": ["ids"],
            "Micro-Flow-Execution": [eid],
            "Micro-Flow-Step": [sid],
            "Idempotency-Key": [f"{eid}:{sid}"],
        }
        for eid in (first, second)
        for sid in ("a", "b")
    ]
    assert seen == expected
    info = await flow.execution(second)
    assert info.steps["b"].request is not None
    assert info.steps["b"].request.header.to_dict() == expected[3]


async def test_retries_with_backoff_keep_the_idempotency_key(flow: Flow) -> None:
    attempts: list[tuple[int, str]] = []

    async def flaky(msg: Message, ctx: StepContext) -> str:
        attempts.append((ctx.attempt, msg.header["Idempotency-Key"]))
        if ctx.attempt < 3:
            raise ConnectionError("service hiccup")
        return "ok"

    step = FunctionStep(flaky, id="flaky", retry=Retry(max_attempts=3, initial_interval=0.01))
    wf = await flow.workflow_create("retry", step)
    eid = await wf.execute()
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert len({key for _, key in attempts}) == 1
    run = (await flow.execution(eid)).steps["flaky"]
    assert run.status is Status.SUCCESS
    assert run.attempts == 3


def test_backoff_grows_caps_and_jitters() -> None:
    retry = Retry(max_attempts=10, initial_interval=1.0, multiplier=2.0, max_interval=5.0)
    assert retry.interval(1, 0.999) == pytest.approx(1.0, rel=0.01)
    assert retry.interval(1, 0.0) == pytest.approx(0.5)
    assert retry.interval(3, 0.999) == pytest.approx(4.0, rel=0.01)
    assert retry.interval(6, 0.999) == pytest.approx(5.0, rel=0.01)
    plain = Retry(max_attempts=3, initial_interval=0.2, jitter=False)
    assert plain.interval(2, 0.3) == pytest.approx(0.4)


@pytest.mark.parametrize(
    "retry",
    [
        Retry(max_attempts=5, initial_interval=0.01, non_retryable=(KeyError,)),
        Retry(max_attempts=5, initial_interval=0.01, non_retryable=("out_of_stock",)),
    ],
)
async def test_non_retryable_errors_fail_at_once(flow: Flow, retry: Retry) -> None:
    calls = 0

    async def picky(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if retry.non_retryable[0] is KeyError:
            raise KeyError("sku-1")
        raise StepError("no stock", code="out_of_stock")

    wf = await flow.workflow_create("picky", FunctionStep(picky, id="picky", retry=retry))
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute()
    assert calls == 1
    assert err.value.step_id == "picky"
    assert err.value.compensated is True
    assert ("sku-1" in err.value.error) or ("no stock" in err.value.error)


async def test_step_error_not_retryable_stops_retries(flow: Flow) -> None:
    calls = 0

    async def refuse(msg: Message) -> None:
        nonlocal calls
        calls += 1
        raise StepError("card declined", retryable=False)

    wf = await flow.workflow_create("r", FunctionStep(refuse, retry=Retry(max_attempts=4)))
    with pytest.raises(ExecutionFailedError, match="card declined"):
        await wf.execute()
    assert calls == 1


async def test_timeouts_per_execution_and_per_step(flow: Flow) -> None:
    async def slow(msg: Message) -> str:
        await asyncio.sleep(5)
        return "late"

    async def quick(msg: Message) -> str:
        await asyncio.sleep(0.2)
        return "fine"

    # the execution's timeout applies to every step, a step's own timeout wins
    wf = await flow.workflow_create("t", FunctionStep(quick, timeout=2.0))
    eid = await wf.execute(timeout=0.05)
    assert (await flow.execution(eid)).status is Status.SUCCESS

    wf2 = await flow.workflow_create(
        "t2", FunctionStep(slow, id="slow", retry=Retry(max_attempts=2, initial_interval=0.01))
    )
    with pytest.raises(ExecutionFailedError, match=r"timed out after 0\.05s") as err:
        await wf2.execute(timeout=0.05)
    run = (await flow.execution(err.value.execution_id)).steps["slow"]
    assert run.status is Status.FAILURE
    assert run.attempts == 2  # a timed-out attempt is retryable
    # the record says which error it was, as for an exception of the step's own
    assert run.error == "StepTimeoutError: step slow timed out after 0.05s"


async def test_fallback_answers_when_the_step_fails(flow: Flow) -> None:
    async def primary(msg: Message) -> None:
        raise ConnectionError("primary down")

    async def backup(msg: Message) -> dict[str, str]:
        assert msg.header["Idempotency-Key"].endswith(":primary:fallback")
        return {"via": "backup", **msg.json()}

    step = FunctionStep(primary, id="primary", fallback=FunctionStep(backup))
    wf = await flow.workflow_create("fb", step)
    eid = await wf.execute({"x": 1})
    run = (await flow.execution(eid)).steps["primary"]
    assert run.status is Status.SUCCESS
    assert run.response is not None
    assert run.response.json() == {"via": "backup", "x": 1}
    assert run.error is not None
    assert "primary down" in run.error


async def test_sync_functions_run_in_a_worker_thread(flow: Flow) -> None:
    loop_thread = threading.get_ident()

    def blocking(msg: Message) -> dict[str, bool]:
        return {"other_thread": threading.get_ident() != loop_thread}

    wf = await flow.workflow_create("sync", FunctionStep(blocking))
    info = await flow.execution(await wf.execute())
    assert info.response is not None
    assert info.response.json() == {"other_thread": True}


async def test_sync_functions_run_as_many_at_once_as_the_concurrency(store_url: str) -> None:
    # more sync steps than asyncio's default thread pool holds on a small machine: each
    # waits for all the others, so they only finish if they all run at the same time
    width = (os.cpu_count() or 1) + 8
    together = threading.Barrier(width, timeout=10)

    def part(msg: Message) -> int:
        return together.wait()

    steps = [FunctionStep(part, id=f"part{k}") for k in range(width)]
    async with Flow(store_url, concurrency=width) as flow:
        wf = await flow.workflow_create("wide-sync", *steps)
        info = await flow.execution(await wf.execute())
    assert info.status is Status.SUCCESS
    assert info.response is not None
    assert sorted(info.response.json().values()) == list(range(width))


async def test_call_step_through_a_mock_client(store_url: str) -> None:
    def handler(service: str, endpoint: str, msg: Message) -> Any:
        if endpoint == "Payments.Charge":
            raise StepError("card declined", retryable=False)
        return {"service": service, "endpoint": endpoint, "got": msg.json()}

    client = MockClient(handler)
    async with Flow(store_url, client=client) as flow:
        reserve = CallStep("inventory", "Inventory", "Reserve")
        assert reserve.id == "inventory.Inventory.Reserve"
        assert reserve.endpoint == "Inventory.Reserve"
        wf = await flow.workflow_create("rpc", reserve)
        info = await flow.execution(await wf.execute({"sku": "a"}))
        assert info.response is not None
        assert info.response.json() == {
            "service": "inventory",
            "endpoint": "Inventory.Reserve",
            "got": {"sku": "a"},
        }
        _service, _endpoint, sent = client.calls[0]
        assert sent.header["Idempotency-Key"] == f"{info.id}:inventory.Inventory.Reserve"
        charge = CallStep("payments", "Payments", "Charge")
        wf2 = await flow.workflow_create("rpc2", charge)
        with pytest.raises(ExecutionFailedError, match="card declined"):
            await wf2.execute()


async def test_publish_step_with_memory_broker_and_reply(store_url: str) -> None:
    broker = MemoryBroker()
    async with Flow(store_url, broker=broker) as flow:

        async def quote(msg: Message) -> dict[str, int]:
            return {"price": msg.json()["qty"] * 3}

        broker.subscribe("pricing.quote", quote)  # no await needed for the memory broker
        notify = PublishStep("orders.created")
        ask = PublishStep("pricing.quote", reply=True, timeout=2)
        assert notify.id == notify.endpoint == "orders.created"
        wf = await flow.workflow_create("pub", notify, ask)
        info = await flow.execution(await wf.execute({"qty": 2}))
        assert info.steps["orders.created"].response == Message()
        assert info.steps["pricing.quote"].response.json() == {"price": 6}  # type: ignore[union-attr]
        topics = [t for t, _ in broker.published]
        assert "orders.created" in topics
        assert "pricing.quote" in topics
        sent = dict(broker.published)["orders.created"]
        assert sent.json() == {"qty": 2}
        assert sent.header["Idempotency-Key"] == f"{info.id}:orders.created"


async def test_missing_client_fails_before_anything_is_stored(flow: Flow) -> None:
    wf = await flow.workflow_create("no-client", CallStep("payments", "Payments", "Charge"))
    with pytest.raises(MissingClientError, match="client not set"):
        await wf.execute({"x": 1})
    wf2 = await flow.workflow_create("no-broker", PublishStep("topic"))
    with pytest.raises(MissingClientError, match="client not set"):
        await wf2.execute()
    comp_only = fn("a", compensate=CallStep("inventory", "Inventory", "Release"))
    wf3 = await flow.workflow_create("no-client-comp", comp_only)
    with pytest.raises(MissingClientError):
        await wf3.execute()
    assert await flow.executions() == []


async def test_unknown_start_step(flow: Flow) -> None:
    wf = await flow.workflow_create("s", fn("a"))
    with pytest.raises(StepNotExistsError, match="nope"):
        await wf.execute(start="nope")
    assert await flow.executions() == []


async def test_start_runs_the_step_and_its_descendants(flow: Flow) -> None:
    ran: list[str] = []

    def rec(sid: str, *requires: Step) -> FunctionStep:
        async def run(msg: Message) -> Any:
            ran.append(sid)
            return {"from": sid, "in": msg.json()}

        return FunctionStep(run, id=sid, requires=list(requires))

    a = rec("a")
    b = rec("b", a)
    c = rec("c", b)
    x = rec("x")
    d = rec("d", c, x)  # only c of its requirements runs in a start=b run
    wf = await flow.workflow_create("part", a, b, c, x, d)
    eid = await wf.execute({"req": 1}, start="b")
    info = await flow.execution(eid)
    assert sorted(ran) == ["b", "c", "d"]
    assert info.steps["a"].status is Status.PENDING
    assert info.steps["a"].request is None
    assert info.steps["x"].status is Status.PENDING
    assert info.steps["b"].request.json() == {"req": 1}  # type: ignore[union-attr]
    # d requires c and x, only c ran: d gets c's response
    assert info.steps["d"].request.json() == {"from": "c", "in": {"from": "b", "in": {"req": 1}}}  # type: ignore[union-attr]
    assert info.status is Status.SUCCESS


async def test_reverse_runs_from_start_towards_the_roots(flow: Flow) -> None:
    order: list[str] = []
    bodies: list[Any] = []

    def rec(sid: str, *requires: Step) -> FunctionStep:
        async def run(msg: Message) -> str:
            order.append(sid)
            bodies.append(msg.json())
            return sid

        return FunctionStep(run, id=sid, requires=list(requires))

    a = rec("a")
    b = rec("b", a)
    c = rec("c", b)
    other = rec("other")
    wf = await flow.workflow_create("rev", a, b, c, other)
    await wf.execute({"r": 1}, start="c", reverse=True)
    assert order == ["c", "b", "a"]
    assert bodies == [{"r": 1}] * 3


async def test_custom_step_kind(flow: Flow) -> None:
    class Upper(Step):
        kind = "upper"

        def __init__(self, field: str, **opts: Any) -> None:
            self.field = field
            super().__init__(**opts)

        @property
        def endpoint(self) -> str:
            return f"upper:{self.field}"

        async def execute(self, req: Message, ctx: StepContext) -> Message:
            return Message({self.field: req.json()[self.field].upper(), "attempt": ctx.attempt})

    wf = await flow.workflow_create("custom", Upper("name"))
    info = await flow.execution(await wf.execute({"name": "ada"}))
    assert info.steps["upper:name"].response.json() == {"name": "ADA", "attempt": 1}  # type: ignore[union-attr]


def test_execution_ids_are_unique_sort_by_time_and_differ_in_a_forked_child() -> None:
    ids = [new_execution_id() for _ in range(2000)]  # several refills of the random pool
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0][:12] <= ids[-1][:12]  # the time part comes first
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12 warns of fork() in a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: what it hands out next
        os.write(write, new_execution_id()[12:].encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != new_execution_id()[12:]  # the parent's next random part is not the child's


@pytest.mark.parametrize("runs_here", [True, False], ids=["running here", "queued"])
async def test_an_execution_id_reused_with_another_workflow_is_a_conflict(runs_here: bool) -> None:
    async with Flow("memory://", worker=runs_here) as flow:
        waits = await flow.workflow_create("waits", WaitStep("paid"))
        other = await flow.workflow_create("other", fn("a"))
        await waits.execute(1, execution_id="k1", async_=True)
        with pytest.raises(ExecutionConflictError, match="k1 exists, of workflow waits, not"):
            await other.execute(1, execution_id="k1", async_=True)
        # the same workflow again is the same execution (its idempotency key)
        assert await waits.execute(1, execution_id="k1", async_=True) == "k1"
        assert (await flow.execution("k1")).workflow_id == "waits"


async def test_a_request_json_cannot_hold_is_refused_naming_the_request() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("w", fn("a"))
        with pytest.raises(ConfigurationError, match=r"^request: must be JSON: .*object"):
            await wf.execute(object())
        assert await flow.executions() == []
