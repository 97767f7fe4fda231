"""The two narrow interfaces steps talk through: :class:`Client` and :class:`Broker`."""

from __future__ import annotations

import abc
import asyncio
import difflib
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._urls import redact_url
from ..errors import ConfigurationError, StepError, TransportError, one_line
from ..message import Message, encode_json, json_message
from ..observability.logs import about_request
from ..protocol import CORRELATION_HEADER, ERROR_HEADER, REPLY_TO_HEADER, REPLY_TOPIC_PREFIX

__all__ = [
    "CORRELATION_HEADER",
    "ERROR_HEADER",
    "REPLY_TOPIC_PREFIX",
    "REPLY_TO_HEADER",
    "Broker",
    "Client",
    "Handler",
    "Subscription",
    "check_url_address",
    "check_url_options",
    "error_reply",
    "raise_for_error_reply",
    "redact_url",
    "to_message",
    "url_option",
]

log = logging.getLogger("microsaga.transports")


def check_url_address(url: str, setting: str) -> None:
    """Refuse a broker URL without a host, or with a port that is not one: the
    drivers fail on them with a bare ``ValueError``, or retry them for ever."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number from 0 to 65535
    except ValueError:
        raise ConfigurationError(
            setting, f"{redact_url(url)}: the port must be a number from 1 to 65535"
        ) from None
    if not parts.hostname:
        raise ConfigurationError(
            setting, f"{redact_url(url)}: no host (write {parts.scheme}://HOST:PORT)"
        )
    if port == 0:
        raise ConfigurationError(
            setting, f"{redact_url(url)}: the port must be a number from 1 to 65535"
        )


def check_url_options(
    query: list[tuple[str, str]], ours: tuple[str, ...], url: str, setting: str
) -> None:
    """Refuse a query parameter of a broker URL that is a misspelling of one of
    ``ours`` (``?exchang=``): the driver would take it for one of its own, or drop it,
    and the broker would run without the option meant. Other parameters go to the
    driver, which knows its own."""
    for key, _ in query:
        if key in ours:
            continue
        close = difflib.get_close_matches(key, ours, n=1, cutoff=0.75)
        if close:
            raise ConfigurationError(
                setting, f"{redact_url(url)}: unknown option {key!r}; did you mean {close[0]}?"
            )


def url_option(url: str, name: str, setting: str) -> tuple[str | None, str]:
    """Our option ``name`` of a broker URL (``?exchange=``): its value (None without
    it), and the URL without it, for the driver; a misspelling of it is refused (see
    :func:`check_url_options`)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    check_url_options(query, (name,), url, setting)
    value = next((v for k, v in query if k == name), None)
    rest = urlencode([(k, v) for k, v in query if k != name])
    return value, urlunsplit(parts._replace(query=rest))


Handler = Callable[[Message], Awaitable[Any] | Any]
"""A subscriber: takes a Message; its return value (if not None) is the reply."""


def to_message(value: Any) -> Message:
    """A handler's or function's return value as a Message (None is an empty body)."""
    if type(value) is dict:  # the usual result: what Message(value) makes, sooner
        return json_message(value)
    if isinstance(value, Message):
        return value
    return Message(value)


