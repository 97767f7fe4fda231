"""Log records about executions carry their ids; JSON lines; no secret in any line."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Hook,
    Message,
    Retry,
    StepError,
    StepEvent,
    WaitStep,
)
from microsaga.observability import JsonFormatter, TextFormatter, redact
from microsaga.observability.logs import add_secret, configure_logging


async def broken(msg: Message) -> None:
    raise StepError("no", retryable=False)


async def fine(msg: Message) -> dict[str, int]:
    return {"ok": 1}


class Failing(Hook):
    def step_started(self, event: StepEvent) -> None:
        raise RuntimeError("a bug in a hook")


async def test_records_about_an_execution_carry_its_ids(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="microsaga")
    async with Flow("memory://", hooks=[Failing()]) as flow:
        step = FunctionStep(fine, id="a", requires=[])
        wf = await flow.workflow_create(
            "w", step, FunctionStep(broken, id="b", requires=[step], fallback=FunctionStep(broken))
        )
        with pytest.raises(ExecutionFailedError) as failed:
            await wf.execute({})
    eid = failed.value.execution_id
    about = [r for r in caplog.records if r.name.startswith("microsaga")]
    assert len(about) == 3
    fallback = next(r for r in about if "fallback" in r.getMessage())
    hook = next(r for r in about if "hook" in r.getMessage())
    failed_b = next(r for r in about if "failed for good" in r.getMessage())
    for record, step in ((fallback, "b"), (hook, "a"), (failed_b, "b")):
        assert record.execution_id == eid  # type: ignore[attr-defined]
        assert record.workflow_id == "w"  # type: ignore[attr-defined]
        assert record.step_id == step  # type: ignore[attr-defined]


async def test_failed_attempts_are_logged_and_a_failed_compensation_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="microsaga")
    tries = {"pay": 0}

    async def pay(msg: Message) -> dict[str, int]:
        tries["pay"] += 1
        if tries["pay"] == 1:
            raise StepError("card declined once")
        return {"paid": 1}

    async def refund(msg: Message) -> None:
        raise StepError("refund service down", retryable=False)

    async with Flow("memory://") as flow:
        paid = FunctionStep(
            pay,
            id="pay",
            retry=Retry(max_attempts=2, initial_interval=0.0),
            compensate=FunctionStep(refund, id="refund"),
        )
        wf = await flow.workflow_create(
            "shop", paid, FunctionStep(broken, id="ship", requires=[paid])
        )
        with pytest.raises(ExecutionFailedError) as failed:
            await wf.execute({})
    assert failed.value.compensated is False
    eid = failed.value.execution_id
    lines = [
        (r.levelno, r.step_id, r.getMessage())  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "execution_id", None) == eid
    ]
    assert lines == [
        (
            logging.INFO,
            "pay",
            f"execution {eid}: step pay failed (attempt 1), retrying in 0s: card declined once",
        ),
        (logging.INFO, "ship", f"execution {eid}: step ship failed for good (attempt 1): no"),
        (
            logging.WARNING,
            "pay",
            f"execution {eid}: compensation of step pay failed for good (attempt 1): "
            "refund service down",
        ),
    ]


async def test_a_wait_that_times_out_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="microsaga")
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("pay", WaitStep("paid", timeout=0.01))
        with pytest.raises(ExecutionFailedError) as failed:
            await wf.execute({})
    eid = failed.value.execution_id
    [record] = [r for r in caplog.records if getattr(r, "execution_id", None) == eid]
    assert (record.levelno, record.step_id) == (logging.INFO, "paid")  # type: ignore[attr-defined]
    assert record.getMessage() == (
        f"execution {eid}: step paid failed for good (attempt 1): "
        "StepTimeoutError: step paid timed out after 0.01s waiting for paid"
    )


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("microsaga.run", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_hold_the_record_and_its_execution() -> None:
    record = _record(
        "execution %s: lease lost", "e1", execution_id="e1", workflow_id="order", step_id=None
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    found = json.loads(line)
    assert found["message"] == "execution e1: lease lost"
    assert (found["level"], found["logger"]) == ("WARNING", "microsaga.run")
    assert (found["execution_id"], found["workflow_id"], found["step_id"]) == ("e1", "order", None)
    assert found["time"].endswith("Z")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    found = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in found["exception"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("store postgresql://saga:pg-pass@db:5432/saga: refused", "pg-pass"),
        ("cannot reach amqp://guest:rabbit-pw@127.0.0.1:5672/", "rabbit-pw"),
        ("redis://:redis-pw@127.0.0.1:6379/0 is down", "redis-pw"),
        ("headers {'Authorization': 'Bearer tok.en-123'}", "tok.en-123"),
        ("authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ('"GET /api/executions?token=qs-secret&limit=1 HTTP/1.1" 200', "qs-secret"),
        ("config {'password': 'hunter22'}", "hunter22"),
        ("dsn=host=db password=dsn-pass user=saga", "dsn-pass"),
    ],
)
def test_secrets_are_redacted(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert "***" in cleaned
    for formatter in (JsonFormatter(), TextFormatter()):
        assert secret not in formatter.format(_record("%s", text))
        assert secret not in formatter.format(_record("x", detail=text))


def test_registered_secrets_never_appear_and_plain_text_is_kept() -> None:
    add_secret("my-api-token-value")
    assert redact("got my-api-token-value in a path") == "got *** in a path"
    plain = "execution e1: fallback of charge failed: StepError: declined (token 3)"
    assert redact(plain) == plain
    assert redact("http://127.0.0.1:8001/Inventory/Reserve") == (
        "http://127.0.0.1:8001/Inventory/Reserve"
    )


def test_configure_logging_writes_json_lines() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", logging.INFO, stream)
        logging.getLogger("microsaga.test").info("hello %s", "world", extra={"step_id": "s"})
        logging.getLogger("microsaga.test").info("second")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["hello world", "second"]
    assert json.loads(lines[0])["step_id"] == "s"


async def test_an_execution_taken_up_from_the_store_is_logged_with_its_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = f"sqlite:///{tmp_path / 'logs.db'}"
    async with Flow(store, worker=False) as client:  # stores it; runs nothing
        wf = await client.workflow_create("w", FunctionStep(fine, id="a"))
        eid = await wf.execute({}, async_=True)
    caplog.set_level(logging.INFO, logger="microsaga")
    async with Flow(store, poll_interval=0.05) as worker:
        await worker.wait(eid, timeout=10)
    taken = [r for r in caplog.records if "taken up" in r.getMessage()]
    assert taken, [r.getMessage() for r in caplog.records]
    assert taken[0].execution_id == eid  # type: ignore[attr-defined]
    assert taken[0].workflow_id == "w"  # type: ignore[attr-defined]
