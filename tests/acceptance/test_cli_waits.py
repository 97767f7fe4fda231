"""Waiting executions from the command line, across processes: parked by one worker,
which is then killed with SIGKILL; signalled with ``microsaga signal``; finished by
another worker; and a sub-workflow's child rolled back by ``microsaga run``."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.acceptance.procs import cli, spawn

APPROVAL = """id: approval
steps:
  - function: tests.acceptance.steps:notify
    id: ask
  - wait: approved
    requires: [ask]
    timeout: 3600
  - sleep: 1
    id: cool-off
    requires: [approved]
"""


def shown(eid: str, env: dict[str, str]) -> dict[str, object]:
    found: dict[str, object] = json.loads(cli("show", eid, "--json", extra_env=env).stdout)
    return found


def until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_waiting_executions_survive_a_killed_worker_and_signals_from_the_cli(
    tmp_path: Path,
) -> None:
    env = {
        "MICROSAGA_TEST_LOG": str(tmp_path / "log"),
        "MICROSAGA_STORE": f"sqlite:///{tmp_path / 'cli.db'}",
    }
    definition = tmp_path / "approval.yaml"
    definition.write_text(APPROVAL)
    ids = []
    for n in range(3):
        started = cli("run", str(definition), "--async", "--input", f'{{"n": {n}}}', extra_env=env)
        assert started.returncode == 0, started.stderr
        ids.append(started.stdout.split()[0])
    early = cli("signal", ids[0], "approved", "--payload", '{"by": "early"}', extra_env=env)
    assert early.returncode == 0, early.stderr  # kept before its step starts

    worker = spawn("worker", output=tmp_path / "first.out", extra_env=env)
    try:

        def parked() -> bool:
            steps = [shown(eid, env)["steps"] for eid in ids[1:]]
            return all(s["approved"]["status"] == "WAITING" for s in steps)  # type: ignore[index]

        until(parked, "the executions did not reach their wait")
        assert all(shown(eid, env)["note"] == "waiting for approved" for eid in ids[1:])
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)

    for eid in ids[1:]:
        sent = cli("signal", eid, "approved", "--payload", f'{{"by": "{eid}"}}', extra_env=env)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.split() == [eid, "RUNNING"]
    worker = spawn("worker", output=tmp_path / "second.out", extra_env=env)
    try:
        until(
            lambda: all(shown(eid, env)["status"] == "SUCCESS" for eid in ids),
            (tmp_path / "second.out").read_text(),
        )
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert shown(ids[0], env)["response"] == {"by": "early"}
    for eid in ids[1:]:
        assert shown(eid, env)["response"] == {"by": eid}  # the sleep answers its request

    finished = cli("signal", ids[0], "approved", extra_env=env)
    assert finished.returncode == 2
    assert finished.stderr.startswith("error[invalid_transition]: ")
    unknown = cli("signal", "nope", "approved", extra_env=env)
    assert unknown.stderr.startswith("error[execution_not_found]: ")
    bad = cli("signal", ids[0], "approved", "--payload", "{oops", extra_env=env)
    assert bad.stderr.startswith("error[configuration]: --payload: not valid JSON")


PAYMENT = """id: payment
steps:
  - function: tests.acceptance.steps:reserve
    id: hold
    compensate: {function: tests.acceptance.steps:release, id: unhold}
"""

ORDER = """id: order
steps:
  - workflow: payment
    id: pay
  - function: tests.acceptance.steps:decline
    id: ship
    requires: [pay]
"""


def test_run_rolls_back_the_child_of_a_sub_workflow_step_itself(tmp_path: Path) -> None:
    """``microsaga run`` claims nothing else, yet the rollback of its execution's child
    is its own to run (it waited COMPENSATING for a worker before)."""
    log = tmp_path / "log"
    env = {"MICROSAGA_TEST_LOG": str(log), "MICROSAGA_STORE": f"sqlite:///{tmp_path / 'cli.db'}"}
    for name, text in (("payment", PAYMENT), ("order", ORDER)):
        (tmp_path / f"{name}.yaml").write_text(text)
    saved = cli("run", str(tmp_path / "payment.yaml"), extra_env=env)
    assert saved.returncode == 0, saved.stderr
    done = cli("run", str(tmp_path / "order.yaml"), "--input", '{"n": 1}', extra_env=env)
    assert done.returncode == 1, done.stderr
    assert "error[execution_failed]" in done.stderr
    eid = done.stdout.split()[-1]
    assert shown(eid, env)["status"] == "FAILURE"
    assert shown(f"{eid}:pay", env)["status"] == "ABORTED"
    assert log.read_text().splitlines()[-1] == f"release {eid}:pay:hold:compensate"
