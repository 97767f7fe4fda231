"""``microsaga demo``: the order saga on the embedded SQLite store, run twice.

Order 1 goes through: stock reserved, card charged, courier booked, customer told.
Order 2 finds no courier: booking is retried, fails for good, and the charge and the
reservation are compensated (refund, release) in reverse order, visibly.
"""

from __future__ import annotations

import asyncio

from rich.console import Console

from ._progress import follow
from .errors import StepError
from .flow import Flow
from .message import Message
from .status import Status
from .step import Retry
from .steps import FunctionStep

__all__ = ["order_workflow_steps", "run_demo"]

STEP_DELAY = 0.3


async def reserve_stock(msg: Message) -> dict[str, object]:
    order = msg.json()
    await asyncio.sleep(STEP_DELAY)
    return {"order_id": order["order_id"], "reservation": f"R-{order['order_id']}"}


async def release_stock(msg: Message) -> dict[str, object]:
    await asyncio.sleep(STEP_DELAY / 2)
    return {"released": msg.json()["response"]["reservation"]}


async def charge_card(msg: Message) -> dict[str, object]:
    order = msg.json()
    await asyncio.sleep(STEP_DELAY)
    return {**order, "payment": f"P-{order['order_id']}"}


async def refund_card(msg: Message) -> dict[str, object]:
    await asyncio.sleep(STEP_DELAY / 2)
    return {"refunded": msg.json()["response"]["payment"]}


async def book_courier(msg: Message) -> dict[str, object]:
    order = msg.json()
    await asyncio.sleep(STEP_DELAY / 2)
    if order["order_id"] % 2 == 0:
        raise StepError("no courier available for this address")
    return {**order, "tracking": f"T-{order['order_id']}"}


async def notify_customer(msg: Message) -> dict[str, object]:
    await asyncio.sleep(STEP_DELAY / 2)
    return {"sent": True, "tracking": msg.json()["tracking"]}


def order_workflow_steps() -> list[FunctionStep]:
    reserve = FunctionStep(
        reserve_stock, id="reserve-stock", compensate=FunctionStep(release_stock)
    )
    charge = FunctionStep(
        charge_card, id="charge-card", requires=[reserve], compensate=FunctionStep(refund_card)
    )
    ship = FunctionStep(
        book_courier,
        id="book-courier",
        requires=[charge],
        retry=Retry(max_attempts=3, initial_interval=0.2, jitter=False),
    )
    notify = FunctionStep(notify_customer, id="notify-customer", requires=[ship])
    return [reserve, charge, ship, notify]


async def run_demo(store: str, console: Console) -> int:
    console.print(f"[bold]microsaga demo[/bold]: the order saga on {store}\n")
    async with Flow(store) as flow:
        wf = await flow.workflow_create("order", *order_workflow_steps())
        await flow.workflow_save(wf)
        order = [s.id for level in wf.steps() for s in level]
        results = []
        for order_id, story in ((1, "goes through"), (2, "finds no courier and is rolled back")):
            console.print(f"[bold]order {order_id}[/bold] {story}")
            eid = await wf.execute({"order_id": order_id, "total": 42.5}, async_=True)
            info = await follow(flow, eid, console, order)
            if info.error:
                console.print(f"[red]{info.error}[/red]")
            console.print()
            results.append(info)
        ok, failed = results
        console.print(f"inspect them: microsaga --store {store} show {failed.id}", soft_wrap=True)
        expected = (
            ok.status is Status.SUCCESS
            and failed.status is Status.FAILURE
            and failed.steps["charge-card"].status is Status.COMPENSATED
            and failed.steps["reserve-stock"].status is Status.COMPENSATED
        )
        return 0 if expected else 1
