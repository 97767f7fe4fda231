"""PublishStep over real NATS JetStream, RabbitMQ and Redis Streams.

Every test uses its own topic (a stream, a queue, a stream key), read back with the
broker's own client library to check the documented wire format, and removed after.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

import microsaga
from microsaga import (
    CallStep,
    DefinitionError,
    ExecutionFailedError,
    Message,
    MissingClientError,
    PublishStep,
    Retry,
    Status,
    StepError,
    TransportError,
)
from microsaga.participant import Participant
from microsaga.transports import Broker, open_broker
from microsaga.transports.base import CORRELATION_HEADER, REPLY_TO_HEADER

from ..helpers import eventually, free_port
from .conftest import with_port

FAST = {"initial_interval": 0.05, "jitter": False}
KINDS = ["nats", "rabbitmq", "redis"]


@dataclass
class Raw:
    """A message as the broker holds it."""

    body: bytes
    header: dict[str, list[str]]
    props: dict[str, Any]


class NatsEnv:
    def __init__(self, url: str) -> None:
        self.url = url
        self.streams: dict[str, str] = {}

    async def start(self) -> None:
        import nats

        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()

    async def prepare(self, topic: str) -> None:
        name = "T" + uuid.uuid4().hex[:16]
        await self.js.add_stream(name=name, subjects=[topic])
        self.streams[topic] = name

    async def count(self, topic: str) -> int:
        info = await self.js.stream_info(self.streams[topic])
        messages: int = info.state.messages
        return messages

    async def messages(self, topic: str) -> list[Raw]:
        name = self.streams[topic]
        info = await self.js.stream_info(name)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(name, seq)
            header = {k: [v] for k, v in (msg.headers or {}).items()}
            found.append(Raw(msg.data or b"", header, {}))
        return found

    async def close(self) -> None:
        for name in self.streams.values():
            await self.js.delete_stream(name)
        await self.nc.close()


class AmqpEnv:
    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    async def start(self) -> None:
        import aio_pika

        self.conn = await aio_pika.connect(self.url)
        self.channel = await self.conn.channel()

    async def prepare(self, topic: str) -> None:
        await self.channel.declare_queue(topic, durable=True)
        self.queues.append(topic)

    def forget(self, topic: str) -> None:
        """The queue is declared by the code under test; remove it afterwards."""
        self.queues.append(topic)

    async def count(self, topic: str) -> int:
        queue = await self.channel.declare_queue(topic, durable=True, passive=True)
        result: int = queue.declaration_result.message_count or 0
        return result

    async def messages(self, topic: str) -> list[Raw]:
        queue = await self.channel.declare_queue(topic, durable=True, passive=True)
        found = []
        while (msg := await queue.get(no_ack=True, fail=False)) is not None:
            header = {
                k: [str(x) for x in v] if isinstance(v, list) else [str(v)]
                for k, v in (msg.headers or {}).items()
            }
            props = {
                "message_id": msg.message_id,
                "delivery_mode": int(msg.delivery_mode or 0),
                "content_type": msg.content_type,
            }
            found.append(Raw(msg.body, header, props))
        return found

    async def close(self) -> None:
        for name in self.queues:
            await self.channel.queue_delete(name)
        for name in self.exchanges:
            await self.channel.exchange_delete(name)
        await self.conn.close()


class RedisEnv:
    def __init__(self, url: str) -> None:
        self.url = url
        self.keys: list[str] = []

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(self.url)

    async def prepare(self, topic: str) -> None:
        self.keys.append(topic)

    async def count(self, topic: str) -> int:
        length: int = await self.client.xlen(topic)
        return length

    async def messages(self, topic: str) -> list[Raw]:
        entries = await self.client.xrange(topic)
        return [
            Raw(fields[b"body"], json.loads(fields[b"header"]), {"fields": sorted(fields)})
            for _, fields in entries
        ]

    async def close(self) -> None:
        if self.keys:
            await self.client.delete(*self.keys)
        await self.client.aclose()


Env = NatsEnv | AmqpEnv | RedisEnv


@pytest.fixture(params=KINDS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    url = request.getfixturevalue(f"{'amqp' if request.param == 'rabbitmq' else request.param}_url")
    made: Env = {"nats": NatsEnv, "rabbitmq": AmqpEnv, "redis": RedisEnv}[request.param](url)
    await made.start()
    yield made
    await made.close()


def new_topic() -> str:
    return f"microsaga.test.{uuid.uuid4().hex[:12]}"


async def run(flow: microsaga.Flow, *steps: microsaga.Step, req: Any = None) -> Any:
    """Execute; return the stored execution whatever the outcome."""
    wf = await flow.workflow_create("w", *steps)
    try:
        eid = await wf.execute(req)
    except ExecutionFailedError as exc:
        eid = exc.execution_id
    return await flow.execution(eid)


# publishing ---------------------------------------------------------------------------


async def test_publish_is_confirmed_in_the_documented_wire_format(env: Env) -> None:
    topic = new_topic()
    await env.prepare(topic)
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = Message(b'{"order_id": 42}', {"traceparent": trace, "X-Tag": ["a", "b"]})
    async with microsaga.Flow("memory://", broker=env.url) as flow:
        info = await run(flow, PublishStep(topic), req=request)

    assert info.status is Status.SUCCESS
    response = info.steps[topic].response
    assert response is not None
    assert response.body == b""
    (raw,) = await env.messages(topic)  # stored before the step succeeded
    key = f"{info.id}:{topic}"
    assert raw.body == b'{"order_id": 42}'  # byte for byte
    assert raw.header["Idempotency-Key"] == [key]
    assert raw.header["traceparent"] == [trace]
    assert raw.header["Micro-Flow-Step"] == [topic]
    if isinstance(env, NatsEnv):
        assert raw.header["Nats-Msg-Id"] == [key]
        assert raw.header["X-Tag"] == ["a, b"]
    elif isinstance(env, AmqpEnv):
        assert raw.props == {
            "message_id": key,
            "delivery_mode": 2,
            "content_type": "application/json",
        }
        assert raw.header["X-Tag"] == ["a", "b"]
    else:
        assert raw.props["fields"] == [b"body", b"header"]
        assert raw.header["X-Tag"] == ["a", "b"]


async def test_publish_without_a_broker_fails_before_anything_is_stored() -> None:
    async with microsaga.Flow("memory://") as flow:
        wf = await flow.workflow_create("w", PublishStep("orders.created"))
        with pytest.raises(MissingClientError):
            await wf.execute({})
        assert await flow.executions() == []


async def test_nats_subject_without_a_stream_fails_the_step_naming_it(nats_url: str) -> None:
    topic = new_topic()
    step = PublishStep(topic, retry=Retry(3, **FAST))
    async with microsaga.Flow("memory://", broker=nats_url) as flow:
        info = await run(flow, step)
    run_ = info.steps[topic]
    assert (info.status, run_.attempts) == (Status.FAILURE, 1)
    assert f"no JetStream stream captures subject '{topic}'" in run_.error
    first = topic.split(".")[0]  # and how to make one, with the NATS CLI
    assert f"nats stream add {first.upper()} --subjects '{first}.>' --defaults" in run_.error


async def test_nats_subscribe_without_a_stream_says_how_to_make_one(nats_url: str) -> None:
    topic = new_topic()
    shipping = Participant()
    shipping.add_handler(topic, lambda msg: None)
    with pytest.raises(TransportError) as caught:
        await shipping.subscribe(nats_url, topic)
    assert f"no JetStream stream captures subject '{topic}'" in str(caught.value)
    assert "nats stream add MICROSAGA --subjects 'microsaga.>' --defaults" in str(caught.value)


async def test_rabbitmq_unroutable_message_fails_the_step(amqp_url: str) -> None:
    env = AmqpEnv(amqp_url)
    await env.start()
    try:
        exchange = f"microsaga.test.x.{uuid.uuid4().hex[:8]}"
        await env.channel.declare_exchange(exchange, "direct", auto_delete=False)
        env.exchanges.append(exchange)
        routed, lost = new_topic(), new_topic()
        queue = await env.channel.declare_queue(routed, durable=True)
        env.queues.append(routed)
        await queue.bind(exchange, routing_key=routed)
        url = f"{amqp_url}?exchange={exchange}"
        async with microsaga.Flow("memory://", broker=url) as flow:
            unroutable = await run(flow, PublishStep(lost, retry=Retry(3, **FAST)))
            delivered = await run(flow, PublishStep(routed))
        assert (unroutable.status, unroutable.steps[lost].attempts) == (Status.FAILURE, 1)
        assert f"message on '{lost}' was returned" in unroutable.steps[lost].error
        assert f"exchange '{exchange}'" in unroutable.steps[lost].error
        assert delivered.status is Status.SUCCESS
        assert await env.count(routed) == 1
    finally:
        await env.close()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("line break in a header", "header X-Note has a line break or NUL"),
        ("over max_payload", "over the server's max_payload of"),
        ("over the stream's max_msg_size", "the stream refused the message"),
    ],
)
async def test_nats_publish_that_can_never_be_stored_fails_at_once(
    nats_url: str, case: str, expected: str
) -> None:
    """Each of these is stored if nothing checks (a wildcard subject, a header with
    its line break turned into a space) or fails every retry the same way."""
    env = NatsEnv(nats_url)
    await env.start()
    base = new_topic()
    captured = f"{base}.>"
    await env.prepare(captured)  # a stream that would store every one of them
    topic, body, header = f"{base}.orders", b"{}", {}
    if case == "line break in a header":
        header = {"X-Note": "first line\r\nNats-Msg-Id: forged"}
    elif case == "over max_payload":
        body = b'"' + b"x" * 2_000_000 + b'"'
    else:
        await env.js.update_stream(name=env.streams[captured], subjects=[captured], max_msg_size=64)
        body = b'"' + b"x" * 200 + b'"'
    step = PublishStep(topic, retry=Retry(3, **FAST))
    try:
        async with microsaga.Flow("memory://", broker=nats_url) as flow:
            info = await run(flow, step, req=Message(body, header))
        stored = await env.count(captured)
    finally:
        await env.close()
    run_ = info.steps[topic]
    assert (info.status, run_.attempts, stored) == (Status.FAILURE, 1, 0)
    assert f"on '{topic}'" in run_.error
    assert "127.0.0.1:4222" in run_.error
    assert expected in run_.error


@pytest.mark.parametrize("wildcard", ["*", ">"])
async def test_nats_wildcard_subject_is_refused_before_anything_runs(
    nats_url: str, wildcard: str
) -> None:
    env = NatsEnv(nats_url)
    await env.start()
    base = new_topic()
    captured = f"{base}.>"
    await env.prepare(captured)  # a stream that would store it
    topic = f"{base}.{wildcard}"
    try:
        async with microsaga.Flow("memory://", broker=nats_url) as flow:
            wf = await flow.workflow_create("w", PublishStep(topic))
            with pytest.raises(DefinitionError) as err:
                await wf.execute({})
            assert await flow.executions() == []
        stored = await env.count(captured)
    finally:
        await env.close()
    assert stored == 0
    assert f"step {topic}: " in str(err.value)
    assert f"a wildcard ('{wildcard}') matches subjects" in str(err.value)


async def test_rabbitmq_routing_key_over_255_bytes_fails_at_once_naming_it(amqp_url: str) -> None:
    topic = "microsaga.test." + "k" * 250
    step = PublishStep(topic, retry=Retry(3, **FAST))
    async with microsaga.Flow("memory://", broker=amqp_url) as flow:
        wf = await flow.workflow_create("w", step)
        with pytest.raises(DefinitionError) as err:  # refused before anything is stored
            await wf.execute({})
        assert await flow.executions() == []
        # a broker asked directly fails the same way, without retry
        with pytest.raises(StepError) as published:
            await flow.require_broker().publish(topic, Message({}))
    assert str(err.value).startswith(f"step {topic}: ")
    assert f"cannot publish on '{topic}'" in str(published.value)
    assert "RabbitMQ amqp://guest:***@127.0.0.1:5672/" in str(published.value)
    for text in (str(err.value), str(published.value)):
        assert "a routing key is at most 255 bytes, this one is 265" in text
    assert not published.value.retryable


async def test_rabbitmq_header_name_that_amqp_would_cut_fails_at_once(amqp_url: str) -> None:
    env = AmqpEnv(amqp_url)
    await env.start()
    topic = new_topic()
    await env.prepare(topic)
    step = PublishStep(topic, retry=Retry(3, **FAST))
    try:
        async with microsaga.Flow("memory://", broker=amqp_url) as flow:
            info = await run(flow, step, req=Message({}, {"X-" + "n" * 140: "v"}))
        stored = await env.count(topic)
    finally:
        await env.close()
    run_ = info.steps[topic]
    assert (info.status, run_.attempts, stored) == (Status.FAILURE, 1, 0)
    assert "is 142 bytes, over AMQP's 128" in run_.error


@pytest.mark.parametrize("kind", ["nats", "rabbitmq"])
async def test_reply_the_broker_cannot_carry_fails_the_step_at_once(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The participant's answer has a header its broker cannot send: the step fails
    with a reply saying so, instead of waiting out its timeout on every attempt while
    the request is delivered again and again."""
    url = request.getfixturevalue("amqp_url" if kind == "rabbitmq" else "nats_url")
    env: Env = AmqpEnv(url) if kind == "rabbitmq" else NatsEnv(url)
    await env.start()
    topic = new_topic()
    await env.prepare(topic)
    bad = {"X-Note": "a\nb"} if kind == "nats" else {"X-" + "n" * 140: "v"}
    shipping = Participant()
    runs: list[Any] = []

    @shipping.handler(topic)
    async def book(msg: Message) -> Message:
        runs.append(msg.json())
        return Message({"tracking": "T-1"}, bad)

    sub = await shipping.subscribe(env.url, topic)
    try:
        step = PublishStep(topic, reply=True, timeout=10, retry=Retry(3, **FAST))
        async with microsaga.Flow("memory://", broker=env.url) as flow:
            info = await run(flow, step, req={"order_id": 1})
    finally:
        await sub.close()
        await env.close()
    run_ = info.steps[topic]
    assert (info.status, run_.attempts) == (Status.FAILURE, 1)
    assert f"reply on {topic}: [" in run_.error
    assert "the reply cannot be sent" in run_.error
    assert runs == [{"order_id": 1}]


