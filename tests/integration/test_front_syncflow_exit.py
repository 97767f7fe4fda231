"""A SyncFlow left open by a script is closed at interpreter exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from microsaga import Status, SyncFlow

ROOT = Path(__file__).resolve().parents[2]


SCRIPT = """
import atexit, sys
from microsaga import SyncFlow
from tests.unit import front_saga as shop

flow = SyncFlow(sys.argv[1])
atexit.register(lambda: print("at exit:", flow))  # runs after the flow's own handler
flow.open()
wf = flow.workflow_add(shop.saga)
print(wf.execute({"order_id": 1, "customer": "ada"}))
# no close: the interpreter's exit closes it
"""


def test_a_flow_left_open_is_closed_at_interpreter_exit(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'exit.db'}"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, store],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"at exit: <SyncFlow closed store={store!r}>"
    with SyncFlow(store) as flow:
        assert flow.execution(lines[0]).status is Status.SUCCESS
