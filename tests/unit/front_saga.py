"""An order saga written with the decorators, at module level so that definitions
name its functions (``tests.unit.front_saga:reserve``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TypedDict

import msgspec

from microsaga import Retry, Saga, StepContext

CALLS: list[str] = []


class Item(msgspec.Struct):
    sku: str
    qty: int


class Order(msgspec.Struct):
    order_id: int
    customer: str
    items: list[Item] = []
    fail: bool = False


@dataclass
class Reservation:
    order_id: int
    reservation: str


class Payment(TypedDict):
    order_id: int
    payment: str


saga = Saga("front-order")


async def release(request: Order, response: Reservation) -> None:
    """Undoes reserve: its input is {"request": ..., "response": ...}, by name."""
    CALLS.append(f"release {request.order_id} {response.reservation}")


@saga.step(retry=Retry(max_attempts=3, initial_interval=0.01), compensate=release)
async def reserve(order: Order) -> Reservation:
    CALLS.append(f"reserve {order.order_id}")
    return Reservation(order.order_id, f"R-{order.order_id}")


@saga.step
def refund(request: Reservation, response: Payment) -> dict[str, str]:
    CALLS.append(f"refund {response['payment']} in {threading.current_thread().name}")
    return {"refunded": response["payment"]}


@saga.step(requires=[reserve], compensate=refund)
def charge(reservation: Reservation, ctx: StepContext) -> Payment:
    CALLS.append(f"charge {reservation.order_id} attempt {ctx.attempt}")
    return {"order_id": reservation.order_id, "payment": f"P-{reservation.order_id}"}


@saga.step(requires=[reserve, "charge"])
async def ship(reserve: Reservation, charge: Payment, ctx: StepContext) -> dict[str, str]:
    """Two requirements: one parameter each, by name."""
    if reserve.order_id < 0:
        raise RuntimeError("no courier")
    CALLS.append(f"ship {reserve.reservation} {charge['payment']} as {ctx.step_id}")
    return {"tracking": f"T-{reserve.order_id}", "payment": charge["payment"]}
