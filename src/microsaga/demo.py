"""``microsaga demo``: the order saga on the embedded SQLite store, run twice.

Two small services start inside this process on free loopback ports, built with
:mod:`microsaga.participant`: ``inventory`` (Reserve, Release) and ``payments`` (Charge,
Refund). The saga calls them over real HTTP, then books a courier and tells the
customer with local functions.

Order 1 goes through. Order 2 finds no courier: booking is retried, fails for good,
and the charge and the reservation are compensated (Refund, then Release) over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from rich.console import Console
from rich.text import Text

from ._progress import follow
from ._urls import Url
from .errors import StepError
from .flow import Flow
from .hooks import Hook
from .message import Message
from .status import Status
from .step import Retry, Step
from .steps import CallStep, FunctionStep

__all__ = ["run_demo"]

STEP_DELAY = 0.3


def _services(calls: list[str]) -> tuple[Any, Any]:
    from .participant import Participant

    inventory, payments = Participant(), Participant()

    @inventory.handler("Inventory.Reserve")
    async def reserve(msg: Message) -> dict[str, Any]:
        order = msg.json()
        await asyncio.sleep(STEP_DELAY)
        calls.append(f"inventory  Reserve  order {order['order_id']}")
        return {**order, "reservation": f"R-{order['order_id']}"}

    @inventory.handler("Inventory.Release")
    async def release(msg: Message) -> dict[str, Any]:
        reservation = msg.json()["response"]["reservation"]
        calls.append(f"inventory  Release  {reservation}")
        return {"released": reservation}

    @payments.handler("Payments.Charge")
    async def charge(msg: Message) -> dict[str, Any]:
        order = msg.json()
        await asyncio.sleep(STEP_DELAY)
        calls.append(f"payments   Charge   order {order['order_id']}: {order['total']}")
        return {**order, "payment": f"P-{order['order_id']}"}

    @payments.handler("Payments.Refund")
    async def refund(msg: Message) -> dict[str, Any]:
        payment = msg.json()["payment"]
        calls.append(f"payments   Refund   {payment}")
        return {"refunded": payment}

    return inventory, payments


async def book_courier(msg: Message) -> dict[str, Any]:
    order = msg.json()
    await asyncio.sleep(STEP_DELAY / 2)
    if order["order_id"] % 2 == 0:
        raise StepError("no courier available for this address")
    return {**order, "tracking": f"T-{order['order_id']}"}


async def notify_customer(msg: Message) -> dict[str, Any]:
    await asyncio.sleep(STEP_DELAY / 2)
    return {"sent": True, "tracking": msg.json()["tracking"]}


def order_steps() -> list[Step]:
    reserve = CallStep(
        "inventory",
        "Inventory",
        "Reserve",
        retry=Retry(max_attempts=3, initial_interval=0.1),
        compensate=CallStep("inventory", "Inventory", "Release"),
    )
    charge = CallStep(
        "payments",
        "Payments",
        "Charge",
        requires=[reserve],
        compensate=CallStep("payments", "Payments", "Refund"),
        compensate_input="response",
    )
    ship = FunctionStep(
        book_courier,
        id="book-courier",
        requires=[charge],
        retry=Retry(max_attempts=3, initial_interval=0.2, jitter=False),
    )
    notify = FunctionStep(notify_customer, id="notify-customer", requires=[ship])
    return [reserve, charge, ship, notify]


@contextlib.asynccontextmanager
async def _running_services(calls: list[str]) -> AsyncIterator[dict[str, str]]:
    inventory, payments = _services(calls)
    async with inventory.serve() as inventory_url, payments.serve() as payments_url:
        yield {"inventory": inventory_url, "payments": payments_url}


async def run_demo(store: Url | None, console: Console, hooks: Sequence[Hook] = ()) -> int:
    """Run the demo on ``store`` (None: ``MICROSAGA_STORE``) with ``hooks``; 0 when
    both orders ended as they should."""
    flow = Flow(store, hooks=list(hooks))
    shown = str(flow.options.store)
    try:
        import uvicorn  # noqa: F401  - the participants need it
    except ImportError:
        console.print(
            Text("the demo serves HTTP with uvicorn: pip install 'microsaga[participant]'")
        )
        return 2
    calls: list[str] = []
    async with _running_services(calls) as services:
        console.print(Text.assemble(("microsaga demo", "bold"), f": the order saga on {shown}"))
        for name, url in services.items():
            console.print(Text(f"  service {name:<10} {url}"))
        console.print()
        flow.init(services=services)
        async with flow:
            wf = await flow.workflow_create("order", *order_steps())
            await flow.workflow_save(wf)
            order = [s.id for level in wf.steps() for s in level]
            results = []
            for order_id, story in ((1, "goes through"), (2, "finds no courier: rolled back")):
                console.print(f"[bold]order {order_id}[/bold] {story}")
                eid = await wf.execute({"order_id": order_id, "total": 42.5}, async_=True)
                info = await follow(flow, eid, console, order)
                if info.error:
                    console.print(Text(info.error, style="red"))
                console.print()
                results.append(info)
    console.print("[bold]what the services saw[/bold], in order:")
    for line in calls:
        console.print(Text(f"  {line}"))
    ok, failed = results
    console.print(Text(f"\ninspect: microsaga --store {shown} show {failed.id}"), soft_wrap=True)
    expected = (
        ok.status is Status.SUCCESS
        and failed.status is Status.FAILURE
        and failed.steps["payments.Payments.Charge"].status is Status.COMPENSATED
        and failed.steps["inventory.Inventory.Reserve"].status is Status.COMPENSATED
        and calls.index("payments   Refund   P-2") < calls.index("inventory  Release  R-2")
    )
    return 0 if expected else 1
