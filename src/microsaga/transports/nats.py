"""NATS JetStream: ``Flow(broker="nats://127.0.0.1:4222")`` (needs ``microsaga[nats]``).

Wire format (``docs/transports.md``):

- A topic is a subject. ``publish`` goes through JetStream and returns once the stream
  has stored the message (its ``PubAck``). The message header travels as NATS headers,
  a key with several values sent once with the values joined by ``", "``;
  ``Nats-Msg-Id`` is set to the ``Idempotency-Key``, so JetStream drops a retried
  publish inside the stream's duplicate window (2 minutes by default). A request
  (``reply=True``) is the exception: its id is ``<Idempotency-Key>:<correlation id>``,
  new on every attempt, because a retried request must reach the participant, which
  deduplicates by ``Idempotency-Key`` and sends its first answer again.
- No stream captures the subject: the step fails at once (``StepError`` code
  ``nats_no_stream``) naming the subject and a ``nats stream add`` command that makes
  a stream for it. So does a publish that can never be stored,
  without retry: a wildcard or malformed subject (``nats_bad_subject``), a header name
  that is not a token or a value with a line break (``nats_bad_message``), a message
  over the server's ``max_payload`` (``nats_payload_too_large``), a message the stream
  refuses with a 400 such as one over its ``max_msg_size`` (``nats_refused``).
- Replies (``reply=True``) are plain core NATS messages on the subject named by
  ``Micro-Flow-Reply-To``: they need no stream.
- ``subscribe`` consumes through a durable JetStream pull consumer (default name
  ``microsaga-<subject>``; instances with the same name share the work), acks after
  the handler returned and the reply was sent; a handler that raises gets the message
  again after ``redeliver_delay``.

The connection reconnects by itself; while it is down, publishes fail as retryable
:class:`~microsaga.TransportError` and the step is retried with the same
``Nats-Msg-Id``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import shlex
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ..errors import StepError, TransportError, one_line
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
)

__all__ = ["NatsBroker"]

log = logging.getLogger("microsaga.transports.nats")

_NATS_HEADER_PREFIX = "nats-"  # JetStream's own headers, not part of the message


class NatsBroker(Broker):
    """Publishes through NATS JetStream and consumes with durable pull consumers.

    Args:
        url: ``nats://host:port`` (user and password in the URL are used).
        setting: the setting the URL came from, which errors about it name.
        publish_timeout: seconds to wait for the stream's acknowledgement.
        connect_timeout: seconds to wait for the first connection.
        reconnect_wait: seconds between reconnection attempts.
        reply_timeout: longest wait for a reply when the step sets no timeout.
        redeliver_delay: seconds before a message whose handler raised comes again.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        setting: str = "broker",
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
        reply_timeout: float = 60.0,
        redeliver_delay: float = 1.0,
    ) -> None:
        super().__init__()
        check_url_address(url, setting)
        self.url = url
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.reply_timeout = reply_timeout
        self.redeliver_delay = redeliver_delay
        self._nc: NatsClient | None = None
        self._js: Any = None
        self._subs: set[Subscription] = set()

    def __repr__(self) -> str:
        return f"NatsBroker({redact_url(self.url)!r})"

    async def connect(self) -> None:
        """Connect to the server.

        Raises:
            TransportError: no server answered within ``connect_timeout``.
        """
        if self._nc is not None:
            return
        errors: list[BaseException] = []
        refused = asyncio.Event()
        nc = NatsClient()

        async def on_error(exc: BaseException) -> None:
            errors.append(exc)
            if self._nc is None and isinstance(exc, OSError):
                refused.set()  # nothing listens there: no point in waiting
            log.debug("%s: %s", redact_url(self.url), exc)

        async def on_disconnected() -> None:
            if self._nc is nc:
                log.warning("%s: disconnected, reconnecting", redact_url(self.url))

        async def on_reconnected() -> None:
            log.info("%s: reconnected", redact_url(self.url))

        # nats-py retries a failed first connection as long as reconnects are allowed
        # (here: forever), so a refused connection or the timeout ends the attempt
        connecting = asyncio.ensure_future(
            nc.connect(
                self.url,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                connect_timeout=max(1, int(self.connect_timeout)),
                reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                name="microsaga",
            )
        )
        stop = asyncio.ensure_future(refused.wait())
        try:
            await asyncio.wait(
                {connecting, stop},
                timeout=self.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:  # cancelled: leave no connection attempt behind
            connecting.cancel()
            await _close_quietly(nc)
            raise
        finally:
            stop.cancel()
        failure: BaseException | None = None
        if not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            failure = (
                errors[-1] if errors else TimeoutError(f"no answer in {self.connect_timeout}s")
            )
        elif connecting.exception() is not None:
            failure = connecting.exception()
        if failure is not None:
            await _close_quietly(nc)
            raise TransportError(
                f"cannot connect to NATS at {redact_url(self.url)}: {_describe(failure)}"
            ) from None
        self._nc, self._js = nc, nc.jetstream(timeout=self.publish_timeout)

    def _client(self) -> NatsClient:
        if self._nc is None:
            raise TransportError(f"NATS broker {redact_url(self.url)} is not connected")
        return self._nc

    def topic_error(self, topic: str) -> str | None:
        """Why nothing can be published on subject ``topic``: a subject to publish on is
        literal (no ``*`` or ``>`` token), with no empty token and no whitespace."""
        return _subject_error(topic)

    async def publish(self, topic: str, message: Message) -> None:
        """Publish through JetStream; return once the stream stored the message.

        Raises:
            StepError: nothing like it can ever be stored, so it is not retried: no
                stream captures ``topic``, ``topic`` is a wildcard or malformed, a header
                cannot be carried, the message is over the server's ``max_payload`` or
                the stream refused it (e.g. over its ``max_msg_size``).
            TransportError: not acknowledged (server down, timeout): retryable.
        """
        nc = self._client()
        headers = self._headers(topic, message)
        key = message.header.get(IDEMPOTENCY_HEADER)
        if key and message.header.get(REPLY_TO_HEADER):
            # a request's retry must reach the participant (which replays its answer by
            # Idempotency-Key): each attempt has its own correlation id, so its own id
            key = f"{key}:{message.header.get(CORRELATION_HEADER, '')}"
        if key:
            headers["Nats-Msg-Id"] = key
        self._check_size(nc, topic, message.body, headers)
        try:
            ack = await self._js.publish(
                topic, message.body, timeout=self.publish_timeout, headers=headers or None
            )
        except nats.js.errors.NoStreamResponseError:
            raise StepError(
                f"NATS {redact_url(self.url)}: {_no_stream(topic)}",
                code="nats_no_stream",
                retryable=False,
            ) from None
        except nats.js.errors.APIError as exc:
            if exc.code != 400:  # 503 and the like: the stream may take it later
                raise TransportError(
                    f"NATS {redact_url(self.url)}: publish on {topic!r} not acknowledged: "
                    f"{_describe_api(exc)}"
                ) from exc
            raise StepError(
                f"NATS {redact_url(self.url)}: the stream refused the message on {topic!r}: "
                f"{_describe_api(exc)}",
                code="nats_refused",
                retryable=False,
            ) from exc
        except (nats.errors.BadSubjectError, nats.errors.BadHeaderError) as exc:
            raise self._bad(topic, _describe(exc)) from exc
        except nats.errors.MaxPayloadError as exc:  # checked above; the server's may change
            raise self._too_large(nc, topic, len(message.body)) from exc
        except (nats.errors.Error, OSError) as exc:
            raise TransportError(
                f"NATS {redact_url(self.url)}: publish on {topic!r} not acknowledged: "
                f"{_describe(exc)}"
            ) from exc
        if ack.duplicate:
            log.info(
                "%s: JetStream dropped a duplicate of %s",
                topic,
                key,
                extra=about_request(message.header),
            )

    async def send_reply(
        self, topic: str, reply: Message, *, request: Message | None = None
    ) -> None:
        """Send the reply as a core NATS message: reply subjects need no stream.

        Raises:
            StepError: the reply can never be sent (see :meth:`publish`).
            TransportError: the server cannot be reached.
        """
        nc = self._client()
        headers = self._headers(topic, reply)
        self._check_size(nc, topic, reply.body, headers)
        try:
            await nc.publish(topic, reply.body, headers=headers)
            await nc.flush(timeout=max(1, int(self.publish_timeout)))
        except (nats.errors.BadSubjectError, nats.errors.BadHeaderError) as exc:
            raise self._bad(topic, _describe(exc)) from exc
        except (nats.errors.Error, OSError) as exc:
            raise TransportError(f"NATS: reply on {topic!r} not sent: {_describe(exc)}") from exc

    def _headers(self, topic: str, message: Message) -> dict[str, str]:
        """The message's NATS headers, once it is known that they and ``topic`` can be
        sent: nats-py would turn a line break in a value into a space and let a
        wildcard subject through."""
        problem = _subject_error(topic)
        if problem is not None:
            raise StepError(
                f"NATS {redact_url(self.url)}: cannot publish on {topic!r}: {problem}",
                code="nats_bad_subject",
                retryable=False,
            )
        headers = _nats_headers(message.header)
        for key, value in headers.items():
            if not _HEADER_NAME.fullmatch(key):
                raise self._bad(topic, f"header name {key!r} cannot be sent over NATS")
            if "\r" in value or "\n" in value or "\0" in value:
                raise self._bad(
                    topic, f"header {key} has a line break or NUL, which NATS cannot carry"
                )
        return headers

    def _check_size(self, nc: NatsClient, topic: str, body: bytes, headers: dict[str, str]) -> None:
        # the server closes the connection on a message over its max_payload (headers
        # included), and nats-py counts only the body
        size = len(body) + _headers_size(headers, nc.max_payload - len(body))
        if size > nc.max_payload:
            raise self._too_large(nc, topic, size)

    def _bad(self, topic: str, problem: str) -> StepError:
        return StepError(
            f"NATS {redact_url(self.url)}: cannot publish on {topic!r}: {problem}",
            code="nats_bad_message",
            retryable=False,
        )

    def _too_large(self, nc: NatsClient, topic: str, size: int) -> StepError:
        return StepError(
            f"NATS {redact_url(self.url)}: message on {topic!r} is {size} bytes with its "
            f"headers, over the server's max_payload of {nc.max_payload}",
            code="nats_payload_too_large",
            retryable=False,
        )

    async def subscribe(
        self, topic: str, handler: Handler, *, durable: str | None = None, batch: int = 16
    ) -> Subscription:
        """Consume ``topic``: a durable JetStream pull consumer, or for this broker's
        own replies a core subscription.

        Args:
            durable: the consumer's name; instances sharing it share the messages.
            batch: messages fetched and handled at once.

        Raises:
            TransportError: no stream captures ``topic``.
        """
        nc = self._client()
        if handler == self._on_reply:

            async def on_core(msg: Msg) -> None:
                await self._on_reply(_to_message(msg))

            core = _CoreSubscription(await nc.subscribe(topic, cb=on_core))
            self._subs.add(core)
            return core
        try:
            stream = await self._js.find_stream_name_by_subject(topic)
            name = durable or _durable_name(topic)
            psub = await self._js.pull_subscribe(topic, durable=name, stream=stream)
        except nats.js.errors.NotFoundError:
            raise TransportError(f"NATS {redact_url(self.url)}: {_no_stream(topic)}") from None
        except (nats.errors.Error, OSError) as exc:
            raise TransportError(f"NATS: cannot subscribe to {topic!r}: {_describe(exc)}") from exc
        pull = _PullSubscription(self, psub, topic, handler, batch)
        self._subs.add(pull)
        return pull

    async def _deliver(self, msg: Msg, topic: str, handler: Handler) -> None:
        message = _to_message(msg)
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
            await _settle(msg.nak(delay=self.redeliver_delay))
            return
        await _settle(msg.ack())

    async def close(self) -> None:
        """Stop every subscription of this broker and close the connection."""
        await super().close()
        for sub in list(self._subs):
            await sub.close()
        self._subs.clear()
        if self._nc is not None:
            nc, self._nc = self._nc, None
            await _close_quietly(nc)


class _CoreSubscription(Subscription):
    def __init__(self, sub: Any) -> None:
        self.sub = sub

    async def close(self) -> None:
        try:
            await self.sub.unsubscribe()
        except (nats.errors.Error, OSError):
            pass  # the connection is gone, and the subscription with it


class _PullSubscription(Subscription):
    def __init__(self, broker: NatsBroker, psub: Any, topic: str, handler: Handler, batch: int):
        self.broker, self.psub, self.topic, self.handler = broker, psub, topic, handler
        self.batch = batch
        self.closing = False
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self.closing:
            try:
                msgs = await self.psub.fetch(self.batch, timeout=1.0)
            except nats.errors.TimeoutError:
                continue  # nothing to fetch yet
            except (nats.errors.Error, OSError) as exc:
                if self.closing:
                    return
                log.debug("%s: fetch failed, trying again: %s", self.topic, exc)
                await asyncio.sleep(self.broker.reconnect_wait)
                continue
            await asyncio.gather(*(self.broker._deliver(m, self.topic, self.handler) for m in msgs))

    async def close(self) -> None:
        self.broker._subs.discard(self)
        self.closing = True
        # a client library may swallow one cancellation inside a request: cancel
        # until the loop is really gone
        while not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=0.05)
        error = None if self.task.cancelled() else self.task.exception()
        if error is not None:
            log.warning("%s: consumer stopped by %s", self.topic, one_line(error))
        try:
            await self.psub.unsubscribe()
        except (nats.errors.Error, OSError):
            pass


