"""Participant handlers with typed parameters, as typed saga steps have: the body
decoded into the parameter's type, a result of those types encoded as JSON, and a body
that does not fit answered 422 (final), never a 500 retried forever; a handler that
cannot be called is refused when it is registered."""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

import msgspec
import pytest

from microsaga import ConfigurationError, Message, StepContext
from microsaga.participant import Participant


class Order(msgspec.Struct):
    order_id: int
    total: float = 0.0


@dataclasses.dataclass
class Reservation:
    reservation: str


class Refund(TypedDict):
    payment: str


def _body(reply: Any) -> Any:
    return msgspec.json.decode(reply.body) if reply.body else None


async def test_an_async_handler_gets_its_body_decoded_and_its_result_encoded() -> None:
    inventory = Participant(tracing=False)

    @inventory.handler("Inventory.Reserve")
    async def reserve(order: Order) -> Reservation:
        return Reservation(f"R-{order.order_id}")

    reply, replayed = await inventory.handle("Inventory.Reserve", Message({"order_id": 4}))
    assert (reply.status, _body(reply), replayed) == (200, {"reservation": "R-4"}, False)


async def test_a_sync_handler_may_take_the_message_too() -> None:
    payments = Participant(tracing=False)
    seen: list[str | None] = []

    @payments.handler("Payments.Refund")
    def refund(refund: Refund, msg: Message) -> dict[str, str]:
        seen.append(msg.header.get("Idempotency-Key"))
        return {"refunded": refund["payment"]}

    request = Message({"payment": "P-1"}, {"Idempotency-Key": "e:s"})
    reply, _ = await payments.handle("Payments.Refund", request)
    assert (reply.status, _body(reply), seen) == (200, {"refunded": "P-1"}, ["e:s"])


async def test_a_body_that_does_not_fit_is_a_final_422_naming_the_field() -> None:
    inventory = Participant(tracing=False)
    ran: list[Order] = []

    @inventory.handler("Inventory.Reserve")
    async def reserve(order: Order) -> None:
        ran.append(order)

    reply, _ = await inventory.handle("Inventory.Reserve", Message({"order_id": "four"}))
    error = _body(reply)["error"]
    assert (reply.status, error["code"], error["retryable"]) == (422, "invalid_input", False)
    assert "$.order_id" in error["message"]
    assert ran == []


async def test_message_handlers_are_called_as_before() -> None:
    shop = Participant(tracing=False)

    @shop.handler("Shop.Untyped")
    def untyped(msg):  # type: ignore[no-untyped-def]
        return {"body": msg.json()}

    @shop.handler("Shop.Loose")
    async def loose(msg: Any) -> Message:
        return Message(msg.body)

    for name in ("Shop.Untyped", "Shop.Loose"):
        reply, _ = await shop.handle(name, Message({"n": 1}))
        assert reply.status == 200
    assert _body((await shop.handle("Shop.Untyped", Message({"n": 1})))[0]) == {"body": {"n": 1}}


def test_a_handler_that_cannot_be_called_is_refused_when_registered() -> None:
    shop = Participant(tracing=False)

    async def with_context(order: Order, ctx: StepContext) -> None: ...

    async def two_messages(msg: Message, other: Message) -> None: ...

    async def no_parameter() -> None: ...

    with pytest.raises(ConfigurationError, match=r"Shop\.A: a participant's handler gets no"):
        shop.add_handler("Shop.A", with_context)
    with pytest.raises(ConfigurationError, match=r"Shop\.B: .* cannot be called with one"):
        shop.add_handler("Shop.B", two_messages)
    with pytest.raises(ConfigurationError, match=r"Shop\.C: .* cannot be called with one"):
        shop.add_handler("Shop.C", no_parameter)
    assert shop.names == []


async def test_a_typed_handler_s_result_is_encoded_as_a_typed_step_s_is() -> None:
    shop = Participant(tracing=False)

    class Custom:
        pass

    @shop.handler("Shop.Odd")
    def odd(order: Order) -> Custom:
        return Custom()  # the same on every attempt: refused for good, as for a step

    reply, _ = await shop.handle("Shop.Odd", Message({"order_id": 1}))
    error = _body(reply)["error"]
    assert (reply.status, error["retryable"]) == (422, False)
    assert "cannot be encoded as JSON" in error["message"]
