"""``microsaga show`` makes one line of a large map's runs (``<map id>[<i>]``). Step ids
such as ``shard[0]`` beside a step ``shard`` that is no map are the user's own steps
(a definition may have them): each keeps its line, only a real map's runs collapse."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, MapStep, Message
from microsaga._progress import MAP_ROWS
from microsaga.cli import main

SHARDS = MAP_ROWS + 5


async def ok(msg: Message) -> dict[str, bool]:
    return {"ok": True}


def test_steps_named_like_runs_keep_their_lines_beside_a_collapsed_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"

    async def run() -> str:
        async with Flow(store) as flow:
            wf = await flow.workflow_create(
                "fan",
                FunctionStep(ok, id="shard"),
                *(FunctionStep(ok, id=f"shard[{i}]", requires=["shard"]) for i in range(SHARDS)),
                MapStep(FunctionStep(ok, id="one"), over="request", id="each"),
            )
            eid: str = await wf.execute(list(range(SHARDS)))
            return eid

    eid = asyncio.run(run())
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "show", eid])
    assert exited.value.code == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line]
    shown = {row[0]: row[1] for row in rows if len(row) == 2}
    # every shard step has its line, as in the definition
    assert [sid for sid in shown if sid.startswith("shard")] == [
        "shard",
        *(f"shard[{i}]" for i in range(SHARDS)),
    ]
    assert all(shown[f"shard[{i}]"] == "SUCCESS" for i in range(SHARDS))
    assert "shard[*]" not in shown
    # the real map's runs are one line of counts
    assert shown["each[*]"] == f"{SHARDS}"
    assert not any(sid.startswith("each[") and sid != "each[*]" for sid in shown)
