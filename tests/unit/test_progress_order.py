"""The live table of ``microsaga run`` shows a map's runs right after the map, as
``show`` does, not after every other step."""

from __future__ import annotations

from rich.console import Console

from microsaga import Flow, FunctionStep, MapStep, Message
from microsaga._progress import progress_table


async def item(msg: Message) -> object:
    return msg.json()


async def total(msg: Message) -> dict[str, int]:
    return {"n": len(msg.json())}


async def test_a_maps_runs_follow_it_in_the_live_table() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create(
            "order",
            MapStep(FunctionStep(item, id="one"), over="request.items", id="each"),
            FunctionStep(total, id="total", requires=["each"]),
        )
        eid = await wf.execute({"items": [1, 2]})
        info = await flow.execution(eid)
    console = Console(width=200, no_color=True)
    with console.capture() as captured:
        console.print(progress_table(info, ["each", "total"]))
    rows = [line.split()[1] for line in captured.get().splitlines() if line.startswith("│")]
    assert rows == ["each", "each[0]", "each[1]", "total"]