# replies -------------------------------------------------------------------------------


async def test_reply_step_gets_the_participants_answer(env: Env) -> None:
    topic = new_topic()
    await env.prepare(topic)
    shipping = Participant()
    seen: list[Message] = []

    @shipping.handler(topic)
    async def book(msg: Message) -> Message:
        seen.append(msg)
        return Message({"tracking": f"T-{msg.json()['order_id']}"}, {"X-Carrier": "acme"})

    sub = await shipping.subscribe(env.url, topic)
    try:
        async with microsaga.Flow("memory://", broker=env.url) as flow:
            info = await run(flow, PublishStep(topic, reply=True, timeout=5), req={"order_id": 9})
    finally:
        await sub.close()

    assert info.status is Status.SUCCESS
    assert info.response.json() == {"tracking": "T-9"}
    assert info.response.header.get("X-Carrier") == "acme"
    (msg,) = seen
    assert msg.header["Idempotency-Key"] == f"{info.id}:{topic}"
    assert msg.header.get("Micro-Flow-Reply-To")
    assert msg.header.get("Micro-Flow-Correlation-Id")


async def test_reply_with_a_retryable_error_retries_the_step(env: Env) -> None:
    topic = new_topic()
    await env.prepare(topic)
    quotes = Participant()
    runs = 0

    @quotes.handler(topic)
    async def quote(msg: Message) -> dict[str, int]:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("pricing cache cold")
        return {"price": 12}

    sub = await quotes.subscribe(env.url, topic)
    try:
        step = PublishStep(topic, reply=True, timeout=5, retry=Retry(3, **FAST))
        async with microsaga.Flow("memory://", broker=env.url) as flow:
            info = await run(flow, step)
    finally:
        await sub.close()
    assert info.status is Status.SUCCESS
    assert info.steps[topic].attempts == 2
    assert info.response.json() == {"price": 12}


