"""What the Flow and SyncFlow methods that take an execution id say of an id that is
no string, on every store (memory, SQLite, PostgreSQL): one ConfigurationError naming
the argument, before the store is asked, rather than "execution not found: 5" (or
worse, the execution ``"5"`` on SQLite) and a StoreError on PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from microsaga import ConfigurationError, Flow, FunctionStep, Message, Status, SyncFlow
from tests.integration import test_store_contract as contract

store_url = contract.store_url  # every store, each fresh


async def echo(msg: Message) -> Message:
    return msg


CALLS: dict[str, Callable[[Any], Awaitable[Any]]] = {
    "execution": lambda flow: flow.execution(5),
    "wait": lambda flow: flow.wait(5, timeout=5),
    "settle": lambda flow: flow.settle(5),
    "suspend": lambda flow: flow.suspend(5),
    "resume": lambda flow: flow.resume(5),
    "abort": lambda flow: flow.abort(5, compensate=False),
    "signal": lambda flow: flow.signal(5, "paid"),
    "redrive": lambda flow: flow.redrive(5),
}


@pytest.mark.parametrize("method", CALLS)
async def test_an_execution_id_that_is_no_string_is_named(store_url: str, method: str) -> None:
    async with Flow(store_url, poll_interval=0.05) as flow:
        wf = await flow.workflow_create("order", FunctionStep(echo, id="charge"))
        await wf.execute({}, execution_id="5")  # the id 5 as a string: not that one
        with pytest.raises(ConfigurationError) as err:
            await CALLS[method](flow)
        assert str(err.value) == "execution_id: must be an execution id, not 5"
        assert (await flow.execution("5")).status is Status.SUCCESS


@pytest.mark.parametrize("setting", ["before", "redrive_of"])
async def test_a_listing_by_an_execution_id_that_is_no_string_is_named(
    store_url: str, setting: str
) -> None:
    async with Flow(store_url) as flow:
        with pytest.raises(ConfigurationError) as err:
            await flow.executions(**{setting: 5})
        assert str(err.value) == f"{setting}: must be an execution id, not 5"


async def test_a_workflow_control_of_an_id_that_is_no_string_is_named(store_url: str) -> None:
    async with Flow(store_url) as flow:
        wf = await flow.workflow_create("order", FunctionStep(echo, id="charge"))
        for control in (wf.suspend, wf.resume, wf.abort):
            with pytest.raises(ConfigurationError, match=r"^execution_id: must be an execution"):
                await control(["e1"])


SYNC_CALLS: dict[str, Callable[[SyncFlow], Any]] = {
    "execution": lambda flow: flow.execution(5),  # type: ignore[arg-type]
    "wait": lambda flow: flow.wait(5, timeout=5),  # type: ignore[arg-type]
    "settle": lambda flow: flow.settle(5),  # type: ignore[arg-type]
    "suspend": lambda flow: flow.suspend(5),  # type: ignore[arg-type]
    "resume": lambda flow: flow.resume(5),  # type: ignore[arg-type]
    "abort": lambda flow: flow.abort(5),  # type: ignore[arg-type]
    "signal": lambda flow: flow.signal(5, "paid"),  # type: ignore[arg-type]
    "redrive": lambda flow: flow.redrive(5),  # type: ignore[arg-type]
    "workflow suspend": lambda flow: flow.workflow_load("order").suspend(5),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("method", SYNC_CALLS)
def test_a_syncflow_method_names_an_execution_id_that_is_no_string(method: str) -> None:
    with SyncFlow("memory://") as flow:
        flow.workflow_save(flow.workflow_create("order", FunctionStep(echo, id="charge")))
        with pytest.raises(ConfigurationError) as err:
            SYNC_CALLS[method](flow)
        assert str(err.value) == "execution_id: must be an execution id, not 5"
