"""In-process transports for tests and the demo: :class:`MemoryBroker`, :class:`MockClient`."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from ..message import Message
from .base import Broker, Client, Handler, Subscription, to_message

__all__ = ["MemoryBroker", "MockClient"]

log = logging.getLogger("microsaga.transports")


class MockClient(Client):
    """A client that answers calls with ``handler(service, endpoint, message)``.

    The handler (sync or async) returns the response (a Message or a JSON-able
    value) or raises; ``calls`` lists every ``(service, endpoint, message)`` seen.
    """

    def __init__(
        self, handler: Callable[[str, str, Message], Awaitable[Any] | Any] | None = None
    ) -> None:
        self.handler = handler
        self.calls: list[tuple[str, str, Message]] = []

    async def call(
        self, service: str, endpoint: str, request: Message, *, timeout: float | None = None
    ) -> Message:
        self.calls.append((service, endpoint, request))
        if self.handler is None:
            return Message(request.body)
        result = self.handler(service, endpoint, request)
        if inspect.isawaitable(result):
            result = await result
        return to_message(result)


class _MemorySubscription(Subscription):
    """Registered as soon as ``subscribe`` is called; awaiting it is optional."""

    def __init__(self, broker: MemoryBroker, topic: str, handler: Handler) -> None:
        self.broker, self.topic, self.handler = broker, topic, handler

    def __await__(self) -> Generator[Any, None, _MemorySubscription]:
        return self
        yield  # a generator that returns at once

    async def close(self) -> None:
        handlers = self.broker._subscribers.get(self.topic, [])
        if self.handler in handlers:
            handlers.remove(self.handler)


class MemoryBroker(Broker):
    """A broker inside the process.

    ``published`` lists every ``(topic, Message)``. ``subscribe(topic, handler)``
    calls the handler for each message published afterwards; its return value is
    published as the reply when the message asks for one.
    """

    url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, Message]] = []
        self._subscribers: dict[str, list[Handler]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, topic: str, message: Message) -> None:
        self.published.append((topic, message))
        for handler in list(self._subscribers.get(topic, ())):
            task = asyncio.get_running_loop().create_task(self._deliver(handler, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, handler: Handler, message: Message) -> None:
        try:
            await self.handle(handler, message)
        except Exception:
            log.exception("memory broker: subscriber of a message failed")

    def subscribe(self, topic: str, handler: Handler) -> _MemorySubscription:
        """Subscribe at once (``await`` the result or not, as you like)."""
        self._subscribers[topic].append(handler)
        return _MemorySubscription(self, topic, handler)

    async def close(self) -> None:
        await super().close()
        for task in list(self._tasks):
            task.cancel()