async def test_reply_times_out_when_nobody_answers(env: Env) -> None:
    topic = new_topic()
    await env.prepare(topic)
    step = PublishStep(topic, reply=True, timeout=0.3)
    async with microsaga.Flow("memory://", broker=env.url) as flow:
        info = await run(flow, step)
    assert info.status is Status.FAILURE
    assert "timed out" in info.steps[topic].error


async def test_memory_broker_reads_error_replies_as_the_real_ones_do() -> None:
    """Failure paths of a saga can be tested without servers: a participant's error
    reply fails the step with its code, retried only when it says so."""
    from microsaga.testing import MemoryBroker

    broker = MemoryBroker()
    stock = Participant()
    runs = 0

    @stock.handler("stock.reserve")
    async def reserve(msg: Message) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise TransportError("warehouse system restarting")
        raise StepError("no widgets left", code="out_of_stock", retryable=False)

    await stock.subscribe(broker, "stock.reserve")
    step = PublishStep("stock.reserve", reply=True, timeout=5, retry=Retry(5, **FAST))
    async with microsaga.Flow("memory://", broker=broker) as flow:
        info = await run(flow, step)
    run_ = info.steps["stock.reserve"]
    assert (info.status, run_.attempts, runs) == (Status.FAILURE, 2, 2)
    assert run_.error == "reply on stock.reserve: [out_of_stock] no widgets left"


