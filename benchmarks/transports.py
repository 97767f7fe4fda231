"""Transport overhead: microsaga beside the client libraries, in the same run.

    python benchmarks/transports.py [--seconds 2] [--runs 3] [--width 32] [--http-width 8]
                                    [--store memory://] [--only http,nats,rabbitmq,redis]
                                    [--json results.json]

HTTP: calls/s of a one-step saga (a ``CallStep``) against a ``microsaga.participant``
served by uvicorn in its own process, beside the same POST (same body, same headers,
a fresh ``Idempotency-Key`` each) sent directly with one pooled ``httpx.AsyncClient``
(HTTP/1.1 keep-alive, as many connections as requests in flight, the limits
microsaga's ``HttpClient`` uses). A third line, the same request written on raw
kept-alive sockets with no client library, shows what the participant itself can
serve: the ceiling of the other two.

``--http-width`` requests are in flight for HTTP (8 by default): httpx's connection
pool does work per request that grows with the number of connections (below 8 it costs
about the same per request; at 32 several times more), so a wider figure would measure
httpx's pool rather than the round trip.

Brokers (on loopback: NATS with JetStream on 4222, RabbitMQ on 5672, Redis on 6379, the
servers of the integration tests, which ``.ci/run`` starts; a missing one is skipped):
publishes/s, each confirmed by the broker, of (1) the client library directly (nats-py
JetStream publish, aio-pika with publisher confirms and ``mandatory``, redis-py
``XADD``), (2) microsaga's ``Broker.publish`` and (3) a one-step saga (a
``PublishStep``).

``--width`` publishes are in flight at once. Each contender runs ``--seconds`` per
run after a short warm-up; runs are interleaved (direct, adapter, saga, direct, ...)
so that drift of the machine hits all of them alike. The table shows the median of
``--runs`` runs and the ratio to the direct figure. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads as w

from microsaga import CallStep, Flow, Message, PublishStep
from microsaga.message import encode_json
from microsaga.transports import open_broker

Op = Callable[[int], Awaitable[Any]]
SERVERS = {
    "nats": ("nats://127.0.0.1:4222", 4222),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672/", 5672),
    "redis": ("redis://127.0.0.1:6379/0", 6379),
}


def step_header(eid: str, step: str) -> dict[str, str]:
    """The header a saga step carries, for the direct contenders to send the same."""
    return {
        "Micro-Flow-Workflow": "bench",
        "Micro-Flow-Execution": eid,
        "Micro-Flow-Step": step,
        "Idempotency-Key": f"{eid}:{step}",
    }


async def rate(op: Op, seconds: float, width: int) -> float:
    """Operations per second with ``width`` in flight, over ``seconds``."""
    loop = asyncio.get_running_loop()
    done = 0
    until = loop.time() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while loop.time() < until:
            await op(i)
            done += 1
            i += width

    start = loop.time()
    await asyncio.gather(*(worker(k) for k in range(width)))
    return done / (loop.time() - start)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# HTTP ----------------------------------------------------------------------------------


def serve_participant(port: int) -> None:
    """The participant process: Inventory.Reserve on uvicorn."""
    import uvicorn

    from microsaga.participant import Participant

    inventory = Participant()

    @inventory.handler("Inventory.Reserve")
    async def reserve(msg: Message) -> Any:
        return w.reserve(msg.json())

    uvicorn.run(inventory, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.asynccontextmanager
async def participant_process() -> AsyncIterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve-participant", str(port)])
    try:
        for _ in range(200):
            if listening(port):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the participant did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def raw_http(url: str, width: int) -> AsyncIterator[Op]:
    """The participant's request on ``width`` kept-alive sockets, no client library."""
    host, port = url.removeprefix("http://").split(":")
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    writers = []
    for _ in range(width):
        reader, writer = await asyncio.open_connection(host, int(port))
        writers.append(writer)
        free.put_nowait((reader, writer))

    async def post(i: int) -> None:
        body = encode_json(w.order(i))
        lines = [
            "POST /Inventory/Reserve HTTP/1.1",
            f"Host: {host}:{port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in step_header(uuid.uuid4().hex, "inventory.R").items()),
        ]
        reader, writer = await free.get()
        try:
            writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            json.loads(await reader.readexactly(length))
        finally:
            free.put_nowait((reader, writer))

    try:
        yield post
    finally:
        for writer in writers:
            writer.close()


async def http_contenders(store: str, width: int) -> AsyncIterator[tuple[str, str, Op]]:
    import httpx

    async with participant_process() as url:
        # the limits of microsaga's HttpClient: no request waits for a connection
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(limits=limits) as client:
            endpoint = f"{url}/Inventory/Reserve"

            async def direct(i: int) -> None:
                headers = step_header(uuid.uuid4().hex, "inventory.Inventory.Reserve")
                headers["content-type"] = "application/json"
                resp = await client.post(endpoint, content=encode_json(w.order(i)), headers=headers)
                resp.raise_for_status()
                resp.json()

            yield "httpx POST (direct)", "direct", direct
        async with Flow(store, services={"inventory": url}) as flow:
            wf = await flow.workflow_create("bench", CallStep("inventory", "Inventory", "Reserve"))

            async def saga(i: int) -> None:
                await wf.execute(w.order(i))

            yield "CallStep saga", "saga", saga
        async with raw_http(url, width) as raw:
            yield "raw HTTP/1.1 sockets (ceiling)", "ceiling", raw