_DURABLE_BAD = re.compile(r"[^A-Za-z0-9_-]")
_STREAM_BAD = _DURABLE_BAD  # stream names and consumer names allow the same characters
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a token, as in HTTP
_WHITESPACE = re.compile(r"\s")
_HEADER_LINE = len(b"NATS/1.0\r\n")


@functools.lru_cache(maxsize=1024)
def _subject_error(subject: str) -> str | None:
    if not subject:
        return "a subject cannot be empty"
    if _WHITESPACE.search(subject):
        return "a subject cannot hold whitespace"
    tokens = subject.split(".")
    if not all(tokens):
        return "a subject cannot have an empty token (a leading, trailing or double '.')"
    wild = next((t for t in tokens if t in ("*", ">")), None)
    if wild is not None:
        return f"a wildcard ('{wild}') matches subjects, but a message goes to one subject"
    return None


def _headers_size(headers: dict[str, str], room: int) -> int:
    """The bytes of the headers as NATS sends them (``NATS/1.0``, ``key: value`` lines),
    counted exactly only when they might not fit in ``room`` bytes."""
    if not headers:
        return 0
    chars = sum(map(len, headers)) + sum(map(len, headers.values()))
    framing = _HEADER_LINE + 4 * len(headers) + 2
    if framing + 4 * chars <= room:  # UTF-8 takes at most 4 bytes a character
        return framing + chars
    return framing + sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())