# sagas ---------------------------------------------------------------------------------


async def test_saga_over_http_and_a_broker_compensates_in_reverse_order(
    env: Env, serve: Any
) -> None:
    """Reserve (HTTP) -> Charge (HTTP) -> Ship (broker, fails for good): Refund is
    called before Release, each with its compensation key."""
    ship_topic = new_topic()
    await env.prepare(ship_topic)
    log: list[tuple[str, str]] = []
    inventory, payments, shipping = Participant(), Participant(), Participant()

    def handler(name: str, result: Any) -> Any:
        async def handle(msg: Message) -> Any:
            log.append((name, msg.header["Idempotency-Key"]))
            if isinstance(result, Exception):
                raise result
            return result

        return handle

    inventory.add_handler("Inventory.Reserve", handler("Reserve", {"reservation": "R-1"}))
    inventory.add_handler("Inventory.Release", handler("Release", {}))
    payments.add_handler("Payments.Charge", handler("Charge", {"payment": "P-1"}))
    payments.add_handler("Payments.Refund", handler("Refund", {}))
    no_courier = StepError("no courier for this address", code="no_courier", retryable=False)
    shipping.add_handler(ship_topic, handler("Ship", no_courier))
    services = {"inventory": await serve(inventory), "payments": await serve(payments)}
    reserve = CallStep(
        "inventory",
        "Inventory",
        "Reserve",
        compensate=CallStep("inventory", "Inventory", "Release"),
    )
    charge = CallStep(
        "payments",
        "Payments",
        "Charge",
        requires=[reserve],
        compensate=CallStep("payments", "Payments", "Refund"),
    )
    ship = PublishStep(ship_topic, reply=True, requires=[charge], timeout=5, retry=Retry(3))

    sub = await shipping.subscribe(env.url, ship_topic)
    try:
        async with microsaga.Flow("memory://", services=services, broker=env.url) as flow:
            wf = await flow.workflow_create("order", reserve, charge, ship)
            with pytest.raises(ExecutionFailedError) as failed:
                await wf.execute({"order_id": 1})
            info = await flow.execution(failed.value.execution_id)
    finally:
        await sub.close()

    eid = info.id
    assert log == [
        ("Reserve", f"{eid}:inventory.Inventory.Reserve"),
        ("Charge", f"{eid}:payments.Payments.Charge"),
        ("Ship", f"{eid}:{ship_topic}"),
        ("Refund", f"{eid}:payments.Payments.Charge:compensate"),
        ("Release", f"{eid}:inventory.Inventory.Reserve:compensate"),
    ]
    assert failed.value.step_id == ship_topic
    assert failed.value.compensated
    assert info.status is Status.FAILURE
    assert info.steps[ship_topic].status is Status.FAILURE
    assert info.steps[ship_topic].attempts == 1  # the participant said: do not retry
    assert "[no_courier] no courier for this address" in info.steps[ship_topic].error
    assert info.steps["payments.Payments.Charge"].status is Status.COMPENSATED
    assert info.steps["inventory.Inventory.Reserve"].status is Status.COMPENSATED