# brokers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def topic_for(kind: str, url: str) -> AsyncIterator[str]:
    """A fresh topic that accepts publishes, removed afterwards."""
    topic = f"microsaga.bench.{uuid.uuid4().hex[:10]}"
    if kind == "nats":
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        name = "BENCH" + uuid.uuid4().hex[:10]
        await js.add_stream(name=name, subjects=[topic])
        try:
            yield topic
        finally:
            await js.delete_stream(name)
            await nc.close()
    elif kind == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect(url)
        channel = await conn.channel()
        await channel.declare_queue(topic, durable=True)
        try:
            yield topic
        finally:
            await channel.queue_delete(topic)
            await conn.close()
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        try:
            yield topic
        finally:
            await client.delete(topic)
            await client.aclose()


@contextlib.asynccontextmanager
async def direct_publisher(kind: str, url: str, topic: str) -> AsyncIterator[Op]:
    if kind == "nats":
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()

        async def nats_publish(i: int) -> None:
            header = step_header(uuid.uuid4().hex, topic)
            header["Nats-Msg-Id"] = header["Idempotency-Key"]
            await js.publish(topic, encode_json(w.order(i)), headers=header)

        try:
            yield nats_publish
        finally:
            await nc.close()
    elif kind == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect(url)
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)

        async def amqp_publish(i: int) -> None:
            header = step_header(uuid.uuid4().hex, topic)
            message = aio_pika.Message(
                encode_json(w.order(i)),
                headers=dict(header),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=header["Idempotency-Key"],
            )
            await channel.default_exchange.publish(message, routing_key=topic, mandatory=True)

        try:
            yield amqp_publish
        finally:
            await conn.close()
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)

        async def redis_publish(i: int) -> None:
            header = {k: [v] for k, v in step_header(uuid.uuid4().hex, topic).items()}
            await client.xadd(
                topic, {"body": encode_json(w.order(i)), "header": encode_json(header)}
            )

        try:
            yield redis_publish
        finally:
            await client.aclose()


async def broker_contenders(kind: str, url: str, store: str) -> AsyncIterator[tuple[str, str, Op]]:
    async with topic_for(kind, url) as topic:
        library = {
            "nats": "nats-py js.publish",
            "rabbitmq": "aio-pika publish",
            "redis": "redis-py XADD",
        }
        async with direct_publisher(kind, url, topic) as direct:
            yield f"{library[kind]} (direct)", "direct", direct
        broker = open_broker(url)
        await broker.connect()
        try:

            async def adapter(i: int) -> None:
                header = step_header(uuid.uuid4().hex, topic)
                await broker.publish(topic, Message(encode_json(w.order(i)), header))

            yield f"{type(broker).__name__}.publish", "adapter", adapter
        finally:
            await broker.close()
        async with Flow(store, broker=url) as flow:
            wf = await flow.workflow_create("bench", PublishStep(topic))

            async def saga(i: int) -> None:
                await wf.execute(w.order(i))

            yield "PublishStep saga", "saga", saga


# running -------------------------------------------------------------------------------


async def measure(
    transport: str,
    contenders: Callable[[], AsyncIterator[tuple[str, str, Op]]],
    args: argparse.Namespace,
    width: int,
) -> list[dict[str, Any]]:
    """Run every contender ``args.runs`` times, interleaved, and summarise."""
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        async for label, role, op in contenders():
            await rate(op, min(0.3, args.seconds), width)  # warm-up: connections, caches
            runs.setdefault((label, role), []).append(await rate(op, args.seconds, width))
    direct = next(statistics.median(v) for (_, role), v in runs.items() if role == "direct")
    return [
        {
            "transport": transport,
            "operation": label,
            "role": role,
            "width": width,
            "median_per_s": round(statistics.median(values), 1),
            "runs_per_s": [round(v, 1) for v in values],
            "ratio_to_direct": round(statistics.median(values) / direct, 3),
        }
        for (label, role), values in runs.items()
    ]


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nmedian of {args.runs} runs x {args.seconds:g}s, store {args.store}, "
        f"Python {sys.version.split()[0]}\n"
    )
    print(
        f"{'transport':<10} {'operation':<32} {'width':>5} {'median/s':>9}  {'runs/s':<22} "
        f"{'vs direct':>9}"
    )
    for r in results:
        runs = " ".join(f"{v:.0f}" for v in r["runs_per_s"])
        print(
            f"{r['transport']:<10} {r['operation']:<32} {r['width']:>5} "
            f"{r['median_per_s']:>9.0f}  {runs:<22} {r['ratio_to_direct']:>9.2f}"
        )


async def main(args: argparse.Namespace) -> int:
    wanted = args.only.split(",") if args.only else ["http", *SERVERS]
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if "http" in wanted:
        results += await measure(
            "http", lambda: http_contenders(args.store, args.http_width), args, args.http_width
        )
    for kind, (url, port) in SERVERS.items():
        if kind not in wanted:
            continue
        if not listening(port):
            skipped[kind] = f"nothing listens on 127.0.0.1:{port}"
            continue
        results += await measure(
            kind,
            lambda kind=kind, url=url: broker_contenders(kind, url, args.store),
            args,
            args.width,
        )
    print_table(results, args)
    for kind, why in skipped.items():
        print(f"{kind}: skipped ({why})")
    if args.json:
        document = {
            "config": {
                "seconds": args.seconds,
                "runs": args.runs,
                "width": args.width,
                "http_width": args.http_width,
                "store": args.store,
                "python": sys.version.split()[0],
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "results": results,
            "skipped": skipped,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender")
    parser.add_argument("--width", type=int, default=32, help="publishes in flight")
    parser.add_argument("--http-width", type=int, default=8, help="HTTP calls in flight")
    parser.add_argument("--store", default="memory://", help="the flows' store URL")
    parser.add_argument("--only", default="", help="comma list of http,nats,rabbitmq,redis")
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--serve-participant", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_participant:
        serve_participant(arguments.serve_participant)
    else:
        sys.exit(asyncio.run(main(arguments)))
