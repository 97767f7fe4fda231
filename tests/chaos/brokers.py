"""The broker of a chaos run (the harness's own Redis, NATS or RabbitMQ), its topic
made ready before the run, and the messages read off it after the run.

The publish step's topic must hold every message the store says was published: the
checker compares the ``Idempotency-Key`` of each message read here with the publish
steps that succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.chaos.servers import Nats, RabbitMQ, Redis

__all__ = ["own", "prepare", "published"]

STREAM = "CHAOS"


@contextlib.asynccontextmanager
async def own(kind: str, folder: Path) -> AsyncIterator[Any]:
    """Start the harness's own server of ``kind``; stop it on exit."""
    server: Redis | Nats | RabbitMQ
    if kind == "redis":
        server = Redis(folder)
    elif kind == "nats":
        server = Nats(folder)
    elif kind == "rabbitmq":
        server = RabbitMQ(folder)
    else:
        raise ValueError(f"unknown broker {kind!r}")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop, True)


def _key(header: Any) -> str | None:
    for name, value in dict(header or {}).items():
        if str(name).lower() == "idempotency-key":
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            if isinstance(value, bytes):
                value = value.decode()
            return None if value is None else str(value)
    return None


async def prepare(kind: str, url: str, topic: str) -> None:
    """What the publish step needs: a JetStream stream capturing the subject, or a
    durable queue named after the topic (Redis streams need nothing)."""
    if kind == "nats":
        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=STREAM, subjects=[topic])
        finally:
            await nc.close()
    elif kind == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect_robust(url)
        try:
            channel = await conn.channel()
            await channel.declare_queue(topic, durable=True)
        finally:
            await conn.close()


async def published(kind: str, url: str, topic: str) -> Counter[str]:
    """How many messages of each idempotency key the topic holds."""
    keys: Counter[str] = Counter()
    if kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.from_url(url)
        try:
            last = "-"
            while True:
                entries: Any = await client.xrange(topic, min=last, max="+", count=1000)
                if last != "-":
                    entries = entries[1:]  # the bound is inclusive
                if not entries:
                    break
                for _id, fields in entries:
                    key = _key(json.loads(fields[b"header"]))
                    if key:
                        keys[key] += 1
                last = entries[-1][0].decode()
        finally:
            await client.aclose()
    elif kind == "nats":
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(STREAM, seq)
                except NotFoundError:
                    continue
                key = _key(msg.headers)
                if key:
                    keys[key] += 1
        finally:
            await nc.close()
    elif kind == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect_robust(url)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(topic, durable=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                key = message.message_id or _key(message.headers)
                if key:
                    keys[key] += 1
        finally:
            await conn.close()
    return keys
