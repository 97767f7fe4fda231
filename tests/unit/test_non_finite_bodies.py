"""Numbers JSON cannot carry: NaN and infinity in a body made from Python values, and
numbers too large to read in raw JSON, refused at once, never stored."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from microsaga import (
    ConfigurationError,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    Status,
    WaitStep,
)


class Reading(msgspec.Struct):
    value: float


async def noop(msg: Message) -> None:
    return None


async def test_execute_refuses_a_request_holding_nan(flow: Flow) -> None:
    wf = await flow.workflow_create("s", FunctionStep(noop, id="a"))
    for request in ({"x": float("nan")}, float("inf"), Reading(float("-inf"))):
        with pytest.raises(ConfigurationError, match="no NaN or infinity") as err:
            await wf.execute(request)
        assert err.value.setting == "request"
    assert await flow.executions() == []  # nothing was stored


@pytest.mark.parametrize("typed", [False, True])
async def test_a_step_returning_nan_fails_at_once_without_retries(flow: Flow, typed: bool) -> None:
    calls: list[int] = []

    async def message_step(msg: Message) -> dict[str, Any]:
        calls.append(1)
        return {"total": float("nan")}

    def typed_step(order: dict[str, int]) -> Reading:  # sync, typed: another path
        calls.append(1)
        return Reading(float("inf"))

    fn = typed_step if typed else message_step
    wf = await flow.workflow_create("s", FunctionStep(fn, id="a", retry=Retry(max_attempts=3)))
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute({"order": 1})
    assert "no NaN or infinity" in err.value.error
    assert ("inf at `$.value`" if typed else "nan at `$.total`") in err.value.error
    assert calls == [1]  # the same value would fail again: not retried
    info = await flow.execution(err.value.execution_id or "")
    assert info.steps["a"].status is Status.FAILURE


async def test_a_signal_payload_holding_infinity_is_refused(flow: Flow) -> None:
    wf = await flow.workflow_create("s", WaitStep("approved"))
    eid = await wf.execute({}, async_=True)
    with pytest.raises(ConfigurationError, match=r"inf at `\$.amount`") as err:
        await flow.signal(eid, "approved", {"amount": float("inf")})
    assert err.value.setting == "payload"


@pytest.mark.parametrize(
    ("body", "number"),
    [
        (b'{"x": 1e999}', "1e999"),
        (b'[1, {"y": -1e400}]', "-1e400"),
        (b"1" + b"0" * 400 + b".5", "10000000000000000000..."),
    ],
)
async def test_execute_refuses_raw_json_with_a_number_out_of_range(
    flow: Flow, body: bytes, number: str
) -> None:
    wf = await flow.workflow_create("s", FunctionStep(noop, id="a"))
    for request in (body, Message(body)):
        with pytest.raises(ConfigurationError, match="out of range") as err:
            await wf.execute(request)
        assert err.value.setting == "request"
        assert f"the number {number}" in str(err.value)
    assert await flow.executions() == []  # nothing was stored
