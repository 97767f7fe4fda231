"""``microsaga list`` lines its columns up whatever the lengths of the ids: an id of
``--execution-id`` or a long workflow id pushed the rest of its row out of line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep
from microsaga.cli import main


def done(msg: object) -> dict[str, bool]:
    return {"done": True}


async def _three_executions(store: str) -> None:
    async with Flow(store) as flow:
        short = await flow.workflow_create("order", FunctionStep(done, id="a"))
        long = await flow.workflow_create(
            "a-workflow-with-a-rather-long-name", FunctionStep(done, id="a")
        )
        await short.execute({}, execution_id="order-1")
        await long.execute({})
        await short.execute({})


def test_the_columns_line_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = f"sqlite:///{tmp_path / 'list.db'}"
    asyncio.run(_three_executions(store))
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "list"])
    assert exited.value.code == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 3
    assert rows[2].startswith("order-1 ")
    assert len({row.index(" SUCCESS ") for row in rows}) == 1, rows
    assert len({row.index(" order ") for row in rows if " order " in row}) == 1, rows
    assert len({row.index(" a-workflow") for row in rows if " a-workflow" in row} | {
        row.index(" order ") for row in rows if " order " in row
    }) == 1, rows  # fmt: skip
