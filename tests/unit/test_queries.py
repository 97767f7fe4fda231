"""Saved definitions, versions, listing and waiting, on memory and SQLite."""

from __future__ import annotations

import asyncio

import pytest

from microsaga import (
    DefinitionError,
    ExecutionNotFoundError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    Status,
    WorkflowNotFoundError,
    load_definition,
)
from tests.unit import steps_for_tests as fns


def order_steps(with_charge: bool = True) -> list[FunctionStep]:
    r = FunctionStep(fns.reserve, compensate=FunctionStep(fns.release), retry=Retry(max_attempts=2))
    steps = [r]
    if with_charge:
        steps.append(FunctionStep(fns.charge, requires=[r]))
    return steps


async def test_save_load_list_remove_with_versions(flow: Flow) -> None:
    wf = await flow.workflow_create("order", *order_steps(with_charge=False))
    assert wf.version is None
    assert await flow.workflow_save(wf) == 1
    assert await flow.workflow_save(wf) == 1  # unchanged: same version
    await wf.append_steps(FunctionStep(fns.charge, requires=["reserve"]))
    assert await flow.workflow_save(wf) == 2
    assert wf.version == 2
    loaded = await flow.workflow_load("order")
    assert loaded.version == 2
    assert [[s.id for s in lvl] for lvl in loaded.steps()] == [["reserve"], ["charge"]]
    assert loaded.to_dict() == wf.to_dict()
    first = await flow.workflow_load("order", version=1)
    assert [s.id for s in first.step_list] == ["reserve"]
    other = await flow.workflow_create("other", *order_steps(False))
    await flow.workflow_save(other)
    assert [(w.id, w.version) for w in await flow.workflow_list()] == [("order", 2), ("other", 1)]
    await flow.workflow_remove("other")
    assert [w.id for w in await flow.workflow_list()] == ["order"]
    with pytest.raises(WorkflowNotFoundError, match="other"):
        await flow.workflow_load("other")
    with pytest.raises(WorkflowNotFoundError):
        await flow.workflow_remove("other")


async def test_workflow_list_shows_definitions_not_executions(flow: Flow) -> None:
    wf = await flow.workflow_create("unsaved", *order_steps())
    await wf.execute({"sku": 1})
    assert await flow.workflow_list() == []


async def test_loaded_workflow_runs_and_executions_keep_their_version(flow: Flow) -> None:
    wf = await flow.workflow_create("order", *order_steps(with_charge=False))
    await flow.workflow_save(wf)
    loaded = await flow.workflow_load("order")
    first = await loaded.execute({"sku": 1})
    await wf.append_steps(FunctionStep(fns.charge, requires=["reserve"]))
    await flow.workflow_save(wf)
    second = await (await flow.workflow_load("order")).execute({"sku": 2})
    one, two = await flow.execution(first), await flow.execution(second)
    assert (one.version, two.version) == (1, 2)
    assert list(one.steps) == ["reserve"]
    assert list(two.steps) == ["reserve", "charge"]


async def test_unsaveable_steps_can_run_but_not_be_saved(flow: Flow) -> None:
    wf = await flow.workflow_create("local", FunctionStep(lambda m: {"ok": 1}, id="lam"))
    info = await flow.execution(await wf.execute())
    assert info.status is Status.SUCCESS
    with pytest.raises(DefinitionError, match="not importable"):
        await flow.workflow_save(wf)


async def test_executions_newest_first_filtered_and_paged(flow: Flow) -> None:
    ok = await flow.workflow_create("ok", *order_steps())
    ids = [await ok.execute({"n": i}) for i in range(5)]
    bad = await flow.workflow_create("bad", *order_steps())
    with pytest.raises(Exception):  # noqa: B017 - the failure itself is tested elsewhere
        await bad.execute({"fail": True})
    everything = await flow.executions()
    assert len(everything) == 6
    assert everything[0].workflow_id == "bad"
    assert [e.id for e in everything[1:]] == ids[::-1]
    assert [e.id for e in await flow.executions("ok", limit=2)] == ids[:-3:-1]
    page2 = await flow.executions("ok", limit=2, before=ids[3])
    assert [e.id for e in page2] == [ids[2], ids[1]]
    failed = await flow.executions(status=Status.FAILURE)
    assert [e.workflow_id for e in failed] == ["bad"]
    assert [e.workflow_id for e in await flow.executions(status="StatusFailure")] == ["bad"]
    assert await flow.executions("nothing") == []
    with pytest.raises(ExecutionNotFoundError):
        await flow.executions(before="no-such-id")


async def test_wait_and_unknown_ids(flow: Flow) -> None:
    gate = asyncio.Event()

    async def held(msg: Message) -> None:
        await gate.wait()

    wf = await flow.workflow_create("held", FunctionStep(held, id="held"))
    assert wf.status is Status.PENDING
    eid = await wf.execute(async_=True)  # returns at once
    assert (await flow.execution(eid)).status is Status.RUNNING
    with pytest.raises(TimeoutError, match=f"^execution {eid} did not stop in 0.1s$"):
        await flow.wait(eid, timeout=0.1)
    gate.set()
    info = await flow.wait(eid, timeout=5)
    assert info.status is Status.SUCCESS
    with pytest.raises(ExecutionNotFoundError, match="execution not found: nope"):
        await flow.execution("nope")
    with pytest.raises(ExecutionNotFoundError):
        await flow.wait("nope")
    for odd in ("", " x"):  # an id that would not show in a plain message is quoted
        with pytest.raises(ExecutionNotFoundError) as err:
            await flow.execution(odd)
        assert str(err.value) == f"execution not found: {odd!r}"


async def test_definition_round_trip_through_a_flow(flow: Flow) -> None:
    wf = load_definition(
        """
id: order
steps:
  - function: tests.unit.steps_for_tests:reserve
    retry: {max_attempts: 2, initial_interval: 0.01}
    compensate: {function: "tests.unit.steps_for_tests:release", input: response}
  - function: tests.unit.steps_for_tests:charge
    requires: [reserve]
"""
    )
    await flow.workflow_add(wf)
    fns.CALLS.clear()
    info = await flow.execution(await wf.execute({"sku": 1}))
    assert info.status is Status.SUCCESS
    assert fns.CALLS == ["reserve", "charge"]
    assert wf.step("reserve").options.compensate_input == "response"
