"""The ``microsaga`` script imports a definition's ``function:`` steps as ``python -m``
would: from the definition file's folder and from the current folder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.procs import env

SCRIPT = str(Path(sys.executable).parent / "microsaga")  # the console script, not -m
STEP = """\
from microsaga import Message


def greet(msg: Message) -> dict[str, str]:
    return {"hello": msg.json()["name"]}
"""


def write_definition(path: Path, module: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"id: greet\nsteps:\n  - function: {module}:greet\n", encoding="utf-8")


def microsaga(*args: str, cwd: Path, store: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, "--store", store, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env(),  # no PYTHONPATH to these folders: only what the CLI adds
        timeout=60,
        check=False,
    )


def response(cwd: Path, store: str, eid: str) -> object:
    shown = microsaga("show", eid, "--json", cwd=cwd, store=store)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    return data["status"], data["steps"]["greet"]["response"]


def test_run_imports_from_the_definitions_folder(tmp_path: Path) -> None:
    write_definition(tmp_path / "defs" / "greet.yaml", "greeting_beside")
    (tmp_path / "defs" / "greeting_beside.py").write_text(STEP, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"

    done = microsaga(
        "run", "../defs/greet.yaml", "--input", '{"name": "ada"}', cwd=elsewhere, store=store
    )

    assert done.returncode == 0, done.stderr
    eid = done.stdout.strip().splitlines()[-1]
    assert response(elsewhere, store, eid) == ("SUCCESS", {"hello": "ada"})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_and_worker_import_from_the_current_folder(tmp_path: Path) -> None:
    write_definition(tmp_path / "defs" / "greet.yaml", "greeting_here")
    here = tmp_path / "here"
    here.mkdir()
    (here / "greeting_here.py").write_text(STEP, encoding="utf-8")
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"

    queued = microsaga(
        "run", "../defs/greet.yaml", "--input", '{"name": "bob"}', "--async", cwd=here, store=store
    )
    assert queued.returncode == 0, queued.stderr
    eid = queued.stdout.strip()

    worker = subprocess.Popen(
        [SCRIPT, "--store", store, "worker"],
        cwd=here,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        found = response(here, store, eid)
        while found[0] != "SUCCESS" and time.monotonic() < deadline:
            time.sleep(0.1)
            found = response(here, store, eid)
    finally:
        worker.send_signal(signal.SIGINT)
        assert worker.wait(30) == 0
    assert found == ("SUCCESS", {"hello": "bob"})


def test_the_script_does_not_import_from_elsewhere(tmp_path: Path) -> None:
    """The control: a module in neither folder is an error naming it."""
    write_definition(tmp_path / "defs" / "greet.yaml", "greeting_nowhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "greeting_nowhere.py").write_text(STEP, encoding="utf-8")
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    done = microsaga("run", str(tmp_path / "defs" / "greet.yaml"), cwd=cwd, store=store)

    assert done.returncode == 2
    assert "cannot import greeting_nowhere:greet" in done.stderr