async def test_compensation_and_fallback_through_a_broker(env: Env, serve: Any) -> None:
    """Quote (HTTP) keeps failing and falls back to a broker request; the rollback of
    Reserve is a message on a topic."""
    quote_topic, release_topic = new_topic(), new_topic()
    for topic in (quote_topic, release_topic):
        await env.prepare(topic)
    inventory, pricing = Participant(), Participant()
    released: list[Message] = []

    @inventory.handler("Inventory.Reserve")
    async def reserve_(msg: Message) -> dict[str, str]:
        return {"reservation": "R-7"}

    @inventory.handler("Inventory.Quote")
    async def quote_(msg: Message) -> None:
        raise RuntimeError("pricing service down")

    @inventory.handler("Inventory.Charge")
    async def charge_(msg: Message) -> None:
        raise StepError("declined", retryable=False)

    pricing.add_handler(quote_topic, lambda msg: {"price": 99})
    pricing.add_handler(release_topic, lambda msg: released.append(msg))
    url = await serve(inventory)
    reserve = CallStep("inv", "Inventory", "Reserve", compensate=PublishStep(release_topic))
    quote = CallStep(
        "inv",
        "Inventory",
        "Quote",
        requires=[reserve],
        retry=Retry(2, **FAST),
        fallback=PublishStep(quote_topic, reply=True, timeout=5),
    )
    charge = CallStep("inv", "Inventory", "Charge", requires=[quote])
    subs = [
        await pricing.subscribe(env.url, quote_topic),
        await pricing.subscribe(env.url, release_topic),
    ]
    try:
        async with microsaga.Flow("memory://", services={"inv": url}, broker=env.url) as flow:
            info = await run(flow, reserve, quote, charge, req={"order_id": 7})
            await eventually(lambda: released)
    finally:
        for sub in subs:
            await sub.close()

    quoted = info.steps["inv.Inventory.Quote"]
    assert (quoted.status, quoted.response.json()) == (Status.SUCCESS, {"price": 99})
    assert "pricing service down" in quoted.error
    assert info.steps["inv.Inventory.Reserve"].status is Status.COMPENSATED
    (msg,) = released
    assert msg.json() == {"request": {"order_id": 7}, "response": {"reservation": "R-7"}}
    assert msg.header["Idempotency-Key"] == f"{info.id}:inv.Inventory.Reserve:compensate"


