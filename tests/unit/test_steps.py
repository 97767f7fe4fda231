"""The built-in step kinds as a user builds them, and what a broken function path gets."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from microsaga import DefinitionError, FunctionStep, load_definition


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
