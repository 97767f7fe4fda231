"""Crash recovery and control across processes, on SQLite and on PostgreSQL, as a user
checks them: ``microsaga worker`` processes killed with SIGKILL during a compensation,
while steps wait (for a signal, a timer, a child execution) and during a map step; a
worker taken over only once its lease expired; executions steered from another process
while a worker runs them; prune while executions wait.

The steps (``recovery_steps``) log each invocation with its idempotency key and pid.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    Flow,
    FunctionStep,
    MapStep,
    SleepStep,
    Status,
    SubflowStep,
    WaitStep,
)
from tests.acceptance import recovery_steps as rs
from tests.acceptance.procs import cli, spawn
from tests.helpers import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class World:
    """Worker processes on one store, and a flow that only reads and steers."""

    def __init__(self, tmp: Path, store: str, flow: Flow) -> None:
        self.tmp = tmp
        self.store = store
        self.flow = flow
        self.log = tmp / "log"
        self.env = {
            "MICROSAGA_TEST_LOG": str(self.log),
            "MICROSAGA_STORE": store,
            "MICROSAGA_LEASE_TTL": "1",
            "MICROSAGA_POLL_INTERVAL": "0.1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        output = self.tmp / f"worker-{len(self.procs)}.out"
        proc = spawn("worker", *args, output=output, extra_env=self.env)
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        n = self.procs.index(proc)
        return (self.tmp / f"worker-{n}.out").read_text(errors="replace")

    async def ready(self, proc: subprocess.Popen[bytes]) -> None:
        def up() -> bool:
            assert proc.poll() is None, self.output(proc)
            return "running executions" in self.output(proc)

        await eventually(up, timeout=30)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def calls(self, name: str | None = None, key: str | None = None) -> list[tuple[str, str, int]]:
        """(name, key, pid) of each invocation, in order."""
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text().splitlines():
            n, k, pid = line.split()
            if (name is None or n == name) and (key is None or k == key):
                found.append((n, k, int(pid)))
        return found

    def open_gate(self, key: str) -> None:
        Path(f"{self.log}.{key}.open").touch()

    async def status(self, eid: str) -> Status | None:
        found = await self.flow.store.get_status(eid)
        return None if found is None else found[0]

    async def reaches(self, eid: str, *statuses: Status, timeout: float = 30) -> None:
        async def check() -> bool:
            return await self.status(eid) in statuses

        try:
            await eventually(check, timeout=timeout)
        except AssertionError as exc:
            outputs = "\n".join(self.output(p) for p in self.procs)
            found = await self.status(eid)
            raise AssertionError(f"{eid} is {found}, not {statuses}\n{outputs}") from exc

    async def step_is(self, eid: str, step: str, *statuses: Status) -> None:
        async def check() -> bool:
            if await self.status(eid) is None:
                return False  # a child not started yet
            info = await self.flow.execution(eid)
            return step in info.steps and info.steps[step].status in statuses

        await eventually(check, timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    if request.param == "sqlite":
        async with Flow(f"sqlite:///{tmp_path / 'shared.db'}", worker=False) as flow:
            w = World(tmp_path, flow.store.url, flow)
            try:
                yield w
            finally:
                w.stop_all()
        return
    from tests.integration.pg import fresh_database

    async with fresh_database() as url, Flow(url, worker=False) as flow:
        w = World(tmp_path, url, flow)
        try:
            yield w
        finally:
            w.stop_all()


def body(info: Any) -> Any:
    assert info.response is not None
    return info.response.json()


async def test_a_worker_killed_during_a_compensation(world: World) -> None:
    """The compensation RUNNING at the crash is invoked again with the same key; the
    rollback goes on in order on the next worker and the execution ends FAILURE."""
    reserve = FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.undo))
    charge = FunctionStep(
        rs.work, id="charge", requires=[reserve], compensate=FunctionStep(rs.held_undo)
    )
    ship = FunctionStep(rs.refuse, id="ship", requires=[charge])
    wf = await world.flow.workflow_create("refunded", reserve, charge, ship)
    eid = await wf.execute({"order": 1}, async_=True)
    first = world.worker()
    await eventually(lambda: world.calls("held_undo"), timeout=30)
    world.kill(first)
    info = await world.flow.execution(eid)
    assert info.status is Status.COMPENSATING
    assert info.steps["charge"].compensation is not None  # RUNNING before invoked
    assert info.steps["charge"].compensation.status is Status.RUNNING
    assert info.steps["reserve"].status is Status.SUCCESS
    world.open_gate(f"{eid}:charge:compensate")
    world.worker()
    await world.reaches(eid, Status.FAILURE)
    info = await world.flow.execution(eid)
    assert info.steps["charge"].status is Status.COMPENSATED
    assert info.steps["reserve"].status is Status.COMPENSATED
    assert [(n, k) for n, k, _ in world.calls()] == [
        ("work", f"{eid}:reserve"),
        ("work", f"{eid}:charge"),
        ("refuse", f"{eid}:ship"),
        ("held_undo", f"{eid}:charge:compensate"),
        ("held_undo", f"{eid}:charge:compensate"),  # again, same key
        ("undo", f"{eid}:reserve:compensate"),  # after its dependent, once
    ]


async def test_a_worker_killed_while_steps_wait_for_a_signal_a_timer_and_a_child(
    world: World,
) -> None:
    """Killed while a wait, a sleep and a child execution are pending: the signal sent
    while no worker runs is kept, the timer fires after the restart, the child's step
    RUNNING at the crash runs again with the same key and no second child starts."""
    child = await world.flow.workflow_create("payment", FunctionStep(rs.held, id="charge"))
    await world.flow.workflow_save(child)
    start = FunctionStep(rs.work, id="start")
    wf = await world.flow.workflow_create(
        "approval",
        start,
        WaitStep("approved", requires=[start], timeout=3600),
        SleepStep(4, id="cool-off", requires=[start]),
        SubflowStep("payment", id="pay", requires=[start]),
        FunctionStep(rs.work, id="finish", requires=["approved", "cool-off", "pay"]),
    )
    eid = await wf.execute({"order": 2}, async_=True)
    first = world.worker()
    await eventually(lambda: world.calls("held"), timeout=30)
    await world.step_is(eid, "approved", Status.WAITING)
    world.kill(first)
    info = await world.flow.execution(eid)
    assert info.steps["cool-off"].status is Status.WAITING  # its timer has not fired yet
    assert info.steps["pay"].status is Status.WAITING

    await world.flow.signal(eid, "approved", {"by": "ops"})  # no worker runs
    world.open_gate(f"{eid}:pay:charge")
    world.worker()
    await world.reaches(eid, Status.SUCCESS)
    info = await world.flow.execution(eid)
    # finish answers what it got: the signal's payload, the sleep's request, the child's
    assert body(info) == {
        "approved": {"by": "ops"},
        "cool-off": {"order": 2},
        "pay": {"order": 2},
    }
    assert info.steps["cool-off"].status is Status.SUCCESS
    paid = await world.flow.execution(f"{eid}:pay")
    assert paid.status is Status.SUCCESS
    assert paid.parent_id == eid
    held = world.calls("held")
    assert [k for _, k, _ in held] == [f"{eid}:pay:charge"] * 2
    assert held[0][2] == first.pid != held[1][2]
    assert [k for _, k, _ in world.calls("work")] == [f"{eid}:start", f"{eid}:finish"]
    children = [e for e in await world.flow.executions() if e.parent_id == eid]
    assert [c.id for c in children] == [f"{eid}:pay"]


async def test_a_worker_killed_during_a_map_step(world: World) -> None:
    """Runs that finished before the crash are not run again; the one RUNNING is,
    with the same key; the response keeps element order."""
    items = [{"n": 0}, {"n": 1, "hold": True}, {"n": 2}, {"n": 3}]
    lines = MapStep(FunctionStep(rs.item), over="request.items", id="lines", concurrency=4)
    wf = await world.flow.workflow_create("lines", lines)
    eid = await wf.execute({"items": items}, async_=True)
    first = world.worker()
    for i in (0, 2, 3):
        await world.step_is(eid, f"lines[{i}]", Status.SUCCESS)
    assert [k for _, k, _ in world.calls("item", f"{eid}:lines[1]")] == [f"{eid}:lines[1]"]
    world.kill(first)
    assert (await world.flow.execution(eid)).steps["lines[1]"].status is Status.RUNNING
    world.open_gate(f"{eid}:lines[1]")
    world.worker()
    await world.reaches(eid, Status.SUCCESS)
    assert body(await world.flow.execution(eid)) == items
    for i in (0, 2, 3):
        assert len(world.calls("item", f"{eid}:lines[{i}]")) == 1
    again = world.calls("item", f"{eid}:lines[1]")
    assert [pid == first.pid for _, _, pid in again] == [True, False]


async def test_a_lease_is_taken_over_only_once_its_owner_died(world: World) -> None:
    """Two workers with ids of their own (so neither can tell the other died): the
    second runs nothing of the first's execution while the first renews its lease,
    and takes it over once the lease expired after a SIGKILL."""
    wf = await world.flow.workflow_create(
        "pair", FunctionStep(rs.held, id="a"), FunctionStep(rs.work, id="b", requires=["a"])
    )
    eid = await wf.execute({"order": 3}, async_=True)
    owner = world.worker("--id", "owner")
    await eventually(lambda: world.calls("held"), timeout=30)
    other = world.worker("--id", "other")
    await world.ready(other)
    time.sleep(3)  # three lease TTLs: the owner renews its lease meanwhile
    assert len(world.calls("held")) == 1
    world.kill(owner)
    world.open_gate(f"{eid}:a")
    await world.reaches(eid, Status.SUCCESS)
    assert [pid for _, _, pid in world.calls("held")] == [owner.pid, other.pid]
    assert [pid for _, _, pid in world.calls("work")] == [other.pid]


async def test_a_second_worker_under_a_live_workers_id_refuses_to_start(world: World) -> None:
    """Two live workers under one id would take each other's executions for their
    own: the second refuses to start, naming the id; the first runs on untouched. Once
    the first is killed, a worker under its id starts and takes its execution back."""
    wf = await world.flow.workflow_create(
        "twins", FunctionStep(rs.held, id="a"), FunctionStep(rs.work, id="b", requires=["a"])
    )
    eid = await wf.execute({"order": 4}, async_=True)
    first = world.worker("--id", "twin")
    await eventually(lambda: world.calls("held"), timeout=30)
    second = world.worker("--id", "twin")
    assert second.wait(30) == 2
    refused = world.output(second)
    assert "error[configuration]" in refused
    assert "'twin' is in use" in refused
    assert "Traceback" not in refused
    assert first.poll() is None
    world.kill(first)
    world.open_gate(f"{eid}:a")
    heir = world.worker("--id", "twin")
    await world.reaches(eid, Status.SUCCESS)
    assert [pid for _, _, pid in world.calls("held")] == [first.pid, heir.pid]
    assert [pid for _, _, pid in world.calls("work")] == [heir.pid]


async def test_two_workers_started_at_once_under_one_id_are_told_and_recover(
    world: World,
) -> None:
    """Two workers under one id, started while it held nothing (neither can refuse):
    the one not running the execution says another live worker uses its id; once the
    other is killed, it takes the execution over instead of leaving it for ever to a
    worker it takes for itself."""
    first, second = world.worker("--id", "twin"), world.worker("--id", "twin")
    await world.ready(first)
    await world.ready(second)
    wf = await world.flow.workflow_create(
        "twins-at-once",
        FunctionStep(rs.held, id="a"),
        FunctionStep(rs.work, id="b", requires=["a"]),
    )
    eid = await wf.execute({"order": 5}, async_=True)
    await eventually(lambda: world.calls("held"), timeout=30)
    runner = first if world.calls("held")[0][2] == first.pid else second
    other = second if runner is first else first
    await eventually(lambda: "another live worker runs under this id" in world.output(other))
    assert eid in world.output(other)
    world.kill(runner)
    world.open_gate(f"{eid}:a")
    await world.reaches(eid, Status.SUCCESS)
    assert [pid for _, _, pid in world.calls("held")] == [runner.pid, other.pid]
    assert [pid for _, _, pid in world.calls("work")] == [other.pid]


async def test_two_workers_run_each_execution_once(world: World) -> None:
    wf = await world.flow.workflow_create(
        "chain",
        FunctionStep(rs.work, id="a"),
        FunctionStep(rs.work, id="b", requires=["a"]),
        FunctionStep(rs.work, id="c", requires=["b"]),
    )
    eids = [await wf.execute({"n": n}, async_=True) for n in range(30)]
    world.worker()
    world.worker()
    for eid in eids:
        await world.reaches(eid, Status.SUCCESS)
    keys = [k for _, k, _ in world.calls("work")]
    assert sorted(keys) == sorted(f"{eid}:{s}" for eid in eids for s in "abc")


async def test_steering_from_other_processes_while_a_worker_runs(world: World) -> None:
    """suspend/resume of a sleeping execution (its timer fires on resume once its time
    passed), signal and redrive from the command line, abort reaching a child."""
    worker = world.worker()
    await world.ready(worker)
    env = world.env
    nap = SleepStep(4, id="nap")  # longer than starting the CLI takes
    wf = await world.flow.workflow_create(
        "nap", nap, FunctionStep(rs.work, id="after", requires=[nap])
    )
    napping = await wf.execute({"n": 1}, async_=True)
    await world.step_is(napping, "nap", Status.WAITING)
    suspended = cli("suspend", napping, extra_env=env)
    assert suspended.stdout.split() == [napping, "SUSPEND"], suspended.stderr
    assert (await world.flow.execution(napping)).steps["nap"].status is Status.WAITING
    await asyncio.sleep(4.5)  # past the timer's time, while suspended
    info = await world.flow.execution(napping)
    assert info.status is Status.SUSPEND
    assert info.steps["after"].status is Status.PENDING
    assert not world.calls("work", f"{napping}:after")
    resumed = cli("resume", napping, extra_env=env)
    # the status read after the request: the worker may have finished it already
    assert resumed.stdout.split() in ([napping, "RUNNING"], [napping, "SUCCESS"]), resumed
    await world.reaches(napping, Status.SUCCESS)
    assert len(world.calls("work", f"{napping}:after")) == 1

    picky = await world.flow.workflow_create(
        "picky",
        FunctionStep(rs.work, id="first"),
        WaitStep("go", requires=["first"]),
        FunctionStep(rs.picky, id="picky", requires=["go"]),
        on_failure="suspend",
    )
    eid = await picky.execute({"ok": False}, async_=True)
    await world.step_is(eid, "go", Status.WAITING)
    sent = cli("signal", eid, "go", "--payload", '{"ok": false}', extra_env=env)
    assert sent.returncode == 0, sent.stderr
    await world.reaches(eid, Status.SUSPEND)
    redriven = cli("redrive", eid, "--step", "picky", "--input", '{"ok": true}', extra_env=env)
    assert redriven.stdout.split() == [eid, "RUNNING"], redriven.stderr
    await world.reaches(eid, Status.SUCCESS)
    assert len(world.calls("work", f"{eid}:first")) == 1
    assert len(world.calls("picky", f"{eid}:picky")) == 2

    child = await world.flow.workflow_create(
        "held-payment",
        FunctionStep(rs.work, id="hold", compensate=FunctionStep(rs.undo)),
        FunctionStep(rs.held, id="charge", requires=["hold"]),
    )
    await world.flow.workflow_save(child)
    parent = await world.flow.workflow_create(
        "parent",
        FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.undo)),
        SubflowStep("held-payment", id="pay", requires=["reserve"]),
    )
    eid = await parent.execute({"n": 3}, async_=True)
    await eventually(lambda: world.calls("held", f"{eid}:pay:charge"), timeout=30)
    aborted = cli("abort", eid, extra_env=env)
    assert aborted.returncode == 0, aborted.stderr
    world.open_gate(f"{eid}:pay:charge")
    await world.reaches(eid, Status.ABORTED)
    await world.reaches(f"{eid}:pay", Status.ABORTED, Status.FAILURE)
    undone = [k for _, k, _ in world.calls("undo")]
    assert undone.index(f"{eid}:pay:hold:compensate") < undone.index(f"{eid}:reserve:compensate")


async def test_prune_while_executions_wait(world: World) -> None:
    worker = world.worker()
    await world.ready(worker)
    done = await world.flow.workflow_create("done", FunctionStep(rs.work, id="a"))
    waiting = await world.flow.workflow_create("waiting", WaitStep("go", timeout=3600))
    finished = [await done.execute({"n": n}, async_=True) for n in range(3)]
    parked = [await waiting.execute({"n": n}, async_=True) for n in range(3)]
    for eid in finished:
        await world.reaches(eid, Status.SUCCESS)
    for eid in parked:
        await world.step_is(eid, "go", Status.WAITING)
    await asyncio.sleep(1.1)  # the finished ones finished more than a second ago
    pruned = cli("prune", "--older-than", "1s", extra_env=world.env)
    assert pruned.returncode == 0, pruned.stderr
    for eid in finished:
        assert await world.status(eid) is None
    for eid in parked:
        assert await world.status(eid) is not None
    for eid in parked:  # still waiting, and woken as ever
        await world.step_is(eid, "go", Status.WAITING)
        await world.flow.signal(eid, "go", {"n": eid})
    for eid in parked:
        await world.reaches(eid, Status.SUCCESS)
    assert body(await world.flow.execution(parked[1])) == {"n": parked[1]}


async def test_a_worker_killed_during_the_rollback_of_a_map_step(world: World) -> None:
    runs = FunctionStep(rs.work, compensate=FunctionStep(rs.held_undo))
    lines = MapStep(runs, over="request.items", id="lines", concurrency=2)
    wf = await world.flow.workflow_create(
        "lines-back", lines, FunctionStep(rs.refuse, id="ship", requires=[lines])
    )
    eid = await wf.execute({"items": [{"n": 0}, {"n": 1}, {"n": 2}]}, async_=True)
    first = world.worker()
    await eventually(lambda: world.calls("held_undo"), timeout=30)
    world.kill(first)
    cut = {k for _, k, pid in world.calls("held_undo") if pid == first.pid}
    for n in range(3):
        world.open_gate(f"{eid}:lines[{n}]:compensate")
    world.worker()
    await world.reaches(eid, Status.FAILURE)
    info = await world.flow.execution(eid)
    assert info.compensated
    for n in range(3):
        assert info.steps[f"lines[{n}]"].status is Status.COMPENSATED
    undone = [k for _, k, _ in world.calls("held_undo")]
    for n in range(3):  # the ones cut by the crash again, with the same key
        key = f"{eid}:lines[{n}]:compensate"
        assert undone.count(key) == (2 if key in cut else 1), undone
    assert len(world.calls("work")) == 3  # the runs themselves: once each


async def test_a_worker_killed_while_a_child_is_compensated_as_a_unit(world: World) -> None:
    child = await world.flow.workflow_create(
        "unit",
        FunctionStep(rs.work, id="hold", compensate=FunctionStep(rs.held_undo)),
        FunctionStep(rs.work, id="charge", requires=["hold"], compensate=FunctionStep(rs.undo)),
    )
    await world.flow.workflow_save(child)
    reserve = FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.undo))
    wf = await world.flow.workflow_create(
        "unit-parent",
        reserve,
        SubflowStep("unit", id="pay", requires=[reserve]),
        FunctionStep(rs.refuse, id="ship", requires=["pay"]),
    )
    eid = await wf.execute({"n": 1}, async_=True)
    first = world.worker()
    await eventually(lambda: world.calls("held_undo"), timeout=30)
    world.kill(first)
    world.open_gate(f"{eid}:pay:hold:compensate")
    world.worker()
    await world.reaches(eid, Status.FAILURE)
    info = await world.flow.execution(eid)
    assert info.compensated
    assert info.steps["pay"].status is Status.COMPENSATED
    assert info.steps["reserve"].status is Status.COMPENSATED
    undone = [k for n, k, _ in world.calls() if n not in ("work", "refuse")]
    assert undone == [
        f"{eid}:pay:charge:compensate",
        f"{eid}:pay:hold:compensate",
        f"{eid}:pay:hold:compensate",  # again, same key
        f"{eid}:reserve:compensate",
    ]


@pytest.mark.parametrize(
    ("fault", "reserve_runs"),
    [
        ("step_started", 1),  # RUNNING committed, killed before the invocation
        ("step_returned", 2),  # returned, killed before its result was committed
        ("step_recorded", 1),  # its result committed, killed before dependents start
        ("compensation_started", 1),
        ("before_park", 1),
    ],
)
async def test_a_worker_killed_at_a_fault_point(
    world: World, fault: str, reserve_runs: int
) -> None:
    reserve = FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.undo))
    wf = await world.flow.workflow_create(
        f"fault-{fault}",
        reserve,
        WaitStep("go", requires=[reserve], timeout=3600),
        SleepStep(3, id="nap", requires=[reserve]),  # long enough to park for
        FunctionStep(rs.refuse, id="ship", requires=["go", "nap"]),
    )
    eid = await wf.execute({"n": 1}, async_=True)
    await world.flow.signal(eid, "go", {"ok": 1})  # kept until go starts
    world.env["MICROSAGA_FAULTS"] = f"{fault}:kill"
    first = world.worker()
    assert first.wait(30) == -signal.SIGKILL, world.output(first)
    del world.env["MICROSAGA_FAULTS"]
    world.worker()
    await world.reaches(eid, Status.FAILURE)
    info = await world.flow.execution(eid)
    assert info.steps["reserve"].status is Status.COMPENSATED
    assert info.steps["go"].response is not None
    assert info.steps["go"].response.json() == {"ok": 1}
    assert [k for _, k, _ in world.calls("work")] == [f"{eid}:reserve"] * reserve_runs
    assert len(world.calls("refuse")) == 1
    undone = world.calls("undo", f"{eid}:reserve:compensate")
    assert 1 <= len(undone) <= (2 if fault == "compensation_started" else 1)


async def test_steering_an_execution_whose_worker_died(world: World) -> None:
    """suspend and resume while no worker runs: the next worker runs the step RUNNING
    at the crash again and finishes; a timer whose time passed meanwhile fires."""
    wf = await world.flow.workflow_create(
        "orphan",
        FunctionStep(rs.held, id="a"),
        SleepStep(1, id="nap", requires=["a"]),
        FunctionStep(rs.work, id="b", requires=["nap"]),
    )
    eid = await wf.execute({"n": 1}, async_=True)
    first = world.worker()
    await eventually(lambda: world.calls("held"), timeout=30)
    world.kill(first)
    assert cli("suspend", eid, extra_env=world.env).stdout.split() == [eid, "SUSPEND"]
    world.open_gate(f"{eid}:a")
    second = world.worker()
    await world.ready(second)
    await asyncio.sleep(1.5)  # a suspended execution is left alone
    assert len(world.calls("held")) == 1
    assert await world.status(eid) is Status.SUSPEND
    assert cli("resume", eid, extra_env=world.env).stdout.split() == [eid, "RUNNING"]
    await world.reaches(eid, Status.SUCCESS)
    assert [pid for _, _, pid in world.calls("held")] == [first.pid, second.pid]
    assert len(world.calls("work")) == 1


async def test_abort_of_an_execution_waiting_for_a_signal(world: World) -> None:
    worker = world.worker()
    await world.ready(worker)
    reserve = FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.undo))
    wf = await world.flow.workflow_create(
        "abort-wait", reserve, WaitStep("go", requires=[reserve], timeout=3600)
    )
    eid = await wf.execute({"n": 1}, async_=True)
    await world.step_is(eid, "go", Status.WAITING)
    assert cli("abort", eid, extra_env=world.env).returncode == 0
    await world.reaches(eid, Status.ABORTED)
    info = await world.flow.execution(eid)
    assert info.steps["reserve"].status is Status.COMPENSATED
    assert info.steps["go"].status is not Status.WAITING
    late = cli("signal", eid, "go", extra_env=world.env)
    assert late.stderr.startswith("error[invalid_transition]: "), late.stderr
    assert len(world.calls("undo")) == 1


async def test_suspend_and_resume_of_a_parent_reach_its_running_child(world: World) -> None:
    worker = world.worker()
    await world.ready(worker)
    child = await world.flow.workflow_create(
        "kid", FunctionStep(rs.held, id="a"), FunctionStep(rs.work, id="b", requires=["a"])
    )
    await world.flow.workflow_save(child)
    wf = await world.flow.workflow_create("mum", SubflowStep("kid", id="kid"))
    eid = await wf.execute({"n": 1}, async_=True)
    await eventually(lambda: world.calls("held"), timeout=30)
    assert cli("suspend", eid, extra_env=world.env).returncode == 0
    world.open_gate(f"{eid}:kid:a")
    await world.reaches(f"{eid}:kid", Status.SUSPEND)
    await world.step_is(f"{eid}:kid", "a", Status.SUCCESS)  # the running step finishes
    info = await world.flow.execution(f"{eid}:kid")
    assert info.steps["a"].status is Status.SUCCESS
    assert info.steps["b"].status is Status.PENDING
    assert await world.status(eid) is Status.SUSPEND
    assert cli("resume", eid, extra_env=world.env).returncode == 0
    await world.reaches(eid, Status.SUCCESS)
    assert await world.status(f"{eid}:kid") is Status.SUCCESS
    assert len(world.calls("work")) == 1


async def test_prune_keeps_the_finished_child_of_a_waiting_parent(world: World) -> None:
    """A child that succeeded is still its parent's to compensate as a unit: pruning
    it while the parent waits would leave the parent's rollback nothing to undo."""
    worker = world.worker()
    await world.ready(worker)
    child = await world.flow.workflow_create(
        "kept", FunctionStep(rs.work, id="hold", compensate=FunctionStep(rs.undo))
    )
    await world.flow.workflow_save(child)
    wf = await world.flow.workflow_create(
        "keeper",
        SubflowStep("kept", id="pay"),
        WaitStep("go", requires=["pay"], timeout=3600),
        FunctionStep(rs.refuse, id="ship", requires=["go"]),
    )
    eid = await wf.execute({"n": 1}, async_=True)
    await world.step_is(eid, "go", Status.WAITING)
    assert await world.status(f"{eid}:pay") is Status.SUCCESS
    await asyncio.sleep(1.1)
    pruned = cli("prune", "--older-than", "1s", extra_env=world.env)
    assert pruned.returncode == 0, pruned.stderr
    await world.flow.signal(eid, "go")
    await world.reaches(eid, Status.FAILURE)
    info = await world.flow.execution(eid)
    assert info.steps["pay"].status is Status.COMPENSATED, info.steps["pay"]
    assert info.compensated
    assert [k for _, k, _ in world.calls("undo")] == [f"{eid}:pay:hold:compensate"]


