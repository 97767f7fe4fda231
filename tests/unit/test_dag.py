from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microsaga import (
    CycleError,
    DuplicateStepError,
    FunctionStep,
    Step,
    StepNotExistsError,
    Workflow,
)


async def noop(msg):  # type: ignore[no-untyped-def]
    return msg


def step(sid: str, *requires: str) -> Step:
    return FunctionStep(noop, id=sid, requires=list(requires))


def level_ids(wf: Workflow) -> list[list[str]]:
    return [[s.id for s in level] for level in wf.steps()]


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(DuplicateStepError, match="duplicate step id: a"):
        Workflow("w", [step("a"), step("a")])


def test_unknown_requirement_names_the_step() -> None:
    with pytest.raises(StepNotExistsError) as err:
        Workflow("w", [step("a"), step("b", "ghost")])
    assert err.value.step_id == "ghost"
    assert str(err.value) == "step not exists: ghost (required by b)"


def test_cycle_names_the_steps_on_it() -> None:
    with pytest.raises(CycleError) as err:
        Workflow("w", [step("a", "c"), step("b", "a"), step("c", "b"), step("d")])
    assert set(err.value.steps) == {"a", "b", "c"}
    assert err.value.steps[0] == err.value.steps[-1]
    assert "a" in str(err.value)
    assert "->" in str(err.value)


def test_self_loop_is_a_cycle() -> None:
    with pytest.raises(CycleError, match="a -> a"):
        Workflow("w", [step("a", "a")])


def test_levels_by_longest_path_sorted_inside_a_level() -> None:
    # d requires a (depth 1) and c (depth 2): it must come after c, not beside b
    wf = Workflow("w", [step("d", "a", "c"), step("c", "b"), step("b", "a"), step("a"), step("z")])
    assert level_ids(wf) == [["a", "z"], ["b"], ["c"], ["d"]]


def test_several_roots() -> None:
    wf = Workflow("w", [step("x"), step("y"), step("j", "x", "y")])
    assert level_ids(wf) == [["x", "y"], ["j"]]


async def test_append_steps_is_atomic() -> None:
    wf = Workflow("w", [step("a"), step("b", "a")])
    with pytest.raises(StepNotExistsError):
        await wf.append_steps(step("c", "b"), step("d", "nope"))
    assert level_ids(wf) == [["a"], ["b"]]
    with pytest.raises(DuplicateStepError):
        await wf.append_steps(step("c"), step("a"))
    assert level_ids(wf) == [["a"], ["b"]]
    await wf.append_steps(step("c", "b"))
    assert level_ids(wf) == [["a"], ["b"], ["c"]]


async def test_remove_steps_is_atomic_and_refuses_required_steps() -> None:
    wf = Workflow("w", [step("a"), step("b", "a"), step("c")])
    with pytest.raises(StepNotExistsError) as err:
        await wf.remove_steps("c", "a")  # b still requires a
    assert str(err.value) == "step not exists: a (removed, but b requires it)"
    assert err.value.step_id == "a"
    assert level_ids(wf) == [["a", "c"], ["b"]]
    with pytest.raises(StepNotExistsError) as err:
        await wf.remove_steps("ghost")
    assert str(err.value) == "step not exists: ghost"
    await wf.remove_steps("b", wf.step("c"))
    assert level_ids(wf) == [["a"]]


def test_require_adds_and_requires_sets() -> None:
    _a, b, c = step("a"), step("b"), step("c", "a")
    c.require(b, "a")
    assert c.requires == ["a", "b"]


@st.composite
def dags(draw: st.DrawFn) -> list[tuple[str, list[str]]]:
    n = draw(st.integers(min_value=1, max_value=25))
    out = []
    for i in range(n):
        # edges only to earlier steps: always acyclic
        reqs = draw(st.lists(st.integers(min_value=0, max_value=i - 1), max_size=4)) if i else []
        out.append((f"s{i:02d}", [f"s{r:02d}" for r in sorted(set(reqs))]))
    order = draw(st.permutations(out))
    return list(order)


@settings(max_examples=200, deadline=None)
@given(dags())
def test_every_step_is_on_a_later_level_than_its_requirements(
    spec: list[tuple[str, list[str]]],
) -> None:
    wf = Workflow("w", [step(sid, *reqs) for sid, reqs in spec])
    levels = level_ids(wf)
    level_of = {sid: i for i, level in enumerate(levels) for sid in level}
    assert sorted(level_of) == sorted(sid for sid, _ in spec)
    for sid, reqs in spec:
        for req in reqs:
            assert level_of[sid] > level_of[req]
        # longest path: a step on level n > 0 requires a step on level n - 1
        if level_of[sid]:
            assert any(level_of[r] == level_of[sid] - 1 for r in reqs)
    for level in levels:
        assert level == sorted(level)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=2, max_value=12), st.data())
def test_any_cycle_is_found(n: int, data: st.DataObject) -> None:
    ring = [f"s{i}" for i in range(n)]
    members = data.draw(st.integers(min_value=1, max_value=n))
    steps = [
        step(ring[i], ring[(i + 1) % members]) if i < members else step(ring[i]) for i in range(n)
    ]
    with pytest.raises(CycleError) as err:
        Workflow("w", steps)
    assert set(err.value.steps) == set(ring[:members])
