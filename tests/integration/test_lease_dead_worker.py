"""A worker process SIGKILLed: another worker on the same machine takes its executions
over at once, without waiting for their leases (a minute here) to expire.

The killed worker is left a zombie (not reaped) until the end: dead all the same. The
other worker finds it when it starts, or at its next heartbeat if it was running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Status
from microsaga.worker import machine
from tests.helpers import eventually
from tests.integration import pg_steps
from tests.integration.pg import empty_store

ROOT = Path(__file__).resolve().parents[2]
EXECUTIONS = 20
LEASE_TTL = "60"  # far longer than the wait below: only the detection can explain it

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(machine() is None, reason="dead workers are told only on Linux (/proc)"),
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty store; every Flow or store opened on it shares its data."""
    async with empty_store(request.param, tmp_path) as url:
        yield url


class Worker:
    """``python -m microsaga worker`` on the store, its output in a file."""

    def __init__(self, url: str, folder: Path, name: str, **env: str) -> None:
        self.output = folder / f"{name}.log"
        with self.output.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "microsaga", "--store", url, "worker"],
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("MICROSAGA_")},
                    "PYTHONPATH": os.pathsep.join(
                        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                    ),
                    "MICROSAGA_TEST_LOG": str(folder / "steps.log"),
                    "MICROSAGA_LEASE_TTL": LEASE_TTL,
                    **env,
                },
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    async def ready(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"the worker exited:\n{self.text()}"
            return "running executions" in self.text()

        await eventually(up, timeout=30)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def starts(folder: Path) -> dict[str, set[int]]:
    """``{idempotency key: pids that started it}`` from the steps' log."""
    out: dict[str, set[int]] = {}
    log = folder / "steps.log"
    for line in log.read_text().splitlines() if log.exists() else ():
        kind, key, token = line.split()
        if kind == "start":
            out.setdefault(key, set()).add(int(token.split("-")[0]))
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("found_at", ["start", "heartbeat"])
async def test_a_killed_workers_executions_are_taken_over_without_waiting_for_the_lease(
    store_url: str, tmp_path: Path, found_at: str
) -> None:
    async with Flow(store_url, worker=False) as flow:
        # the victim's steps never return: they are in flight when it is killed
        victim = Worker(store_url, tmp_path, "victim", MICROSAGA_TEST_STEP_DELAY="3600")
        heir: Worker | None = None
        try:
            await victim.ready()
            reserve = FunctionStep(pg_steps.reserve)
            wf = await flow.workflow_create(
                "order", reserve, FunctionStep(pg_steps.charge, requires=[reserve])
            )
            ids = [await wf.execute({"n": n}, async_=True) for n in range(EXECUTIONS)]
            keys = {f"{eid}:{reserve.id}" for eid in ids}
            await eventually(lambda: keys <= set(starts(tmp_path)), timeout=30)
            assert {p for k in keys for p in starts(tmp_path)[k]} == {victim.proc.pid}

            def spawn_heir() -> Worker:
                # heartbeats every second: the next one after the kill finds it
                return Worker(store_url, tmp_path, "heir", MICROSAGA_HEARTBEAT="1")

            if found_at == "heartbeat":
                heir = spawn_heir()
                await heir.ready()
            victim.proc.send_signal(signal.SIGKILL)  # not reaped: a zombie
            if heir is None:
                heir = spawn_heir()
                await heir.ready()

            async def all_finished() -> bool:
                done = await flow.executions(status=Status.SUCCESS, limit=EXECUTIONS)
                return len(done) == EXECUTIONS

            await eventually(all_finished, timeout=30)  # well within the lease TTL
            # the steps cut short ran again, with the same key, on the heir
            found = starts(tmp_path)
            assert all(found[k] == {victim.proc.pid, heir.proc.pid} for k in keys), found
        finally:
            if heir is not None:
                heir.stop()
            victim.proc.kill()
            victim.proc.wait()