async def _child_waiting_for_approval(world: World) -> str:
    """An order (a worker running) whose child ``<eid>:approve`` has held something
    and waits for the signal "approved"; the order's id."""
    worker = world.worker()
    await world.ready(worker)
    child = await world.flow.workflow_create(
        "approval",
        FunctionStep(rs.work, id="hold", compensate=FunctionStep(rs.undo)),
        WaitStep("approved", requires=["hold"], timeout=3600),
    )
    await world.flow.workflow_save(child)
    wf = await world.flow.workflow_create(
        "order",
        FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.undo)),
        SubflowStep("approval", id="approve", requires=["reserve"]),
    )
    eid = await wf.execute({"n": 1}, async_=True)
    await world.step_is(f"{eid}:approve", "approved", Status.WAITING)
    return eid


async def test_abort_of_a_parent_reaches_its_child_waiting_for_a_signal(world: World) -> None:
    eid = await _child_waiting_for_approval(world)
    assert cli("abort", eid, extra_env=world.env).returncode == 0
    await world.reaches(eid, Status.ABORTED)
    await world.reaches(f"{eid}:approve", Status.ABORTED)
    assert [k for _, k, _ in world.calls("undo")] == [
        f"{eid}:approve:hold:compensate",
        f"{eid}:reserve:compensate",
    ]


