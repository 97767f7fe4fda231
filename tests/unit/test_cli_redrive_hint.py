"""``microsaga run`` of a workflow whose failure policy is "suspend" says, when a step
fails, which step failed and how to go on: redrive it (with an edited input) or abort
it. It said only `microsaga resume`, which tries the same input again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from microsaga import Flow, Message, Status, StepError
from microsaga.cli import main


def charge(msg: Message) -> dict[str, str]:
    if msg.json() != {"card": "good"}:
        raise StepError("card declined", retryable=False)
    return {"payment": "P1"}


DEFINITION = """\
id: order
on_failure: suspend
steps:
  - function: tests.unit.test_cli_redrive_hint:charge
    id: charge
"""


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0)


def test_a_run_suspended_by_a_failure_names_it_and_says_redrive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    order = tmp_path / "order.yaml"
    order.write_text(DEFINITION)
    assert _cli("--store", store, "run", str(order), "--input", '{"card": "bad"}') == 4
    out = capsys.readouterr()
    eid = out.out.strip().splitlines()[-1]
    assert out.err.strip().splitlines()[-1] == (
        f"error[suspended]: execution {eid} is suspended: step charge failed: card declined; "
        f"`microsaga redrive {eid} [--step STEP] [--input JSON]` runs it again, and a worker "
        f"(`microsaga worker`) continues it, or `microsaga abort {eid}` rolls it back"
    )
    # what it says works: redriven with another input, a worker finishes it
    assert _cli("--store", store, "redrive", eid, "--input", '{"card": "good"}') == 0

    async def finish() -> Status:
        async with Flow(store, poll_interval=0.05) as flow:
            return (await flow.wait(eid, timeout=10)).status

    assert asyncio.run(finish()) is Status.SUCCESS