class Client(abc.ABC):
    """Calls ``Name.Method`` on a service (RPC)."""

    @abc.abstractmethod
    async def call(
        self, service: str, endpoint: str, request: Message, *, timeout: float | None = None
    ) -> Message:
        """Send ``request`` to ``service``'s ``endpoint`` and return its response.

        Raises:
            TransportError: the call failed; ``retryable`` says whether to try again.
        """

    def has_service(self, service: str) -> bool:
        """Whether this client knows how to reach ``service``."""
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Subscription(abc.ABC):
    """A running subscription; ``await sub.close()`` stops it."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Broker(abc.ABC):
    """Publishes messages on topics, confirmed by the broker, and subscribes to them.

    ``request`` (publish and wait for one reply) is built here on ``publish`` and
    ``subscribe``: replies come to one reply topic per broker object and are matched
    by ``Micro-Flow-Correlation-Id``.
    """

    url: str = ""
    reply_timeout: float = 60.0  # the longest wait for a reply when the step sets no timeout

    def __init__(self) -> None:
        self._reply_topic: str | None = None
        self._reply_sub: Subscription | None = None
        self._reply_lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[Message]] = {}

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Connect; raise :class:`TransportError` naming the URL when the broker is down."""

    async def close(self) -> None:
        if self._reply_sub is not None:
            sub, self._reply_sub = self._reply_sub, None
            await sub.close()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(TransportError(f"broker {self.url} closed"))
        self._waiting.clear()

    def topic_error(self, topic: str) -> str | None:
        """Why no message can ever be published on ``topic`` here (a wildcard NATS
        subject, a routing key over AMQP's 255 bytes ...), or None when it can be.

        ``publish`` fails such a topic at once, without retry; calling this first
        lets a caller reject a step before anything runs.
        """
        return None

    @abc.abstractmethod
    async def publish(self, topic: str, message: Message) -> None:
        """Publish and return once the broker has confirmed the message.

        Raises:
            StepError: not retryable: the message can never be published as it is.
            TransportError: retryable: the broker did not confirm it.
        """

    @abc.abstractmethod
    def subscribe(self, topic: str, handler: Handler) -> Awaitable[Subscription]:
        """Call ``handler`` for each message on ``topic``; reply when it returns a value
        and the message names a reply topic. Implementations are ``async def``."""

    def reply_topic_name(self) -> str:
        return f"{REPLY_TOPIC_PREFIX}{uuid.uuid4().hex}"

    async def _ensure_reply_subscription(self) -> str:
        async with self._reply_lock:
            if self._reply_topic is None:
                topic = self.reply_topic_name()
                self._reply_sub = await self.subscribe(topic, self._on_reply)
                self._reply_topic = topic
            return self._reply_topic

    async def _on_reply(self, message: Message) -> None:
        corr = message.header.get(CORRELATION_HEADER)
        fut = self._waiting.get(corr) if corr else None
        if fut is not None and not fut.done():
            fut.set_result(message)

    async def request(
        self, topic: str, message: Message, *, timeout: float | None = None
    ) -> Message:
        """Publish ``message`` with a reply topic and a correlation id; return the first
        reply carrying that id, within ``timeout`` (or ``reply_timeout``) seconds.

        Raises:
            TransportError: no reply in time (retryable).
            StepError: the participant replied with an error (see :func:`error_reply`).
        """
        reply_topic = await self._ensure_reply_subscription()
        corr = message.header.get(CORRELATION_HEADER) or uuid.uuid4().hex
        header = message.header.copy()
        header.set(REPLY_TO_HEADER, reply_topic)
        header.set(CORRELATION_HEADER, corr)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[corr] = fut
        timeout = timeout or self.reply_timeout
        try:
            await self.publish(topic, Message(message.body, header))
            async with asyncio.timeout(timeout):
                reply = await fut
        except TimeoutError:
            raise TransportError(
                f"no reply on {topic} within {timeout:g}s (reply topic {reply_topic})"
            ) from None
        finally:
            self._waiting.pop(corr, None)
        return raise_for_error_reply(reply, topic)

    async def handle(self, handler: Handler, message: Message) -> None:
        """Run a subscriber on ``message`` (sync or async) and publish its return value,
        when it is not None, as the reply. Its exceptions propagate: each broker decides
        on redelivery."""
        result = handler(message)
        if inspect.isawaitable(result):
            result = await result
        if result is not None:
            await self.reply(message, result)

    async def reply(self, request: Message, value: Any) -> None:
        """Publish ``value`` as the reply to ``request`` (used by subscribers).

        A reply that can never be sent as it is (a header the broker cannot carry, a
        body over its limit) is replaced by an error reply saying so, which fails the
        step; when even that cannot be sent, it is dropped with a warning. Either way
        the request is done with, rather than delivered again for ever.

        Raises:
            TransportError: the broker cannot be reached (the request comes again).
        """
        reply_to = request.header.get(REPLY_TO_HEADER)
        if not reply_to:
            return
        corr = request.header.get(CORRELATION_HEADER, "")
        response = to_message(value)
        header = response.header.copy()
        header.set(CORRELATION_HEADER, corr)
        try:
            await self.send_reply(reply_to, Message(response.body, header), request=request)
            return
        except StepError as exc:
            if exc.retryable:
                raise
            failure = exc
        error = error_reply(failure.code, f"the reply cannot be sent: {one_line(failure)}")
        error.header.set(CORRELATION_HEADER, corr)
        try:
            await self.send_reply(reply_to, error, request=request)
        except StepError as exc:
            if exc.retryable:
                raise
            log.warning(
                "reply to %r dropped: %s",
                reply_to,
                one_line(exc),
                extra=about_request(request.header),
            )

    async def send_reply(
        self, topic: str, reply: Message, *, request: Message | None = None
    ) -> None:
        """Send a reply to a reply topic; a plain publish unless the broker knows better.
        ``request`` is what it replies to: its ids name the execution in log records."""
        await self.publish(topic, reply)


def error_reply(code: str, message: str, *, retryable: bool = False) -> Message:
    """The reply a participant sends when it could not handle a ``reply=True`` request.

    The header :data:`ERROR_HEADER` carries the code; the body is
    ``{"error": {"code", "message", "retryable"}}``, as over HTTP.
    """
    body = encode_json({"error": {"code": code, "message": message, "retryable": retryable}})
    return Message(body, {ERROR_HEADER: code})


def raise_for_error_reply(reply: Message, topic: str) -> Message:
    """``reply`` itself, unless it reports an error: then the step fails with it.

    Raises:
        StepError: with the participant's code; retryable only when it said so.
    """
    code = reply.header.get(ERROR_HEADER)
    if code is None:
        return reply
    text, retryable = "", False
    try:
        error = (reply.json() or {}).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        text = str(error.get("message") or "")
        retryable = error.get("retryable") is True
    raise StepError(
        f"reply on {topic}: [{code}] {text or 'the participant failed'}",
        code=code or "reply_error",
        retryable=retryable,
    )
