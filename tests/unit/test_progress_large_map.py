"""A map of many runs is one line of counts by status in ``run``'s live table and in
``show`` (``show --all``: every run), with its failed runs listed; a small map keeps a
row per run."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    MapStep,
    Message,
    Status,
    StepError,
)
from microsaga._progress import MAP_ROWS, progress_table
from microsaga.cli import main
from microsaga.execution import Execution


class _AllStarted:
    """The runs of one execution: none fails before all of them have started, so that
    the map's first failure stops none of them (which would depend on timing)."""

    expected = 0
    started = 0
    event: asyncio.Event | None = None


async def item(msg: Message) -> object:
    value = msg.json()
    assert _AllStarted.event is not None
    _AllStarted.started += 1
    if _AllStarted.started == _AllStarted.expected:
        _AllStarted.event.set()
    await asyncio.wait_for(_AllStarted.event.wait(), 10)
    if isinstance(value, int) and value % 5 == 3:  # 3, 8, 13, ...: 8 of 40 fail
        raise StepError(f"item {value} declined", retryable=False)
    return value


async def release(msg: Message) -> None:
    return None


async def total(msg: Message) -> dict[str, int]:
    return {"n": len(msg.json())}


def _execute(store: str, items: list[int]) -> Execution:
    async def run() -> Execution:
        _AllStarted.expected, _AllStarted.started = len(items), 0
        _AllStarted.event = asyncio.Event()
        async with Flow(store) as flow:
            wf = await flow.workflow_create(
                "order",
                MapStep(
                    FunctionStep(item, id="one", compensate=FunctionStep(release)),
                    over="request.items",
                    concurrency=len(items),
                    id="each",
                ),
                FunctionStep(total, id="total", requires=["each"]),
            )
            try:
                eid = await wf.execute({"items": items})
            except ExecutionFailedError as failed:
                eid = failed.execution_id
            return await flow.execution(eid)

    return asyncio.run(run())


def _show(store: str, eid: str, capsys: pytest.CaptureFixture[str], *more: str) -> list[str]:
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "show", eid, *more])
    assert exited.value.code == 0
    return capsys.readouterr().out.splitlines()


def _table(info: Execution) -> list[list[str]]:
    console = Console(width=300, no_color=True)
    with console.capture() as captured:
        console.print(progress_table(info, ["each", "total"]))
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in captured.get().splitlines()
        if line.startswith("│")
    ]


def _expected(info: Execution) -> tuple[str, list[str]]:
    """The counts a user would make of the runs, and the failed runs by index."""
    runs = {sid: run for sid, run in info.steps.items() if sid.startswith("each[")}
    by_status = Counter(run.status for run in runs.values())
    undo = Counter(run.compensation.status for run in runs.values() if run.compensation)
    counts = ", ".join(f"{n:,} {status.name}" for status, n in sorted(by_status.items()))
    if undo:
        counts += "; undo: " + ", ".join(f"{n:,} {s.name}" for s, n in sorted(undo.items()))
    failed = sorted(
        (sid for sid, run in runs.items() if run.status is Status.FAILURE),
        key=lambda sid: int(sid[5:-1]),
    )
    return counts, failed


def test_a_large_map_is_one_line_of_counts_and_its_failed_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    info = _execute(store, list(range(40)))
    counts, failed = _expected(info)
    assert len(failed) > 5  # more than are listed: a line says how many more

    lines = _show(store, info.id, capsys)
    runs = [line.split() for line in lines if line.startswith("each[")]
    assert runs[0][:3] == ["each[*]", "40", "runs"]
    assert lines[[line.startswith("each[*]") for line in lines].index(True)].endswith(counts)
    assert [row[0] for row in runs[1:6]] == failed[:5]
    assert all(row[1] == "FAILURE" for row in runs[1:6])
    assert runs[6][:3] == ["each[*]", str(len(failed) - 5), "more"]
    more = [line for line in lines if line.startswith("each[*]")][1]
    assert more.endswith(f"not listed: `microsaga show {info.id} --all` lists every run")
    assert len(runs) == 7

    every = _show(store, info.id, capsys, "--all")
    assert [line.split()[0] for line in every if line.startswith("each[")] == [
        f"each[{i}]" for i in range(40)
    ]

    rows = _table(info)
    assert [row[0] for row in rows] == ["each", "each[*]", *failed[:5], "each[*]", "total"]
    assert rows[1][1] == "40 runs"
    assert rows[1][5] == counts
    assert rows[7][1] == f"{len(failed) - 5} more"
    assert rows[7][5] == "failed or undoing, not listed: see `microsaga show --all`"


def test_a_small_map_keeps_a_row_per_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    items = [i * 5 for i in range(MAP_ROWS)]  # none fails
    info = _execute(store, items)
    assert info.status is Status.SUCCESS
    runs = [f"each[{i}]" for i in range(MAP_ROWS)]
    shown = [line.split() for line in _show(store, info.id, capsys)]
    assert [row[0] for row in shown if row and row[0].startswith("each[")] == runs
    assert all(row[1] == "SUCCESS" for row in shown if row and row[0] in runs)
    assert [row[0] for row in _table(info)] == ["each", *runs, "total"]
