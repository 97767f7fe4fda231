"""A misspelt field or step kind in a definition is refused naming what was meant."""

from __future__ import annotations

import pytest

from microsaga import DefinitionError, load_definition


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "id: x\nsteps: [{call: a.B.C, retyr: {max_attempts: 3}}]",
            "steps[0].retyr: unknown field; did you mean retry?",
        ),
        (
            "id: x\nsteps: [{publish: t, replay: true}]",
            "steps[0].replay: unknown field; did you mean reply?",
        ),
        (
            "id: x\nsteps: [{publish: t}, {call: a.B.C, require: [t]}]",
            "steps[1].require: unknown field; did you mean requires?",
        ),
        (  # SPEC's keyword, written as a definition writes it
            "id: x\nsteps: [{call: a.B.C, compensate_input: response}]",
            "steps[0].compensate_input: unknown field: a definition gives it as "
            "compensate: {..., input: ...}",
        ),
        (
            "id: x\nsteps: [{fucntion: 'm:f'}]",
            "steps[0]: unknown step kind 'fucntion' (did you mean function?); a step needs",
        ),
        ("id: x\nsteps: [{call: a.B.C, colour: red}]", "steps[0].colour: unknown field"),
    ],
)
def test_a_typo_is_named_with_what_was_meant(text: str, said: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition(text)
    assert str(caught.value).startswith(said)
    assert "\n" not in str(caught.value)
