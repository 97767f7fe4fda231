"""The hook seam: what a hook sees of an execution, in order, and what it cannot do."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import microsaga
from microsaga import (
    ExecutionEvent,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Hook,
    Message,
    Phase,
    Retry,
    Status,
    StepError,
    StepEvent,
)
from microsaga.testing import FaultError, arm_fault

SRC = Path(microsaga.__file__).parent


class Recorder(Hook):
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def execution_created(self, event: ExecutionEvent) -> None:
        self.seen.append(("created", event.workflow_id))

    def run_started(self, event: ExecutionEvent) -> None:
        self.seen.append(("run", str(event.taken_over)))

    def execution_status(self, event: ExecutionEvent) -> None:
        self.seen.append(("status", event.status.name))

    def step_started(self, event: StepEvent) -> None:
        self.seen.append(("start", event.step_id, str(event.phase), str(event.attempt)))

    def step_finished(self, event: StepEvent) -> None:
        again = " again" if event.retrying else ""
        self.seen.append(("end", event.step_id, event.status.name + again))

    def step_recorded(self, event: StepEvent) -> None:
        self.seen.append(("recorded", event.step_id, str(event.phase), event.status.name))

    def run_stopped(self, event: ExecutionEvent) -> None:
        self.seen.append(("stopped", event.status.name))


async def reserve(msg: Message) -> dict[str, int]:
    return {"reserved": 1}


async def release(msg: Message) -> None:
    return None


flaky_calls: list[int] = []


async def charge(msg: Message) -> None:
    flaky_calls.append(1)
    raise StepError("card declined", retryable=len(flaky_calls) < 2)


async def test_a_hook_sees_attempts_retries_and_the_rollback_in_order() -> None:
    flaky_calls.clear()
    recorder = Recorder()
    async with Flow("memory://", hooks=[recorder]) as flow:
        a = FunctionStep(reserve, id="reserve", compensate=FunctionStep(release))
        b = FunctionStep(
            charge, id="charge", requires=[a], retry=Retry(max_attempts=3, initial_interval=0)
        )
        wf = await flow.workflow_create("order", a, b)
        with pytest.raises(ExecutionFailedError):
            await wf.execute({})
    assert recorder.seen == [
        ("created", "order"),
        ("run", "False"),
        ("start", "reserve", "forward", "1"),
        ("end", "reserve", "SUCCESS"),
        ("recorded", "reserve", "forward", "SUCCESS"),
        ("start", "charge", "forward", "1"),
        ("end", "charge", "FAILURE again"),
        ("start", "charge", "forward", "2"),
        ("end", "charge", "FAILURE"),
        ("recorded", "charge", "forward", "FAILURE"),
        ("status", "COMPENSATING"),
        ("start", "reserve", "compensate", "1"),
        ("end", "reserve", "SUCCESS"),
        ("recorded", "reserve", "compensate", "SUCCESS"),
        ("recorded", "reserve", "forward", "COMPENSATED"),
        ("status", "FAILURE"),
        ("stopped", "FAILURE"),
    ]


class Broken(Hook):
    def step_started(self, event: StepEvent) -> None:
        raise RuntimeError("a bug in a hook")


async def test_a_failing_hook_is_logged_once_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    async with Flow("memory://", hooks=[Broken(), recorder]) as flow:
        wf = await flow.workflow_create("w", FunctionStep(reserve, id="a"))
        for _ in range(3):
            eid = await wf.execute({})
            assert (await flow.execution(eid)).status is Status.SUCCESS
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "hook" in r.message]
    assert len(failures) == 1
    assert recorder.seen.count(("start", "a", "forward", "1")) == 3  # the next hook still ran


async def test_hooks_added_later_see_later_executions_only() -> None:
    recorder = Recorder()
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("w", FunctionStep(reserve, id="a"))
        await wf.execute({})
        flow.add_hook(recorder)
        await wf.execute({})
        flow.remove_hook(recorder)
        await wf.execute({})
    assert recorder.seen.count(("created", "w")) == 1


invoked: list[str] = []


async def second(msg: Message) -> None:
    invoked.append("b")


async def test_a_fault_point_stops_the_run_as_a_crash_would() -> None:
    invoked.clear()
    arm_fault("step_recorded", "raise")
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create(
            "w", FunctionStep(reserve, id="a"), FunctionStep(second, id="b", requires=["a"])
        )
        eid = await wf.execute({}, async_=True)
        await flow.settle(eid)
        info = await flow.execution(eid)
    # a's result is stored with b's start; b was never invoked: the run stopped at the
    # boundary, left for a worker to take over (and invoke b)
    assert info.steps["a"].status is Status.SUCCESS
    assert info.steps["b"].status is Status.RUNNING
    assert invoked == []
    assert info.status is Status.RUNNING
    assert issubclass(FaultError, RuntimeError)


def test_hooks_must_be_hooks() -> None:
    with pytest.raises(microsaga.ConfigurationError, match="hooks: must be a list"):
        Flow("memory://", hooks=[object()])


async def test_step_status_is_what_this_process_saw_and_definitions_stay_untouched() -> None:
    async with Flow("memory://") as flow:
        comp = FunctionStep(release, id="undo")
        a = FunctionStep(reserve, id="a", compensate=comp)
        b = FunctionStep(charge, id="b", requires=[a])
        wf = await flow.workflow_create("w", a, b)
        assert (wf.status, a.status, a.request) == (Status.PENDING, Status.PENDING, None)
        flaky_calls[:] = [1, 1]
        with pytest.raises(ExecutionFailedError):
            await wf.execute({"x": 1})
        assert wf.status is Status.FAILURE
        assert a.status is Status.COMPENSATED
        assert a.response is not None
        assert a.response.json() == {"reserved": 1}
        assert b.status is Status.FAILURE
        assert comp.status is Status.SUCCESS
        assert "status" not in vars(a)
        assert "_status" not in vars(wf)
    assert Phase.COMPENSATE.value == 1


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
    return found


def test_the_engine_imports_only_the_model_the_standard_library_and_msgspec() -> None:
    allowed_local = {".", ".dag", ".plan", ".records", ".saga", ".data", ".control"}
    model = {"..message", "..status", "..errors", "..protocol"}
    for path in (SRC / "_engine").glob("*.py"):
        for name in _imports(path):
            if name.startswith(".."):
                assert name in model, f"{path.name} imports {name}"
            elif name.startswith("."):
                assert name in allowed_local, f"{path.name} imports {name}"
            else:
                top = name.split(".")[0]
                assert top == "msgspec" or top in _stdlib(), f"{path.name} imports {name}"


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names) | {"__future__"}


def test_nothing_below_the_flow_reaches_into_its_private_members() -> None:
    for path in SRC.rglob("*.py"):
        if path.name == "flow.py" and path.parent == SRC:
            continue
        text = path.read_text()
        assert "flow._" not in text.replace("_flow._", ""), path