# consumers -----------------------------------------------------------------------------


def _broker(env: Env, **options: Any) -> Broker:
    """A broker object with fast redelivery, as a participant process would open."""
    if isinstance(env, NatsEnv):
        from microsaga.transports.nats import NatsBroker

        return NatsBroker(env.url, redeliver_delay=0.1, **options)
    if isinstance(env, AmqpEnv):
        from microsaga.transports.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(env.url, redeliver_delay=0.1, **options)
    from microsaga.transports.redis import RedisBroker

    return RedisBroker(env.url, claim_idle=0.3, **options)


async def test_failed_message_is_delivered_again(env: Env) -> None:
    topic = new_topic()
    await env.prepare(topic)
    consumer = Participant()
    attempts: list[str] = []

    @consumer.handler(topic)
    async def audit(msg: Message) -> None:
        attempts.append(msg.json()["event"])
        if len(attempts) == 1:
            raise RuntimeError("audit database restarting")

    broker = _broker(env)
    await broker.connect()
    try:
        sub = await consumer.subscribe(broker, topic)
        async with microsaga.Flow("memory://", broker=env.url) as flow:
            info = await run(flow, PublishStep(topic), req={"event": "shipped"})
        await eventually(lambda: len(attempts) == 2)
        await sub.close()
    finally:
        await broker.close()
    assert info.status is Status.SUCCESS
    assert attempts == ["shipped", "shipped"]


