"""The inventory service: ``uvicorn shop.inventory:inventory --port 8001``."""

from typing import Any

from microsaga import Message
from microsaga.participant import Participant

inventory = Participant()


@inventory.handler("Inventory.Reserve")
async def reserve(msg: Message) -> dict[str, Any]:
    order = msg.json()
    return {**order, "reservation": f"R-{order['order_id']}"}


@inventory.handler("Inventory.Release")
async def release(msg: Message) -> dict[str, Any]:
    forward = msg.json()  # {"request": ..., "response": ...} by default
    return {"released": forward["response"]["reservation"]}