async def test_a_child_signalled_while_its_parent_is_suspended(world: World) -> None:
    worker = world.worker()
    await world.ready(worker)
    child = await world.flow.workflow_create(
        "approval",
        WaitStep("approved", timeout=3600),
        FunctionStep(rs.work, id="after", requires=["approved"]),
    )
    await world.flow.workflow_save(child)
    wf = await world.flow.workflow_create("order", SubflowStep("approval", id="approve"))
    eid = await wf.execute({"n": 1}, async_=True)
    kid = f"{eid}:approve"
    await world.step_is(kid, "approved", Status.WAITING)
    assert cli("suspend", eid, extra_env=world.env).returncode == 0
    await world.reaches(kid, Status.SUSPEND)
    sent = cli("signal", kid, "approved", "--payload", '{"ok": 1}', extra_env=world.env)
    assert sent.returncode == 0, sent.stderr
    await asyncio.sleep(1.0)  # suspended: the signal is kept, nothing runs
    assert not world.calls("work")
    assert cli("resume", eid, extra_env=world.env).returncode == 0
    await world.reaches(eid, Status.SUCCESS)
    assert body(await world.flow.execution(eid)) == {"ok": 1}
    assert len(world.calls("work")) == 1


async def test_redrive_of_a_failed_execution_from_the_cli_while_a_worker_runs(
    world: World,
) -> None:
    worker = world.worker()
    await world.ready(worker)
    wf = await world.flow.workflow_create(
        "picky",
        FunctionStep(rs.work, id="first", compensate=FunctionStep(rs.undo)),
        FunctionStep(rs.picky, id="picky", requires=["first"]),
    )
    eid = await wf.execute({"ok": False}, async_=True)
    await world.reaches(eid, Status.FAILURE)
    again = cli("redrive", eid, "--input", '{"ok": true}', extra_env=world.env)
    assert again.returncode == 0, again.stderr
    new_id = again.stdout.split()[0]
    assert new_id != eid
    await world.reaches(new_id, Status.SUCCESS)
    info = await world.flow.execution(new_id)
    assert info.redrive_of == eid
    assert [k for _, k, _ in world.calls("picky")] == [f"{eid}:picky", f"{new_id}:picky"]


