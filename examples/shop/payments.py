# examples/shop/payments.py: the payments service of the README's quick start
from typing import Any

from microsaga import Message, StepError
from microsaga.participant import Participant, SQLiteDedupeStore

payments = Participant(dedupe=SQLiteDedupeStore("payments-dedupe.db"))


@payments.handler("Payments.Charge")
async def charge(msg: Message) -> dict[str, Any]:
    order = msg.json()
    if order["total"] > 1000:
        raise StepError("over the card limit", code="over_limit", retryable=False)
    return {**order, "payment": f"P-{order['order_id']}"}  # the order, and what it did


@payments.handler("Payments.Refund")
async def refund(msg: Message) -> dict[str, Any]:
    forward = msg.json()  # {"request": ..., "response": ...} by default
    return {"refunded": forward["response"]["payment"]}
