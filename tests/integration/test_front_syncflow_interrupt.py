"""Ctrl-C in a script blocked in ``SyncWorkflow.execute`` names the execution that
goes on without it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from microsaga import Status, SyncFlow
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import pathlib, sys, time
from microsaga import Saga, SyncFlow

saga = Saga("interrupted")
here = pathlib.Path(sys.argv[2])

@saga.step
def slow(order: dict) -> dict:
    (here / "started").touch()
    while not (here / "release").exists():
        time.sleep(0.01)
    return order

with SyncFlow(sys.argv[1]) as flow:
    flow.workflow_add(saga).execute({"order_id": 1})
"""


async def test_ctrl_c_in_execute_names_the_execution_that_goes_on(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'interrupt.db'}"
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, store, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        await eventually(lambda: (tmp_path / "started").exists() or process.poll() is not None)
        process.send_signal(signal.SIGINT)
        (tmp_path / "release").touch()  # the step finishes while the flow closes
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode != 0
    assert "KeyboardInterrupt" in stderr
    note = re.search(r"execution (\w+) goes on without this call: .*'microsaga abort \1'", stderr)
    assert note is not None, stderr
    with SyncFlow(store, worker=False) as flow:
        info = flow.execution(note.group(1))
        assert info.workflow_id == "interrupted"
        assert info.steps["slow"].status is Status.SUCCESS