def _no_stream(subject: str) -> str:
    """That no stream captures ``subject``, and the command that makes one: JetStream
    stores only what a stream captures, and microsaga does not make streams itself (a
    stream's limits and retention are the operator's choice)."""
    first = subject.split(".", 1)[0]
    name = _STREAM_BAD.sub("_", first).upper() or "MESSAGES"
    subjects = f"{first}.>" if "." in subject else subject
    return (
        f"no JetStream stream captures subject {subject!r}; create one, e.g. with the NATS "
        f"CLI: nats stream add {name} --subjects {shlex.quote(subjects)} --defaults "
        "(docs/transports.md)"
    )


def _durable_name(topic: str) -> str:
    return "microsaga-" + _DURABLE_BAD.sub("_", topic)


def _nats_headers(header: Metadata) -> dict[str, str]:
    return {key: ", ".join(values) for key, values in header.to_dict().items()}


def _to_message(msg: Msg) -> Message:
    header = Metadata()
    for key, value in (msg.headers or {}).items():
        if not key.lower().startswith(_NATS_HEADER_PREFIX):
            header.add(key, value)
    return Message(msg.data, header)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text and name not in text else (text or name)


def _describe_api(exc: nats.js.errors.APIError) -> str:
    parts = [exc.description or type(exc).__name__]
    if exc.err_code:
        parts.append(f"(JetStream error {exc.err_code})")
    return " ".join(parts)


async def _settle(ack: Any) -> None:
    """Ack or nak; a lost connection only means JetStream delivers the message again."""
    try:
        await ack
    except (nats.errors.Error, OSError) as exc:
        log.debug("ack not sent: %s", exc)


async def _close_quietly(nc: NatsClient) -> None:
    try:
        async with asyncio.timeout(2.0):
            await nc.close()
    except Exception as exc:  # closing a half-open client must not hide the real error
        log.debug("closing NATS client: %s", exc)
