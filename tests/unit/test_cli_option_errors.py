"""The command line names its own options in the errors of what they gave: an empty
``--input`` is said to be empty (msgspec said "Input data was truncated"), and an error
of the flow's about a redrive's ``input`` names ``--input`` (it said ``input:``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from microsaga import Message, StepError
from microsaga.cli import main


def charge(msg: Message) -> dict[str, str]:
    if msg.json() != "good":
        raise StepError("card declined", retryable=False)
    return {"payment": "P1"}


DEFINITION = """\
id: order
on_failure: suspend
steps:
  - map: {over: request, step: {function: tests.unit.test_cli_option_errors:charge}}
    id: charges
"""


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The exit code of ``microsaga ARGS`` and the last line it wrote to stderr (or,
    when none, to stdout)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    lines = (out.err or out.out).strip().splitlines()
    return int(exited.value.code or 0), lines[-1] if lines else ""


@pytest.mark.parametrize("given", ["", "  \n"])
def test_an_empty_input_is_said_to_be_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    order = tmp_path / "order.yaml"
    order.write_text(DEFINITION)
    assert _cli(capsys, "--store", "memory://", "run", str(order), "--input", given) == (
        2,
        "error[configuration]: --input: empty; it must be JSON, such as '{}'",
    )
    empty = tmp_path / "empty.json"
    empty.write_text(given)
    assert _cli(capsys, "--store", "memory://", "run", str(order), "--input", f"@{empty}") == (
        2,
        f"error[configuration]: --input: the file {empty} is empty; it must hold JSON, "
        "such as '{}'",
    )


def test_a_redrive_input_the_flow_refuses_is_named_as_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    order = tmp_path / "order.yaml"
    order.write_text(DEFINITION)
    code, said = _cli(capsys, "--store", store, "run", str(order), "--input", '["good", "bad"]')
    assert code == 4, said  # suspended: run charges[1] failed
    eid = said.split()[2]  # error[suspended]: execution <id> is suspended: ...
    assert _cli(capsys, "--store", store, "redrive", eid, "--input", '{"card": "good"}') == (
        2,
        "error[configuration]: --input: map step charges runs once per element of its "
        "input: it must be a list of 2 elements, not an object",
    )
