"""``microsaga worker --retention 30d`` prunes as ``Flow(retention=...)`` does: an
operator running workers from the command line keeps the store from growing without
a cron job of ``microsaga prune``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from microsaga import ExecutionNotFoundError, Flow, FunctionStep, Message
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(120)


async def ok(msg: Message) -> dict[str, bool]:
    return {"ok": True}


async def test_a_worker_with_retention_prunes_what_finished_before_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    async with Flow(url, clock=lambda: time.time() - 7200) as past:  # two hours ago
        old = await (await past.workflow_create("w", FunctionStep(ok, id="ok"))).execute({})
    async with Flow(url) as now:
        recent = await (await now.workflow_create("w", FunctionStep(ok, id="ok"))).execute({})
    worker = subprocess.Popen(
        [sys.executable, "-m", "microsaga", "--store", url, "worker", "--retention", "1h"],
        stderr=subprocess.DEVNULL,
    )
    try:
        async with Flow(url, worker=False) as reader:

            async def pruned() -> bool:
                assert worker.poll() is None, "the worker stopped"
                try:
                    await reader.execution(old)
                except ExecutionNotFoundError:
                    return True
                return False

            await eventually(pruned, timeout=60)
            assert (await reader.execution(recent)).id == recent  # within the hour: kept
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_retention_that_is_no_duration_is_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    for bad in ("30days", "0s"):
        done = subprocess.run(
            [sys.executable, "-m", "microsaga", "--store", url, "worker", "--retention", bad],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2
        assert done.stderr.startswith("error[configuration]: --retention: "), done.stderr
