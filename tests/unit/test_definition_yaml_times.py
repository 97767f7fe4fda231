"""A time written unquoted in YAML stays the text it is: ``until:
2026-12-24T09:00:00Z`` is what a user writes, and PyYAML made it a datetime that the
sleep step refused as "must be an ISO 8601 time, not datetime.datetime(...)"."""

from __future__ import annotations

import pytest
import yaml

from microsaga import DefinitionError, load_definition


@pytest.mark.parametrize("until", ["2026-12-24T09:00:00Z", "2026-12-24T10:00:00+01:00"])
def test_an_unquoted_time_is_a_sleep_s_until(until: str) -> None:
    wf = load_definition(f"id: x\nsteps:\n  - sleep: {{until: {until}}}\n    id: nap\n")
    assert wf.to_dict()["steps"][0]["sleep"] == {"until": "2026-12-24T09:00:00Z"}


def test_an_unquoted_time_without_a_zone_is_named_as_written() -> None:
    text = "id: x\nsteps:\n  - sleep: {until: 2026-12-24 09:00:00}\n    id: nap\n"
    with pytest.raises(DefinitionError) as caught:
        load_definition(text)
    assert str(caught.value) == (
        "steps[0].sleep.until: must say its time zone (Z, +01:00), not '2026-12-24 09:00:00'"
    )


def test_an_unquoted_date_is_a_description() -> None:
    wf = load_definition("id: x\ndescription: 2026-12-24\nsteps: [{publish: t}]\n")
    assert wf.description == "2026-12-24"


def test_pyyaml_s_own_loader_is_left_as_it_is() -> None:
    assert not isinstance(yaml.safe_load("a: 2026-12-24")["a"], str)