async def test_a_compensation_cut_by_a_killed_worker_ends_on_a_live_one(world: World) -> None:
    """Two workers: the one running the rollback is killed; the other, alive all
    along, takes the execution over and runs the cut compensation again."""
    reserve = FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.held_undo))
    wf = await world.flow.workflow_create(
        "two", reserve, FunctionStep(rs.refuse, id="ship", requires=[reserve])
    )
    first = world.worker()
    await world.ready(first)
    eid = await wf.execute({"n": 1}, async_=True)
    await eventually(lambda: world.calls("held_undo"), timeout=30)
    second = world.worker()
    await world.ready(second)
    ((_, _, pid),) = world.calls("held_undo")
    victim = first if pid == first.pid else second
    world.kill(victim)
    world.open_gate(f"{eid}:reserve:compensate")
    await world.reaches(eid, Status.FAILURE)
    pids = [p for _, _, p in world.calls("held_undo")]
    assert len(pids) == 2
    assert pids[0] == victim.pid != pids[1]
    assert (await world.flow.execution(eid)).steps["reserve"].status is Status.COMPENSATED


async def test_a_stalled_owner_is_fenced_off_after_its_lease_was_taken_over(
    world: World,
) -> None:
    """A worker stopped (SIGSTOP) in the middle of a step loses its lease to another;
    continued, its late result is not recorded and it starts nothing more."""
    wf = await world.flow.workflow_create(
        "stalled",
        FunctionStep(rs.held, id="a"),
        FunctionStep(rs.work, id="b", requires=["a"]),
        FunctionStep(rs.work, id="c", requires=["b"]),
    )
    eid = await wf.execute({"n": 1}, async_=True)
    owner = world.worker("--id", "owner")
    await eventually(lambda: world.calls("held"), timeout=30)
    owner.send_signal(signal.SIGSTOP)
    try:
        heir = world.worker("--id", "heir")
        await eventually(lambda: len(world.calls("held")) == 2, timeout=30)
        world.open_gate(f"{eid}:a")
        await world.reaches(eid, Status.SUCCESS)
    finally:
        owner.send_signal(signal.SIGCONT)
    done = await world.flow.execution(eid)
    await asyncio.sleep(2)  # the owner's late result meets the fence
    assert [pid for _, _, pid in world.calls("held")] == [owner.pid, heir.pid]
    assert [(k, pid) for _, k, pid in world.calls("work")] == [
        (f"{eid}:b", heir.pid),
        (f"{eid}:c", heir.pid),
    ]
    after = await world.flow.execution(eid)
    assert after.status is Status.SUCCESS
    assert {s: r.attempts for s, r in after.steps.items()} == {
        s: r.attempts for s, r in done.steps.items()
    }
    assert owner.poll() is None, world.output(owner)  # it goes on, serving others


