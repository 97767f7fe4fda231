"""A participant over HTTP: the ASGI application and serving it under uvicorn.

``POST {prefix}/Name/Method`` runs the handler registered as ``"Name.Method"``; the
status table is in :mod:`microsaga.participant`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigurationError
from ..message import Message
from ..transports.http import HTTP_OWN_HEADERS
from .dedupe import Reply, error_answer

if TYPE_CHECKING:
    from .service import Participant

__all__ = ["REPLAYED_HEADER", "Receive", "Scope", "Send", "app", "serve"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

REPLAYED_HEADER = "Idempotent-Replayed"
_NOT_MESSAGE_HEADERS = HTTP_OWN_HEADERS | {"accept", "user-agent"}
_json_check = msgspec.json.Decoder(msgspec.Raw)


async def app(participant: Participant, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one ASGI connection scope with ``participant``'s handlers."""
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind != "http":
        return  # websockets are not served; returning closes them
    reply, replayed = await _answer(participant, scope, receive)
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


async def _answer(participant: Participant, scope: Scope, receive: Receive) -> tuple[Reply, bool]:
    name = _endpoint(participant.prefix, scope["path"])
    if name is None or not participant.has_handler(name):
        shown = name or scope["path"]
        return error_answer(404, "unknown_endpoint", f"no handler for {shown}"), False
    if scope["method"] != "POST":
        return error_answer(405, "method_not_allowed", f"{name}: use POST"), False
    limit = participant.max_body
    body = await _read_body(receive, limit)
    if body is None:
        return error_answer(413, "body_too_large", f"{name}: over {limit} bytes"), False
    if body:
        try:
            _json_check.decode(body)
        except msgspec.DecodeError as exc:
            text = f"{name}: body is not valid JSON: {exc}"
            return error_answer(400, "invalid_json", text), False
        except RecursionError:  # msgspec decodes nesting as deep as the stack allows
            text = f"{name}: body is JSON nested too deep"
            return error_answer(400, "invalid_json", text), False
    return await participant.handle(name, Message(body, _message_header(scope["headers"])))


def _endpoint(prefix: str, path: str) -> str | None:
    """``"Name.Method"`` from ``{prefix}/Name/Method``, None for any other path."""
    if not path.startswith(prefix + "/"):
        return None
    parts = path[len(prefix) + 1 :].split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return f"{parts[0]}.{parts[1]}"


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
    """The request body, None when it is over ``limit`` bytes."""
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


@contextlib.asynccontextmanager
async def serve(application: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run an ASGI application under uvicorn inside this process; yield its base URL
    once it accepts connections (see :meth:`Participant.serve`)."""
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
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            "participant", f"cannot serve on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    port = sock.getsockname()[1]
    config = uvicorn.Config(application, log_level="warning", access_log=False, lifespan="on")
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
