"""``flow.signal`` refuses an event that no wait step of the execution waits for: it
was kept for nothing, and a misspelt event looked delivered (only ``microsaga signal``
refused it). A signal that comes before its wait step starts is still kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from microsaga import (
    ConfigurationError,
    Flow,
    FunctionStep,
    Message,
    SleepStep,
    Status,
    SubflowStep,
    WaitStep,
    load_definition,
)
from microsaga.steps import deferred_imports
from tests.helpers import eventually


async def ship(msg: Message) -> dict[str, bool]:
    return {"shipped": True}


async def test_a_misspelt_event_is_refused_naming_the_events_waited_for(flow: Flow) -> None:
    wf = await flow.workflow_create(
        "order",
        SleepStep(0.2, id="nap"),
        WaitStep("paid", requires=["nap"], compensate=WaitStep("refunded", id="refund")),
        FunctionStep(ship, id="ship", requires=["paid"]),
    )
    eid = await wf.execute({}, async_=True)
    with pytest.raises(ConfigurationError) as refused:
        await flow.signal(eid, "payed", {"amount": 1})
    assert str(refused.value) == (
        f"event: no step of execution {eid} waits for 'payed'; "
        "its wait steps wait for: paid, refunded"
    )
    assert await flow.store.signals(eid) == {}  # nothing kept
    await flow.signal(eid, "paid", {"amount": 1})  # before its step starts: kept
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert done.steps["paid"].response.json() == {"amount": 1}


async def test_an_execution_without_wait_steps_says_so(flow: Flow) -> None:
    wf = await flow.workflow_create("nap", SleepStep(60, id="nap"))
    eid = await wf.execute({}, async_=True)
    with pytest.raises(ConfigurationError, match=r"waits for 'paid'; it has no wait step$"):
        await flow.signal(eid, "paid")


async def test_a_sub_workflows_event_goes_to_the_child_that_waits(flow: Flow) -> None:
    await flow.workflow_save(await flow.workflow_create("payment", WaitStep("paid")))
    wf = await flow.workflow_create("order", SubflowStep("payment", id="charge"))
    eid = await wf.execute({}, async_=True)
    with pytest.raises(ConfigurationError) as refused:
        await flow.signal(eid, "paid")
    assert str(refused.value) == (
        f"event: no step of execution {eid} waits for 'paid'; it has no wait step "
        f"(a sub-workflow's wait steps take signals at its execution: {eid}:charge)"
    )
    await eventually(lambda: flow.store.get_status(f"{eid}:charge"))
    await flow.signal(f"{eid}:charge", "paid", {"ok": True})
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert done.steps["charge"].response.json() == {"ok": True}


async def test_a_flow_without_the_steps_code_reads_the_stored_definition(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    definition = {
        "id": "order",
        "steps": [
            {"wait": "paid"},
            {"function": "not_here.shop:ship", "id": "ship", "requires": ["paid"]},
        ],
    }
    async with Flow(store, worker=False) as flow:
        with deferred_imports():
            wf = await flow.workflow_add(load_definition(definition))
        eid = await wf.execute({}, async_=True)
    async with Flow(store, worker=False) as other:  # never saw the workflow
        with pytest.raises(ConfigurationError, match=r"its wait steps wait for: paid$"):
            await other.signal(eid, "payed")
        await other.signal(eid, "paid")
        assert list(await other.store.signals(eid)) == ["paid"]