@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
async def test_subscriber_runs_a_duplicated_message_once(kind: str, request: Any) -> None:
    """RabbitMQ and Redis keep a re-published message; the participant drops it."""
    url = request.getfixturevalue("amqp_url" if kind == "rabbitmq" else "redis_url")
    env: Env = AmqpEnv(url) if kind == "rabbitmq" else RedisEnv(url)
    await env.start()
    topic = new_topic()
    await env.prepare(topic)
    consumer = Participant()
    runs: list[Any] = []
    consumer.add_handler(topic, lambda msg: runs.append(msg.json()))
    broker = open_broker(url)
    await broker.connect()
    try:
        sub = await consumer.subscribe(broker, topic)
        message = Message({"n": 1}, {"Idempotency-Key": "e1:step"})
        await broker.publish(topic, message)
        await broker.publish(topic, message)
        await broker.publish(topic, Message({"n": 2}, {"Idempotency-Key": "e2:step"}))
        await eventually(lambda: len(runs) == 2)
        if isinstance(env, RedisEnv):
            redis_env = env

            async def all_acknowledged() -> bool:
                found = await redis_env.client.xpending(topic, "microsaga")
                return found["pending"] == 0

            await eventually(all_acknowledged)
        await sub.close()
    finally:
        await broker.close()
        await env.close()
    assert runs == [{"n": 1}, {"n": 2}]


