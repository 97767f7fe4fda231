"""The memory store gives back what it was given, and never its own objects."""

from __future__ import annotations

from microsaga import Flow, FunctionStep, Message, Phase, Status
from microsaga.stores.base import NewExecution, StepRecord, Transition
from microsaga.stores.memory import MemoryStore


async def add_item(m: Message) -> dict[str, object]:
    return {**m.json(), "item": "x"}


async def pay(m: Message) -> Message:
    return Message({**m.json(), "paid": True}, {"X-Receipt": ["r-1", "r-2"]})


async def test_stored_executions_read_back_whole() -> None:
    async with Flow("memory://", concurrency=64) as flow:
        a = FunctionStep(add_item, id="add")
        wf = await flow.workflow_create("cart", a, FunctionStep(pay, id="pay", requires=[a]))
        await wf.execute({"n": 0}, execution_id="first")
        for i in range(50):
            await wf.execute(Message({"n": i}, {"X-Trace": "t"}))

        done = await flow.execution("first")
        assert done.status is Status.SUCCESS
        assert done.response is not None
        assert done.response.json() == {"n": 0, "item": "x", "paid": True}
        assert done.response.header.getall("x-receipt") == ["r-1", "r-2"]
        pay_request = done.steps["pay"].request
        assert pay_request is not None
        assert pay_request.header["Idempotency-Key"] == "first:pay"
        assert list(pay_request.header)[:1] == ["Micro-Flow-Workflow"]


async def test_what_a_reader_changes_is_not_stored() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("cart", FunctionStep(add_item, id="add"))
        eid = await wf.execute({"n": 1}, execution_id="e")
        read = await flow.execution(eid)
        assert read.steps["add"].request is not None
        read.steps["add"].request.header.set("Idempotency-Key", "tampered")
        assert read.request is not None
        read.request.header.set("X-New", "1")
        again = await flow.execution(eid)
        assert again.steps["add"].request is not None
        assert again.steps["add"].request.header["Idempotency-Key"] == "e:add"
        assert "X-New" not in again.request.header


async def test_a_request_its_caller_changes_afterwards_stays_as_it_was() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("cart", FunctionStep(add_item, id="add"))
        request = Message({"n": 1}, {"X-Trace": "t"})
        eid = await wf.execute(request)
        request.header.set("X-Trace", "changed")  # to send it again, say
        read = await flow.execution(eid)
        assert read.request is not None
        assert read.request.header["X-Trace"] == "t"


async def test_a_step_record_reads_back_field_for_field() -> None:
    store = MemoryStore()
    created = NewExecution(
        id="e",
        workflow_id="w",
        version=None,
        definition_hash="h",
        definition=b"{}",
        step_ids=["a"],
        request=Message({"n": 1}),
        status=Status.RUNNING,
        owner="me",
        lease_until=10.0,
        created_at=1.0,
    )
    assert await store.commit([created]) == [True]
    written = StepRecord(
        "a",
        Phase.FORWARD,
        Status.FAILURE,
        3,
        Message({"x": 1}, {"K": "v"}),
        Message("r", {"R": ["1", "2"]}),
        "boom",
        2.0,
        3.0,
    )
    await store.commit(
        [Transition(execution_id="e", token=1, expect=Status.RUNNING, records=[written])]
    )
    loaded = await store.load("e")
    assert loaded is not None
    (read,) = loaded.records
    for field in StepRecord.__struct_fields__:
        assert getattr(read, field) == getattr(written, field), field
