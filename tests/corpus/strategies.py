"""Hypothesis strategies for hostile inputs: JSON documents and workflow definitions.

- :func:`json_values`: JSON-like values with what breaks parsers: deep nesting, huge
  and non-finite numbers, lone surrogates, control characters, long strings.
- :func:`json_texts`: JSON text (valid or not quite: NaN, trailing garbage, truncation)
  as ``str``; :func:`deep_json` nesting thousands deep; :func:`huge_string` 10 MB.
- :func:`definitions`: definition mappings built from valid parts, then spoiled one
  field at a time with values from the above.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = ["deep_json", "definitions", "huge_string", "json_texts", "json_values"]

FUNCTION = "tests.corpus.steps:echo"

nasty_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec=None, categories=["Cc", "Cs", "Zs", "So"])),
    st.sampled_from(["", " ", "\n", "\x00", "\ud800", "a\nb", "é", "💥", "null", "NaN", "{"]),
)
nasty_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e308, -1e308, 5e-324, float("nan"), float("inf"), 2**63, 2**64]),
)
scalars = st.one_of(st.none(), st.booleans(), nasty_numbers, nasty_text)


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5), st.dictionaries(nasty_text, children, max_size=5)
        ),
        max_leaves=max_leaves,
    )


@st.composite
def deep_json(draw: st.DrawFn, min_depth: int = 1000, max_depth: int = 60_000) -> str:
    depth = draw(st.integers(min_value=min_depth, max_value=max_depth))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return opener * depth + "1" + closer * depth


def huge_string(size: int = 10_000_000) -> st.SearchStrategy[str]:
    """A JSON string literal of ``size`` characters (one example: hypothesis shrinks
    nothing out of it)."""
    return st.sampled_from(["x", "é", "\\u0000"]).map(lambda c: json.dumps(c * (size // len(c))))


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    value = draw(json_values())
    text = json.dumps(value, allow_nan=True, ensure_ascii=draw(st.booleans()))
    spoil = draw(st.sampled_from(["none", "truncate", "garbage", "nan", "surrogate"]))
    if spoil == "truncate" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif spoil == "garbage":
        text += draw(st.sampled_from([" x", "}", ",", "\x00", " {}"]))
    elif spoil == "nan":
        text = f"[{text}, NaN]"
    elif spoil == "surrogate":
        text = f'["\\ud800", {text}]'
    return text


def _step(i: int) -> st.SearchStrategy[dict[str, Any]]:
    kinds = st.sampled_from(
        [{"function": FUNCTION}, {"call": f"svc{i}.Name.Method"}, {"publish": f"topic.{i}"}]
    )
    return kinds.map(lambda kind: {**kind, "id": f"s{i}"})


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    """A definition of 1-6 steps with random requirements (cycles possible), then
    maybe one field replaced by a hostile value."""
    count = draw(st.integers(1, 6))
    steps = [draw(_step(i)) for i in range(count)]
    for i, step in enumerate(steps):
        requires = draw(st.lists(st.integers(0, count - 1), max_size=3, unique=True))
        if requires:
            step["requires"] = [f"s{j}" for j in requires if draw(st.booleans()) or j < i]
        if draw(st.booleans()):
            step["retry"] = {"max_attempts": draw(st.integers(1, 5))}
        if draw(st.booleans()):
            step["compensate"] = {"function": FUNCTION}
    out: dict[str, Any] = {"id": "fuzz", "steps": steps}
    hostile = draw(json_values(max_leaves=5))
    where = draw(
        st.sampled_from(
            ["none", "id", "steps", "step", "step.id", "requires", "retry", "timeout",
             "compensate", "services", "extra"]
        )
    )  # fmt: skip
    step = steps[draw(st.integers(0, count - 1))]
    if where == "id":
        out["id"] = hostile
    elif where == "steps":
        out["steps"] = hostile
    elif where == "step":
        steps[0] = hostile
    elif where == "step.id":
        step["id"] = hostile
    elif where == "requires":
        step["requires"] = hostile
    elif where == "retry":
        step["retry"] = {"max_attempts": hostile}
    elif where == "timeout":
        step["timeout"] = hostile
    elif where == "compensate":
        step["compensate"] = hostile
    elif where == "services":
        out["services"] = hostile
    elif where == "extra":
        step[draw(nasty_text)] = hostile
    return out
