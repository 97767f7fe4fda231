"""RabbitMQ: ``Flow(broker="amqp://guest:guest@127.0.0.1:5672/")`` (``microsaga[rabbitmq]``).

Wire format (``docs/transports.md``):

- A topic is a routing key on the exchange named by the URL's ``?exchange=`` (the
  default exchange when absent, where the routing key is a queue name). The exchange
  must exist.
- Messages are persistent (``delivery_mode=2``), ``content_type`` is
  ``application/json``, and they are published with publisher confirms and
  ``mandatory`` on a channel opened with ``on_return_raises``: ``publish`` returns
  once the broker confirmed, and a message no queue receives fails the step at once
  (``StepError`` code ``amqp_unroutable``). So does, without retry, a message AMQP
  cannot carry: a routing key over 255 bytes (``amqp_bad_topic``), an
  ``Idempotency-Key``, correlation id or reply topic over 255 bytes, a header name
  over 128 (``amqp_bad_message``).
- The message header goes into the AMQP headers (a string per key, an array of
  strings for a key with several values); the ``Idempotency-Key`` is also the
  ``message_id``, ``Micro-Flow-Correlation-Id`` the ``correlation_id`` and
  ``Micro-Flow-Reply-To`` the ``reply_to``.
- ``subscribe`` declares a durable queue named after the topic (or ``queue=``), bound
  to the exchange when it is not the default one, and acks after the handler returned
  and the reply was sent; a handler that raises gets the message back after
  ``redeliver_delay``. This broker's own reply queue is exclusive and auto-deleted;
  a reply that no queue receives (its requester is gone) is dropped with a warning
  and the request acknowledged.

RabbitMQ does not drop duplicates: a publish whose confirmation was lost is sent
again on retry, and participants deduplicate by ``Idempotency-Key`` (the
:mod:`microsaga.participant` helper does). The connection is robust: it reconnects
and restores queues and consumers by itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from ..errors import ConfigurationError, StepError, TransportError, one_line
from ..message import Message, Metadata
from ..observability.logs import about_request
from ..protocol import IDEMPOTENCY_HEADER
from .base import (
    CORRELATION_HEADER,
    REPLY_TO_HEADER,
    Broker,
    Handler,
    Subscription,
    check_url_address,
    redact_url,
    url_option,
)

__all__ = ["RabbitMQBroker"]

log = logging.getLogger("microsaga.transports.rabbitmq")

_FAILURES = (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError)
_UNROUTABLE = "amqp_unroutable"
_SHORTSTR = 255  # the longest routing key, message_id, correlation_id, reply_to
_TABLE_KEY = 128  # the longest header name (pamqp truncates longer ones)
_connecting = contextvars.ContextVar("microsaga_amqp_connecting", default=False)


class _QuietFirstConnect(logging.Filter):
    """aiormq logs a failed connection at ERROR before raising it; while :meth:`connect`
    runs, that failure is reported once, as a TransportError, so the log line goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _connecting.get()


logging.getLogger("aiormq.connection").addFilter(_QuietFirstConnect())


