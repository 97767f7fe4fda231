"""What a new user met (issue: `run` took others' work, a reused id said nothing,
suspend left `run` confused): the CLI as processes, on one SQLite file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance import procs
from tests.acceptance.procs import ROOT, cli, spawn
from tests.helpers import eventually
from tests.integration import pg

ORDER = str(ROOT / "tests" / "acceptance" / "order.yaml")
OTHER = """id: other
steps:
  - function: tests.acceptance.steps:notify
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "MICROSAGA_TEST_LOG": str(tmp_path / "log"),
        "MICROSAGA_STORE": f"sqlite:///{tmp_path / 'cli.db'}",
    }


def invocations(env: dict[str, str]) -> list[str]:
    path = Path(env["MICROSAGA_TEST_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def run_until_charge(eid: str, env: dict[str, str], output: Path) -> subprocess.Popen[bytes]:
    """`microsaga run` of the order as ``eid``, once its charge step was invoked (it
    then waits for its gate file, ``MICROSAGA_TEST_LOG.charge.open``)."""
    running = spawn(
        "run", ORDER, "--execution-id", eid, "--input", "{}", output=output, extra_env=env
    )
    deadline = time.monotonic() + 30
    while not any(line.startswith("charge") for line in invocations(env)):
        if time.monotonic() > deadline:
            running.kill()
            raise AssertionError(output.read_text())
        time.sleep(0.05)
    return running


def finish_with_a_worker(eid: str, env: dict[str, str], output: Path) -> None:
    """Run `microsaga worker` until the execution shows SUCCESS (30 s at most)."""
    worker = spawn("worker", output=output, extra_env=env)
    try:
        deadline = time.monotonic() + 30
        while "status     SUCCESS" not in cli("show", eid, extra_env=env).stdout:
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_run_runs_only_its_own_execution(tmp_path: Path, env: dict[str, str]) -> None:
    queued = [
        cli("run", ORDER, "--async", "--input", f'{{"n": {i}}}', extra_env=env) for i in range(5)
    ]
    assert all(q.returncode == 0 for q in queued)
    other = tmp_path / "other.yaml"
    other.write_text(OTHER)
    done = cli("run", str(other), "--input", "{}", extra_env=env)
    assert done.returncode == 0, done.stderr
    # the queued order sagas were not touched: only `other`'s step ran
    assert [line.split()[0] for line in invocations(env)] == ["notify"]
    listed = cli("list", "--workflow", "order", "--status", "PENDING", extra_env=env)
    assert len(listed.stdout.splitlines()) == 5


def test_an_execution_id_of_another_workflow_is_a_conflict(
    tmp_path: Path, env: dict[str, str]
) -> None:
    first = cli("run", ORDER, "--async", "--execution-id", "order-1", extra_env=env)
    assert first.returncode == 0, first.stderr
    other = tmp_path / "other.yaml"
    other.write_text(OTHER)
    again = cli("run", str(other), "--execution-id", "order-1", extra_env=env)
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip().splitlines()[-1] == (
        "error[execution_conflict]: execution order-1 exists, of workflow order, not other"
    )
    # the same id with the same workflow is that execution: nothing new starts
    same = cli("run", ORDER, "--async", "--execution-id", "order-1", extra_env=env)
    assert (same.returncode, same.stdout.strip()) == (0, "order-1")


def test_run_of_a_suspended_execution_exits_4_saying_how_to_continue(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # the charge step waits for its gate file: suspend meanwhile
    running = run_until_charge("pausing", env, tmp_path / "run.out")
    try:
        assert cli("suspend", "pausing", extra_env=env).returncode == 0
        Path(env["MICROSAGA_TEST_LOG"] + ".charge.open").touch()  # charge finishes
        assert running.wait(timeout=30) == 4
    finally:
        if running.poll() is None:
            running.kill()
    out = (tmp_path / "run.out").read_text()
    assert (
        "error[suspended]: execution pausing is suspended: `microsaga resume pausing`, "
        "and a worker (`microsaga worker`) continues it"
    ) in out
    shown = cli("show", "pausing", extra_env=env).stdout
    assert "status     SUSPEND" in shown
    assert any(line.split()[:2] == ["charge", "SUCCESS"] for line in shown.splitlines())
    # resumed, a worker continues it to its end, charge not invoked twice
    assert cli("resume", "pausing", extra_env=env).returncode == 0
    finish_with_a_worker("pausing", env, tmp_path / "worker.out")
    charges = [line for line in invocations(env) if line.startswith("charge")]
    assert charges == ["charge pausing:charge"]


def test_a_failed_run_ends_with_an_error_line(env: dict[str, str]) -> None:
    Path(env["MICROSAGA_TEST_LOG"] + ".charge.open").touch()
    failed = cli("run", ORDER, "--input", '{"fail": true}', extra_env=env)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error[execution_failed]: execution ")
    assert "no courier" in last


def test_a_worker_without_a_service_address_leaves_the_execution_waiting(
    tmp_path: Path, env: dict[str, str]
) -> None:
    definition = tmp_path / "svc.yaml"
    definition.write_text("id: svc\nsteps:\n  - call: a.Things.Do\n")
    queued = cli(
        "run", str(definition), "--async", "--execution-id", "needs-a",
        extra_env={**env, "MICROSAGA_SERVICES": "a=http://127.0.0.1:9"},
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    worker = spawn("-v", "worker", output=tmp_path / "worker.out", extra_env=env)
    try:
        deadline = time.monotonic() + 30
        while "note" not in cli("show", "needs-a", extra_env=env).stdout:
            assert time.monotonic() < deadline, (tmp_path / "worker.out").read_text()
            time.sleep(0.2)
        time.sleep(1.0)  # several polls: the worker says it once
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    shown = cli("show", "needs-a", extra_env=env).stdout
    assert "status     RUNNING" in shown
    assert "note       waits for a worker that can run it: client not set" in shown
    assert "service 'a'" in shown
    listed = cli("list", extra_env=env).stdout
    assert "waits for a worker that can run it" in listed
    said = (tmp_path / "worker.out").read_text()
    assert said.count("cannot run in this worker") == 1, said
    # an operator may end it
    assert cli("abort", "needs-a", extra_env=env).returncode == 0


def test_a_stopped_worker_hands_back_what_it_runs(tmp_path: Path, env: dict[str, str]) -> None:
    queued = cli(
        "run", ORDER, "--async", "--execution-id", "handed", "--input", "{}", extra_env=env
    )
    assert queued.returncode == 0
    first = spawn("worker", output=tmp_path / "first.out", extra_env=env)
    try:
        deadline = time.monotonic() + 30
        while not any(line.startswith("charge") for line in invocations(env)):
            assert time.monotonic() < deadline, (tmp_path / "first.out").read_text()
            time.sleep(0.05)
        first.terminate()  # SIGTERM while charge waits: charge finishes, is recorded
        time.sleep(0.3)
        Path(env["MICROSAGA_TEST_LOG"] + ".charge.open").touch()
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    shown = cli("show", "handed", extra_env=env).stdout
    assert any(line.split()[:2] == ["charge", "SUCCESS"] for line in shown.splitlines())
    second = spawn("worker", output=tmp_path / "second.out", extra_env=env)
    try:
        deadline = time.monotonic() + 30
        while "status     SUCCESS" not in cli("show", "handed", extra_env=env).stdout:
            assert time.monotonic() < deadline, (tmp_path / "second.out").read_text()
            time.sleep(0.2)
    finally:
        second.terminate()
        second.wait(timeout=30)
    steps = [line.split()[0] for line in invocations(env)]
    assert steps == ["reserve", "charge", "ship", "notify"]  # nothing invoked twice


def test_a_request_that_is_not_json_is_refused_before_anything_is_stored(
    env: dict[str, str],
) -> None:
    bad = cli("run", ORDER, "--input", "[" * 50_000, extra_env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error[configuration]: --input: ")
    assert cli("list", extra_env=env).stdout == ""


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_an_interrupted_run_says_which_execution_goes_on_and_how(
    tmp_path: Path, env: dict[str, str], signum: int, status: int
) -> None:
    output = tmp_path / "run.out"
    running = run_until_charge("cut", env, output)
    try:
        running.send_signal(signum)  # Ctrl-C (or a container's stop) while charge runs
        time.sleep(0.3)
        Path(env["MICROSAGA_TEST_LOG"] + ".charge.open").touch()
        assert running.wait(timeout=30) == status
    finally:
        if running.poll() is None:
            running.kill()
    lines = output.read_text().strip().splitlines()
    assert "cut" in lines  # the id, on stdout
    assert lines[-1] == (
        "error[interrupted]: execution cut goes on without this process: a worker "
        "(`microsaga worker`) continues it, or rolls it back after `microsaga abort cut`"
    )
    shown = cli("show", "cut", extra_env=env).stdout
    assert any(line.split()[:2] == ["charge", "SUCCESS"] for line in shown.splitlines())


def test_a_second_ctrl_c_stops_run_at_once_and_a_worker_finishes_the_execution(
    tmp_path: Path, env: dict[str, str]
) -> None:
    output = tmp_path / "run.out"
    running = run_until_charge("cut", env, output)
    try:
        running.send_signal(signal.SIGINT)  # run waits for charge, which waits for its gate
        time.sleep(0.5)
        running.send_signal(signal.SIGINT)  # the impatient second one
        assert running.wait(timeout=30) == 130
    finally:
        if running.poll() is None:
            running.kill()
    said = output.read_text()
    assert "Traceback" not in said
    assert said.strip().splitlines()[-1].startswith("error[interrupted]: execution cut goes on")
    Path(env["MICROSAGA_TEST_LOG"] + ".charge.open").touch()
    finish_with_a_worker("cut", env, tmp_path / "worker.out")


def test_an_input_naming_a_file_without_its_at_says_how_to_read_it(
    tmp_path: Path, env: dict[str, str]
) -> None:
    (tmp_path / "order.json").write_text('{"order_id": 42}')
    bad = cli("run", ORDER, "--input", "order.json", cwd=tmp_path, extra_env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("; to read the file order.json, write --input @order.json")
    assert cli("list", extra_env=env).stdout == ""  # nothing was started


@pytest.mark.parametrize(
    ("step", "advice"),
    [
        (
            "call: payments.Payments.Charge",
            "no client and no address for service 'payments'; give its address in the "
            "definition's services:, --services or MICROSAGA_SERVICES",
        ),
        (
            "publish: shipping.requested",
            "no broker configured for publish steps; set one with --broker or "
            "MICROSAGA_BROKER (memory:// inside this process)",
        ),
    ],
    ids=["service", "broker"],
)
def test_a_workflow_missing_a_service_or_broker_says_how_to_give_it(
    tmp_path: Path, env: dict[str, str], step: str, advice: str
) -> None:
    definition = tmp_path / "pay.yaml"
    definition.write_text(f"id: pay\nsteps:\n  - {step}\n")
    refused = cli("run", str(definition), "--input", "{}", extra_env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(advice)
    assert cli("list", extra_env=env).stdout == ""  # nothing was started


@pytest.mark.parametrize("command", ["resume", "abort", "redrive"])
def test_the_help_of_a_control_command_says_a_worker_does_the_work(command: str) -> None:
    # without a worker (or the `run` that started it) a resumed execution sits still
    helped = cli(command, "--help")
    assert helped.returncode == 0
    assert "(microsaga worker or serve)" in " ".join(helped.stdout.split())


def test_an_input_file_saved_with_a_byte_order_mark_is_read(
    tmp_path: Path, env: dict[str, str]
) -> None:
    (tmp_path / "order.json").write_bytes(b'\xef\xbb\xbf{"n": 7}')  # as Notepad saves it
    other = tmp_path / "other.yaml"
    other.write_text(OTHER)
    done = cli("run", str(other), "--input", "@order.json", cwd=tmp_path, extra_env=env)
    assert done.returncode == 0, done.stderr
    shown = cli("show", "--json", done.stdout.strip(), extra_env=env)
    assert json.loads(shown.stdout)["request"] == {"n": 7}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["show", "\udcff"], "EXECUTION_ID"),
        (["signal", "some-id", "\udcff"], "EVENT"),
        (["list", "--workflow", "\udcff"], "--workflow"),
        (["worker", "--id", "\udcff"], "--id"),
    ],
    ids=["show", "signal", "list", "worker"],
)
def test_an_argument_that_is_not_utf8_is_named_not_an_internal_error(
    env: dict[str, str], args: list[str], named: str
) -> None:
    # \udcff is how Python passes on the byte 0xff of a command line in another encoding
    refused = cli(*args, extra_env=env)
    assert refused.returncode == 2
    assert refused.stderr == f"error[usage]: Invalid value for '{named}': not valid UTF-8 text\n"


@pytest.mark.timeout(120)
async def test_a_worker_and_the_cli_share_a_postgresql_schema_of_their_own(
    tmp_path: Path,
) -> None:
    # docs/stores.md: `?search_path=NAME`; here a worker runs what `run --async` queues
    srv = await pg.server()
    async with pg.fresh_schema(srv.url("test")) as url:
        env = {"MICROSAGA_TEST_LOG": str(tmp_path / "log"), "MICROSAGA_STORE": url}
        Path(env["MICROSAGA_TEST_LOG"] + ".charge.open").touch()
        worker = spawn("worker", output=tmp_path / "worker.out", extra_env=env)
        try:
            queued = cli(
                "run", ORDER, "--async", "--execution-id", "pg-1", "--input", "{}",
                extra_env=env,
            )  # fmt: skip
            assert queued.returncode == 0, queued.stderr

            def succeeded() -> bool:
                return "status     SUCCESS" in cli("show", "pg-1", extra_env=env).stdout

            await eventually(succeeded, timeout=60, interval=0.2)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        assert [line.split()[0] for line in invocations(env)] == [
            "reserve", "charge", "ship", "notify",
        ]  # fmt: skip
        schema = url.rpartition("search_path=")[2]
        conn = await pg.connect(srv.url("test"))
        try:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                schema,
            )
        finally:
            await conn.close()
        assert "microsaga_executions" in {row["table_name"] for row in tables}


def test_the_store_option_goes_after_the_command_too(tmp_path: Path, env: dict[str, str]) -> None:
    # SPEC section 7: microsaga's own options (--store, -v...), before or after the command
    store = f"sqlite:///{tmp_path / 'mine.db'}"
    other = tmp_path / "other.yaml"
    other.write_text(OTHER)
    done = cli("run", str(other), "--store", store, "--input", "{}", extra_env=env)
    assert done.returncode == 0, done.stderr
    eid = done.stdout.strip().splitlines()[-1]
    listed = cli("list", "--store", store, extra_env=env)
    assert listed.stdout.split()[:3] == [eid, "other", "SUCCESS"], listed.stderr
    assert cli("list", extra_env=env).stdout == ""  # not in the store of MICROSAGA_STORE
    shown = cli("show", eid, "--store", store, extra_env=env)
    assert "status     SUCCESS" in shown.stdout.splitlines(), shown.stderr
    # given before and after the command: the one after it wins
    mine = cli("--store", env["MICROSAGA_STORE"], "list", "--store", store, extra_env=env)
    assert mine.stdout == listed.stdout, mine.stderr
    theirs = cli("--store", store, "list", "--store", env["MICROSAGA_STORE"], extra_env=env)
    assert (theirs.returncode, theirs.stdout) == (0, ""), theirs.stderr
    for page in ("docs/api.md", "docs/observability.md"):  # the docs say so
        text = " ".join((ROOT / page).read_text(encoding="utf-8").split())
        assert "before the command or after it" in text, page


@pytest.mark.parametrize("before", [False, True], ids=["after", "both"])
def test_a_bad_store_after_the_command_is_named(
    tmp_path: Path, env: dict[str, str], before: bool
) -> None:
    fine = ("--store", f"sqlite:///{tmp_path / 'fine.db'}") if before else ()
    refused = cli(*fine, "list", "--store", "mysql://x", extra_env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error[configuration]: --store: unknown scheme"), (
        refused.stderr
    )


def test_the_demos_store_after_the_command_wins(tmp_path: Path) -> None:
    chosen, elsewhere = tmp_path / "chosen.db", tmp_path / "elsewhere.db"
    done = cli(
        "--store", f"sqlite:///{elsewhere}", "demo", "--store", f"sqlite:///{chosen}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert chosen.exists()
    assert not elsewhere.exists()
    assert not (tmp_path / "microsaga-demo.db").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "0"]], ids=["worker", "serve"])
async def test_logging_options_go_after_worker_and_serve(
    tmp_path: Path, env: dict[str, str], command: list[str]
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(OTHER)
    queued = cli("run", str(other), "--async", "--input", "{}", extra_env=env)
    assert queued.returncode == 0, queued.stderr
    eid = queued.stdout.strip()
    output = tmp_path / "worker.out"
    # --log-format before and after the command: the one after it wins
    running = spawn(
        "--log-format", "text", *command, "-v", "--log-format", "json",
        output=output, extra_env=env,
    )  # fmt: skip

    def taken_up() -> bool:  # logged at info (-v), as JSON (--log-format json)
        assert running.poll() is None, output.read_text()
        lines = output.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return any(
            r["execution_id"] == eid and "taken up" in r["message"]
            for r in records
            if r["logger"] == "microsaga.worker"
        )

    try:
        await eventually(taken_up, timeout=60, interval=0.2)
    finally:
        running.terminate()
        running.wait(timeout=30)


def test_a_worker_says_which_sqlite_file_it_runs_from(tmp_path: Path) -> None:
    # a worker started in another folder than `run` opens another microsaga.db: its
    # first line says which file, so that a user sees why it finds nothing
    (tmp_path / "elsewhere").mkdir()
    output = tmp_path / "worker.out"
    env = {"MICROSAGA_STORE": "sqlite:///microsaga.db"}
    with open(output, "ab") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "microsaga", "worker"], cwd=tmp_path / "elsewhere",
            stdout=sink, stderr=subprocess.STDOUT, env=procs.env(env),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "running executions" not in output.read_text():
            assert worker.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    first = output.read_text().splitlines()[0]
    assert f"on sqlite:///microsaga.db ({tmp_path / 'elsewhere' / 'microsaga.db'})" in first


def test_listing_the_waiting_executions_says_they_are_running(env: dict[str, str]) -> None:
    # WAITING is what `show` prints for a step waiting for a signal: a user tries it
    listed = cli("list", "--status", "WAITING", extra_env=env)
    assert listed.returncode == 2
    assert listed.stderr == (
        "error[configuration]: --status: WAITING is a status of steps, not of executions "
        "(an execution waiting for a signal, a timer or a child is RUNNING; `show` says "
        "what it waits for)\n"
    )


SCRIPT = """
import asyncio, os
from microsaga import Flow, Saga

saga = Saga("scripted")

@saga.step
async def first(order: dict) -> dict:
    return order

@saga.step(requires=[first])
async def second(order: dict) -> dict:
    os._exit(9)  # the script dies here

async def main():
    async with Flow(os.environ["MICROSAGA_STORE"]) as flow:
        await (await flow.workflow_add(saga)).execute({"n": 1})

asyncio.run(main())
"""


@pytest.mark.timeout(120)
async def test_a_worker_cannot_take_over_a_saga_defined_in_a_script(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # docs/python.md: define sagas in a module the workers import, not in __main__
    page = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    assert "a `microsaga worker` cannot import `__main__:reserve`" in page
    (tmp_path / "script.py").write_text(SCRIPT)
    died = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, env=procs.env(env), check=False
    )
    assert died.returncode == 9
    worker = spawn("worker", output=tmp_path / "worker.out", extra_env=env)
    try:

        def noted() -> str | None:
            listed = cli("list", extra_env=env).stdout
            return listed if "cannot import" in listed else None

        listed = await eventually(noted, interval=0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert "waits for a worker that can run it" in listed
    assert "cannot import __main__:first" in listed
