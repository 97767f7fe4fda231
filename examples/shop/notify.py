"""The local step of order.yaml: ``function: shop.notify:send_email``."""

from microsaga import Message


async def send_email(msg: Message) -> dict[str, str]:
    order = msg.json()  # Charge's response: the order, with its payment
    return {"sent_to": order["customer"]}
