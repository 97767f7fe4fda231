"""The runner of the docs' shell blocks fails when a command does what the page does not
say (tests/acceptance/docshell.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance import docshell
from tests.docblocks import ROOT, Block
from tests.helpers import free_port

PORTS = {8001: 1, 8002: 2, 8080: 3}  # for the text only: nothing listens on them


def block(text: str) -> Block:
    return Block(ROOT / "README.md", 1, "sh", text, None)


def run(text: str, tmp_path: Path) -> tuple[int, str]:
    ports = {port: free_port() for port in docshell.DOC_PORTS}
    made = block(text)
    plan = docshell.plan(made, ports)
    return docshell.run(made, plan.script, docshell.workspace(tmp_path / "w", ports), timeout=60)


def test_commands_and_comments_are_split_as_the_shell_would() -> None:
    found = docshell.commands(
        block(
            "# above\n"
            "echo '#not a comment' \"# nor this\"   # a comment\n"
            "curl -X PUT x \\\n"
            "     -d '{}'\n"
        )
    )
    assert [(c.text, c.comment) for c in found] == [
        ("echo '#not a comment' \"# nor this\"", "above a comment"),
        ("curl -X PUT x       -d '{}'", ""),  # the line break as a blank
    ]


def test_ports_map_whole_numbers_only() -> None:
    assert docshell.map_ports("localhost:8080 :80801 18001 8002", PORTS) == (
        "localhost:3 :80801 18001 2"
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("true\n", 0),
        ("true\nfalse\ntrue\n", 1),  # a failing command fails the block
        ("X=$(false)\n", 1),
        ("sh -c 'exit 1'   # exit status 1\n", 0),  # as the page says
        ("# fails: exit status 2\nsh -c 'exit 2'\n", 0),
        ("true   # exit status 1\n", 1),  # the page says it fails, it does not
        ("python -m shop &\n", 1),  # not in examples/: it ends before it is ready
    ],
)
def test_the_block_fails_when_a_command_does_not_do_what_the_page_says(
    text: str, status: int, tmp_path: Path
) -> None:
    got, output = run(text, tmp_path)
    assert (got != 0) == bool(status), output


@pytest.mark.timeout(120)
def test_a_long_running_command_is_stopped_as_ctrl_c_stops_it(tmp_path: Path) -> None:
    got, output = run("cd examples\npython -m shop\necho after\n", tmp_path)
    assert got == 0, output
    assert "inventory on http://127.0.0.1:" in output
    assert output.rstrip().endswith("after")
