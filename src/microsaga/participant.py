"""The other side of a saga: a Python service's handlers, served safely to microsaga.

::

    from microsaga import Message, StepError
    from microsaga.participant import Participant, SQLiteDedupeStore

    inventory = Participant(dedupe=SQLiteDedupeStore("inventory-dedupe.db"))

    @inventory.handler("Inventory.Reserve")
    async def reserve(msg: Message) -> dict:
        order = msg.json()
        if not in_stock(order):
            raise StepError("out of stock", code="out_of_stock", retryable=False)
        return {"reservation": f"R-{order['order_id']}"}

    # over HTTP: the participant is an ASGI app (``uvicorn shop.inventory:inventory``)
    # over a broker: ``await inventory.subscribe("nats://127.0.0.1:4222", "stock.reserve")``

A handler (sync or async; a sync one runs in a worker thread) takes a
:class:`~microsaga.Message` and returns a Message, a JSON-able value or None (an empty
body).

HTTP: ``POST {prefix}/Name/Method`` runs the handler registered as ``"Name.Method"``.
The body must be JSON (or empty); the request headers, but HTTP's own, are the
message's header. Answers, which :class:`~microsaga.transports.http.HttpClient` maps
back to retry decisions:

======  ======================  ====================================================
status  error code              when
======  ======================  ====================================================
200                             the handler returned; the body is its JSON (empty
                                for None)
400     ``invalid_json``        the request body is not JSON
404     ``unknown_endpoint``    no handler for that path
405     ``method_not_allowed``  not a POST
413     ``body_too_large``      the body is over ``max_body`` bytes
422     the error's code        the handler raised a non-retryable error, e.g.
                                ``StepError(..., retryable=False)``: the step fails
503     the error's code        the handler raised a retryable microsaga error (a
                                ``StepError``, a ``TransportError``): the step is
                                retried; ``Retry-After`` when it has ``retry_after``
500     ``internal``            the handler raised anything else: the step is retried
======  ======================  ====================================================

Error bodies are ``{"error": {"code", "message", "retryable"}}``.

Deduplication: a request with an ``Idempotency-Key`` (microsaga sends
``<execution>:<step>`` on every attempt) runs its handler at most once per key and
handler name: a repeated key gets the first answer back, marked
``Idempotent-Replayed: true``, without running the handler. Only final answers (200
and 422) are kept; after a 5xx the next attempt runs the handler again. Concurrent
requests with the same key wait for the first one. Answers are kept in a
:class:`DedupeStore`: :class:`MemoryDedupeStore` (default, this process only) or
:class:`SQLiteDedupeStore` (survives restarts, shared by processes on one host);
both forget keys after ``ttl`` seconds (a day by default).

Brokers: :meth:`Participant.subscribe` consumes a topic with the same handlers and the
same deduplication. When the message asks for a reply (``PublishStep(reply=True)``),
the handler's result is the reply; a failure is replied as an error (see
:func:`microsaga.transports.error_reply`), which fails or retries the step. A plain
message whose handler fails with a retryable error is left to the broker to deliver
again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import os
import socket
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from ._engine.data import IDEMPOTENCY_HEADER
from .errors import ConfigurationError, MicrosagaError, error_code, is_retryable, one_line
from .message import Message, encode_json
from .transports import ERROR_HEADER, error_reply, open_broker
from .transports.base import REPLY_TO_HEADER, Broker, Subscription, to_message
from .transports.http import HTTP_OWN_HEADERS

__all__ = [
    "DedupeStore",
    "MemoryDedupeStore",
    "Participant",
    "Reply",
    "SQLiteDedupeStore",
]

log = logging.getLogger("microsaga.participant")

HandlerFn = Callable[[Message], Any]
F = TypeVar("F", bound=HandlerFn)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

REPLAYED_HEADER = "Idempotent-Replayed"
_NOT_MESSAGE_HEADERS = HTTP_OWN_HEADERS | {"accept", "user-agent"}
_json_check = msgspec.json.Decoder(msgspec.Raw)
_headers_json = msgspec.json.Decoder(dict[str, list[str]])


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one request, as sent and as kept for deduplication.

    Attributes:
        status: an HTTP status code, also for broker requests (200, 4xx, 5xx).
        body: the raw JSON body.
        header: ``{key: [values]}`` sent with the body.
    """

    status: int
    body: bytes = b""
    header: dict[str, list[str]] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """Whether another attempt would get the same answer (kept for replay)."""
        return self.status < 500

    def message(self) -> Message:
        """The answer as a :class:`~microsaga.Message`."""
        return Message(self.body, self.header)


def _error(
    status: int, code: str, message: str, header: dict[str, list[str]] | None = None
) -> Reply:
    body = encode_json({"error": {"code": code, "message": message, "retryable": status >= 500}})
    return Reply(status, body, header or {})


