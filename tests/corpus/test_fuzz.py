"""Generated hostile inputs (``strategies.py``): a definition either loads or fails
with a one-line ``DefinitionError``; ``--input`` text either is taken or refused with
one ``error[configuration]`` line; a participant answers every body with a status,
never a crash. Seeds: hypothesis prints the failing example and its seed
(``--hypothesis-seed=N`` replays a run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microsaga import DefinitionError, Message, load_definition
from microsaga.cli import _parse_input
from microsaga.errors import ConfigurationError
from tests.corpus.loader import Case
from tests.corpus.strategies import definitions, huge_string, json_texts, json_values
from tests.corpus.test_corpus import _asgi, _participant

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _definition_outcome(source: Any) -> None:
    try:
        load_definition(source)
    except DefinitionError as exc:
        assert "\n" not in str(exc), str(exc)[:300]
        assert len(str(exc)) < 5000


@pytest.mark.timeout(120)
@FAST
@given(definitions())
def test_generated_definitions_load_or_fail_in_one_line(data: dict[str, Any]) -> None:
    _definition_outcome(data)


@pytest.mark.timeout(120)
@FAST
@given(json_texts())
def test_generated_json_text_as_a_definition(text: str) -> None:
    _definition_outcome(text if text.startswith("{") else "\n" + text)


@pytest.mark.timeout(120)
@FAST
@given(st.one_of(json_texts(), st.builds(json.dumps, json_values())))
def test_generated_input_is_taken_or_refused_in_one_line(text: str) -> None:
    try:
        message = _parse_input(text)
    except ConfigurationError as exc:
        assert exc.code == "configuration"
        assert "\n" not in str(exc)
        return
    assert isinstance(message, Message)
    json.loads(message.body, parse_int=str)  # what was taken is JSON


@pytest.mark.timeout(120)
@settings(max_examples=3, deadline=None)
@given(huge_string())
def test_a_10mb_string_is_taken_as_input(text: str) -> None:
    assert len(_parse_input(text).body) >= 10_000_000


@pytest.mark.timeout(120)
@FAST
@given(json_texts())
async def test_a_participant_answers_any_body(text: str) -> None:
    case = Case("participant", "fuzz", {"method": "POST", "path": "/Inventory/Reserve",
                                       "body": text})  # fmt: skip
    try:
        status, answer = await _asgi(_participant(), case)
    except UnicodeEncodeError:  # a lone surrogate cannot be sent as UTF-8 bytes at all
        return
    assert status in (200, 400), answer[:300]
    if answer:
        json.loads(answer, parse_int=str)


def test_the_strategies_reach_their_edges(tmp_path: Path) -> None:
    """The generators do produce what they promise (a strategy that never yields NaN
    tests nothing about NaN)."""
    found = {"nan": False, "deep": False, "surrogate": False}

    @settings(max_examples=300, deadline=None, database=None)
    @given(json_texts())
    def look(text: str) -> None:
        found["nan"] |= "NaN" in text
        found["surrogate"] |= "\\ud8" in text or "\ud800" in text
        found["deep"] |= text.count("[") > 3

    look()
    assert all(found.values()), found
