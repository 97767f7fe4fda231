"""Step timeouts that cancel HTTP requests in flight, and requests that time out
waiting for a connection, must not use up the connection pool: afterwards a call still
gets a connection (the participant-faults and sqlite-disk-full chaos scenarios ended
with every request waiting for a pool slot, ``PoolTimeout``, and no connection open)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import httpx

from microsaga import Message
from microsaga.errors import StepTimeoutError, TransportError
from microsaga.transports.http import HttpClient

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
LAST_ANSWER = ANSWER.replace(b"content-length", b"connection: close\r\ncontent-length")


class Service:
    """A bare HTTP/1.1 server on loopback: ``Slow.*`` answers only once ``release`` is
    set; ``Close.*`` answers after 0-100 ms and closes the connection, so the next
    request needs a new one; anything else at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.writers: set[asyncio.StreamWriter] = set()
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while request_line := await reader.readline():
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                if b"/Slow/" in request_line:
                    await self.release.wait()
                if b"/Close/" in request_line:
                    await asyncio.sleep(random.uniform(0.0, 0.1))
                    writer.write(LAST_ANSWER)
                    await writer.drain()
                    break
                writer.write(ANSWER)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[Service, str]]:
    service = Service()
    server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield service, f"http://127.0.0.1:{port}"
    finally:
        service.release.set()
        for writer in list(service.writers):
            writer.close()
        server.close()
        await server.wait_closed()


async def _timed_out(client: HttpClient, timeout: float) -> bool:
    """A call cut short as the run cuts a step at its timeout (``asyncio.timeout``)."""
    try:
        async with asyncio.timeout(timeout):
            await client.call("svc", "Slow.Call", Message(b"{}"), timeout=timeout)
    except TimeoutError:
        return True
    except Exception as exc:  # the transport's own timeout may come first
        return isinstance(exc, StepTimeoutError) or "timed out" in str(exc)
    return False


async def test_timed_out_calls_leave_the_pool_usable() -> None:
    async with serving() as (service, url):
        client = HttpClient({"svc": url}, max_connections=2, timeout=1.0)
        try:
            # many more cancelled requests than connections, several at once
            for _ in range(5):
                results = await asyncio.gather(*(_timed_out(client, 0.05) for _ in range(6)))
                assert all(results)
            service.release.set()  # the slow answers come; the connections are free again
            answer = await client.call("svc", "Fast.Call", Message(b"{}"), timeout=5.0)
        finally:
            await client.close()
    assert answer.body == b"{}"


class Counting(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the requests inside it."""

    def __init__(self, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections)
        self.inner = httpx.AsyncHTTPTransport(limits=limits)
        self.inside = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.inside += 1
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.inside -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_calls_beyond_the_connections_wait_outside_httpx() -> None:
    """httpcore's pool loses a slot for good when a request waiting in it for a
    connection leaves (its pool timeout, a cancellation) just as a new connection was
    made for it; so the client lets in only as many requests as it has connections."""
    async with serving() as (service, url):
        transport = Counting(max_connections=2)
        client = HttpClient({"svc": url}, max_connections=2, transport=transport)
        try:
            calls = [
                asyncio.ensure_future(client.call("svc", "Slow.Call", Message(b"{}"), timeout=30.0))
                for _ in range(6)
            ]
            while service.requests < 2:
                await asyncio.sleep(0.01)
            assert transport.inside == 2  # the other 4 wait in the client
            service.release.set()
            answers = await asyncio.gather(*calls)
        finally:
            await client.close()
    assert [a.body for a in answers] == [b"{}"] * 6
    assert service.requests == 6


async def _pool_timed_out(client: HttpClient) -> None:
    with contextlib.suppress(TransportError):
        await client.call("svc", "Close.Call", Message(b"{}"), timeout=0.05)


async def test_calls_timing_out_for_a_connection_leave_the_pool_usable() -> None:
    """Many more calls than connections, each needing a new connection, most of them
    timing out waiting for one (before the fix the pool's one connection was lost within a few
    rounds, every later call failing with ``PoolTimeout``)."""
    async with serving() as (_, url):
        client = HttpClient({"svc": url}, max_connections=1)
        try:
            for _ in range(30):
                await asyncio.gather(*(_pool_timed_out(client) for _ in range(20)))
            answer = await client.call("svc", "Fast.Call", Message(b"{}"), timeout=5.0)
        finally:
            await client.close()
    assert answer.body == b"{}"