async def test_a_wait_timing_out_while_no_worker_runs_fails_on_the_next(world: World) -> None:
    reserve = FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.undo))
    wf = await world.flow.workflow_create(
        "deadline", reserve, WaitStep("paid", requires=[reserve], timeout=1.5)
    )
    eid = await wf.execute({"n": 1}, async_=True)
    first = world.worker()
    await world.step_is(eid, "paid", Status.WAITING)
    world.kill(first)
    await asyncio.sleep(2)  # the wait times out while no worker runs
    assert await world.status(eid) is Status.RUNNING
    world.worker()
    await world.reaches(eid, Status.FAILURE)
    info = await world.flow.execution(eid)
    assert info.steps["paid"].status is Status.FAILURE
    assert "timed out after 1.5s waiting for paid" in (info.steps["paid"].error or "")
    assert info.steps["reserve"].status is Status.COMPENSATED
    assert len(world.calls("undo")) == 1


async def test_a_worker_stopped_with_sigterm_hands_back_what_it_runs(world: World) -> None:
    """SIGTERM: a step still running after the lease's TTL is left RUNNING and the
    worker exits; the next worker invokes it again, with the same key."""
    wf = await world.flow.workflow_create(
        "handed", FunctionStep(rs.held, id="a"), FunctionStep(rs.work, id="b", requires=["a"])
    )
    eid = await wf.execute({"n": 1}, async_=True)
    first = world.worker()
    await eventually(lambda: world.calls("held"), timeout=30)
    first.terminate()
    assert first.wait(30) == 0, world.output(first)
    info = await world.flow.execution(eid)
    assert info.steps["a"].status is Status.RUNNING
    world.open_gate(f"{eid}:a")
    second = world.worker()
    await world.reaches(eid, Status.SUCCESS)
    assert [pid for _, _, pid in world.calls("held")] == [first.pid, second.pid]
    assert [pid for _, _, pid in world.calls("work")] == [second.pid]


