"""CallStep over real HTTP: what a participant receives, and how answers map to retries."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

import microsaga
from microsaga import (
    CallStep,
    ConfigurationError,
    ExecutionFailedError,
    Message,
    MissingClientError,
    Retry,
    Status,
    StepError,
    TransportError,
)
from microsaga.transports.http import HttpClient

from ..helpers import free_port

FAST = {"initial_interval": 0.01, "jitter": False}


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, list[str]]
    body: bytes
    client_port: int
    at: float


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: list[tuple[str, str]] = field(
        default_factory=lambda: [("content-type", "application/json")]
    )
    delay: float = 0.0


class Recorder:
    """An ASGI app that records requests and answers from a script (the last answer
    repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers) or [Answer()]
        self.requests: list[Seen] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode(), []).append(v.decode("utf-8"))
        self.requests.append(
            Seen(
                scope["method"],
                scope["path"],
                scope["query_string"].decode(),
                headers,
                body,
                scope["client"][1],
                time.monotonic(),
            )
        )
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer.delay:
            await asyncio.sleep(answer.delay)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode(), v.encode()) for k, v in answer.headers],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})


async def run_one(flow: microsaga.Flow, step: CallStep, req: Any = None) -> microsaga.Execution:
    """Execute a one-step workflow; return the stored execution whatever the outcome."""
    wf = await flow.workflow_create("w", step)
    try:
        eid = await wf.execute(req)
    except ExecutionFailedError as exc:
        eid = exc.execution_id
    return await flow.execution(eid)


async def test_call_is_a_json_post_carrying_the_header_both_ways(serve: Any) -> None:
    app = Recorder(
        Answer(
            body=b'{"reservation": "R-1"}',
            headers=[("content-type", "application/json"), ("X-Reservation", "R-1")],
        )
    )
    url = await serve(app)
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = Message(
        {"order_id": 1}, {"traceparent": trace, "X-Customer": "Zoë", "X-Tag": ["a", "b"]}
    )
    async with microsaga.Flow("memory://", services={"inventory": url}) as flow:
        info = await run_one(flow, CallStep("inventory", "Inventory", "Reserve"), request)

    assert info.status is Status.SUCCESS
    (seen,) = app.requests
    assert (seen.method, seen.path) == ("POST", "/Inventory/Reserve")
    assert seen.body == b'{"order_id":1}'
    assert seen.headers["content-type"] == ["application/json"]
    assert seen.headers["idempotency-key"] == [f"{info.id}:inventory.Inventory.Reserve"]
    assert seen.headers["micro-flow-execution"] == [info.id]
    assert seen.headers["micro-flow-step"] == ["inventory.Inventory.Reserve"]
    assert seen.headers["traceparent"] == [trace]
    assert seen.headers["x-customer"] == ["Zoë"]
    assert seen.headers["x-tag"] == ["a", "b"]
    response = info.steps["inventory.Inventory.Reserve"].response
    assert response is not None
    assert response.json() == {"reservation": "R-1"}
    assert response.header.get("X-Reservation") == "R-1"
    assert "content-type" not in response.header
    assert "date" not in response.header


@pytest.mark.parametrize(
    ("template", "path", "query"),
    [
        ("/rpc/{name}/{method}", "/rpc/Inventory/Reserve", ""),
        ("/call?op={endpoint}&svc={service}", "/call", "op=Inventory.Reserve&svc=legacy"),
    ],
)
async def test_url_template_for_services_with_other_paths(
    serve: Any, template: str, path: str, query: str
) -> None:
    app = Recorder()
    url = await serve(app)
    async with microsaga.Flow("memory://", services={"legacy": url + template}) as flow:
        info = await run_one(flow, CallStep("legacy", "Inventory", "Reserve"))
    assert info.status is Status.SUCCESS
    assert (app.requests[0].path, app.requests[0].query) == (path, query)


