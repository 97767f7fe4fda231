"""Shared fixtures of the integration tests: real servers on loopback.

A server that is not listening skips its tests with the reason, unless ``CI`` is set:
then the test fails, so CI cannot pass by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ..helpers import eventually

# the servers .ci/run starts on loopback (NATS with JetStream, RabbitMQ as guest, Redis);
# tests never reach beyond loopback
NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"


def require_server(name: str, host: str, port: int) -> None:
    """Skip (fail under ``CI``) when nothing listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        reason = f"{name} is not running on {host}:{port} ({exc}); .ci/run shows how to start it"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


@pytest.fixture
def nats_url() -> str:
    require_server("NATS", "127.0.0.1", 4222)
    return NATS_URL


@pytest.fixture
def amqp_url() -> str:
    require_server("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


@pytest.fixture
def redis_url() -> str:
    require_server("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def unique() -> str:
    """A name part no other test run uses."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Any], Awaitable[str]]]:
    """``url = await serve(app)`` runs an ASGI app under uvicorn on a free port."""
    from microsaga.participant import Participant

    async with contextlib.AsyncExitStack() as stack:

        async def start(app: Any) -> str:
            if isinstance(app, Participant):
                return await stack.enter_async_context(app.serve())
            return await stack.enter_async_context(_serve_asgi(app))

        yield start


@contextlib.asynccontextmanager
async def _serve_asgi(app: Any) -> AsyncIterator[str]:
    import uvicorn

    # IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted connections (as
    # Participant.serve does): otherwise each kept-alive response waits ~40 ms
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started, timeout=10.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class TcpProxy:
    """A loopback TCP proxy in front of a server, to cut a client off at will.

    ``drop()`` closes every connection (clients see the server go away and
    reconnect); ``blackhole = True`` swallows what the server sends, so a client's
    request reaches the server but its answer never comes back.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blackhole = False
        self.refuse = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, downstream=False)),
            asyncio.create_task(self._pipe(up_reader, writer, downstream=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, downstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if downstream and self.blackhole:
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def drop(self) -> None:
        """Close every open connection."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def tcp_proxy() -> AsyncIterator[Callable[[int], Awaitable[TcpProxy]]]:
    """``proxy = await tcp_proxy(port)``: a started :class:`TcpProxy` to that port."""
    proxies: list[TcpProxy] = []

    async def start(port: int) -> TcpProxy:
        proxy = TcpProxy(port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.close()


def with_port(url: str, port: int) -> str:
    """``url`` pointing at ``port`` on 127.0.0.1 instead."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
