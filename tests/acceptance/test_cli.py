"""The CLI as a user runs it: exit codes, one-line errors, live runs, inspection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.acceptance.procs import ROOT, cli
from tests.acceptance.steps import DECLINED
from tests.helpers import free_port

ORDER = str(ROOT / "tests" / "acceptance" / "order.yaml")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, dict[str, str]]:
    (tmp_path / "log.charge.open").touch()  # the charge gate is open
    store = f"sqlite:///{tmp_path / 'cli.db'}"
    return store, {"MICROSAGA_TEST_LOG": str(tmp_path / "log"), "MICROSAGA_STORE": store}


def assert_one_line_error(result: object, code: str, exit_status: int) -> str:
    assert result.returncode == exit_status, result.stderr  # type: ignore[attr-defined]
    err = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"error[{code}]: "), err
    return last


def test_run_show_list(setup: tuple[str, dict[str, str]]) -> None:
    store, env = setup
    ok = cli("run", ORDER, "--input", '{"id": 1}', extra_env=env)
    assert ok.returncode == 0, ok.stderr
    eid = ok.stdout.strip().splitlines()[-1]
    assert len(eid) == 32
    assert "SUCCESS" in ok.stderr  # live progress goes to stderr
    shown = cli("show", eid, extra_env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "status     SUCCESS" in lines
    for step in ("reserve", "charge", "ship", "notify"):
        assert any(line.split()[:2] == [step, "SUCCESS"] for line in lines), shown.stdout

    failed = cli("run", ORDER, "--input", '{"id": 2, "fail": true}', extra_env=env)
    assert failed.returncode == 1
    failed_id = failed.stdout.strip().splitlines()[-1]
    shown = cli("--store", store, "show", failed_id, "--json")
    data = json.loads(shown.stdout)
    assert data["status"] == "FAILURE"
    assert data["steps"]["charge"]["status"] == "COMPENSATED"
    assert data["steps"]["reserve"]["compensation"]["status"] == "SUCCESS"
    assert "no courier" in data["error"]

    listed = cli("list", extra_env=env)
    assert listed.returncode == 0
    rows = listed.stdout.splitlines()
    assert rows[0].startswith(failed_id)
    assert "FAILURE" in rows[0]
    assert rows[1].startswith(eid)
    assert "SUCCESS" in rows[1]
    only_ok = cli("list", "--status", "SUCCESS", extra_env=env)
    assert [r.split()[0] for r in only_ok.stdout.splitlines()] == [eid]


def test_resume_of_a_finished_execution_is_refused(setup: tuple[str, dict[str, str]]) -> None:
    _, env = setup
    eid = cli("run", ORDER, "--input", "{}", extra_env=env).stdout.strip().splitlines()[-1]
    result = cli("resume", eid, extra_env=env)
    assert "cannot resume an execution that is SUCCESS" in assert_one_line_error(
        result, "invalid_transition", 2
    )


@pytest.mark.parametrize(
    ("definition", "code", "words"),
    [
        ("id: x\nsteps:\n  - call: a.B.C\n   oops: 1\n", "definition", "invalid YAML"),
        ('{"id": "x", "steps": [', "definition", "bad.json: invalid JSON at line 1"),
        ('{"id": "x", "steps": [', "definition", "bad.yaml: invalid YAML at line 1"),
        ('{"id": "x", "steps": [{"publish": 5}]}', "definition", "steps[0].publish: must be"),
        ("id: x\nsteps:\n  - teleport: somewhere\n", "definition", "unknown step kind"),
        (
            "id: x\nsteps:\n  - {publish: a, requires: [b]}\n  - {publish: b, requires: [a]}\n",
            "cycle",
            "a",
        ),
        (
            "id: x\nsteps:\n  - {publish: a, requires: [zzz]}\n",
            "step_not_exists",
            "step not exists: zzz (required by a, at steps[0].requires)",
        ),
        (
            "id: x\nsteps:\n  - {call: a.B.C, retry: {max_attempts: 0}}\n",
            "definition",
            "steps[0].retry.max_attempts",
        ),
    ],
)
def test_bad_definitions(
    tmp_path: Path, setup: tuple[str, dict[str, str]], definition: str, code: str, words: str
) -> None:
    _, env = setup
    path = tmp_path / ("bad.json" if "bad.json" in words else "bad.yaml")
    path.write_text(definition)
    result = cli("run", str(path), extra_env=env)
    assert words in assert_one_line_error(result, code, 2)


def test_flow_style_yaml_runs(tmp_path: Path, setup: tuple[str, dict[str, str]]) -> None:
    _, env = setup
    path = tmp_path / "flow.yaml"
    path.write_text("{id: flowstyle, steps: [{function: 'tests.acceptance.steps:reserve'}]}\n")
    result = cli("run", str(path), "--input", "{}", extra_env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()[-1]) == 32


def test_a_step_module_that_fails_on_import(
    tmp_path: Path, setup: tuple[str, dict[str, str]]
) -> None:
    _, env = setup
    (tmp_path / "core_broken_steps.py").write_text("raise RuntimeError('no config')\n")
    path = tmp_path / "broken.yaml"
    path.write_text("id: x\nsteps:\n  - function: core_broken_steps:send\n")
    pythonpath = os.pathsep.join([str(ROOT), str(tmp_path)])
    result = cli("run", str(path), extra_env={**env, "PYTHONPATH": pythonpath})
    line = assert_one_line_error(result, "definition", 2)
    assert "core_broken_steps:send" in line
    assert "RuntimeError: no config" in line


def test_errors_and_ids_are_shown_verbatim(
    tmp_path: Path, setup: tuple[str, dict[str, str]]
) -> None:
    _, env = setup
    path = tmp_path / "declined.yaml"
    path.write_text(
        "id: pay\nsteps:\n  - function: tests.acceptance.steps:decline\n    id: '[card] check'\n"
    )
    result = cli("run", str(path), "--input", "{}", extra_env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    eid = result.stdout.strip().splitlines()[-1]
    assert len(eid) == 32, result.stdout
    assert DECLINED in result.stderr  # the final error line
    assert "[card] check" in result.stderr  # the step's row in the progress table
    shown = cli("show", eid, extra_env=env)
    assert shown.returncode == 0, shown.stderr
    assert DECLINED in shown.stdout
    assert any(line.startswith("[card] check  FAILURE") for line in shown.stdout.splitlines())


def test_bad_input_and_unknown_ids(setup: tuple[str, dict[str, str]]) -> None:
    _, env = setup
    bad_json = cli("run", ORDER, "--input", "{not json", extra_env=env)
    assert "--input: not valid JSON" in assert_one_line_error(bad_json, "configuration", 2)
    huge = cli("run", ORDER, "--input", '{"x": 1e999}', extra_env=env)
    error = assert_one_line_error(huge, "configuration", 2)
    assert "--input: the number 1e999 is out of range" in error
    for command in ("show", "suspend", "resume", "abort"):
        result = cli(command, "no-such-execution", extra_env=env)
        assert "no-such-execution" in assert_one_line_error(result, "execution_not_found", 2)
    missing = cli("run", "does-not-exist.yaml", extra_env=env)
    assert "does-not-exist.yaml" in assert_one_line_error(missing, "definition", 2)
    usage = cli("frobnicate", extra_env=env)
    assert_one_line_error(usage, "usage", 2)
    bare = cli(extra_env=env)
    assert "missing command" in assert_one_line_error(bare, "usage", 2)
    assert len(bare.stderr.strip().splitlines()) == 1  # not the whole help as an error


@pytest.mark.parametrize(
    ("args", "environment", "start"),
    [
        ((), {"MICROSAGA_STORE": "mysql://nope"}, "MICROSAGA_STORE: unknown scheme"),
        (("--store", "bogus://x"), {}, "--store: unknown scheme"),
        ((), {"MICROSAGA_STORE": "sqlite://"}, "MICROSAGA_STORE: "),  # found opening it
        (("--store", "sqlite://"), {}, "--store: "),
        ((), {"MICROSAGA_BROKER": "kafka://x"}, "MICROSAGA_BROKER: unknown scheme"),
        (("--broker", "kafka://x"), {}, "--broker: unknown scheme"),
        ((), {"MICROSAGA_SERVICES": "inventory"}, "MICROSAGA_SERVICES: expected name=url"),
        ((), {"MICROSAGA_SERVICES": "a=ftp://x"}, "MICROSAGA_SERVICES: service 'a' must be"),
        (
            (),
            {"MICROSAGA_SERVICES": "inventory=127.0.0.1:8001"},
            "MICROSAGA_SERVICES: service 'inventory' must be an http:// or https:// URL",
        ),
        (("--services", "a=ftp://x"), {}, "--services: service 'a' must be"),
        ((), {"MICROSAGA_LEASE_TTL": "soon"}, "MICROSAGA_LEASE_TTL: must be a number"),
        ((), {"MICROSAGA_HEARTBEAT": "20"}, "MICROSAGA_HEARTBEAT: must be shorter"),
        ((), {"MICROSAGA_MAX_PAYLOAD": "64MB"}, "MICROSAGA_MAX_PAYLOAD: must be a whole"),
        # bytes that are not UTF-8 (\xff): Python sees them as a lone surrogate
        ((), {"MICROSAGA_WORKER_ID": "w\udcff"}, "MICROSAGA_WORKER_ID: not valid UTF-8"),
    ],
)
def test_bad_settings_name_the_setting(
    tmp_path: Path, args: tuple[str, ...], environment: dict[str, str], start: str
) -> None:
    if not any(a == "--store" for a in args) and "MICROSAGA_STORE" not in environment:
        args = ("--store", f"sqlite:///{tmp_path / 'x.db'}", *args)
    result = cli(*args, "list", extra_env=environment)
    line = assert_one_line_error(result, "configuration", 2)
    assert line.removeprefix("error[configuration]: ").startswith(start), line


def test_bad_options_name_the_option(setup: tuple[str, dict[str, str]]) -> None:
    _, env = setup
    for args, start in (
        (("list", "--status", "BOGUS"), "--status: unknown status 'BOGUS'"),
        (("run", ORDER, "--timeout", "-1"), "--timeout: must be a positive number"),
        (("run", ORDER, "--deadline", "0"), "--deadline: must be a positive number"),
        (("run", ORDER, "--execution-id", ""), "--execution-id: must be a non-empty string"),
    ):
        line = assert_one_line_error(cli(*args, extra_env=env), "configuration", 2)
        assert line.removeprefix("error[configuration]: ").startswith(start), line


def test_run_with_an_existing_execution_id_follows_that_execution(
    tmp_path: Path, setup: tuple[str, dict[str, str]]
) -> None:
    _, env = setup
    first = cli("run", ORDER, "--input", "{}", "--execution-id", "order-7", extra_env=env)
    assert first.returncode == 0, first.stderr
    again = cli("run", ORDER, "--execution-id", "order-7", extra_env=env)
    assert again.returncode == 0, again.stderr  # nothing new started: order-7 succeeded
    assert again.stdout.strip().splitlines()[-1] == "order-7"
    assert "reserve" in again.stderr  # the progress of order-7's own steps


def test_a_store_path_no_retry_can_open_is_a_setting_error(tmp_path: Path) -> None:
    # exit 2 (fix the setting), not 3 (try again later): waiting mends neither
    store = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    result = cli("--store", store, "list")
    line = assert_one_line_error(result, "configuration", 2)
    assert line.endswith(
        f"--store: {store}: folder {tmp_path / 'no' / 'such' / 'dir'} does not exist"
    )
    locked = tmp_path / "ro"
    locked.mkdir()
    (locked / "x.db").write_bytes(b"this is not a database, it is text" * 100)
    result = cli("--store", f"sqlite:///{locked / 'x.db'}", "list")
    assert "x.db is not a SQLite database" in assert_one_line_error(result, "configuration", 2)


def test_an_unreachable_service_fails_the_execution(tmp_path: Path) -> None:
    port = free_port()  # nobody listens on it
    path = tmp_path / "rpc.yaml"
    path.write_text(
        f"id: rpc\nservices: {{inventory: 'http://127.0.0.1:{port}'}}\n"
        "steps:\n  - call: inventory.Inventory.Reserve\n"
    )
    result = cli("--store", f"sqlite:///{tmp_path / 'rpc.db'}", "run", str(path), "--input", "{}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "ConnectError" in result.stderr or "connect" in result.stderr.lower()


@pytest.mark.parametrize(
    ("scheme", "url", "named"),
    [
        ("nats", "nats://127.0.0.1:{port}", "nats://127.0.0.1:{port}"),
        ("amqp", "amqp://guest:guest@127.0.0.1:{port}/", "amqp://guest:***@127.0.0.1:{port}/"),
        ("redis", "redis://127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0"),
    ],
)
def test_a_broker_down_at_start_is_unavailable(
    tmp_path: Path, scheme: str, url: str, named: str
) -> None:
    port = free_port()  # nobody listens on it
    path = tmp_path / "pub.yaml"
    path.write_text("id: pub\nsteps:\n  - publish: orders.created\n")
    store = f"sqlite:///{tmp_path / 'pub.db'}"
    broker = url.format(port=port)
    result = cli("--store", store, "--broker", broker, "run", str(path), "--input", "{}")
    line = assert_one_line_error(result, "transport_unavailable", 3)
    assert named.format(port=port) in line
    assert "guest:guest" not in line
    assert result.stdout.strip() == ""  # nothing was started


def test_demo_runs_on_its_own(tmp_path: Path) -> None:
    result = cli("demo", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "COMPENSATED" in result.stderr
    assert "SUCCESS" in result.stderr
    # the two services were called over HTTP and undone in reverse order
    assert "http://127.0.0.1:" in result.stderr
    refund = result.stderr.index("payments   Refund   P-2")
    assert refund < result.stderr.index("inventory  Release  R-2")
    assert (tmp_path / "microsaga-demo.db").exists()


@pytest.mark.parametrize("where", ["option", "environment"])
def test_demo_uses_the_store_setting(tmp_path: Path, where: str) -> None:
    store = f"sqlite:///{tmp_path / 'chosen.db'}"
    if where == "option":
        result = cli("--store", store, "demo", cwd=tmp_path, timeout=60)
    else:
        result = cli("demo", cwd=tmp_path, extra_env={"MICROSAGA_STORE": store}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "chosen.db").exists()
    assert not (tmp_path / "microsaga-demo.db").exists()
    inspect = next(line for line in result.stderr.splitlines() if line.startswith("inspect:"))
    failed_id = inspect.split()[-1]
    shown = cli("--store", store, "show", failed_id)
    assert shown.returncode == 0, shown.stderr
    assert "status     FAILURE" in shown.stdout.splitlines()


def test_demo_with_a_bad_store_setting_names_it(tmp_path: Path) -> None:
    result = cli("demo", cwd=tmp_path, extra_env={"MICROSAGA_STORE": "mysql://x"})
    assert "MICROSAGA_STORE: unknown scheme" in assert_one_line_error(result, "configuration", 2)
