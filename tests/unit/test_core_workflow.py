"""Workflow objects as a user changes them: versions follow the saved definition."""

from __future__ import annotations

import pytest

from microsaga import ConfigurationError, Flow, FunctionStep, Message, StepNotExistsError


async def first(msg: Message) -> dict[str, int]:
    return {"n": 1}


async def second(msg: Message) -> dict[str, int]:
    return {"n": 2}


async def test_a_changed_workflow_is_not_the_saved_version() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("w", FunctionStep(first))
        assert await flow.workflow_save(wf) == 1

        await wf.append_steps(FunctionStep(second, requires=["first"]))
        assert wf.version is None
        eid = await wf.execute()
        info = await flow.execution(eid)
        assert info.version is None  # version 1 has no step "second"
        assert set(info.steps) == {"first", "second"}

        assert await flow.workflow_save(wf) == 2
        eid = await wf.execute()
        assert (await flow.execution(eid)).version == 2

        await wf.remove_steps("second")
        assert wf.version is None
        eid = await wf.execute()
        assert (await flow.execution(eid)).version is None
        assert await flow.workflow_save(wf) == 3  # a new version, like any change
        saved_v2 = await flow.workflow_load("w", 2)
        assert [s.id for s in saved_v2.step_list] == ["first", "second"]


async def test_a_refused_change_keeps_the_version() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("w", FunctionStep(first))
        await flow.workflow_save(wf)
        with pytest.raises(StepNotExistsError):
            await wf.append_steps(FunctionStep(second, requires=["ghost"]))
        assert wf.version == 1  # nothing changed


async def test_saving_or_adding_something_not_a_workflow_is_refused_by_name() -> None:
    async with Flow("memory://") as flow:
        await flow.workflow_create("w", FunctionStep(first))
        for call in (flow.workflow_save, flow.workflow_add):
            with pytest.raises(ConfigurationError, match=r"wf: must be a Workflow .* not 'w'"):
                await call("w")  # type: ignore[arg-type]
        assert await flow.workflow_list() == []
