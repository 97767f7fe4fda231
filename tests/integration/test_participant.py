"""microsaga.participant served by uvicorn: handlers, error statuses, deduplication."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

import microsaga
from microsaga import (
    CallStep,
    ExecutionFailedError,
    Message,
    Retry,
    Status,
    StepError,
    TransportError,
)
from microsaga.participant import (
    DedupeStore,
    MemoryDedupeStore,
    Participant,
    Reply,
    SQLiteDedupeStore,
)

from ..helpers import eventually

FAST = {"initial_interval": 0.01, "jitter": False}


async def post(url: str, body: bytes = b"{}", **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=headers)


async def test_handler_gets_the_message_and_its_result_is_the_response(serve: Any) -> None:
    inventory = Participant()
    seen: list[Message] = []

    @inventory.handler("Inventory.Reserve")
    async def reserve(msg: Message) -> Message:
        seen.append(msg)
        return Message({"reservation": f"R-{msg.json()['order_id']}"}, {"X-Shelf": "B7"})

    url = await serve(inventory)
    async with microsaga.Flow("memory://", services={"inventory": url}) as flow:
        wf = await flow.workflow_create("w", CallStep("inventory", "Inventory", "Reserve"))
        eid = await wf.execute(Message({"order_id": 3}, {"traceparent": "00-ab-cd-01"}))
        info = await flow.execution(eid)

    (msg,) = seen
    assert msg.json() == {"order_id": 3}
    assert msg.header["Idempotency-Key"] == f"{eid}:inventory.Inventory.Reserve"
    assert msg.header["traceparent"] == "00-ab-cd-01"
    assert "content-length" not in msg.header
    assert "host" not in msg.header
    assert info.response is not None
    assert info.response.json() == {"reservation": "R-3"}
    assert info.response.header.get("X-Shelf") == "B7"


async def test_sync_handlers_run_outside_the_event_loop(serve: Any) -> None:
    service = Participant()
    threads: list[str] = []

    @service.handler("Clock.Read")
    def read(msg: Message) -> dict[str, int]:
        threads.append(threading.current_thread().name)
        return {"n": 1}

    url = await serve(service)
    resp = await post(f"{url}/Clock/Read")
    assert (resp.status_code, resp.json()) == (200, {"n": 1})
    assert threads != [threading.current_thread().name]


async def test_none_result_is_an_empty_200(serve: Any) -> None:
    service = Participant()
    service.add_handler("Audit.Log", lambda msg: None)
    url = await serve(service)
    resp = await post(f"{url}/Audit/Log")
    assert (resp.status_code, resp.content) == (200, b"")


async def test_repeated_idempotency_key_replays_the_first_answer(serve: Any) -> None:
    payments = Participant()
    charges: list[Any] = []

    @payments.handler("Payments.Charge")
    async def charge(msg: Message) -> dict[str, Any]:
        charges.append(msg.json())
        return {"payment": f"P-{len(charges)}"}

    url = await serve(payments)
    first = await post(f"{url}/Payments/Charge", b'{"amount": 5}', **{"Idempotency-Key": "k1"})
    again = await post(f"{url}/Payments/Charge", b'{"amount": 5}', **{"Idempotency-Key": "k1"})
    other = await post(f"{url}/Payments/Charge", b'{"amount": 5}', **{"Idempotency-Key": "k2"})

    assert first.json() == again.json() == {"payment": "P-1"}
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.json() == {"payment": "P-2"}
    assert len(charges) == 2


async def test_a_retried_step_does_not_run_the_handler_twice(serve: Any) -> None:
    """The first attempt times out while the handler still runs; the retries carry the
    same key, wait for that run and get its answer."""
    payments = Participant()
    runs: list[str] = []

    @payments.handler("Payments.Charge")
    async def charge(msg: Message) -> dict[str, str]:
        runs.append(msg.header["Idempotency-Key"])
        await asyncio.sleep(0.5)
        return {"payment": "P-1"}

    url = await serve(payments)
    step = CallStep("pay", "Payments", "Charge", timeout=0.2, retry=Retry(10, **FAST))
    async with microsaga.Flow("memory://", services={"pay": url}) as flow:
        wf = await flow.workflow_create("w", step)
        eid = await wf.execute({"amount": 5})
        info = await flow.execution(eid)

    run = info.steps["pay.Payments.Charge"]
    assert run.status is Status.SUCCESS
    assert run.attempts > 1
    assert runs == [f"{eid}:pay.Payments.Charge"]
    assert info.response is not None
    assert info.response.json() == {"payment": "P-1"}


async def test_non_retryable_error_is_a_422_that_fails_the_step_and_is_replayed(
    serve: Any,
) -> None:
    payments = Participant()
    runs = 0

    @payments.handler("Payments.Charge")
    async def charge(msg: Message) -> None:
        nonlocal runs
        runs += 1
        raise StepError("card declined", code="card_declined", retryable=False)

    url = await serve(payments)
    resp = await post(f"{url}/Payments/Charge", **{"Idempotency-Key": "k"})
    again = await post(f"{url}/Payments/Charge", **{"Idempotency-Key": "k"})
    assert resp.status_code == again.status_code == 422
    assert resp.json() == {
        "error": {"code": "card_declined", "message": "card declined", "retryable": False}
    }
    assert runs == 1

    step = CallStep("pay", "Payments", "Charge", retry=Retry(5, **FAST))
    async with microsaga.Flow("memory://", services={"pay": url}) as flow:
        wf = await flow.workflow_create("w", step)
        with pytest.raises(ExecutionFailedError) as failed:
            await wf.execute({})
        run = (await flow.execution(failed.value.execution_id)).steps["pay.Payments.Charge"]
    assert run.attempts == 1
    assert run.error is not None
    assert "HTTP 422: [card_declined] card declined" in run.error
    assert runs == 2


async def test_unexpected_error_is_a_500_and_the_retry_runs_the_handler_again(
    serve: Any,
) -> None:
    stock = Participant()
    runs = 0

    @stock.handler("Stock.Take")
    async def take(msg: Message) -> dict[str, bool]:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("database connection lost")
        return {"taken": True}

    url = await serve(stock)
    first = await post(f"{url}/Stock/Take", **{"Idempotency-Key": "k"})
    second = await post(f"{url}/Stock/Take", **{"Idempotency-Key": "k"})
    assert first.status_code == 500
    assert first.json()["error"]["code"] == "internal"
    assert "RuntimeError: database connection lost" in first.json()["error"]["message"]
    assert (second.status_code, second.json()) == (200, {"taken": True})
    assert runs == 2


async def test_retryable_step_error_is_a_503_with_retry_after(serve: Any) -> None:
    stock = Participant()

    @stock.handler("Stock.Take")
    async def take(msg: Message) -> None:
        exc = TransportError("warehouse system is down")
        exc.retry_after = 2.5  # type: ignore[attr-defined]
        raise exc

    url = await serve(stock)
    resp = await post(f"{url}/Stock/Take")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "3"
    assert resp.json()["error"]["code"] == "transport_unavailable"


async def test_bad_requests_get_clear_statuses(serve: Any) -> None:
    service = Participant()
    service.add_handler("A.B", lambda msg: {})
    url = await serve(service)
    async with httpx.AsyncClient() as client:
        bad_json = await client.post(f"{url}/A/B", content=b'{"order": ')
        unknown = await client.post(f"{url}/A/Nope", content=b"{}")
        deep = await client.post(f"{url}/A/B/C", content=b"{}")
        get = await client.get(f"{url}/A/B")
        big = await client.post(f"{url}/A/B", content=b"[" + b"1," * (1 << 20) + b"1]")

    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["code"] == "invalid_json"
    assert "A.B: body is not valid JSON" in bad_json.json()["error"]["message"]
    assert unknown.status_code == deep.status_code == 404
    assert unknown.json()["error"]["message"] == "no handler for A.Nope"
    assert (get.status_code, get.headers["allow"]) == (405, "POST")
    assert big.status_code == 413


async def test_prefix_serves_a_url_template_address(serve: Any) -> None:
    legacy = Participant(prefix="/rpc/v1")
    legacy.add_handler("Inventory.Reserve", lambda msg: {"ok": True})
    url = await serve(legacy)
    services = {"legacy": url + "/rpc/v1/{name}/{method}"}
    async with microsaga.Flow("memory://", services=services) as flow:
        wf = await flow.workflow_create("w", CallStep("legacy", "Inventory", "Reserve"))
        info = await flow.execution(await wf.execute())
    assert info.response is not None
    assert info.response.json() == {"ok": True}


async def test_compensation_and_fallback_over_http(serve: Any) -> None:
    """Charge fails for good: Reserve is compensated by Release, which gets the forward
    request and response and its own idempotency key. Quote falls back to a second
    service when the first keeps failing."""
    inventory, payments, backup = Participant(), Participant(), Participant()
    calls: list[tuple[str, Message]] = []

    def record(name: str, result: Any) -> Any:
        def handler(msg: Message) -> Any:
            calls.append((name, msg))
            if isinstance(result, Exception):
                raise result
            return result

        return handler

    inventory.add_handler("Inventory.Reserve", record("Reserve", {"reservation": "R-1"}))
    inventory.add_handler("Inventory.Release", record("Release", {"released": True}))
    inventory.add_handler("Inventory.Quote", record("Quote", RuntimeError("pricing down")))
    backup.add_handler("Pricing.Quote", record("BackupQuote", {"price": 10}))
    payments.add_handler(
        "Payments.Charge", record("Charge", StepError("declined", retryable=False))
    )
    services = {
        "inventory": await serve(inventory),
        "payments": await serve(payments),
        "backup": await serve(backup),
    }
    reserve = CallStep(
        "inventory",
        "Inventory",
        "Reserve",
        compensate=CallStep("inventory", "Inventory", "Release"),
    )
    quote = CallStep(
        "inventory",
        "Inventory",
        "Quote",
        requires=[reserve],
        retry=Retry(2, **FAST),
        fallback=CallStep("backup", "Pricing", "Quote"),
    )
    charge = CallStep("payments", "Payments", "Charge", requires=[quote])
    async with microsaga.Flow("memory://", services=services) as flow:
        wf = await flow.workflow_create("order", reserve, quote, charge)
        with pytest.raises(ExecutionFailedError) as failed:
            await wf.execute({"order_id": 1})
        info = await flow.execution(failed.value.execution_id)

    eid = info.id
    assert [name for name, _ in calls] == [
        "Reserve",
        "Quote",
        "Quote",
        "BackupQuote",
        "Charge",
        "Release",
    ]
    quoted = info.steps["inventory.Inventory.Quote"]
    assert quoted.status is Status.SUCCESS
    assert quoted.response is not None
    assert quoted.response.json() == {"price": 10}
    assert quoted.error is not None
    assert "pricing down" in quoted.error
    assert info.steps["inventory.Inventory.Reserve"].status is Status.COMPENSATED
    release = calls[-1][1]
    assert release.json() == {"request": {"order_id": 1}, "response": {"reservation": "R-1"}}
    assert release.header["Idempotency-Key"] == f"{eid}:inventory.Inventory.Reserve:compensate"
    assert failed.value.compensated


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    made: DedupeStore
    if request.param == "memory":
        made = MemoryDedupeStore(ttl=0.2)
    else:
        made = SQLiteDedupeStore(tmp_path / "dedupe.db", ttl=0.2)
    yield made
    await made.close()


async def test_dedupe_store_keeps_the_first_answer_until_it_expires(store: DedupeStore) -> None:
    first = Reply(200, b'{"n":1}', {"X-A": ["1", "2"]})
    assert await store.get("k") is None
    assert await store.put("k", first) == first
    assert await store.put("k", Reply(200, b'{"n":2}')) == first
    assert await store.get("k") == first
    assert await store.get("other") is None
    await eventually(lambda: _gone(store, "k"), timeout=2.0)
    second = Reply(422, b"{}")
    assert await store.put("k", second) == second


async def _gone(store: DedupeStore, key: str) -> bool:
    return await store.get(key) is None


async def test_sqlite_dedupe_survives_a_restart(serve: Any, tmp_path: Path) -> None:
    path = tmp_path / "payments-dedupe.db"
    runs: list[str] = []

    def build() -> Participant:
        service = Participant(dedupe=SQLiteDedupeStore(path))

        @service.handler("Payments.Charge")
        def charge(msg: Message) -> dict[str, int]:
            runs.append("charge")
            return {"payment": len(runs)}

        return service

    before = build()
    url = await serve(before)
    first = await post(f"{url}/Payments/Charge", **{"Idempotency-Key": "order-1"})
    await before.dedupe.close()

    after = build()
    url = await serve(after)
    again = await post(f"{url}/Payments/Charge", **{"Idempotency-Key": "order-1"})
    await after.dedupe.close()

    assert first.json() == again.json() == {"payment": 1}
    assert again.headers["idempotent-replayed"] == "true"
    assert runs == ["charge"]


def _accepted_connections(port: int) -> list[socket.socket]:
    """This process's TCP connections accepted on ``port`` (server side), read from
    /proc/self/fd; each is a duplicate to close."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:  # not a socket, or closed meanwhile
            continue
        try:
            tcp = sock.type == socket.SOCK_STREAM and sock.family == socket.AF_INET
            if tcp and sock.getsockname()[1] == port and sock.getpeername():
                found.append(sock)
                continue
        except OSError:  # a listening socket has no peer
            pass
        sock.close()
    return found


