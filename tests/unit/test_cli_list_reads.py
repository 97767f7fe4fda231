"""``microsaga list`` shows no step, so it does not read the executions' step runs: an
execution with a map of 10,000 runs on the page made each listing read them all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from microsaga import Flow, FunctionStep, Message
from microsaga.cli import main
from microsaga.stores.sqlite import SQLiteStore


async def _one(msg: Message) -> dict[str, bool]:
    return {"ok": True}


@pytest.mark.parametrize("as_json", [False, True])
def test_list_reads_no_step_runs(
    as_json: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"

    async def run() -> str:
        async with Flow(store) as flow:
            wf = await flow.workflow_create("listed", FunctionStep(_one, id="one"))
            eid: str = await wf.execute({})
            return eid

    eid = asyncio.run(run())
    asked: list[bool] = []
    listing = SQLiteStore.list_executions

    async def spied(self: SQLiteStore, *args: Any, steps: bool = True, **kwargs: Any) -> Any:
        asked.append(steps)
        return await listing(self, *args, steps=steps, **kwargs)

    monkeypatch.setattr(SQLiteStore, "list_executions", spied)
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "list", *(["--json"] if as_json else [])])
    assert exited.value.code == 0
    assert eid in capsys.readouterr().out
    assert asked == [False]
