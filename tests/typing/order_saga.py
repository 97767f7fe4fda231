"""A user's saga written with the decorators: ``mypy --strict`` must pass on it
(tests/unit/test_front_typing.py), and it runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TypedDict, assert_type

import msgspec

from microsaga import Flow, Retry, Saga, StepContext, SyncFlow


class Order(msgspec.Struct):
    order_id: int
    total: float


@dataclass
class Reservation:
    order_id: int
    reservation: str


class Payment(TypedDict):
    payment: str


saga = Saga("typed-order")


def release(request: Order, response: Reservation) -> None:
    print("released", response.reservation)


@saga.step(retry=Retry(max_attempts=3), timeout=2.0, compensate=release)
async def reserve(order: Order) -> Reservation:
    return Reservation(order.order_id, f"R-{order.order_id}")


@saga.step(requires=[reserve])
def charge(reservation: Reservation, ctx: StepContext) -> Payment:
    return {"payment": f"P-{reservation.order_id}-{ctx.attempt}"}


@saga.step(requires=[reserve, charge])
async def ship(reserve: Reservation, charge: Payment) -> str:
    return f"{reserve.reservation} {charge['payment']}"


@saga.step
async def audit(order: Order) -> None:
    return None


async def direct_calls(ctx: StepContext) -> None:
    # the decorated functions keep their own signatures
    assert_type(await reserve(Order(1, 2.0)), Reservation)
    assert_type(charge(Reservation(1, "R-1"), ctx), Payment)
    assert_type(await ship(Reservation(1, "R-1"), {"payment": "P"}), str)


async def main() -> str:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_add(saga)
        eid: str = await wf.execute(Order(order_id=1, total=9.5))
        info = await flow.execution(eid)
        assert info.response is not None
        return str(info.response.json()["ship"])


def main_sync() -> str:
    with SyncFlow("memory://") as flow:
        eid = flow.workflow_add(saga).execute(Order(order_id=2, total=1.0))
        response = flow.execution(eid).response
        assert response is not None
        return str(response.json()["ship"])


if __name__ == "__main__":
    print(asyncio.run(main()), main_sync())
