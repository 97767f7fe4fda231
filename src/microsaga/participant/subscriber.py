"""A participant on a broker: messages of a topic through the same handlers.

A message that asks for a reply (``PublishStep(reply=True)``) gets the handler's
result as the reply, or a failure as an error reply (see
:func:`microsaga.transports.error_reply`), which fails or retries the step. A plain
message whose handler fails with a retryable error is left to the broker to deliver
again; a final failure is logged and the message dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .._urls import broker_url
from ..errors import MicrosagaError
from ..message import Message
from ..observability.logs import about_request
from ..transports import ERROR_HEADER, error_reply, open_broker
from ..transports.base import REPLY_TO_HEADER, Broker, Subscription
from .dedupe import Reply

__all__ = ["MessageHandler", "on_message", "subscribe"]

log = logging.getLogger("microsaga.participant")

MessageHandler = Callable[[Message], Awaitable[Message | None]]
Answer = Callable[[Message], Awaitable[Reply]]


def on_message(topic: str, answer: Answer) -> MessageHandler:
    """The subscriber of ``topic``: ``answer`` (the deduplicating handler) turned into
    a reply, an error reply, a redelivery or a dropped message."""

    async def handle(message: Message) -> Message | None:
        reply = await answer(message)
        wants_reply = bool(message.header.get(REPLY_TO_HEADER))
        if reply.status < 400:
            return reply.message() if wants_reply else None
        if wants_reply:
            return _error_message(reply)
        if not reply.final:
            # nobody waits for an answer: the broker delivers the message again
            raise MicrosagaError(f"{topic}: handler failed, left for redelivery")
        log.warning(
            "%s: message dropped: %s",
            topic,
            reply.body.decode(errors="replace"),
            extra=about_request(message.header),
        )
        return None

    return handle


async def subscribe(broker: Broker | str, topic: str, handler: MessageHandler) -> Subscription:
    """Subscribe ``handler`` to ``topic``; a broker given by URL is connected now and
    closed with the subscription."""
    if not isinstance(broker, str):
        return await broker.subscribe(topic, handler)
    owned = open_broker(broker_url(broker, "participant broker"))
    await owned.connect()
    try:
        return _OwningSubscription(await owned.subscribe(topic, handler), owned)
    except BaseException:
        await owned.close()
        raise


class _OwningSubscription(Subscription):
    def __init__(self, sub: Subscription, broker: Broker) -> None:
        self.sub, self.broker = sub, broker

    async def close(self) -> None:
        try:
            await self.sub.close()
        finally:
            await self.broker.close()


def _error_message(reply: Reply) -> Message:
    error: Any
    try:
        error = msgspec.json.decode(reply.body).get("error")
    except (msgspec.DecodeError, AttributeError):
        error = None
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or f"http_{reply.status}")
    message = error_reply(code, str(error.get("message") or ""), retryable=not reply.final)
    for key, values in reply.header.items():
        if key.lower() != ERROR_HEADER.lower():
            for value in values:
                message.header.add(key, value)
    return message
