"""Step timeouts that cancel HTTP requests in flight must not use up the connection
pool: after many timed-out calls to a slow service, a call to a quick one still gets a
connection (the participant-faults chaos scenario ended with every request waiting for
a pool slot, ``PoolTimeout``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from microsaga import Message
from microsaga.errors import StepTimeoutError
from microsaga.transports.http import HttpClient

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Service:
    """A bare HTTP/1.1 server on loopback: ``Slow.*`` answers only once ``release`` is
    set, anything else at once."""

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
