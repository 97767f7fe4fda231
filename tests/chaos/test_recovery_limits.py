"""Recovery limits (issue 20 item 6): an execution whose worker dies every time it runs
a step (the step crashes the process) is given up after ``max_recovery_attempts``
(default 5): FAILURE with a clear error, rolled back, not taken over for ever.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Status
from tests.acceptance.procs import spawn
from tests.chaos import crash_steps

pytestmark = pytest.mark.slow
MAX_RECOVERY_ATTEMPTS = 5  # the default the issue asks for


@pytest.mark.timeout(180)
async def test_a_step_that_kills_every_worker_is_given_up(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    log = tmp_path / "steps.log"
    env = {"MICROSAGA_STORE": store, "MICROSAGA_LEASE_TTL": "1", "MICROSAGA_TEST_LOG": str(log)}
    async with Flow(store, worker=False) as flow:
        reserve = FunctionStep(crash_steps.reserve, compensate=FunctionStep(crash_steps.release))
        crash = FunctionStep(crash_steps.crash, requires=[reserve])
        wf = await flow.workflow_create("crashing", reserve, crash)
        await flow.workflow_save(wf)
        eid = await wf.execute({}, async_=True)
        deadline = time.monotonic() + 120
        status = Status.PENDING
        workers = 0
        # one worker at a time, each killed by the step, until the execution ends
        while not status.finished and time.monotonic() < deadline:
            proc = spawn("worker", output=tmp_path / f"worker-{workers}.out", extra_env=env)
            workers += 1
            while proc.poll() is None and time.monotonic() < deadline:
                found = await flow.store.get_status(eid)
                status = found[0] if found else Status.PENDING
                if status.finished:
                    break
                await asyncio.sleep(0.1)
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
            if workers > MAX_RECOVERY_ATTEMPTS + 3:
                break
        info = await flow.execution(eid)
    crashes = [line for line in log.read_text().splitlines() if line.startswith("crash ")]
    assert info.status is Status.FAILURE, f"{info.status.name} after {len(crashes)} crashes"
    assert len(crashes) <= MAX_RECOVERY_ATTEMPTS + 1
    assert "recovery" in (info.error or "").lower(), info.error
    assert info.steps[reserve.id].status is Status.COMPENSATED
