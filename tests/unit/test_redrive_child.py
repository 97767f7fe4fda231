"""A sub-workflow's child that failed is not redriven on its own: a new execution of it
would have no parent waiting for it, and would do the child's work again after the
parent rolled back (or while the parent waits for an operator). The refusal names the
parent and what to redrive instead, which works: the Python API, the CLI and the HTTP
API alike."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    Flow,
    FunctionStep,
    InvalidTransitionError,
    Message,
    Status,
    StepError,
    SubflowStep,
)
from microsaga.api import create_app
from microsaga.cli import main
from tests.api.conftest import client_for
from tests.helpers import eventually

CHARGED: list[Any] = []  # the requests charge was called with
DECLINE = [True]


async def charge(msg: Message) -> dict[str, Any]:
    CHARGED.append(msg.json())
    if DECLINE[0]:
        raise StepError("card declined", retryable=False)
    return {"charged": msg.json()}


@pytest.fixture(autouse=True)
def _clear() -> None:
    CHARGED.clear()
    DECLINE[0] = True


async def _failed_child(flow: Flow, on_failure: str, child_policy: str = "compensate") -> str:
    """An execution of "order" whose step "pay" ran a child of "payment" that failed;
    the parent's id, once the parent stopped (FAILURE, or SUSPEND on "pay")."""
    child = await flow.workflow_create(
        "payment", FunctionStep(charge, id="charge"), on_failure=child_policy
    )
    await flow.workflow_save(child)
    wf = await flow.workflow_create(
        "order", SubflowStep("payment", id="pay"), on_failure=on_failure
    )
    eid: str = await wf.execute({"card": "visa"}, async_=True)

    async def stopped() -> bool:
        info = await flow.execution(eid)
        return info.status in (Status.FAILURE, Status.SUSPEND)

    await eventually(stopped)
    assert (await flow.execution(f"{eid}:pay")).status is Status.FAILURE
    return eid


async def _refused(flow: Flow, child: str) -> str:
    with pytest.raises(InvalidTransitionError) as refused:
        await flow.redrive(child)
    assert await flow.executions(redrive_of=child) == []  # no orphan started
    return str(refused.value)


async def test_a_failed_child_of_a_failed_parent_is_refused_and_the_parent_redriven(
    flow: Flow,
) -> None:
    eid = await _failed_child(flow, "compensate")
    assert (await flow.execution(eid)).status is Status.FAILURE
    said = await _refused(flow, f"{eid}:pay")
    assert said == (
        f"cannot redrive execution {eid}:pay: it is the child of step pay of execution "
        f"{eid}, and a new execution would have no parent waiting for it; redrive "
        f"execution {eid} instead (it is FAILURE): that starts it anew, with a new child"
    )
    assert CHARGED == [{"card": "visa"}]
    # what it says works
    DECLINE[0] = False
    new = await flow.redrive(eid)
    assert (await flow.wait(new, timeout=10)).status is Status.SUCCESS
    child = await flow.execution(f"{new}:pay")
    assert (child.status, child.parent_id) == (Status.SUCCESS, new)


async def test_a_failed_child_of_a_suspended_parent_is_refused_and_the_step_redriven(
    flow: Flow,
) -> None:
    eid = await _failed_child(flow, "suspend")
    said = await _refused(flow, f"{eid}:pay")
    assert said.endswith(
        f"; redrive step pay of execution {eid} instead (it is SUSPEND on it): that runs "
        "a new child"
    )
    # the second try's child (<eid>:pay::2) fails too: refused alike, naming the step
    assert await flow.redrive(eid, step="pay") == eid

    async def second_failed() -> bool:
        parent = await flow.execution(eid)
        found = await flow.store.get_status(f"{eid}:pay::2")
        return parent.status is Status.SUSPEND and found is not None and found[0] is Status.FAILURE

    await eventually(second_failed)
    second = await _refused(flow, f"{eid}:pay::2")
    assert f"it is the child of step pay of execution {eid}," in second
    assert second.endswith(
        f"redrive step pay of execution {eid} instead (it is SUSPEND on it): that runs a new child"
    )
    DECLINE[0] = False
    assert await flow.redrive(eid, step="pay", input={"card": "new"}) == eid
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert done.steps["pay"].response is not None
    assert done.steps["pay"].response.json() == {"charged": {"card": "new"}}
    # the first child stays as it was: a second refusal names the same remedy
    assert (await flow.execution(f"{eid}:pay")).status is Status.FAILURE
    again = await _refused(flow, f"{eid}:pay")
    assert again.endswith(f"; execution {eid} succeeded: nothing is left to redrive")
    assert CHARGED == [{"card": "visa"}, {"card": "visa"}, {"card": "new"}]


async def test_a_suspended_child_is_redriven_in_place_and_its_parent_goes_on(
    flow: Flow,
) -> None:
    """A child suspended by its own failure policy is no orphan: its parent waits for
    it, and a redrive runs its failed step again inside it."""
    child = await flow.workflow_create(
        "payment", FunctionStep(charge, id="charge"), on_failure="suspend"
    )
    await flow.workflow_save(child)
    wf = await flow.workflow_create("order", SubflowStep("payment", id="pay"))
    eid: str = await wf.execute({"card": "visa"}, async_=True)

    async def child_suspended() -> bool:
        found = await flow.store.get_status(f"{eid}:pay")
        return found is not None and found[0] is Status.SUSPEND

    await eventually(child_suspended)
    # the parent runs (its step waits for the child): a redrive of it says which to redrive
    with pytest.raises(InvalidTransitionError) as refused:
        await flow.redrive(eid)
    assert str(refused.value).endswith(
        f"; its step pay waits for child execution {eid}:pay, which is SUSPEND: redrive "
        "(or resume) that one"
    )
    DECLINE[0] = False
    assert await flow.redrive(f"{eid}:pay") == f"{eid}:pay"
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS


def test_the_cli_refuses_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    store = f"sqlite:///{tmp_path / 's.db'}"

    async def failed() -> str:
        async with Flow(store, poll_interval=0.05) as flow:
            return await _failed_child(flow, "compensate")

    eid = asyncio.run(failed())
    capsys.readouterr()  # what the flow logged, through a CLI's logging of another test
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "redrive", f"{eid}:pay"])
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    [line] = out.err.strip().splitlines()
    assert line.startswith(f"error[invalid_transition]: cannot redrive execution {eid}:pay: ")
    assert line.endswith(
        f"redrive execution {eid} instead (it is FAILURE): that starts it anew, with a new child"
    )


async def test_the_api_answers_409_naming_the_parent() -> None:
    async with Flow("memory://", poll_interval=0.05) as flow:
        eid = await _failed_child(flow, "suspend")
        async with client_for(create_app(flow)) as api:
            answer = await api.post(f"/api/executions/{eid}:pay/redrive", json={})
    assert answer.status_code == 409
    problem = answer.json()
    assert problem["code"] == "invalid_transition"
    assert f"redrive step pay of execution {eid} instead" in problem["detail"]
    assert CHARGED == [{"card": "visa"}]
