"""Worker processes sharing one PostgreSQL database: 1,000 executions of a 4-step
saga, split between them, surviving a SIGKILLed worker and a server restart.

The workers are ``python -m microsaga --store URL worker`` processes; the steps
(``pg_steps``) log every invocation to a file, which the checks below read together
with what the store recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

if not os.environ.get("CI"):  # under CI a missing driver fails the imports below
    pytest.importorskip("asyncpg", reason="needs asyncpg (pip install 'microsaga[postgres]')")

from microsaga import Flow, FunctionStep, Retry, Status
from tests.helpers import eventually
from tests.integration import pg_steps
from tests.integration.pg import asyncpg, connect, fresh_database, skip_or_fail

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXECUTIONS = 1000
STEPS = ("reserve", "charge", "ship", "notify")
FINISHED = (2, 3, 4)  # FAILURE, SUCCESS, ABORTED


@dataclass
class Workers:
    """Worker processes on one store, each logging to its own file."""

    url: str
    folder: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, count: int) -> None:
        for n in range(count):
            log = (self.folder / f"worker-{n}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "microsaga", "--store", self.url, "worker"],
                    env=self.env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

    def output(self, n: int) -> str:
        return (self.folder / f"worker-{n}.log").read_text(errors="replace")

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for n, proc in enumerate(self.procs):
            while "running executions" not in self.output(n):
                assert proc.poll() is None, f"worker {n} exited:\n{self.output(n)}"
                assert time.monotonic() < deadline, f"worker {n} not ready:\n{self.output(n)}"
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def workers(
    tmp_path: Path,
    count: int,
    *,
    lease_ttl: float = 10.0,
    step_delay: float = 0.02,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Workers]:
    async with fresh_database() as url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MICROSAGA_")},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "MICROSAGA_TEST_LOG": str(tmp_path / "steps.log"),
            "MICROSAGA_TEST_STEP_DELAY": str(step_delay),
            "MICROSAGA_LEASE_TTL": str(lease_ttl),
            # a worker claims no more than it can run soon, so the others get a share
            "MICROSAGA_MAX_EXECUTIONS": "40",
            **(extra_env or {}),
        }
        # the schema first, so the workers do not all start on an empty database
        async with Flow(url, worker=False):
            pass
        group = Workers(url, tmp_path, env)
        try:
            group.start(count)
            await group.ready()
            yield group
        finally:
            group.stop()


async def start_executions(url: str) -> list[str]:
    async with Flow(url, worker=False) as flow:
        reserve = FunctionStep(pg_steps.reserve)
        charge = FunctionStep(pg_steps.charge, requires=[reserve])
        ship = FunctionStep(pg_steps.ship, requires=[charge])
        notify = FunctionStep(pg_steps.notify, requires=[ship])
        wf = await flow.workflow_create("order", reserve, charge, ship, notify)
        ids: list[str] = []
        for chunk in range(0, EXECUTIONS, 100):
            ids += await asyncio.gather(
                *(wf.execute({"order": n}, async_=True) for n in range(chunk, chunk + 100))
            )
        return ids


async def counts(url: str) -> dict[int, int]:
    """Executions by status; {} while the server is away."""
    try:
        conn = await connect(url)
    except (OSError, asyncpg.PostgresError):
        return {}
    try:
        rows = await conn.fetch("SELECT status, count(*) FROM microsaga_executions GROUP BY 1")
        return {r[0]: r[1] for r in rows}
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return {}
    finally:
        if not conn.is_closed():
            conn.terminate()


async def until_finished(url: str, group: Workers, fraction: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = await counts(url)
        if sum(found.get(s, 0) for s in FINISHED) >= fraction * EXECUTIONS:
            return
        for n, proc in enumerate(group.procs):
            if proc.returncode is None and proc.poll() is not None:
                pytest.fail(f"worker {n} exited with {proc.returncode}:\n{group.output(n)}")
        assert time.monotonic() < deadline, f"not finished in {timeout}s: {found}"
        await asyncio.sleep(0.05)


@dataclass
class Invocation:
    kind: str  # start or done
    key: str
    token: str

    @property
    def pid(self) -> int:
        return int(self.token.split("-")[0])


def invocations(tmp_path: Path) -> Iterator[Invocation]:
    for line in (tmp_path / "steps.log").read_text().splitlines():
        kind, key, token = line.split()
        yield Invocation(kind, key, token)


async def recorded(url: str) -> dict[str, dict[str, Any]]:
    """``{idempotency key: stored step row}`` of every forward step run."""
    conn = await connect(url)
    try:
        statuses = await conn.fetch("SELECT id, status FROM microsaga_executions")
        rows = await conn.fetch(
            "SELECT execution_id, step_id, status, attempts, response_body"
            " FROM microsaga_step_runs WHERE phase = 0"
        )
    finally:
        await conn.close()
    assert len(statuses) == EXECUTIONS
    assert {r[1] for r in statuses} == {3}, "every execution ends SUCCESS"
    return {f"{r[0]}:{r[1]}": dict(r) for r in rows}


def check_exactly_once(
    ids: list[str], stored: dict[str, dict[str, Any]], log: list[Invocation]
) -> dict[str, list[Invocation]]:
    """Every step of every execution completed, recorded once, from a logged
    invocation, and its dependent ran on that very result. Returns the starts by key."""
    assert set(stored) == {f"{eid}:{sid}" for eid in ids for sid in STEPS}
    done: dict[str, set[str]] = defaultdict(set)
    starts: dict[str, list[Invocation]] = defaultdict(list)
    for item in log:
        if item.kind == "done":
            done[item.key].add(item.token)
        else:
            starts[item.key].append(item)
    assert set(starts) == set(stored), "a step ran that the store does not know of"
    for key, row in stored.items():
        assert row["status"] == 3, key
        assert row["attempts"] == 1, key
        response = json.loads(row["response_body"])
        assert response["by"] in done[key], f"{key}: the recorded result was never returned"
    for eid in ids:
        by = [json.loads(stored[f"{eid}:{sid}"]["response_body"]) for sid in STEPS]
        for earlier, later in itertools.pairwise(by):
            assert later["prev"] == earlier["by"], f"{eid}: {later['step']} ran on another result"
    return starts


@pytest.mark.timeout(300)
@pytest.mark.parametrize("count", [2, 3])
async def test_workers_split_1000_executions(tmp_path: Path, count: int) -> None:
    async with workers(tmp_path, count) as group:
        ids = await start_executions(group.url)
        await until_finished(group.url, group, 1.0, timeout=180)
        pids = {p.pid for p in group.procs}
        stored = await recorded(group.url)
    log = list(invocations(tmp_path))
    starts = check_exactly_once(ids, stored, log)
    # nothing crashed: every step ran exactly once
    assert {k: len(v) for k, v in starts.items() if len(v) != 1} == {}
    by_worker = defaultdict(int)
    for item in log:
        by_worker[item.pid] += item.kind == "start"
    assert set(by_worker) == pids, f"every worker took a share: {dict(by_worker)}"


@pytest.mark.timeout(300)
async def test_a_killed_workers_executions_finish_on_the_others(tmp_path: Path) -> None:
    ttl = 2.0
    async with workers(tmp_path, 3, lease_ttl=ttl, step_delay=0.05) as group:
        ids = await start_executions(group.url)
        await until_finished(group.url, group, 0.2, timeout=120)
        victim = group.procs[0]

        def in_flight() -> int:
            started, finished = set(), set()
            for item in invocations(tmp_path):
                if item.pid == victim.pid:
                    (started if item.kind == "start" else finished).add(item.token)
            return len(started - finished)

        while True:
            # frozen, it cannot finish the steps seen started: kill it in the middle
            victim.send_signal(signal.SIGSTOP)
            if in_flight():
                break
            victim.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.01)
        # read what it holds while it is stopped: once it is dead, the others free its
        # leases at their next heartbeat, which may come before any read after the kill
        conn = await connect(group.url)
        try:
            held = await conn.fetch(
                "SELECT id FROM microsaga_executions WHERE owner LIKE $1 AND status IN (0, 1, 6)",
                f"%:{victim.pid}:%",
            )
        finally:
            await conn.close()
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.wait()
        assert held, "the killed worker held executions"
        group.procs = group.procs[1:]
        await until_finished(group.url, group, 1.0, timeout=180)
        stored = await recorded(group.url)
        conn = await connect(group.url)
        try:
            last = await conn.fetchval(
                "SELECT max(updated_at) FROM microsaga_executions WHERE id = ANY($1::text[])",
                [r[0] for r in held],
            )
        finally:
            await conn.close()
    assert last - killed_at < ttl + 5.0, f"took over in {last - killed_at:.1f}s"
    log = list(invocations(tmp_path))
    starts = check_exactly_once(ids, stored, log)
    again = {k: v for k, v in starts.items() if len(v) > 1}
    # the steps the victim was running ran again, with the same key, elsewhere
    returned = {i.token for i in log if i.kind == "done"}
    cut = {
        i.key for i in log if i.pid == victim.pid and i.kind == "start" and i.token not in returned
    }
    assert cut, "the victim was killed in the middle of a step"
    assert cut <= set(again)
    for key, runs in again.items():
        assert runs[0].pid == victim.pid, f"{key} ran twice without a crash: {runs}"
        assert all(r.pid != victim.pid for r in runs[1:])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("action", ["suspend", "abort"])
async def test_suspend_and_abort_from_another_process_reach_a_waiting_worker(
    tmp_path: Path, action: str
) -> None:
    """The worker process waits a minute before retrying a failed step and polls every
    30 s: only the notification can tell it in time that this process suspended or
    aborted the execution (the bound below is far under both)."""
    async with (
        workers(tmp_path, 1, extra_env={"MICROSAGA_POLL_INTERVAL": "30"}) as group,
        Flow(group.url, worker=False) as flow,
    ):
        reserve = FunctionStep(pg_steps.reserve, compensate=FunctionStep(pg_steps.release))
        retry = Retry(max_attempts=3, initial_interval=60.0, jitter=False)
        flaky = FunctionStep(pg_steps.flaky, requires=[reserve], retry=retry)
        wf = await flow.workflow_create("waiting", reserve, flaky)
        eid = await wf.execute({}, async_=True)
        key = f"{eid}:{flaky.id}"

        def started(wanted: str) -> list[Invocation]:
            found = (tmp_path / "steps.log").exists()
            every = invocations(tmp_path) if found else iter(())
            return [i for i in every if i.key == wanted and i.kind == "start"]

        await eventually(lambda: started(key), timeout=30)  # failed once: waiting now
        await (flow.suspend(eid) if action == "suspend" else flow.abort(eid))

        async def acted_on() -> bool:
            info = await flow.execution(eid)
            if action == "abort":  # rolled back by the worker
                return info.status is Status.ABORTED
            # the worker cut its wait short and recorded the step as not run again
            return info.steps[flaky.id].status is Status.PENDING

        await eventually(acted_on, timeout=5)
        info = await flow.execution(eid)
        if action == "abort":
            assert info.steps[reserve.id].status is Status.COMPENSATED
            assert len(started(f"{eid}:{reserve.id}:compensate")) == 1
        else:
            assert info.status is Status.SUSPEND
            assert "flaky: fails every time" in (info.steps[flaky.id].error or "")
            conn = await connect(group.url)
            try:
                owner = await conn.fetchval(
                    "SELECT owner FROM microsaga_executions WHERE id = $1", eid
                )
            finally:
                await conn.close()
            assert owner is None  # settled: the worker let the lease go
        assert len(started(key)) == 1  # never tried again


@pytest.mark.timeout(300)
async def test_workers_ride_out_a_postgresql_restart(tmp_path: Path) -> None:
    if shutil.which("pg_ctlcluster") is None:
        skip_or_fail("restarting PostgreSQL needs pg_ctlcluster")
    versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
    if len(versions) != 1:
        skip_or_fail(f"cannot tell which PostgreSQL cluster to restart: {versions}")
    restart = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "restart"]
    async with workers(tmp_path, 2, step_delay=0.05) as group:
        ids = await start_executions(group.url)
        await until_finished(group.url, group, 0.25, timeout=120)
        before = await counts(group.url)
        done = subprocess.run(restart, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        await until_finished(group.url, group, 1.0, timeout=180)
        assert all(p.poll() is None for p in group.procs), "the workers kept running"
        stored = await recorded(group.url)
    assert sum(before.get(s, 0) for s in FINISHED) < EXECUTIONS, "restarted mid-run"
    check_exactly_once(ids, stored, list(invocations(tmp_path)))
