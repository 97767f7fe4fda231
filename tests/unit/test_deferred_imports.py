"""A flow that runs no steps reads ``function:`` steps without importing them; a flow
that runs steps imports them at once, as before (docs/api.md, "Workers elsewhere")."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    DefinitionError,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    Status,
    load_definition,
)
from microsaga.cli import main
from microsaga.steps import deferred_imports

NOWHERE = {"id": "notify", "steps": [{"function": "nowhere_h1_shop.notify:send_email"}]}
HERE = {
    "id": "order",
    "steps": [
        {"function": "tests.unit.steps_for_tests:reserve"},
        {"function": "tests.unit.steps_for_tests:charge", "requires": ["reserve"]},
    ],
}


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("deferred_h1")]:
        del sys.modules[name]


def test_a_deferred_read_imports_nothing_and_writes_the_same_definition() -> None:
    with deferred_imports():
        wf = load_definition(NOWHERE)
    step = wf.step_list[0]
    assert isinstance(step, FunctionStep)
    assert (step.id, step.endpoint) == ("send_email", "nowhere_h1_shop.notify:send_email")
    assert wf.to_dict() == NOWHERE
    assert "nowhere_h1_shop" not in sys.modules
    with pytest.raises(DefinitionError, match=r"cannot import nowhere_h1_shop\.notify:send_email"):
        load_definition(NOWHERE)  # outside it: imported at once, as always


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nowhere_h1_shop.notify", "steps[0].function: must be 'module:function'"),
        (5, "steps[0].function: must be 'module:function', not 5"),
        ("mod:f.<locals>.g", "is not importable (a lambda or a local function)"),
    ],
)
def test_a_deferred_read_still_refuses_a_malformed_path(path: Any, message: str) -> None:
    with deferred_imports(), pytest.raises(DefinitionError) as err:
        load_definition({"id": "x", "steps": [{"function": path}]})
    assert message in str(err.value)


def test_the_ids_and_definition_do_not_depend_on_importing(modules: Path) -> None:
    """The API (not importing) and a worker (importing) agree on every step's id and on
    the definition, also for a name bound to a function of another name."""
    (modules / "deferred_h1_alias.py").write_text(
        "def _impl(msg):\n    return None\n\nsend = _impl\n"
    )
    text = {
        "id": "x",
        "steps": [
            {"function": "deferred_h1_alias:send"},
            {"function": "deferred_h1_alias:_impl", "requires": ["send"]},
        ],
    }
    imported = load_definition(text)
    with deferred_imports():
        deferred = load_definition(text)
    assert [s.id for s in imported.step_list] == ["send", "_impl"]
    assert [s.id for s in deferred.step_list] == ["send", "_impl"]
    assert imported.to_dict() == deferred.to_dict() == text
    assert imported.snapshot().hash == deferred.snapshot().hash


async def test_a_flow_without_worker_saves_loads_lists_and_starts(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    async with Flow(store, worker=False) as api:
        with deferred_imports():
            wf = load_definition(NOWHERE)
        assert await api.workflow_save(wf) == 1
        loaded = await api.workflow_load("notify")
        assert loaded.to_dict() == NOWHERE
        assert [w.id for w in await api.workflow_list()] == ["notify"]
        eid = await loaded.execute({"customer": "ada"}, async_=True)
        assert (await api.execution(eid)).status is Status.PENDING
        await api.abort(eid, compensate=False)

    # a flow that runs steps reports the function it cannot import at once, as before
    async with Flow(store, poll_interval=0.05) as worker:
        with pytest.raises(DefinitionError, match=r"cannot import nowhere_h1_shop\.notify"):
            await worker.workflow_load("notify")


async def test_a_running_flow_imports_a_deferred_workflow_when_it_binds_it() -> None:
    with deferred_imports():
        missing = load_definition(NOWHERE)
    async with Flow("memory://") as flow:
        with pytest.raises(DefinitionError) as err:
            await flow.workflow_add(missing)
    assert str(err.value).startswith(
        "step send_email: cannot import nowhere_h1_shop.notify:send_email: No module named"
    )


async def test_a_deferred_step_runs_where_its_function_imports() -> None:
    with deferred_imports():
        wf = load_definition(HERE)
    async with Flow("memory://") as flow:
        await flow.workflow_add(wf)
        eid = await wf.execute({"order": 7})
        info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    assert info.steps["reserve"].response == Message.of({"reserved": {"order": 7}})


async def test_a_deferred_step_that_cannot_import_fails_naming_its_function() -> None:
    with deferred_imports():
        step = load_definition(NOWHERE).step_list[0]
    assert isinstance(step, FunctionStep)
    with pytest.raises(DefinitionError, match="step send_email: cannot import nowhere_h1"):
        await step.execute(Message(), None)  # type: ignore[arg-type]  # never reached
    with pytest.raises(DefinitionError, match=r"cannot import nowhere_h1_shop\.notify"):
        step.fn  # noqa: B018 - the function, imported on access


def test_a_deferred_read_keeps_non_retryable_classes_as_names() -> None:
    text = {
        "id": "x",
        "steps": [
            {
                "function": "nowhere_h1_shop.pay:charge",
                "retry": {"max_attempts": 3, "non_retryable": ["nowhere_h1_shop:Declined", "io"]},
            }
        ],
    }
    with deferred_imports():
        wf = load_definition(text)
    assert wf.to_dict() == text
    with deferred_imports(), pytest.raises(DefinitionError) as err:
        load_definition({"id": "x", "steps": [{"publish": "a", "retry": {"non_retryable": [":"]}}]})
    assert "steps[0].retry.non_retryable: must be 'module:function'" in str(err.value)


async def test_a_running_flow_imports_deferred_non_retryable_classes(modules: Path) -> None:
    (modules / "deferred_h1_pay.py").write_text(
        "class Declined(Exception):\n    pass\n\n"
        "def charge(msg):\n    raise Declined('card declined')\n"
    )
    text = {
        "id": "pay",
        "steps": [
            {
                "function": "deferred_h1_pay:charge",
                "retry": {
                    "max_attempts": 5,
                    "initial_interval": 0,
                    "non_retryable": ["deferred_h1_pay:Declined"],
                },
            }
        ],
    }
    with deferred_imports():
        wf = load_definition(text)
        missing = load_definition(
            {"id": "x", "steps": [{"publish": "a", "retry": {"non_retryable": ["nowhere_h1:E"]}}]}
        )
    async with Flow("memory://", worker=False) as queueing:
        await queueing.workflow_add(wf)
        await wf.execute(async_=True)  # queued, for workers elsewhere
    async with Flow("memory://") as flow:
        with pytest.raises(DefinitionError) as err:
            await flow.workflow_add(missing)
        assert str(err.value).startswith(
            "step a: retry.non_retryable: cannot import nowhere_h1:E: No module named"
        )
        await flow.workflow_add(wf)
        assert wf.to_dict() == text
        with pytest.raises(ExecutionFailedError):
            await wf.execute()
        (info,) = await flow.executions()
    assert info.steps["charge"].attempts == 1  # Declined is not retried
    assert info.steps["charge"].error is not None
    assert "card declined" in info.steps["charge"].error


def test_run_async_queues_an_execution_whose_code_only_workers_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 'q.db'}"
    definition = tmp_path / "notify.json"
    definition.write_text(json.dumps(NOWHERE))
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "run", str(definition), "--async"])
    assert exited.value.code == 0, capsys.readouterr().err
    eid = capsys.readouterr().out.strip().splitlines()[-1]

    async def status() -> Status:
        async with Flow(store, worker=False) as flow:
            return (await flow.execution(eid)).status

    assert asyncio.run(status()) is Status.PENDING  # for a worker that can import it
    # run without --async runs the steps here: it cannot, and says so at once
    with pytest.raises(SystemExit) as exited:
        main(["--store", store, "run", str(definition)])
    assert exited.value.code == 2
    assert "cannot import nowhere_h1_shop.notify:send_email" in capsys.readouterr().err
