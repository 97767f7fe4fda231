"""A faulty HTTP proxy in front of a participant: slow answers, reset connections and
garbage, each on a share of the requests chosen by a seeded random generator.

It reads each request (head and ``Content-Length`` body) from a kept-alive client
connection, forwards it on a fresh connection to the participant, and, depending on the
draw:

- ``slow``: waits 0.2-3 s before forwarding (past a step's timeout at times);
- ``reset``: forwards, lets the participant answer (its effect is applied), then
  resets the client's connection without a byte of the answer;
- ``garbage``: forwards, then answers bytes that are not HTTP;
- ``bad_gateway``: answers 502 with an HTML page, without forwarding;
- otherwise passes the answer through.

Each fault is recorded as a :class:`~tests.chaos.checker.Fault` with the request's
``Idempotency-Key``, so the checker can tell the repeats it explains.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time

from tests.chaos.checker import Fault

__all__ = ["FaultyProxy"]

_KINDS = ("slow", "reset", "garbage", "bad_gateway")


class FaultyProxy:
    """``await proxy.start()`` returns its port; faults hit ``rate`` of the requests."""

    def __init__(self, target_port: int, rng: random.Random, rate: float = 0.2) -> None:
        self.target_port, self.rng, self.rate = target_port, rng, rate
        self.faults: list[Fault] = []
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the client connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        length, key = 0, None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"idempotency-key":
                key = value.strip().decode("latin-1")
        body = await reader.readexactly(length) if length else b""
        self.requests += 1
        kind = self.rng.choice(_KINDS) if self.rng.random() < self.rate else None
        if kind is not None:
            self.faults.append(Fault(time.time(), kind, "participant proxy", key))
        if kind == "bad_gateway":
            page = b"<html><body>502 Bad Gateway</body></html>"
            writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\n"
                b"content-length: " + str(len(page)).encode() + b"\r\n\r\n" + page
            )
            await writer.drain()
            return True
        if kind == "slow":
            await asyncio.sleep(self.rng.uniform(0.2, 3.0))
        answer = await self._forward(head + body)
        if kind == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close() sends RST
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if kind == "garbage":
            writer.write(b"\x00\xff\xfeNOT HTTP AT ALL\r\n\r\n\x13\x37")
            await writer.drain()
            return False
        writer.write(answer)
        await writer.drain()
        return True

    async def _forward(self, request: bytes) -> bytes:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            up_writer.write(request)
            await up_writer.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await up_reader.readexactly(length) if length else b""
            return head + body
        finally:
            up_writer.close()
