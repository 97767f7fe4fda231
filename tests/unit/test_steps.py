"""The built-in step kinds as a user builds them, and what a broken function path gets."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    DefinitionError,
    Flow,
    FunctionStep,
    Message,
    Saga,
    StepContext,
    load_definition,
)


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("brokenmod")]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ('raise RuntimeError("boom")\n', "RuntimeError: boom"),
        ("def fn(:\n", "SyntaxError"),
    ],
)
def test_a_module_that_fails_to_import_is_a_definition_error(
    modules: Path, source: str, cause: str
) -> None:
    name = f"brokenmod_{len(source)}"
    (modules / f"{name}.py").write_text(source)
    with pytest.raises(DefinitionError) as err:
        load_definition({"id": "x", "steps": [{"function": f"{name}:fn"}]})
    assert f"cannot import {name}:fn" in str(err.value)
    assert cause in str(err.value)
    assert err.value.path == "steps[0].function"


def test_a_missing_function_names_the_path(modules: Path) -> None:
    (modules / "brokenmod_ok.py").write_text("def other(msg):\n    return None\n")
    with pytest.raises(DefinitionError, match=r"cannot import brokenmod_ok:fn"):
        FunctionStep.from_config({"function": "brokenmod_ok:fn"})


def test_a_function_path_that_is_not_text_is_refused() -> None:
    with pytest.raises(DefinitionError, match=r"must be 'module:function', not 5") as err:
        FunctionStep.from_config({"function": 5})
    assert err.value.path == "function"


@pytest.mark.parametrize("role", ["compensate", "fallback"])
@pytest.mark.parametrize("option", ["requires", "fallback", "compensate"])
def test_a_nested_step_cannot_have_its_own_graph_options(role: str, option: str) -> None:
    def fn(msg: object) -> None:
        return None

    other = FunctionStep(fn, id="other")
    value: object = ["other"] if option == "requires" else other
    nested = FunctionStep(fn, id="nested", **{option: value})
    with pytest.raises(DefinitionError, match=f"a {role} step cannot have its own {option}") as err:
        FunctionStep(fn, id="main", **{role: nested})
    assert err.value.path == f"{role}.{option}"


# step functions the engine could not call: refused when the step is made, not when it runs


def no_parameter() -> None: ...


def untyped_three(a, b, c): ...  # type: ignore[no-untyped-def]


def a_required_keyword(msg, *, flag): ...  # type: ignore[no-untyped-def]


class NotAFunction:
    def __init__(self, msg: Message) -> None: ...


async def yields(msg: Message) -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (no_parameter, "no_parameter() cannot be a step"),
        (untyped_three, "untyped_three(a, b, c) cannot be a step"),
        (a_required_keyword, "a_required_keyword(msg, *, flag) cannot be a step"),
        (NotAFunction, "NotAFunction is a class"),
        (yields, "yields yields: a step returns its result"),
    ],
)
def test_a_function_the_engine_cannot_call_is_refused_at_once(fn: Any, words: str) -> None:
    saga = Saga("s")
    for make in (FunctionStep, saga.step):
        with pytest.raises(DefinitionError) as err:
            make(fn)
        assert words in str(err.value)
        assert "takes (msg) or (msg, ctx), or typed parameters" in str(err.value)
    assert saga.steps == []


async def test_every_documented_form_is_still_taken(flow: Flow) -> None:
    async def msg_only(msg: Message) -> Message:
        return msg

    async def msg_and_ctx(msg, ctx):  # type: ignore[no-untyped-def]
        return {"attempt": ctx.attempt}

    def typed(order: dict[str, int], ctx: StepContext) -> int:
        return order["n"] + ctx.attempt

    async def any_args(*args: Any) -> int:
        return len(args)

    wf = await flow.workflow_create(
        "forms",
        FunctionStep(msg_only, id="a"),
        FunctionStep(msg_and_ctx, id="b"),
        FunctionStep(typed, id="c"),
        FunctionStep(any_args, id="d"),
        FunctionStep(lambda m, c=None: 1, id="e"),
    )
    info = await flow.execution(await wf.execute({"n": 1}))
    responses = {sid: r.response.json() for sid, r in info.steps.items() if r.response}
    assert responses == {"a": {"n": 1}, "b": {"attempt": 1}, "c": 2, "d": 2, "e": 1}
