"""Redis Streams: ``Flow(broker="redis://127.0.0.1:6379/0")`` (needs ``microsaga[redis]``).

Wire format (``docs/transports.md``):

- A topic is a stream key. ``publish`` is ``XADD <topic> * body <raw body> header
  <JSON object of string lists>`` and returns once Redis answered with the entry id.
  ``?maxlen=N`` in the URL trims each stream to about N entries.
- ``subscribe`` reads through a consumer group (``group=``, default ``microsaga``,
  created at the start of the stream when missing, so nothing published before the
  first subscriber is lost); every subscriber is one consumer of the group. It
  ``XACK``s after the handler returned and the reply was sent; an entry whose handler
  raised stays pending and is claimed again (``XAUTOCLAIM``) after ``claim_idle``.
- This broker's own replies come to a stream of its own, read with ``XREAD``,
  trimmed as replies are read and deleted on close. A reply to such a stream
  (``microsaga.reply.*``) is ``XADD``ed with an ``EXPIRE`` of a day in the same
  ``MULTI``, so a reply stream whose reader died (or one recreated by a late reply)
  goes a day after its last reply.

Redis does not drop duplicates: a publish whose answer was lost is added again on
retry, and participants deduplicate by ``Idempotency-Key`` (the
:mod:`microsaga.participant` helper does). Commands reconnect by themselves; while
Redis is down, publishes fail as retryable :class:`~microsaga.TransportError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from ..errors import ConfigurationError, StepError, TransportError, one_line
from ..message import Message, Metadata, encode_json
from ..observability.logs import about_request
from .base import (
    REPLY_TOPIC_PREFIX,
    Broker,
    Handler,
    Subscription,
    check_url_address,
    redact_url,
    url_option,
)

__all__ = ["RedisBroker"]

log = logging.getLogger("microsaga.transports.redis")

_FAILURES = (RedisError, OSError)
# a participant of another language may write a single value as a string
_header_decoder = msgspec.json.Decoder(dict[str, list[str] | str])
_REPLY_STREAM_TTL = 86400


def _maxlen(text: str, url: str, setting: str) -> int:
    """``?maxlen=N``: a whole number of entries from 1 (0 would trim a stream of the
    messages its readers have not read yet)."""
    digits = text.strip()
    value = int(digits) if digits.isascii() and digits.isdigit() else 0
    if not 1 <= value < 2**63:  # Redis reads a signed 64-bit count
        raise ConfigurationError(
            setting, f"{redact_url(url)}: maxlen must be a whole number from 1, not {text!r}"
        )
    return value


class RedisBroker(Broker):
    """Publishes with ``XADD`` and consumes streams through consumer groups.

    Args:
        url: ``redis://[user:password@]host:port/db[?maxlen=N]``; other query
            parameters go to redis-py.
        group: the consumer group subscribers join.
        block: seconds a read waits for new entries before looking again.
        claim_idle: seconds an entry stays pending before another read claims it.
        reply_timeout: longest wait for a reply when the step sets no timeout.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        setting: str = "broker",
        group: str = "microsaga",
        block: float = 1.0,
        claim_idle: float = 30.0,
        reply_timeout: float = 60.0,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.setting = setting  # the setting the URL came from, for errors
        check_url_address(url, setting)
        maxlen, self._redis_url = url_option(url, "maxlen", setting)
        self.maxlen = _maxlen(maxlen, url, setting) if maxlen else None
        self.group = group
        self.block = block
        self.claim_idle = claim_idle
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self._redis: aioredis.Redis | None = None
        self._subs: set[_StreamSubscription] = set()
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __repr__(self) -> str:
        return f"RedisBroker({redact_url(self.url)!r})"

    async def connect(self) -> None:
        """Connect and check the server answers.

        Raises:
            TransportError: Redis cannot be reached.
        """
        if self._redis is not None:
            return
        client = aioredis.Redis.from_url(
            self._redis_url,
            socket_connect_timeout=self.connect_timeout,
            # one quick retry covers a pooled connection the server has closed; the
            # step's own Retry covers an outage
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
        try:
            await client.ping()
        except (TypeError, ValueError) as exc:  # redis-py checks URL parameters late
            await client.aclose()
            raise ConfigurationError(self.setting, f"{redact_url(self.url)}: {exc}") from None
        except _FAILURES as exc:
            await client.aclose()
            raise TransportError(
                f"cannot connect to Redis at {redact_url(self.url)}: {_describe(exc)}"
            ) from None
        self._redis = client

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise TransportError(f"Redis broker {redact_url(self.url)} is not connected")
        return self._redis

    async def publish(self, topic: str, message: Message) -> None:
        """``XADD`` the message; return once Redis gave it an id.

        Raises:
            StepError: the key holds something that is not a stream.
            TransportError: Redis cannot be reached: retryable.
        """
        await self._xadd(topic, message)

    async def send_reply(
        self, topic: str, reply: Message, *, request: Message | None = None
    ) -> None:
        """``XADD`` the reply; on a microsaga reply stream, in the same transaction, an
        ``EXPIRE`` of a day: a reply that comes after its requester is gone must not
        leave a stream behind for ever. Other reply topics (a requester that is not
        microsaga) are left as their owner made them."""
        ours = topic.startswith(REPLY_TOPIC_PREFIX)
        await self._xadd(topic, reply, expire=_REPLY_STREAM_TTL if ours else None)

    async def _xadd(self, topic: str, message: Message, *, expire: int | None = None) -> None:
        fields: dict[Any, Any] = {
            "body": message.body,
            "header": encode_json(message.header.to_dict()),
        }
        client = self._client()
        try:
            if expire is None:
                await client.xadd(topic, fields, maxlen=self.maxlen, approximate=True)
            else:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xadd(topic, fields, maxlen=self.maxlen, approximate=True)
                    pipe.expire(topic, expire)
                    await pipe.execute()
        except ResponseError as exc:
            raise StepError(
                f"Redis {redact_url(self.url)}: XADD {topic!r} refused: {exc}",
                code="redis_refused",
                retryable=False,
            ) from None
        except _FAILURES as exc:
            raise TransportError(
                f"Redis {redact_url(self.url)}: XADD {topic!r} failed: {_describe(exc)}"
            ) from exc

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None
    ) -> Subscription:
        """Consume ``topic`` as one consumer of ``group`` (default: the broker's).

        Raises:
            TransportError: the group cannot be created.
        """
        client = self._client()
        if handler == self._on_reply:
            sub: _StreamSubscription = _ReplySubscription(self, client, topic, handler)
        else:
            name = group or self.group
            try:
                await client.xgroup_create(topic, name, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise TransportError(
                        f"Redis: cannot create group {name} on {topic!r}: {exc}"
                    ) from None
            except _FAILURES as exc:
                raise TransportError(
                    f"Redis: cannot subscribe to {topic!r}: {_describe(exc)}"
                ) from exc
            sub = _GroupSubscription(self, client, topic, handler, name)
        self._subs.add(sub)
        sub.start()
        return sub

    async def close(self) -> None:
        """Stop every subscription of this broker and close the connection."""
        await super().close()
        for sub in list(self._subs):
            await sub.close()
        if self._redis is not None:
            client, self._redis = self._redis, None
            await client.aclose()


class _StreamSubscription(Subscription):
    def __init__(self, broker: RedisBroker, client: aioredis.Redis, topic: str, handler: Handler):
        self.broker, self.client, self.topic, self.handler = broker, client, topic, handler
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        block_ms = max(1, int(self.broker.block * 1000))
        # redis-py may turn the cancellation of a blocking read into a connection
        # error, so the loop ends on ``closing`` rather than on CancelledError alone
        while not self.closing:
            try:
                await self._read(block_ms)
            except _FAILURES as exc:
                if self.closing:
                    return
                log.debug("%s: read failed, trying again: %s", self.topic, exc)
                await asyncio.sleep(0.2)

    async def _read(self, block_ms: int) -> None:
        raise NotImplementedError

    async def _handle(self, fields: dict[bytes, bytes]) -> bool:
        """Run the handler; True when the entry is done with (acknowledge it)."""
        message = _to_message(fields)
        try:
            await self.broker.handle(self.handler, message)
        except Exception as exc:
            log.warning(
                "%s: handler failed, left pending: %s",
                self.topic,
                one_line(exc),
                extra=about_request(message.header),
            )
            return False
        return True

    async def close(self) -> None:
        self.broker._subs.discard(self)
        self.closing = True
        task = self.task
        # redis-py now and then swallows a cancellation inside a command; cancelling
        # again stops the next blocking read instead of waiting ``block`` out
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        error = task.exception() if task is not None and not task.cancelled() else None
        if error is not None:
            log.warning("%s: reader stopped by %s", self.topic, one_line(error))


class _GroupSubscription(_StreamSubscription):
    def __init__(
        self, broker: RedisBroker, client: aioredis.Redis, topic: str, handler: Handler, group: str
    ) -> None:
        super().__init__(broker, client, topic, handler)
        self.group = group
        self.next_claim = 0.0

    async def _read(self, block_ms: int) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() >= self.next_claim:
            self.next_claim = loop.time() + self.broker.claim_idle / 2
            claimed: Any = await self.client.xautoclaim(
                self.topic,
                self.group,
                self.broker._consumer,
                min_idle_time=int(self.broker.claim_idle * 1000),
                start_id="0-0",
                count=16,
            )
            await self._process(claimed[1])
        found: Any = await self.client.xreadgroup(
            self.group, self.broker._consumer, {self.topic: ">"}, count=16, block=block_ms
        )
        for _, entries in found or ():
            await self._process(entries)

    async def _process(self, entries: list[Any]) -> None:
        entries = [(i, f) for i, f in entries if f]  # deleted entries come back empty
        done = await asyncio.gather(*(self._handle(fields) for _, fields in entries))
        acked = [entry_id for (entry_id, _), ok in zip(entries, done, strict=True) if ok]
        if acked:
            await self.client.xack(self.topic, self.group, *acked)


class _ReplySubscription(_StreamSubscription):
    last_id = b"0-0"

    async def _read(self, block_ms: int) -> None:
        found: Any = await self.client.xread({self.topic: self.last_id}, count=64, block=block_ms)
        for _, entries in found or ():
            for entry_id, fields in entries:
                self.last_id = entry_id
                await self._handle(fields)
            await self.client.xtrim(self.topic, minid=self.last_id, approximate=False)
            await self.client.expire(self.topic, _REPLY_STREAM_TTL)

    async def close(self) -> None:
        """Stop reading and delete the reply stream: nobody reads it any more."""
        await super().close()
        try:
            await self.client.delete(self.topic)
        except _FAILURES as exc:
            log.debug("deleting reply stream %s: %s", self.topic, exc)


def _to_message(fields: dict[bytes, bytes]) -> Message:
    raw = fields.get(b"header")
    header = Metadata()
    if raw:
        try:
            header = Metadata(_header_decoder.decode(raw))
        except msgspec.DecodeError as exc:
            log.warning(
                "entry with a header that is not a JSON object of strings or string lists: %s",
                exc,
            )
    return Message(fields.get(b"body", b""), header)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
