"""A misspelt field or step kind, or YAML punctuation forgotten, in a definition is
refused naming what was meant."""

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
        (  # the kind written as a field, as other tools write it
            "id: x\nsteps: [{id: a, kind: wait, event: go}]",
            "steps[0].kind: a step's kind is its key (wait: ...), not a kind field; one of: ",
        ),
        (  # beside a key that is a kind (workflow: the sub-workflow's id)
            "id: x\nsteps: [{id: a, type: subflow, workflow: other}]",
            "steps[0].type: a step's kind is its key (subflow: ...), not a type field; ",
        ),
        (  # the colon after the kind forgotten
            "id: x\nsteps:\n  - call a.B.C\n",
            "steps[0]: must be a mapping, not str (a kind is followed by a colon: call: a.B.C)",
        ),
        (  # the dashes of a YAML list forgotten
            "id: x\nsteps:\n  call: a.B.C\n",
            "steps: must be a non-empty list of steps (in YAML each begins with '- '), not a dict",
        ),
        (  # several requirements written as one text
            "id: x\nsteps:\n  - call: a.B.C\n  - call: a.B.D\n"
            "  - call: a.B.E\n    requires: a.B.C, a.B.D\n",
            "step not exists: a.B.C, a.B.D (required by a.B.E; several are a list: "
            "[a.B.C, a.B.D], at steps[2].requires)",
        ),
    ],
)
def test_a_typo_is_named_with_what_was_meant(text: str, said: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition(text)
    assert str(caught.value).startswith(said)
    assert "\n" not in str(caught.value)
