"""``microsaga signal EID EVENT`` refuses an event that no wait step of the execution
waits for: it was stored, consumed by nothing, and the command said the execution's
status with exit status 0, so a misspelt event looked delivered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, SleepStep, WaitStep
from microsaga.cli import main


def done(msg: object) -> dict[str, bool]:
    return {"done": True}


async def _waiting(store: str, *steps: object) -> str:
    async with Flow(store, worker=False) as flow:
        wf = await flow.workflow_create("pay", *steps)  # type: ignore[arg-type]
        await flow.workflow_save(wf)
        return await wf.execute({}, async_=True)


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0)


def test_a_misspelt_event_is_refused_naming_the_events_waited_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    eid = asyncio.run(
        _waiting(store, WaitStep("paid"), FunctionStep(done, id="ship", requires=["paid"]))
    )
    assert _cli("--store", store, "signal", eid, "payed") == 2
    said = capsys.readouterr().err
    assert said == (
        f"error[configuration]: EVENT: no step of execution {eid} waits for 'payed'; "
        "its wait steps wait for: paid\n"
    )
    assert _cli("--store", store, "signal", eid, "paid", "--payload", "{}") == 0
    assert capsys.readouterr().out == f"{eid} PENDING\n"


def test_an_event_a_compensation_waits_for_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    refunded = WaitStep("refunded", id="await-refund")
    eid = asyncio.run(_waiting(store, WaitStep("paid", compensate=refunded)))
    assert _cli("--store", store, "signal", eid, "refunded") == 0
    assert capsys.readouterr().out == f"{eid} PENDING\n"


def test_an_execution_without_wait_steps_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    eid = asyncio.run(_waiting(store, SleepStep(60, id="nap")))
    assert _cli("--store", store, "signal", eid, "paid") == 2
    assert capsys.readouterr().err.endswith("waits for 'paid'; it has no wait step\n")


def test_an_unknown_execution_is_still_not_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    assert _cli("--store", store, "signal", "nope", "paid") == 2
    assert capsys.readouterr().err == "error[execution_not_found]: execution not found: nope\n"
