"""Function steps with typed parameters and results, as a user writes them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, TypedDict

import msgspec
import pytest

from microsaga import (
    DefinitionError,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    Status,
    StepContext,
)


class Order(msgspec.Struct):
    order_id: int
    customer: str


@dataclass
class Reservation:
    order_id: int
    sku: str


class Payment(TypedDict):
    payment: str
    amount: float


async def run(flow: Flow, *steps: FunctionStep, request: Any = None) -> Any:
    wf = await flow.workflow_create("typed", *steps)
    eid = await wf.execute(request)
    info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    return {sid: (r.response.json() if r.response else None) for sid, r in info.steps.items()}


async def test_each_kind_of_type_is_decoded_and_encoded(flow: Flow) -> None:
    seen: list[Any] = []

    async def reserve(order: Order) -> Reservation:
        seen.append(order)
        return Reservation(order.order_id, "sku-1")

    def charge(reservation: Reservation) -> Payment:  # sync: runs in a thread
        seen.append(reservation)
        return {"payment": f"P-{reservation.order_id}", "amount": 9.5}

    async def receipt(payment: Payment) -> Order:
        seen.append(payment)
        return Order(order_id=1, customer=payment["payment"])

    r = FunctionStep(reserve, id="reserve")
    c = FunctionStep(charge, id="charge", requires=[r])
    e = FunctionStep(receipt, id="receipt", requires=[c])
    responses = await run(flow, r, c, e, request={"order_id": 4, "customer": "ada"})
    assert seen == [
        Order(4, "ada"),
        Reservation(4, "sku-1"),
        {"payment": "P-4", "amount": 9.5},
    ]
    assert responses == {
        "reserve": {"order_id": 4, "sku": "sku-1"},
        "charge": {"payment": "P-4", "amount": 9.5},
        "receipt": {"order_id": 1, "customer": "P-4"},
    }


async def test_an_input_that_does_not_fit_fails_at_once_naming_the_field(flow: Flow) -> None:
    calls: list[str] = []

    async def first(msg: Message) -> dict[str, Any]:
        calls.append("first")
        return {"order_id": "not a number", "customer": "ada"}

    async def undo(msg: Message) -> None:
        calls.append("undo")

    async def second(order: Order) -> None:
        calls.append("second")

    one = FunctionStep(first, id="first", compensate=FunctionStep(undo))
    two = FunctionStep(second, id="second", requires=[one], retry=Retry(max_attempts=5))
    wf = await flow.workflow_create("typed", one, two)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute()
    assert err.value.step_id == "second"
    assert "parameter order" in err.value.error
    assert "Expected `int`, got `str` - at `$.order_id`" in err.value.error
    info = await flow.execution(err.value.execution_id or "")
    assert info.steps["second"].attempts == 1  # not retried: it cannot fit next time either
    assert info.steps["first"].status is Status.COMPENSATED
    assert calls == ["first", "undo"]


async def test_a_body_that_is_not_json_fails_the_typed_step(flow: Flow) -> None:
    async def typed(order: Order) -> None:
        return None

    async def garbled(msg: Message) -> Message:  # a step may answer anything
        return Message(b"{nope")

    first = FunctionStep(garbled, id="garbled")
    wf = await flow.workflow_create(
        "typed", first, FunctionStep(typed, id="typed", requires=[first])
    )
    with pytest.raises(ExecutionFailedError, match="JSON is malformed"):
        await wf.execute({})


async def test_several_requirements_come_one_parameter_each_by_name(flow: Flow) -> None:
    async def reserve(msg: Message) -> dict[str, Any]:
        return {"order_id": 1, "sku": "s"}

    async def charge(msg: Message) -> dict[str, Any]:
        return {"payment": "P-1", "amount": 2.0}

    async def ship(reserve: Reservation, charge: Payment, note: str = "none") -> str:
        return f"{reserve.sku} {charge['payment']} {note}"

    r, c = FunctionStep(reserve, id="reserve"), FunctionStep(charge, id="charge")
    s = FunctionStep(ship, id="ship", requires=[r, c])
    assert (await run(flow, r, c, s))["ship"] == "s P-1 none"


async def test_a_missing_requirement_parameter_is_named(flow: Flow) -> None:
    async def one(msg: Message) -> int:
        return 1

    async def two(msg: Message) -> int:
        return 2

    async def join(one: int, three: int) -> None:
        return None

    a, b = FunctionStep(one, id="one"), FunctionStep(two, id="two")
    wf = await flow.workflow_create("typed", a, b, FunctionStep(join, requires=[a, b]))
    with pytest.raises(ExecutionFailedError, match="missing required field `three`"):
        await wf.execute()


async def test_the_context_and_the_message_come_by_annotation(flow: Flow) -> None:
    async def step(ctx: StepContext, order: Order, msg: Message) -> dict[str, Any]:
        return {
            "step": ctx.step_id,
            "attempt": ctx.attempt,
            "order": order.order_id,
            "key": msg.header.get("Idempotency-Key"),
        }

    responses = await run(flow, FunctionStep(step, id="s"), request={"order_id": 8, "customer": ""})
    assert responses["s"]["step"] == "s"
    assert responses["s"]["attempt"] == 1
    assert responses["s"]["order"] == 8
    assert responses["s"]["key"].endswith(":s")


async def test_functions_of_messages_are_called_as_before(flow: Flow) -> None:
    got: list[Any] = []

    async def plain(msg):  # type: ignore[no-untyped-def]
        got.append(msg)
        return msg.json()

    def with_ctx(msg: Message, ctx: StepContext) -> Any:
        got.append((msg, ctx.step_id))
        return msg.json()

    async def loose(msg: Any) -> Any:
        got.append(msg)
        return Message(b'"raw"')

    a = FunctionStep(plain, id="a")
    b = FunctionStep(with_ctx, id="b", requires=[a])
    c = FunctionStep(loose, id="c", requires=[b])
    responses = await run(flow, a, b, c, request={"x": 1})
    assert isinstance(got[0], Message)
    assert isinstance(got[1][0], Message)
    assert got[1][1] == "b"
    assert isinstance(got[2], Message)
    assert responses == {"a": {"x": 1}, "b": {"x": 1}, "c": "raw"}


async def test_an_empty_input_is_none(flow: Flow) -> None:
    async def maybe(order: Order | None) -> str:
        return "none" if order is None else "some"

    assert (await run(flow, FunctionStep(maybe, id="m")))["m"] == "none"


async def test_a_sync_typed_function_runs_in_the_flows_threads(flow: Flow) -> None:
    def where(order: Order) -> str:
        return threading.current_thread().name

    responses = await run(
        flow, FunctionStep(where, id="w"), request={"order_id": 1, "customer": ""}
    )
    assert responses["w"].startswith("microsaga-step")


async def test_a_typed_step_with_a_timeout(flow: Flow) -> None:
    async def quick(order: Order) -> int:
        return order.order_id

    step = FunctionStep(quick, id="q", timeout=5.0)
    assert (await run(flow, step, request={"order_id": 6, "customer": ""}))["q"] == 6


async def test_decoders_are_made_once_not_per_call(
    flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def typed(order: Order) -> int:
        return order.order_id

    def sync_typed(a: Order, b: Order, ctx: StepContext) -> int:
        return a.order_id + b.order_id

    steps = [FunctionStep(typed, id="t"), FunctionStep(sync_typed, id="s")]
    wf = await flow.workflow_create("typed", *steps)

    def no_new_decoders(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a decoder was made while running")

    monkeypatch.setattr(msgspec.json, "Decoder", no_new_decoders)
    monkeypatch.setattr(msgspec, "defstruct", no_new_decoders)
    for i in range(3):
        one = {"order_id": i, "customer": ""}
        await wf.execute({**one, "a": one, "b": one})


def test_the_engine_awaits_async_functions_directly_when_it_can() -> None:
    async def plain(msg: Message) -> None:
        return None

    async def typed(order: Order) -> None:
        return None

    async def with_ctx(order: Order, ctx: StepContext) -> None:
        return None

    def sync(order: Order) -> None:
        return None

    def sync_with_ctx(msg: Message, ctx: StepContext) -> None:
        return None

    assert FunctionStep(plain).direct is plain
    assert FunctionStep(typed).direct is not None
    assert FunctionStep(with_ctx).direct is None
    assert FunctionStep(sync).direct is None
    # sync functions needing no context run on the step threads with the request alone
    assert FunctionStep(sync).threaded is not None
    assert FunctionStep(lambda msg: None).threaded is not None
    assert FunctionStep(sync_with_ctx).threaded is None
    assert FunctionStep(plain).threaded is None


class NotDecodable:
    pass


def test_a_type_that_cannot_be_decoded_is_a_definition_error() -> None:
    def fn(thing: NotDecodable) -> None:
        return None

    with pytest.raises(DefinitionError, match="parameter thing cannot be decoded from JSON"):
        FunctionStep(fn)


def test_an_unannotated_parameter_beside_typed_ones_is_a_definition_error() -> None:
    def fn(order: Order, ctx) -> None:  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(DefinitionError, match="parameter ctx has no annotation"):
        FunctionStep(fn)


def test_an_annotation_that_cannot_be_resolved_is_a_definition_error() -> None:
    namespace: dict[str, Any] = {}
    exec(
        "from __future__ import annotations\n"
        "def fn(order: Missing) -> None:\n"
        "    return None\n"
        "def fine(msg: Message, ctx: StepContext) -> None:\n"
        "    return None\n",
        namespace,
    )
    with pytest.raises(DefinitionError, match="cannot resolve the annotation 'Missing'"):
        FunctionStep(namespace["fn"])
    FunctionStep(namespace["fine"])  # imported for type checkers only: still known


@pytest.mark.parametrize("is_async", [True, False])
async def test_a_result_json_cannot_hold_fails_at_once_saying_so(
    flow: Flow, is_async: bool
) -> None:
    """An object of no JSON type fails as NaN does: at once, not retried (it would be
    the same object again), with words that say it is the result."""

    class Plain:
        pass

    calls: list[int] = []

    async def answer_async(order: Order) -> Plain:
        calls.append(1)
        return Plain()

    def answer_sync(order: Order) -> Plain:
        calls.append(1)
        return Plain()

    fn = answer_async if is_async else answer_sync
    step = FunctionStep(fn, id="answer", retry=Retry(max_attempts=3))
    wf = await flow.workflow_create("typed", step)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute({"order_id": 1, "customer": "ada"})
    assert "the result cannot be encoded as JSON" in err.value.error
    assert "type Plain is unsupported" in err.value.error
    assert "NotImplementedError" not in err.value.error
    assert calls == [1]
