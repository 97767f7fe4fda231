"""Processes sharing one SQLite file: kill -9 mid-step, fault points at durability
boundaries, and suspend/resume/abort requested from another process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Flow, Status
from tests.acceptance.procs import ROOT, cli, spawn
from tests.helpers import eventually

ORDER = str(ROOT / "tests" / "acceptance" / "order.yaml")
pytestmark = pytest.mark.slow


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "log"
        self.store = f"sqlite:///{tmp / 'shared.db'}"
        self.env = {
            "MICROSAGA_TEST_LOG": str(self.log),
            "MICROSAGA_STORE": self.store,
            "MICROSAGA_LEASE_TTL": "1",
            "MICROSAGA_POLL_INTERVAL": "0.1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def open_gate(self, name: str) -> None:
        (self.tmp / f"log.{name}.open").touch()

    def spawn(self, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        output = self.tmp / f"proc-{len(self.procs)}.out"
        proc = spawn(*args, output=output, extra_env={**self.env, **extra})
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


@pytest.fixture
async def reader(world: World) -> AsyncIterator[Flow]:
    # a flow that only reads and steers: it never runs executions itself
    async with Flow(world.store, worker=False) as flow:
        yield flow


def status_is(flow: Flow, eid: str, *statuses: Status):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        found = await flow.store.get_status(eid)
        return found is not None and found[0] in statuses

    return check


async def test_sigkill_mid_step_and_a_new_process_finishes(world: World) -> None:
    runner = world.spawn("run", ORDER, "--input", '{"id": 1}', "--execution-id", "e1")
    await eventually(lambda: "charge e1:charge" in world.lines(), timeout=20)
    runner.send_signal(signal.SIGKILL)  # in the middle of charge
    runner.wait(10)
    world.open_gate("charge")
    async with Flow(world.store, worker=False) as flow:
        info = await flow.execution("e1")
        assert info.status is Status.RUNNING
        assert info.steps["charge"].status is Status.RUNNING
        world.spawn("worker")  # knows nothing but the store: no workflow_create
        await eventually(status_is(flow, "e1", Status.SUCCESS), timeout=30)
        info = await flow.execution("e1")
    lines = world.lines()
    assert lines.count("reserve e1:reserve") == 1  # finished steps are not run again
    assert lines.count("charge e1:charge") == 2  # invoked again, same idempotency key
    assert lines.count("ship e1:ship") == 1
    assert lines.count("notify e1:notify") == 1
    assert all(run.status is Status.SUCCESS for run in info.steps.values())
    assert info.response is not None


@pytest.mark.parametrize(
    ("fault", "reserve_runs"),
    [
        ("step_recorded", 1),  # killed right after reserve's result was committed
        ("step_returned", 2),  # killed after reserve returned, before it was committed
        ("step_started", 1),  # killed after reserve was RUNNING, before it was invoked
    ],
)
async def test_crash_at_durability_boundaries(
    world: World, reader: Flow, fault: str, reserve_runs: int
) -> None:
    world.open_gate("charge")
    eid = f"fault-{fault}"
    first = world.spawn(
        "run", ORDER, "--input", '{"id": 2}', "--execution-id", eid,
        MICROSAGA_FAULTS=f"{fault}:kill",
    )  # fmt: skip
    assert first.wait(30) == -signal.SIGKILL
    world.spawn("worker")
    await eventually(status_is(reader, eid, Status.SUCCESS), timeout=30)
    lines = world.lines()
    if fault == "step_started":
        reserve_runs = lines.count(f"reserve {eid}:reserve")  # 0 before the kill, 1 after
        assert reserve_runs == 1
    assert lines.count(f"reserve {eid}:reserve") == reserve_runs
    for step in ("charge", "ship", "notify"):
        assert lines.count(f"{step} {eid}:{step}") == 1


async def test_suspend_and_resume_from_another_process(world: World, reader: Flow) -> None:
    runner = world.spawn("run", ORDER, "--input", '{"id": 3}', "--execution-id", "e3")
    await eventually(lambda: "charge e3:charge" in world.lines(), timeout=20)
    done = cli("suspend", "e3", extra_env=world.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["e3", "SUSPEND"]
    assert (await reader.execution("e3")).status is Status.SUSPEND
    world.open_gate("charge")
    # the running step finishes and is recorded; the run ends without starting ship,
    # with the exit status of a suspended execution
    assert runner.wait(20) == 4
    info = await reader.execution("e3")
    assert info.status is Status.SUSPEND
    assert info.steps["charge"].status is Status.SUCCESS
    assert info.steps["ship"].status is Status.PENDING
    assert "ship e3:ship" not in world.lines()
    resumed = cli("resume", "e3", extra_env=world.env)
    assert resumed.stdout.split() == ["e3", "RUNNING"]
    world.spawn("worker")
    await eventually(status_is(reader, "e3", Status.SUCCESS), timeout=30)
    assert world.lines().count("charge e3:charge") == 1


async def test_abort_from_another_process_compensates(world: World, reader: Flow) -> None:
    runner = world.spawn("run", ORDER, "--input", '{"id": 4}', "--execution-id", "e4")
    await eventually(lambda: "charge e4:charge" in world.lines(), timeout=20)
    assert cli("abort", "e4", extra_env=world.env).returncode == 0
    world.open_gate("charge")
    assert runner.wait(20) == 1  # the run ends ABORTED: exit status 1
    info = await reader.execution("e4")
    assert info.status is Status.ABORTED
    assert info.steps["charge"].status is Status.COMPENSATED
    assert info.steps["reserve"].status is Status.COMPENSATED
    lines = world.lines()
    assert lines.index("refund e4:charge:compensate") < lines.index("release e4:reserve:compensate")


async def test_async_run_is_picked_up_by_a_worker(world: World, reader: Flow) -> None:
    world.open_gate("charge")
    queued = cli("run", ORDER, "--input", '{"id": 5}', "--async", extra_env=world.env)
    assert queued.returncode == 0, queued.stderr
    eid = queued.stdout.strip()
    assert (await reader.execution(eid)).status is Status.PENDING
    world.spawn("worker")
    await eventually(status_is(reader, eid, Status.SUCCESS), timeout=30)


async def test_a_worker_restarted_under_its_id_takes_back_its_executions_at_once(
    world: World, reader: Flow
) -> None:
    world.env["MICROSAGA_LEASE_TTL"] = "60"  # waiting for the lease would take a minute
    # a restarted worker first watches its id's leases for one heartbeat (a namesake
    # alive renews them): 20 s at this lease's default, 2 s here
    world.env["MICROSAGA_HEARTBEAT"] = "2"
    queued = cli("run", ORDER, "--input", '{"id": 6}', "--async", extra_env=world.env)
    eid = queued.stdout.strip()
    first = world.spawn("worker", "--id", "replica-1")
    await eventually(lambda: f"charge {eid}:charge" in world.lines(), timeout=20)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    world.open_gate("charge")
    started = asyncio.get_running_loop().time()
    world.spawn("worker", "--id", "replica-1")
    await eventually(status_is(reader, eid, Status.SUCCESS), timeout=30)
    assert asyncio.get_running_loop().time() - started < 30  # not the 60 s lease
    assert world.lines().count(f"charge {eid}:charge") == 2  # invoked again, same key