class PlainApp:
    """An ASGI app that is not a Participant (served by the fixture's own socket)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("kind", ["participant", "plain asgi app"])
async def test_served_connections_answer_without_waiting_for_delayed_acks(
    serve: Any, kind: str
) -> None:
    """Kept-alive answers go out at once: accepted connections have TCP_NODELAY, or
    each response waits for the client's delayed ACK (~40 ms a request)."""
    if kind == "participant":
        app: Any = Participant()
        app.add_handler("A.B", lambda msg: {})
    else:
        app = PlainApp()
    url = await serve(app)
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient() as client:
        for _ in range(3):  # one kept-alive connection
            assert (await client.post(f"{url}/A/B", content=b"{}")).status_code == 200
        accepted = _accepted_connections(port)
        try:
            assert len(accepted) == 1
            assert accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            for sock in accepted:
                sock.close()


async def test_serving_on_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(microsaga.ConfigurationError) as caught:
            async with Participant().serve(port=port):
                pass
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in str(caught.value)
    assert caught.value.setting == "participant"


def test_handler_names_must_be_unique() -> None:
    service = Participant()
    service.add_handler("A.B", lambda msg: None)
    with pytest.raises(microsaga.ConfigurationError, match=r"A\.B already has a handler"):
        service.add_handler("A.B", lambda msg: None)
    assert service.names == ["A.B"]