async def test_a_timer_fires_on_time_with_a_long_poll_interval(world: World) -> None:
    """The worker that parked an execution looks for it at its timer's time: the
    sleep ends well before the next poll (30 s here; the bound below is far under)."""
    world.env["MICROSAGA_POLL_INTERVAL"] = "30"
    nap = SleepStep(3, id="nap")
    wf = await world.flow.workflow_create(
        "slow-poll", nap, FunctionStep(rs.work, id="after", requires=[nap])
    )
    eid = await wf.execute({"n": 1}, async_=True)
    world.worker()  # claims at once when it starts
    await world.step_is(eid, "nap", Status.WAITING)
    await world.reaches(eid, Status.SUCCESS, timeout=15)
    assert len(world.calls("work")) == 1


async def test_a_timer_parked_by_a_killed_worker_fires_on_time_on_another(
    world: World,
) -> None:
    """A worker parks a sleep and is killed; a worker started after it (its first
    claim done before the timer's time, its next poll 30 s later) fires the timer at
    its time: the bound below is far under the poll interval."""
    world.env["MICROSAGA_POLL_INTERVAL"] = "30"
    nap = SleepStep(8, id="nap")
    wf = await world.flow.workflow_create(
        "orphan-timer", nap, FunctionStep(rs.work, id="after", requires=[nap])
    )
    eid = await wf.execute({"n": 1}, async_=True)
    first = world.worker()
    await world.step_is(eid, "nap", Status.WAITING)
    await eventually(
        lambda: "waiting for a timer" in str(cli("show", eid, extra_env=world.env).stdout)
    )
    world.kill(first)
    survivor = world.worker()
    await world.ready(survivor)
    assert (await world.flow.execution(eid)).steps["nap"].status is Status.WAITING
    await world.reaches(eid, Status.SUCCESS, timeout=20)
    assert [pid for _, _, pid in world.calls("work")] == [survivor.pid]


