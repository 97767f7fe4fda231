"""How a definition file is read: a time written unquoted in YAML stays the text it
is (``until: 2026-12-24T09:00:00Z``, which PyYAML made a datetime that the sleep step
refused), and a file saved with a UTF-8 BOM loads."""

from __future__ import annotations

from typing import Any

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


@pytest.mark.parametrize("name", ["order.json", "order.yaml"])
def test_a_file_saved_with_a_bom_loads(tmp_path: Any, name: str) -> None:
    """As Windows editors save UTF-8 (``--input @FILE`` takes it too)."""
    source = tmp_path / name
    source.write_bytes(b'\xef\xbb\xbf{"id": "order", "steps": [{"publish": "t"}]}')
    assert load_definition(str(source)).id == "order"