class DedupeStore(abc.ABC):
    """Where a participant keeps the final answer given for each idempotency key."""

    @abc.abstractmethod
    async def get(self, key: str) -> Reply | None:
        """The answer kept for ``key``, None when there is none (or it expired)."""

    @abc.abstractmethod
    async def put(self, key: str, reply: Reply) -> Reply:
        """Keep ``reply`` for ``key`` unless an answer is kept already.

        Returns:
            The answer kept for ``key``: ``reply``, or the one another process
            stored first.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class MemoryDedupeStore(DedupeStore):
    """Answers kept in this process, the oldest dropped beyond ``max_entries``.

    Args:
        ttl: seconds an answer is kept; None keeps it until evicted.
        max_entries: answers kept at most.
    """

    def __init__(self, *, ttl: float | None = 86400.0, max_entries: int = 100_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: OrderedDict[str, tuple[float, Reply]] = OrderedDict()

    def _purge(self, now: float) -> None:
        # insertion order is expiry order, as every entry gets the same ttl
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= self.max_entries:
                return
            del self._entries[key]

    async def get(self, key: str) -> Reply | None:
        found = self._entries.get(key)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    async def put(self, key: str, reply: Reply) -> Reply:
        now = time.monotonic()
        found = self._entries.get(key)
        if found is not None and found[0] > now:
            return found[1]
        self._entries[key] = (now + self.ttl if self.ttl is not None else float("inf"), reply)
        self._entries.move_to_end(key)
        self._purge(now)
        return reply


_SCHEMA = """
CREATE TABLE IF NOT EXISTS microsaga_dedupe (
    key TEXT PRIMARY KEY,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    header TEXT NOT NULL,
    expires_at REAL
)
"""


class SQLiteDedupeStore(DedupeStore):
    """Answers kept in a SQLite file (table ``microsaga_dedupe``), so they survive a
    restart and are shared by the processes of a service on one host.

    Args:
        path: the database file (created when missing).
        ttl: seconds an answer is kept; None keeps it forever.
    """

    def __init__(self, path: str | os.PathLike[str], *, ttl: float | None = 86400.0) -> None:
        self.path = os.fspath(path)
        self.ttl = ttl
        # one connection used from one thread: sqlite3 objects are not shared across threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="microsaga-dedupe")
        self._conn: sqlite3.Connection | None = None
        self._next_purge = 0.0

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def _select(self, key: str, now: float) -> Reply | None:
        row = (
            self._db()
            .execute(
                "SELECT status, body, header FROM microsaga_dedupe "
                "WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, now),
            )
            .fetchone()
        )
        if row is None:
            return None
        return Reply(row[0], bytes(row[1]), _headers_json.decode(row[2]))

    def _get(self, key: str) -> Reply | None:
        return self._select(key, time.time())

    def _put(self, key: str, reply: Reply) -> Reply:
        db, now = self._db(), time.time()
        expires = now + self.ttl if self.ttl is not None else None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM microsaga_dedupe WHERE key = ? AND expires_at <= ?", (key, now))
            db.execute(
                "INSERT OR IGNORE INTO microsaga_dedupe VALUES (?, ?, ?, ?, ?)",
                (key, reply.status, reply.body, encode_json(reply.header).decode(), expires),
            )
            if now >= self._next_purge:
                db.execute("DELETE FROM microsaga_dedupe WHERE expires_at <= ?", (now,))
                self._next_purge = now + 60.0
            kept = self._select(key, now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return kept if kept is not None else reply

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def get(self, key: str) -> Reply | None:
        found: Reply | None = await self._run(self._get, key)
        return found

    async def put(self, key: str, reply: Reply) -> Reply:
        kept: Reply = await self._run(self._put, key, reply)
        return kept

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)


def _wrap(fn: HandlerFn) -> Callable[[Message], Awaitable[Any]]:
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects
    ):
        return fn

    async def in_thread(message: Message) -> Any:
        result = await asyncio.to_thread(fn, message)
        return await result if inspect.isawaitable(result) else result

    return in_thread


class Participant:
    """Handlers of one service, served over HTTP (an ASGI app) and brokers.

    Args:
        dedupe: where answers are kept per ``Idempotency-Key``; a
            :class:`MemoryDedupeStore` by default.
        prefix: a path before ``/Name/Method`` (``"/rpc"`` for a service whose
            address is ``http://host/rpc/{name}/{method}``).
        max_body: the largest request body accepted, in bytes.
    """

    def __init__(
        self, *, dedupe: DedupeStore | None = None, prefix: str = "", max_body: int = 1 << 20
    ) -> None:
        self.dedupe: DedupeStore = dedupe if dedupe is not None else MemoryDedupeStore()
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.max_body = max_body
        self._handlers: dict[str, Callable[[Message], Awaitable[Any]]] = {}
        self._inflight: dict[str, asyncio.Future[Reply]] = {}

    # handlers ------------------------------------------------------------------------

    def handler(self, name: str) -> Callable[[F], F]:
        """Register the decorated function as the handler of ``name``.

        ``name`` is ``"Name.Method"`` for HTTP calls (``POST /Name/Method``) or a
        topic for :meth:`subscribe`.
        """

        def register(fn: F) -> F:
            self.add_handler(name, fn)
            return fn

        return register

    def add_handler(self, name: str, fn: HandlerFn) -> None:
        """Register ``fn`` as the handler of ``name``.

        Raises:
            ConfigurationError: ``name`` is empty or already has a handler.
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError("handler", f"needs a name, not {name!r}")
        if name in self._handlers:
            raise ConfigurationError("handler", f"{name} already has a handler")
        if not callable(fn):
            raise ConfigurationError("handler", f"{name}: {fn!r} is not callable")
        self._handlers[name] = _wrap(fn)

    @property
    def names(self) -> list[str]:
        """The names that have a handler."""
        return sorted(self._handlers)

    async def handle(self, name: str, request: Message) -> tuple[Reply, bool]:
        """Answer ``request`` with the handler of ``name``, once per idempotency key.

        Returns:
            The answer, and whether it is a replay of an earlier one.
        """
        fn = self._handlers.get(name)
        if fn is None:
            return _error(404, "unknown_endpoint", f"no handler for {name}"), False
        return await self._handle(name, fn, request)

    async def _handle(
        self, name: str, fn: Callable[[Message], Awaitable[Any]], request: Message
    ) -> tuple[Reply, bool]:
        key = request.header.get(IDEMPOTENCY_HEADER)
        if not key:
            return await _run(fn, name, request), False
        store_key = f"{name} {key}"
        running = self._inflight.get(store_key)
        if running is not None:
            return await asyncio.shield(running), True
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[store_key] = future
        try:
            try:
                kept = await self.dedupe.get(store_key)
            except Exception as exc:  # without the store the handler could run twice
                log.warning("%s: dedupe store failed: %s", name, exc)
                reply = _error(503, "dedupe_unavailable", f"{name}: {one_line(exc)}")
                future.set_result(reply)
                return reply, False
            if kept is not None:
                future.set_result(kept)
                return kept, True
            reply = await _run(fn, name, request)
            if reply.final:
                try:
                    reply = await self.dedupe.put(store_key, reply)
                except Exception as exc:  # the answer stands; only its replay is lost
                    log.warning("%s: cannot keep the answer for key %s: %s", name, key, exc)
            future.set_result(reply)
            return reply, False
        except BaseException as exc:
            if not future.done():
                # requests waiting on this one are told to try again
                future.set_result(_error(503, "retry", f"{name}: {one_line(exc)}"))
            raise
        finally:
            del self._inflight[store_key]

    # HTTP ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application."""
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return  # websockets are not served; returning closes them
        reply, replayed = await self._http(scope, receive)
        header = [
            (k.lower().encode("latin-1"), v.encode("utf-8"))
            for k, values in reply.header.items()
            if k.lower() not in _NOT_MESSAGE_HEADERS and k.isascii()
            for v in values
            if "\r" not in v and "\n" not in v
        ]
        if reply.body:
            header.append((b"content-type", b"application/json"))
        header.append((b"content-length", str(len(reply.body)).encode()))
        if replayed:
            header.append((REPLAYED_HEADER.lower().encode(), b"true"))
        if reply.status == 405:
            header.append((b"allow", b"POST"))
        await send({"type": "http.response.start", "status": reply.status, "headers": header})
        await send({"type": "http.response.body", "body": reply.body})

    async def _http(self, scope: Scope, receive: Receive) -> tuple[Reply, bool]:
        name = self._endpoint(scope["path"])
        if name is None or name not in self._handlers:
            shown = name or scope["path"]
            return _error(404, "unknown_endpoint", f"no handler for {shown}"), False
        if scope["method"] != "POST":
            return _error(405, "method_not_allowed", f"{name}: use POST"), False
        body = await _read_body(receive, self.max_body)
        if body is None:
            return _error(413, "body_too_large", f"{name}: over {self.max_body} bytes"), False
        if body:
            try:
                _json_check.decode(body)
            except msgspec.DecodeError as exc:
                return _error(400, "invalid_json", f"{name}: body is not valid JSON: {exc}"), False
        return await self.handle(name, Message(body, _message_header(scope["headers"])))

    def _endpoint(self, path: str) -> str | None:
        if not path.startswith(self.prefix + "/"):
            return None
        parts = path[len(self.prefix) + 1 :].split("/")
        if len(parts) != 2 or not all(parts):
            return None
        return f"{parts[0]}.{parts[1]}"

    # brokers ---------------------------------------------------------------------------

    def message_handler(
        self, topic: str, handler: HandlerFn | None = None
    ) -> Callable[[Message], Awaitable[Message | None]]:
        """The deduplicating subscriber for ``topic``, to pass to ``Broker.subscribe``
        yourself (with broker-specific options).

        Raises:
            ConfigurationError: no ``handler`` and none registered as ``topic``.
        """
        fn = _wrap(handler) if handler is not None else self._handlers.get(topic)
        if fn is None:
            raise ConfigurationError("handler", f"no handler for topic {topic}")

        async def on_message(message: Message) -> Message | None:
            reply, _ = await self._handle(topic, fn, message)
            wants_reply = bool(message.header.get(REPLY_TO_HEADER))
            if reply.status < 400:
                return reply.message() if wants_reply else None
            if wants_reply:
                return _error_message(reply)
            if not reply.final:
                # nobody waits for an answer: the broker delivers the message again
                raise MicrosagaError(f"{topic}: handler failed, left for redelivery")
            log.warning("%s: message dropped: %s", topic, reply.body.decode(errors="replace"))
            return None

        return on_message

    async def subscribe(
        self, broker: Broker | str, topic: str, handler: HandlerFn | None = None
    ) -> Subscription:
        """Consume ``topic`` with ``handler`` (default: the one registered as ``topic``).

        Args:
            broker: a connected broker, or a broker URL (connected now, closed with the
                subscription).

        Returns:
            The subscription; ``await sub.close()`` stops it.
        """
        on_message = self.message_handler(topic, handler)
        if not isinstance(broker, str):
            return await broker.subscribe(topic, on_message)
        owned = open_broker(broker, "participant broker")
        await owned.connect()
        try:
            return _OwningSubscription(await owned.subscribe(topic, on_message), owned)
        except BaseException:
            await owned.close()
            raise

    # serving ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run this participant under uvicorn inside this process.

        ``async with participant.serve() as url:`` yields the base URL
        (``http://127.0.0.1:<free port>``) once it accepts connections.

        Raises:
            ConfigurationError: uvicorn is not installed (``microsaga[participant]``).
        """
        try:
            import uvicorn
        except ImportError:
            raise ConfigurationError(
                "participant", "serving needs uvicorn: pip install 'microsaga[participant]'"
            ) from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says
        # TCP, and without it each response of a kept-alive connection waits for the
        # client's delayed ACK (~40 ms on Linux)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self, log_level="warning", access_log=False, lifespan="on")
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    if task.done():
                        task.result()
                        raise ConfigurationError("participant", f"cannot serve on {host}:{port}")
                    await asyncio.sleep(0.005)
            yield f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}"
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await task
            sock.close()


class _OwningSubscription(Subscription):
    def __init__(self, sub: Subscription, broker: Broker) -> None:
        self.sub, self.broker = sub, broker

    async def close(self) -> None:
        try:
            await self.sub.close()
        finally:
            await self.broker.close()


async def _run(fn: Callable[[Message], Awaitable[Any]], name: str, request: Message) -> Reply:
    try:
        result = await fn(request)
        message = to_message(result)
    except Exception as exc:
        return _failure(name, exc)
    return Reply(200, message.body, message.header.to_dict())


def _failure(name: str, exc: Exception) -> Reply:
    header: dict[str, list[str]] = {}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after >= 0:
        header["Retry-After"] = [str(int(-(-retry_after // 1)))]  # whole seconds, rounded up
    if not is_retryable(exc):
        return _error(422, error_code(exc), one_line(exc), header)
    if isinstance(exc, MicrosagaError):
        return _error(503, error_code(exc), one_line(exc), header)
    log.exception("%s: the handler failed", name)
    return _error(500, "internal", one_line(exc), header)


def _error_message(reply: Reply) -> Message:
    try:
        error = msgspec.json.decode(reply.body).get("error", {})
    except (msgspec.DecodeError, AttributeError):
        error = {}
    code = str(error.get("code") or f"http_{reply.status}")
    message = error_reply(code, str(error.get("message") or ""), retryable=not reply.final)
    for key, values in reply.header.items():
        if key.lower() != ERROR_HEADER.lower():
            for value in values:
                message.header.add(key, value)
    return message


def _message_header(raw: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    header: dict[str, list[str]] = {}
    for key, value in raw:
        name = key.decode("latin-1")
        if name.lower() in _NOT_MESSAGE_HEADERS:
            continue
        try:
            text = value.decode("utf-8")  # HttpClient sends UTF-8
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        header.setdefault(name, []).append(text)
    return header


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            break
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            break
    return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