async def test_a_signal_from_another_process_wakes_within_a_second_of_polling(
    world: World,
) -> None:
    """With a poll interval of 30 s, a signal from the command line still wakes the
    parked execution at once (the bound below is far under the interval): SQLite,
    which notifies no other process, is looked at for control requests every second."""
    world.env["MICROSAGA_POLL_INTERVAL"] = "30"
    wf = await world.flow.workflow_create(
        "slow-poll-signal",
        WaitStep("go", timeout=3600),
        FunctionStep(rs.work, id="after", requires=["go"]),
    )
    eid = await wf.execute({"n": 1}, async_=True)
    world.worker()  # claims at once when it starts
    await world.step_is(eid, "go", Status.WAITING)
    await eventually(lambda: "waiting for go" in str(cli("show", eid, extra_env=world.env).stdout))
    sent = cli("signal", eid, "go", "--payload", '{"ok": 1}', extra_env=world.env)
    assert sent.returncode == 0, sent.stderr
    await world.reaches(eid, Status.SUCCESS, timeout=15)
    assert body(await world.flow.execution(eid)) == {"ok": 1}


async def test_resume_from_the_cli_retries_a_failed_compensation(world: World) -> None:
    """SPEC 4b: a compensation failing for good stops the rollback of what it
    requires; resume from another process retries it and the rollback goes on."""
    worker = world.worker()
    await world.ready(worker)
    reserve = FunctionStep(rs.work, id="reserve", compensate=FunctionStep(rs.undo))
    charge = FunctionStep(
        rs.work, id="charge", requires=[reserve], compensate=FunctionStep(rs.stubborn_undo)
    )
    wf = await world.flow.workflow_create(
        "stuck", reserve, charge, FunctionStep(rs.refuse, id="ship", requires=[charge])
    )
    eid = await wf.execute({"n": 1}, async_=True)
    await world.reaches(eid, Status.FAILURE)
    info = await world.flow.execution(eid)
    assert not info.compensated
    assert info.steps["reserve"].status is Status.SUCCESS  # its dependent's failed
    assert not world.calls("undo")
    world.open_gate(f"{eid}:charge:compensate")
    resumed = cli("resume", eid, extra_env=world.env)
    assert resumed.returncode == 0, resumed.stderr

    async def rolled_back() -> bool:
        found = await world.flow.execution(eid)
        return found.status is Status.FAILURE and found.compensated

    await eventually(rolled_back, timeout=30)
    info = await world.flow.execution(eid)
    assert info.steps["charge"].status is Status.COMPENSATED
    assert info.steps["reserve"].status is Status.COMPENSATED
    assert [k for _, k, _ in world.calls("stubborn_undo")] == [f"{eid}:charge:compensate"] * 2
    assert [k for _, k, _ in world.calls("undo")] == [f"{eid}:reserve:compensate"]


async def test_aborting_a_child_from_the_cli_fails_its_parent_step(world: World) -> None:
    eid = await _child_waiting_for_approval(world)
    kid = f"{eid}:approve"
    assert cli("abort", kid, extra_env=world.env).returncode == 0
    await world.reaches(kid, Status.ABORTED)
    await world.reaches(eid, Status.FAILURE)
    info = await world.flow.execution(eid)
    assert info.steps["approve"].status is Status.FAILURE
    assert info.steps["reserve"].status is Status.COMPENSATED
    assert info.compensated
    assert [k for _, k, _ in world.calls("undo")] == [
        f"{kid}:hold:compensate",
        f"{eid}:reserve:compensate",
    ]
