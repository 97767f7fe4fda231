"""What flow.redrive says of arguments that are not what it takes, on every store
(memory, SQLite, PostgreSQL): one ConfigurationError naming the argument, before the
store is asked, rather than an AttributeError, a TypeError or (on PostgreSQL) a
StoreError."""

from __future__ import annotations

from typing import Any

import pytest

from microsaga import (
    ConfigurationError,
    ExecutionNotFoundError,
    Flow,
    FunctionStep,
    Message,
    Status,
    StepError,
)
from tests.integration import test_store_contract as contract

store_url = contract.store_url  # every store, each fresh


async def decline(msg: Message) -> None:
    raise StepError("card declined", retryable=False)


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        ({"execution_id": 5}, "execution_id: must be an execution id, not 5"),
        ({"step": 5}, "step: must be a step id, not 5"),
        ({"step": ["charge"]}, "step: must be a step id, not ['charge']"),
        ({"input": object()}, "input: must be JSON: cannot encode object as JSON"),
        ({"input": {"x": float("nan")}}, "input: nan at `$.x` is not JSON"),
        ({"input": b"{bad"}, "input: the body is not JSON"),
    ],
)
async def test_a_redrive_argument_of_the_wrong_kind_is_named(
    store_url: str, arguments: dict[str, Any], said: str
) -> None:
    async with Flow(store_url, poll_interval=0.05) as flow:
        wf = await flow.workflow_create(
            "order", FunctionStep(decline, id="charge"), on_failure="suspend"
        )
        eid = await wf.execute({})
        with pytest.raises(ConfigurationError) as err:
            await flow.redrive(**{"execution_id": eid, **arguments})
        assert str(err.value).startswith(said)
        assert (await flow.execution(eid)).status is Status.SUSPEND


async def test_an_unknown_id_of_another_type_is_not_found() -> None:
    assert str(ExecutionNotFoundError(5)) == "execution not found: 5"  # type: ignore[arg-type]