async def test_rabbitmq_reply_to_a_gone_requester_acknowledges_the_request(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The saga process died and its exclusive reply queue with it: the reply comes
    back unroutable. Nobody waits for it, so the request is acknowledged with one
    warning instead of being requeued and redelivered for ever."""
    from microsaga.transports.rabbitmq import RabbitMQBroker

    env = AmqpEnv(amqp_url)
    await env.start()
    topic = new_topic()
    await env.prepare(topic)
    shipping = Participant()
    runs: list[Any] = []

    @shipping.handler(topic)
    async def book(msg: Message) -> dict[str, str]:
        runs.append(msg.json())
        return {"tracking": "T-1"}

    gone = f"microsaga.reply.{uuid.uuid4().hex}"  # a reply queue nobody declares
    request = Message(
        {"order_id": 1},
        {
            "Idempotency-Key": "e1:ship",
            REPLY_TO_HEADER: gone,
            CORRELATION_HEADER: "c1",
            "Micro-Flow-Execution": "e1",
            "Micro-Flow-Workflow": "orders",
            "Micro-Flow-Step": "ship",
        },
    )
    caplog.set_level(logging.WARNING, logger="microsaga.transports.rabbitmq")

    def dropped() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "dropped" in r.getMessage()]

    broker = RabbitMQBroker(amqp_url, redeliver_delay=0.05)
    await broker.connect()
    try:
        sub = await shipping.subscribe(broker, topic)
        await broker.publish(topic, request)
        await eventually(dropped)
        await sub.close()
    finally:
        await broker.close()  # an unacknowledged request would go back to the queue
    try:
        assert await env.count(topic) == 0
    finally:
        await env.close()
    assert runs == [{"order_id": 1}]
    (warning,) = dropped()
    assert warning.levelno == logging.WARNING
    assert f"reply to '{gone}' dropped" in warning.getMessage()
    # the request's execution, as the participant's own records of it name it
    assert getattr(warning, "execution_id", None) == "e1"
    assert getattr(warning, "workflow_id", None) == "orders"
    assert getattr(warning, "step_id", None) == "ship"


@pytest.mark.parametrize(
    ("reply_prefix", "expires"), [("microsaga.reply.", True), ("orders.replies.", False)]
)
async def test_redis_late_reply_stream_expires_a_day_after_the_reply(
    redis_url: str, reply_prefix: str, expires: bool
) -> None:
    """A reply that comes after the saga process is gone recreates its reply stream:
    that stream expires a day later. A reply topic that is not microsaga's own keeps
    the lifetime its owner gave it."""
    env = RedisEnv(redis_url)
    await env.start()
    topic, reply_to = new_topic(), f"{reply_prefix}{uuid.uuid4().hex}"
    for key in (topic, reply_to):
        await env.prepare(key)
    shipping = Participant()
    shipping.add_handler(topic, lambda msg: {"tracking": "T-1"})
    broker = open_broker(redis_url)
    await broker.connect()
    try:
        sub = await shipping.subscribe(broker, topic)
        request = Message({}, {REPLY_TO_HEADER: reply_to, CORRELATION_HEADER: "c1"})
        await broker.publish(topic, request)
        await eventually(lambda: env.count(reply_to))
        await sub.close()
        (reply,) = await env.messages(reply_to)
        ttl = await env.client.ttl(reply_to)
    finally:
        await broker.close()
        await env.close()
    assert json.loads(reply.body) == {"tracking": "T-1"}
    assert reply.header[CORRELATION_HEADER] == ["c1"]
    if expires:
        assert 86400 - 3600 < ttl <= 86400  # a day (less the seconds this test took)
    else:
        assert ttl == -1  # no expiry


# faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "url"),
    [
        ("nats", "nats://127.0.0.1:{port}"),
        ("rabbitmq", "amqp://guest:secret@127.0.0.1:{port}/"),
        ("redis", "redis://127.0.0.1:{port}/0"),
    ],
)
async def test_broker_down_at_start_is_one_clear_error(scheme: str, url: str) -> None:
    port = free_port()
    flow = microsaga.Flow("memory://", broker=url.format(port=port))
    with pytest.raises(TransportError) as caught:
        await flow.open()
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text
    assert "\n" not in text
    assert "secret" not in text
    assert caught.value.__cause__ is None  # nothing more to print than the line


async def test_broker_dropping_mid_run_is_reconnected_and_the_step_retried(
    env: Env, tcp_proxy: Any
) -> None:
    topic = new_topic()
    await env.prepare(topic)
    target = 4222 if isinstance(env, NatsEnv) else 5672 if isinstance(env, AmqpEnv) else 6379
    proxy = await tcp_proxy(target)
    step = PublishStep(topic, timeout=3, retry=Retry(20, initial_interval=0.1, jitter=False))
    async with microsaga.Flow("memory://", broker=with_port(env.url, proxy.port)) as flow:
        before = await run(flow, step, req={"n": 1})
        await proxy.drop()
        after = await run(flow, step, req={"n": 2})
    assert (before.status, after.status) == (Status.SUCCESS, Status.SUCCESS)
    assert [m.body for m in await env.messages(topic)] == [b'{"n":1}', b'{"n":2}']


async def test_nats_publish_retried_after_a_lost_ack_is_stored_once(
    nats_url: str, tcp_proxy: Any
) -> None:
    """The stream stores the message but its ack is lost on the way back: the attempt
    times out, the connection comes back, and the retry (same Nats-Msg-Id) is dropped
    by JetStream as a duplicate."""
    from microsaga.transports.nats import NatsBroker

    env = NatsEnv(nats_url)
    await env.start()
    topic = new_topic()
    await env.prepare(topic)
    proxy = await tcp_proxy(4222)
    broker = NatsBroker(with_port(nats_url, proxy.port), publish_timeout=1.0)
    step = PublishStep(topic, timeout=1.0, retry=Retry(10, initial_interval=0.1, jitter=False))
    try:
        async with microsaga.Flow("memory://", broker=broker) as flow:
            wf = await flow.workflow_create("w", step)
            proxy.blackhole = True
            eid = await wf.execute({"n": 1}, async_=True)
            await eventually(lambda: env.count(topic))  # stored; the ack is swallowed
            proxy.blackhole = False
            await proxy.drop()
            info = await flow.wait(eid, timeout=10)
        assert info.status is Status.SUCCESS
        assert info.steps[topic].attempts >= 2
        assert await env.count(topic) == 1
    finally:
        await env.close()


# choosing a broker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "driver", "extra"),
    [
        ("nats://127.0.0.1:4222", "nats", "nats"),
        ("amqp://guest:guest@127.0.0.1:5672/", "aio_pika", "rabbitmq"),
        ("redis://127.0.0.1:6379/0", "redis", "redis"),
    ],
)
def test_missing_driver_names_the_extra_to_install(
    url: str, driver: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    module = {"nats": "nats", "aio_pika": "rabbitmq", "redis": "redis"}[driver]
    monkeypatch.delitem(sys.modules, f"microsaga.transports.{module}", raising=False)
    monkeypatch.setitem(sys.modules, driver, None)  # as if it were not installed
    with pytest.raises(microsaga.ConfigurationError) as caught:
        open_broker(url)
    assert f"pip install 'microsaga[{extra}]'" in str(caught.value)
    assert caught.value.setting == "broker"


def test_unknown_broker_scheme_is_a_configuration_error() -> None:
    with pytest.raises(microsaga.ConfigurationError, match=r"kafka://.*use nats://"):
        open_broker("kafka://127.0.0.1:9092")
