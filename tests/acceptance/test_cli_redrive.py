"""redrive, prune and list --json from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.acceptance.procs import cli, spawn

PICKY = """id: picky
on_failure: suspend
steps:
  - function: tests.acceptance.steps:notify
    id: first
  - function: tests.acceptance.steps:picky
    requires: [first]
    input: request
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "MICROSAGA_TEST_LOG": str(tmp_path / "log"),
        "MICROSAGA_STORE": f"sqlite:///{tmp_path / 'cli.db'}",
    }


def test_redrive_a_suspended_failure_with_an_edited_input(
    tmp_path: Path, env: dict[str, str]
) -> None:
    definition = tmp_path / "picky.yaml"
    definition.write_text(PICKY)
    run = cli("run", str(definition), "--input", '{"ok": false}', extra_env=env)
    assert run.returncode == 4, run.stderr  # suspended by the failure policy
    eid = run.stdout.strip().splitlines()[-1]
    (tmp_path / "fix.json").write_text('{"ok": true}')
    redriven = cli(
        "redrive", eid, "--step", "picky", "--input", f"@{tmp_path / 'fix.json'}", extra_env=env
    )
    assert redriven.returncode == 0, redriven.stderr
    assert redriven.stdout.split() == [eid, "RUNNING"]
    worker = spawn("worker", output=tmp_path / "worker.out", extra_env=env)
    try:
        deadline = time.monotonic() + 30
        while json.loads(cli("show", eid, "--json", extra_env=env).stdout)["status"] != "SUCCESS":
            assert time.monotonic() < deadline, (tmp_path / "worker.out").read_text()
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    shown = json.loads(cli("show", eid, "--json", extra_env=env).stdout)
    assert shown["steps"]["picky"]["request"] == {"ok": True}
    assert shown["steps"]["first"]["attempts"] == 1  # not run again


def test_redrive_of_a_finished_execution_and_list_json(tmp_path: Path, env: dict[str, str]) -> None:
    definition = tmp_path / "plain.yaml"
    definition.write_text(PICKY.replace("on_failure: suspend\n", ""))
    failed = cli("run", str(definition), "--input", '{"ok": false}', extra_env=env)
    assert failed.returncode == 1
    old = failed.stdout.strip().splitlines()[-1]
    again = cli("redrive", old, "--input", '{"ok": true}', extra_env=env)
    assert again.returncode == 0, again.stderr
    new, status = again.stdout.split()
    assert (new != old, status) == (True, "PENDING")  # queued for a worker
    listed = json.loads(cli("list", "--json", extra_env=env).stdout)
    assert [item["id"] for item in listed] == [new, old]
    assert set(listed[0]) == {
        "id", "workflow_id", "version", "status", "error", "note", "created_at", "updated_at",
        "parent_id", "redrive_of",
    }  # fmt: skip
    assert (listed[0]["redrive_of"], listed[1]["redrive_of"]) == (old, None)
    refused = cli("redrive", old, "--step", "picky", extra_env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error[invalid_transition]: ")


def test_prune_from_the_command_line(tmp_path: Path, env: dict[str, str]) -> None:
    definition = tmp_path / "plain.yaml"
    definition.write_text(PICKY.replace("on_failure: suspend\n", ""))
    assert cli("run", str(definition), "--input", '{"ok": true}', extra_env=env).returncode == 0
    kept = cli("prune", "--older-than", "1d", extra_env=env)
    assert kept.stdout.strip() == "pruned 0 executions"
    done = cli("prune", "--older-than", "0s", "--status", "SUCCESS", extra_env=env)
    assert done.stdout.strip() == "pruned 1 executions"
    bad = cli("prune", "--older-than", "soon", extra_env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error[configuration]: --older-than: must be a duration such as 30d, 12h, 15m or 90s, "
        "not 'soon'"
    )