class RabbitMQBroker(Broker):
    """Publishes to RabbitMQ with confirms and consumes durable queues.

    Args:
        url: ``amqp://user:password@host:port/vhost?exchange=name``; other query
            parameters go to aio-pika.
        publish_timeout: seconds to wait for the broker's confirmation.
        connect_timeout: seconds to wait for the first connection.
        reconnect_interval: seconds between reconnection attempts.
        reply_timeout: longest wait for a reply when the step sets no timeout.
        redeliver_delay: seconds before a message whose handler raised comes again.
        prefetch: unacknowledged messages a consumer holds at once.
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        setting: str = "broker",
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
        reply_timeout: float = 60.0,
        redeliver_delay: float = 1.0,
        prefetch: int = 16,
    ) -> None:
        super().__init__()
        self.url = url
        self.setting = setting  # the setting the URL came from, for errors
        check_url_address(url, setting)
        exchange, self._amqp_url = url_option(url, "exchange", setting)
        self.exchange_name = exchange or ""
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.reply_timeout = reply_timeout
        self.redeliver_delay = redeliver_delay
        self.prefetch = prefetch
        self._conn: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._consume_channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._subs: set[Subscription] = set()

    def __repr__(self) -> str:
        return f"RabbitMQBroker({redact_url(self.url)!r})"

    @property
    def _where(self) -> str:
        exchange = f"exchange {self.exchange_name!r}" if self.exchange_name else "default exchange"
        return f"RabbitMQ {redact_url(self.url)} ({exchange})"

    async def connect(self) -> None:
        """Connect, open the publishing and consuming channels, find the exchange.

        Raises:
            TransportError: the broker cannot be reached.
            ConfigurationError: the exchange of ``?exchange=`` does not exist.
        """
        if self._conn is not None:
            return
        token = _connecting.set(True)
        try:
            conn = await aio_pika.connect_robust(
                self._amqp_url,
                timeout=self.connect_timeout,
                reconnect_interval=self.reconnect_interval,
                client_properties={"connection_name": "microsaga"},
            )
        except _FAILURES as exc:
            raise TransportError(
                f"cannot connect to RabbitMQ at {redact_url(self.url)}: {_describe(exc)}"
            ) from None
        finally:
            _connecting.reset(token)
        try:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            consume = await conn.channel()
            await consume.set_qos(prefetch_count=self.prefetch)
            if self.exchange_name:
                exchange = await channel.get_exchange(self.exchange_name, ensure=True)
            else:
                exchange = channel.default_exchange
        except aio_pika.exceptions.ChannelNotFoundEntity:
            await conn.close()
            raise ConfigurationError(
                self.setting,
                f"{redact_url(self.url)}: exchange {self.exchange_name!r} does not exist",
            ) from None
        except _FAILURES as exc:
            await conn.close()
            raise TransportError(
                f"{self._where}: cannot open a channel: {_describe(exc)}"
            ) from None
        self._conn, self._channel, self._consume_channel = conn, channel, consume
        self._exchange = exchange

    def topic_error(self, topic: str) -> str | None:
        """Why nothing can be published on routing key ``topic``: AMQP caps it at 255
        bytes (UTF-8)."""
        size = len(topic.encode("utf-8", "surrogatepass"))
        if size > _SHORTSTR:
            return f"a routing key is at most {_SHORTSTR} bytes, this one is {size}"
        return None

    async def publish(self, topic: str, message: Message) -> None:
        """Publish persistently; return once the broker confirmed.

        Raises:
            StepError: no queue receives the message (unroutable), or it can never be
                sent: a routing key over 255 bytes, an ``Idempotency-Key``,
                correlation id or reply topic over 255 bytes, a header name over 128.
            TransportError: not confirmed (broker down, nack, timeout): retryable.
        """
        if self._exchange is None or self._channel is None:
            raise TransportError(f"{self._where}: not connected")
        problem = self.topic_error(topic)
        if problem is not None:
            raise StepError(
                f"{self._where}: cannot publish on {topic!r}: {problem}",
                code="amqp_bad_topic",
                retryable=False,
            )
        header = message.header
        properties = {
            "message_id": header.get(IDEMPOTENCY_HEADER),
            "correlation_id": header.get(CORRELATION_HEADER),
            "reply_to": header.get(REPLY_TO_HEADER),
        }
        problem = _message_error(header, properties)
        if problem is not None:
            raise self._bad(topic, problem)
        try:
            amqp = aio_pika.Message(
                message.body,
                headers=_amqp_headers(header),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                **properties,
            )
        except (TypeError, ValueError) as exc:  # what the checks above did not foresee
            raise self._bad(topic, one_line(exc)) from exc
        try:
            async with asyncio.timeout(self.publish_timeout):
                # during a reconnection, wait for the channel to be restored rather than
                # fail an attempt that would succeed a moment later
                await self._channel.ready()
                await self._exchange.publish(amqp, routing_key=topic, mandatory=True)
        except aio_pika.exceptions.PublishError:
            raise StepError(
                f"{self._where}: message on {topic!r} was returned: no queue is bound to it",
                code=_UNROUTABLE,
                retryable=False,
            ) from None
        except aio_pika.exceptions.DeliveryError as exc:
            raise TransportError(f"{self._where}: message on {topic!r} was refused (nack)") from exc
        except TimeoutError as exc:
            raise TransportError(
                f"{self._where}: publish on {topic!r} not confirmed within {self.publish_timeout}s"
            ) from exc
        except (TypeError, ValueError) as exc:  # the frame cannot be encoded
            raise self._bad(topic, one_line(exc)) from exc
        except _FAILURES as exc:
            raise TransportError(
                f"{self._where}: publish on {topic!r} failed: {_describe(exc)}"
            ) from exc

    def _bad(self, topic: str, problem: str) -> StepError:
        return StepError(
            f"{self._where}: cannot publish on {topic!r}: {problem}",
            code="amqp_bad_message",
            retryable=False,
        )

    async def send_reply(
        self, topic: str, reply: Message, *, request: Message | None = None
    ) -> None:
        """Publish a reply; a reply no queue receives is dropped with a warning.

        The reply queue of a saga process is exclusive: it goes when that process does,
        and then nobody waits for the reply. Failing here would nack the request and
        have it redelivered for ever; the request is acknowledged instead (its retry,
        from a saga process that is alive, carries a reply queue that exists).
        """
        try:
            await self.publish(topic, reply)
        except StepError as exc:
            if exc.code != _UNROUTABLE:
                raise
            log.warning(
                "%s: reply to %r dropped: no queue is bound to it (the requester is gone)",
                self._where,
                topic,
                extra=about_request((request or reply).header),
            )

    async def subscribe(
        self, topic: str, handler: Handler, *, queue: str | None = None
    ) -> Subscription:
        """Consume ``topic`` from a durable queue (named ``queue`` or the topic).

        Raises:
            TransportError: the queue cannot be declared or consumed.
        """
        channel = self._consume_channel
        if channel is None:
            raise TransportError(f"{self._where}: not connected")
        try:
            if handler == self._on_reply:
                declared = await channel.declare_queue(topic, exclusive=True, auto_delete=True)
            else:
                declared = await channel.declare_queue(queue or topic, durable=True)
            if self.exchange_name:
                await declared.bind(self.exchange_name, routing_key=topic)

            async def on_message(incoming: AbstractIncomingMessage) -> None:
                await self._deliver(incoming, topic, handler)

            tag = await declared.consume(on_message)
        except _FAILURES as exc:
            raise TransportError(
                f"{self._where}: cannot consume {topic!r}: {_describe(exc)}"
            ) from exc
        sub = _QueueSubscription(self, declared, tag)
        self._subs.add(sub)
        return sub

    async def _deliver(
        self, incoming: AbstractIncomingMessage, topic: str, handler: Handler
    ) -> None:
        message = _to_message(incoming)
        try:
            await self.handle(handler, message)
        except Exception as exc:
            log.warning(
                "%s: handler failed, redelivery in %ss: %s",
                topic,
                self.redeliver_delay,
                one_line(exc),
                extra=about_request(message.header),
            )
            await asyncio.sleep(self.redeliver_delay)
            await _settle(incoming.nack(requeue=True))
            return
        await _settle(incoming.ack())

    async def close(self) -> None:
        """Stop every subscription of this broker and close the connection."""
        await super().close()
        for sub in list(self._subs):
            await sub.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._channel = self._consume_channel = None
            self._exchange = None
            try:
                await conn.close()
            except _FAILURES as exc:
                log.debug("closing %s: %s", self._where, exc)


class _QueueSubscription(Subscription):
    def __init__(self, broker: RabbitMQBroker, queue: AbstractQueue, tag: str) -> None:
        self.broker, self.queue, self.tag = broker, queue, tag

    async def close(self) -> None:
        self.broker._subs.discard(self)
        try:
            await self.queue.cancel(self.tag)
        except _FAILURES as exc:
            log.debug("cancelling consumer of %s: %s", self.queue.name, exc)


def _message_error(header: Metadata, properties: dict[str, str | None]) -> str | None:
    """What AMQP cannot carry, or pamqp would cut short without a word."""
    names = {"message_id": IDEMPOTENCY_HEADER, "correlation_id": CORRELATION_HEADER}
    names["reply_to"] = REPLY_TO_HEADER
    for prop, value in properties.items():
        size = len(value.encode("utf-8", "surrogatepass")) if value else 0
        if size > _SHORTSTR:
            return f"{names[prop]} is {size} bytes, over the {_SHORTSTR} of AMQP's {prop}"
    for key in header:
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > _TABLE_KEY:
            return f"header name {key[:40]!r}... is {size} bytes, over AMQP's {_TABLE_KEY}"
    return None


def _amqp_headers(header: Metadata) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else v for k, v in header.to_dict().items()}


def _to_message(incoming: AbstractIncomingMessage) -> Message:
    header = Metadata()
    for key, value in (incoming.headers or {}).items():
        for one in value if isinstance(value, list | tuple) else [value]:
            header.add(key, one.decode("utf-8", "replace") if isinstance(one, bytes) else str(one))
    # a publisher that is not microsaga may use only the AMQP properties
    if incoming.reply_to and REPLY_TO_HEADER not in header:
        header.set(REPLY_TO_HEADER, incoming.reply_to)
    if incoming.correlation_id and CORRELATION_HEADER not in header:
        header.set(CORRELATION_HEADER, incoming.correlation_id)
    return Message(incoming.body, header)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


async def _settle(ack: Any) -> None:
    """Ack or nack; a lost channel only means the broker delivers the message again."""
    try:
        await ack
    except _FAILURES as exc:
        log.debug("ack not sent: %s", exc)