async def test_unknown_placeholder_fails_the_step_naming_the_setting(serve: Any) -> None:
    url = await serve(Recorder())
    client = HttpClient({"legacy": url + "/{verb}"})
    try:
        with pytest.raises(ConfigurationError, match=r"services\.legacy.*\{verb\}"):
            await client.call("legacy", "A.B", Message({}))
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (400, StepError, False),
        (404, StepError, False),
        (409, StepError, False),
        (422, StepError, False),
        (408, TransportError, True),
        (429, TransportError, True),
        (500, TransportError, True),
        (502, TransportError, True),
        (503, TransportError, True),
    ],
)
async def test_status_codes_map_to_retry_decisions(
    serve: Any, status: int, error: type[Exception], retryable: bool
) -> None:
    body = b'{"error": {"code": "out_of_stock", "message": "no more widgets"}}'
    url = await serve(Recorder(Answer(status=status, body=body)))
    client = HttpClient({"svc": url})
    try:
        with pytest.raises(error) as caught:
            await client.call("svc", "Stock.Take", Message({}))
    finally:
        await client.close()
    exc = caught.value
    assert microsaga.errors.is_retryable(exc) is retryable
    assert microsaga.errors.error_code(exc) == f"http_{status}"
    assert f"HTTP {status}" in str(exc)
    assert "[out_of_stock] no more widgets" in str(exc)
    assert "svc Stock.Take" in str(exc)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retry_after_seconds_and_dates_are_read(serve: Any, status: int) -> None:
    """Every retryable answer may say when to come back, not only 429 and 503."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    url = await serve(
        Recorder(
            Answer(status=status, headers=[("retry-after", "2")]),
            Answer(status=status, headers=[("retry-after", when)]),
        )
    )
    client = HttpClient({"svc": url})
    try:
        with pytest.raises(TransportError) as first:
            await client.call("svc", "A.B", Message())
        with pytest.raises(TransportError) as second:
            await client.call("svc", "A.B", Message())
    finally:
        await client.close()
    assert first.value.retry_after == 2.0  # type: ignore[attr-defined]
    assert 25 < second.value.retry_after <= 30  # type: ignore[attr-defined]


async def test_saga_waits_for_retry_after_before_the_next_attempt(serve: Any) -> None:
    app = Recorder(Answer(status=429, headers=[("retry-after", "1")]), Answer())
    url = await serve(app)
    step = CallStep("svc", "A", "B", retry=Retry(max_attempts=3, **FAST))
    async with microsaga.Flow("memory://", services={"svc": url}) as flow:
        info = await run_one(flow, step)
    assert info.status is Status.SUCCESS
    assert info.steps["svc.A.B"].attempts == 2
    first, second = app.requests
    assert second.at - first.at >= 0.95  # the retry interval alone is 0.01 s


async def test_client_error_fails_the_step_without_retry(serve: Any) -> None:
    app = Recorder(Answer(status=422, body=b'{"error": {"code": "declined", "message": "no"}}'))
    url = await serve(app)
    step = CallStep("pay", "Payments", "Charge", retry=Retry(max_attempts=5, **FAST))
    async with microsaga.Flow("memory://", services={"pay": url}) as flow:
        info = await run_one(flow, step)
    run = info.steps["pay.Payments.Charge"]
    assert info.status is Status.FAILURE
    assert (run.status, run.attempts, len(app.requests)) == (Status.FAILURE, 1, 1)
    assert run.error is not None
    assert "HTTP 422" in run.error
    assert "[declined] no" in run.error


async def test_server_errors_are_retried_with_the_same_idempotency_key(serve: Any) -> None:
    app = Recorder(Answer(status=500, body=b"boom"), Answer(status=502, body=b""), Answer())
    url = await serve(app)
    step = CallStep("svc", "A", "B", retry=Retry(max_attempts=5, **FAST))
    async with microsaga.Flow("memory://", services={"svc": url}) as flow:
        info = await run_one(flow, step)
    assert info.status is Status.SUCCESS
    assert info.steps["svc.A.B"].attempts == 3
    keys = {r.headers["idempotency-key"][0] for r in app.requests}
    assert keys == {f"{info.id}:svc.A.B"}


async def test_refused_connection_is_retried_and_recorded_on_the_step() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    step = CallStep("inventory", "Inventory", "Reserve", retry=Retry(max_attempts=2, **FAST))
    async with microsaga.Flow("memory://", services={"inventory": url}) as flow:
        info = await run_one(flow, step)
    run = info.steps["inventory.Inventory.Reserve"]
    assert info.status is Status.FAILURE
    assert run.attempts == 2
    assert run.error is not None
    assert "cannot connect" in run.error
    assert f"{url}/Inventory/Reserve" in run.error


async def test_non_json_response_fails_the_step_at_once(serve: Any) -> None:
    page = Answer(
        body=b"<html><body>Welcome to nginx</body></html>",
        headers=[("content-type", "text/html")],
    )
    app = Recorder(page)
    url = await serve(app)
    step = CallStep("inventory", "Inventory", "Reserve", retry=Retry(max_attempts=3, **FAST))
    async with microsaga.Flow("memory://", services={"inventory": url}) as flow:
        info = await run_one(flow, step)
    run = info.steps["inventory.Inventory.Reserve"]
    assert info.status is Status.FAILURE
    assert (run.attempts, len(app.requests)) == (1, 1)
    assert run.error is not None
    assert "inventory Inventory.Reserve" in run.error
    assert "not JSON" in run.error
    assert "text/html" in run.error


async def test_empty_2xx_body_is_an_empty_response(serve: Any) -> None:
    url = await serve(Recorder(Answer(status=204, body=b"", headers=[])))
    async with microsaga.Flow("memory://", services={"svc": url}) as flow:
        info = await run_one(flow, CallStep("svc", "A", "B"))
    assert info.status is Status.SUCCESS
    response = info.steps["svc.A.B"].response
    assert response is not None
    assert response.body == b""


async def test_slow_service_times_out_and_is_retried(serve: Any) -> None:
    app = Recorder(Answer(delay=2.0))
    url = await serve(app)
    step = CallStep("svc", "A", "B", timeout=0.2, retry=Retry(max_attempts=2, **FAST))
    async with microsaga.Flow("memory://", services={"svc": url}) as flow:
        info = await run_one(flow, step)
    run = info.steps["svc.A.B"]
    assert info.status is Status.FAILURE
    assert run.attempts == 2
    assert run.error is not None
    assert "timed out" in run.error


async def test_service_without_address_fails_before_anything_is_stored() -> None:
    async with microsaga.Flow("memory://", services={"other": "http://127.0.0.1:9"}) as flow:
        wf = await flow.workflow_create("w", CallStep("ghost", "A", "B"))
        with pytest.raises(MissingClientError, match="ghost"):
            await wf.execute({"x": 1})
        assert await flow.executions() == []


async def test_services_from_environment_and_definitions(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_app, def_app = Recorder(), Recorder()
    monkeypatch.setenv("MICROSAGA_SERVICES", f"inventory={await serve(env_app)}")
    definition = {
        "id": "order",
        "services": {"payments": await serve(def_app)},
        "steps": [
            {"call": "inventory.Inventory.Reserve"},
            {"call": "payments.Payments.Charge", "requires": ["inventory.Inventory.Reserve"]},
        ],
    }
    async with microsaga.Flow("memory://") as flow:
        wf = await flow.workflow_add(microsaga.load_definition(definition))
        eid = await wf.execute({"order_id": 7})
        assert (await flow.execution(eid)).status is Status.SUCCESS
    assert [r.path for r in env_app.requests] == ["/Inventory/Reserve"]
    assert [r.path for r in def_app.requests] == ["/Payments/Charge"]


async def test_calls_of_a_flow_share_pooled_connections(serve: Any) -> None:
    app = Recorder()
    url = await serve(app)
    first = CallStep("a", "A", "One")
    second = CallStep("b", "B", "Two", requires=[first])
    third = CallStep("a", "A", "Three", requires=[second])
    async with microsaga.Flow("memory://", services={"a": url, "b": url}) as flow:
        assert flow.client_for("a") is flow.client_for("b")
        wf = await flow.workflow_create("w", first, second, third)
        await wf.execute()
    assert len({r.client_port for r in app.requests}) == 1  # one kept-alive connection
