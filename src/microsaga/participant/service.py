""":class:`Participant`: the handlers of one service, each run once per idempotency key."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from .._signature import function_call, result_message
from ..errors import (
    ConfigurationError,
    DefinitionError,
    MicrosagaError,
    error_code,
    is_retryable,
    one_line,
)
from ..message import Message
from ..observability.logs import about_request
from ..observability.tracing import participant_failed, participant_span, participant_tracer
from ..protocol import IDEMPOTENCY_HEADER
from ..step import StepContext
from ..transports.base import Broker, Subscription, to_message
from . import asgi, subscriber
from .dedupe import DedupeStore, MemoryDedupeStore, Reply, error_answer

__all__ = ["Participant"]

log = logging.getLogger("microsaga.participant")

HandlerFn = Callable[[Message], Any]
F = TypeVar("F", bound=HandlerFn)
_Handler = Callable[[Message], Awaitable[Any]]


class Participant:
    """Handlers of one service, served over HTTP (an ASGI app) and brokers.

    Args:
        dedupe: where answers are kept per ``Idempotency-Key``; a
            :class:`MemoryDedupeStore` by default.
        prefix: a path before ``/Name/Method`` (``"/rpc"`` for a service whose
            address is ``http://host/rpc/{name}/{method}``).
        max_body: the largest request body accepted, in bytes.
        tracing: continue the trace of the step that sent a request (its W3C
            ``traceparent``): each handler call is a span, a child of the step's span,
            current while the handler runs. On when OpenTelemetry is installed
            (without a tracer provider configured it makes no span).
        tracer_provider: where those spans go; the global provider by default.
    """

    def __init__(
        self,
        *,
        dedupe: DedupeStore | None = None,
        prefix: str = "",
        max_body: int = 1 << 20,
        tracing: bool = True,
        tracer_provider: Any = None,
    ) -> None:
        self.dedupe: DedupeStore = dedupe if dedupe is not None else MemoryDedupeStore()
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.max_body = max_body
        self.tracing = tracing
        self.tracer_provider = tracer_provider
        self._tracer: Any = None  # made on first use: None, the tracer, or False
        self._handlers: dict[str, _Handler] = {}
        self._inflight: dict[str, asyncio.Future[Reply]] = {}
        self._releasing: set[asyncio.Future[None]] = set()

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
        self._handlers[name] = _wrap(fn, name)

    @property
    def names(self) -> list[str]:
        """The names that have a handler."""
        return sorted(self._handlers)

    def has_handler(self, name: str) -> bool:
        """Whether ``name`` has a handler."""
        return name in self._handlers

    async def handle(self, name: str, request: Message) -> tuple[Reply, bool]:
        """Answer ``request`` with the handler of ``name``, once per idempotency key.

        Returns:
            The answer, and whether it is a replay of an earlier one.
        """
        fn = self._handlers.get(name)
        if fn is None:
            return error_answer(404, "unknown_endpoint", f"no handler for {name}"), False
        return await self._handle(name, fn, request)

    async def _handle(
        self, name: str, fn: _Handler, request: Message, kind: str = "server"
    ) -> tuple[Reply, bool]:
        key = request.header.get(IDEMPOTENCY_HEADER)
        if not key:
            return await self._run(fn, name, request, kind), False
        store_key = f"{name} {key}"
        running = self._inflight.get(store_key)
        if running is not None:
            shared = await asyncio.shield(running)
            return shared, shared.final  # a 5xx is not an answer kept for replay
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[store_key] = future
        claimed = False
        try:
            try:
                kept = await self.dedupe.get(store_key)
                if kept is None:
                    claimed = await self.dedupe.claim(store_key)
                    # another process has the key, or has just answered it
                    kept = None if claimed else await self.dedupe.get(store_key)
            except Exception as exc:  # without the store the handler could run twice
                log.warning(
                    "%s: dedupe store failed: %s", name, exc, extra=about_request(request.header)
                )
                reply = error_answer(503, "dedupe_unavailable", f"{name}: {one_line(exc)}")
                future.set_result(reply)
                return reply, False
            if kept is not None:
                future.set_result(kept)
                return kept, True
            if not claimed:
                reply = error_answer(
                    503,
                    "in_progress",
                    f"{name}: another process is answering key {key}",
                    {"Retry-After": ["1"]},
                )
                future.set_result(reply)
                return reply, False
            reply = await self._run(fn, name, request, kind)
            if not reply.final:
                claimed = False
                await self._release(name, store_key, request)
            else:
                claimed = False  # put ends the claim
                try:
                    reply = await self.dedupe.put(store_key, reply)
                except Exception as exc:  # the answer stands; only its replay is lost
                    log.warning(
                        "%s: cannot keep the answer for key %s: %s",
                        name,
                        key,
                        exc,
                        extra=about_request(request.header),
                    )
                    await self._release(name, store_key, request)
            future.set_result(reply)
            return reply, False
        except BaseException as exc:
            if not future.done():
                # requests waiting on this one are told to try again
                future.set_result(error_answer(503, "retry", f"{name}: {one_line(exc)}"))
            if claimed:  # cancelled while running: the claim ends, or else expires
                release = asyncio.ensure_future(self._release(name, store_key, request))
                self._releasing.add(release)
                release.add_done_callback(self._releasing.discard)
            raise
        finally:
            del self._inflight[store_key]

    async def _release(self, name: str, store_key: str, request: Message) -> None:
        try:
            await self.dedupe.release(store_key)
        except Exception as exc:  # the claim expires by itself
            log.warning(
                "%s: cannot release the claim on %s: %s",
                name,
                store_key,
                exc,
                extra=about_request(request.header),
            )

    async def _run(self, fn: _Handler, name: str, request: Message, kind: str) -> Reply:
        tracer = self._tracer
        if tracer is None:
            tracer = self._tracer = (
                self.tracing and participant_tracer(self.tracer_provider)
            ) or False
        if not tracer:  # off, or OpenTelemetry is not installed
            return await _run(fn, name, request)
        with participant_span(tracer, name, request.header, kind=kind) as span:
            return await _run(fn, name, request, span)

    # HTTP ------------------------------------------------------------------------------

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        """The ASGI application."""
        await asgi.app(self, scope, receive, send)

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run this participant under uvicorn inside this process.

        ``async with participant.serve() as url:`` yields the base URL
        (``http://127.0.0.1:<free port>``) once it accepts connections.

        Raises:
            ConfigurationError: uvicorn is not installed (``microsaga[participant]``),
                or the address cannot be bound.
        """
        async with asgi.serve(self, host, port) as url:
            yield url

    # brokers ---------------------------------------------------------------------------

    def message_handler(
        self, topic: str, handler: HandlerFn | None = None
    ) -> subscriber.MessageHandler:
        """The deduplicating subscriber for ``topic``, to pass to ``Broker.subscribe``
        yourself (with broker-specific options).

        Raises:
            ConfigurationError: no ``handler`` and none registered as ``topic``.
        """
        fn = _wrap(handler, topic) if handler is not None else self._handlers.get(topic)
        if fn is None:
            raise ConfigurationError("handler", f"no handler for topic {topic}")

        async def answer(message: Message) -> Reply:
            reply, _ = await self._handle(topic, fn, message, "consumer")
            return reply

        return subscriber.on_message(topic, answer)

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
        return await subscriber.subscribe(broker, topic, self.message_handler(topic, handler))


def _wrap(fn: HandlerFn, name: str) -> _Handler:
    """``fn`` as a coroutine function of the request: called with the Message, or,
    typed, with its parameters decoded from the body (as a typed FunctionStep is)."""
    try:
        call = function_call(fn)
    except DefinitionError as exc:
        if not _takes_one(fn):
            raise _not_callable(fn, name) from None
        raise ConfigurationError("handler", f"{name}: {exc.message}") from None
    if call.typed:
        if _takes_context(fn):
            raise ConfigurationError(
                "handler",
                f"{name}: a participant's handler gets no StepContext (it runs in "
                "another service than the step); take a Message for the header",
            )
        invoke = call.invoke
        if call.is_async:

            async def typed(message: Message) -> Message:
                # encoded as a typed step's result is (pydantic models too)
                return result_message(await invoke(message, None))  # type: ignore[arg-type]

            return typed

        def typed_sync(message: Message) -> Message:
            return result_message(invoke(message, None))  # type: ignore[arg-type]

        return _in_thread(typed_sync)
    if not _takes_one(fn):
        raise _not_callable(fn, name)
    if call.is_async:
        return fn
    return _in_thread(fn)


def _takes_one(fn: HandlerFn) -> bool:
    """Whether ``fn`` can be called with one argument (a builtin without a signature
    is taken at its word)."""
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        return False
    except ValueError:
        pass
    return True


def _not_callable(fn: HandlerFn, name: str) -> ConfigurationError:
    return ConfigurationError(
        "handler",
        f"{name}: {fn!r} cannot be called with one Message: a handler takes (msg), or "
        "typed parameters (data decoded from the body, a Message)",
    )


def _takes_context(fn: HandlerFn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    for p in params:
        shown = p.annotation if isinstance(p.annotation, str) else None
        if p.annotation is StepContext or (shown and shown.rsplit(".", 1)[-1] == "StepContext"):
            return True
    return False


def _in_thread(fn: HandlerFn) -> _Handler:
    async def in_thread(message: Message) -> Any:
        result = await asyncio.to_thread(fn, message)
        return await result if inspect.isawaitable(result) else result

    return in_thread


async def _run(fn: _Handler, name: str, request: Message, span: Any = None) -> Reply:
    try:
        result = await fn(request)
        message = to_message(result)
    except Exception as exc:
        participant_failed(span, exc)
        return _failure(name, exc, request)
    return Reply(200, message.body, message.header.to_dict())


def _failure(name: str, exc: Exception, request: Message) -> Reply:
    """The answer to a handler that raised: 422 final, 503 retryable, 500 unexpected."""
    header: dict[str, list[str]] = {}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after >= 0:
        header["Retry-After"] = [str(int(-(-retry_after // 1)))]  # whole seconds, rounded up
    if not is_retryable(exc):
        return error_answer(422, error_code(exc), one_line(exc), header)
    if isinstance(exc, MicrosagaError):
        return error_answer(503, error_code(exc), one_line(exc), header)
    log.exception("%s: the handler failed", name, extra=about_request(request.header))
    return error_answer(500, "internal", one_line(exc), header)
