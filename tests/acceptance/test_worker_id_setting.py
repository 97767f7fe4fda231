"""``microsaga worker`` refusing a stable id that a live worker uses names where the id
came from, ``--id`` or ``MICROSAGA_WORKER_ID``, as every setting's error does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from microsaga import Flow, FunctionStep, Message
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(120)

gates: dict[str, asyncio.Event] = {}  # made in each test, on its event loop


async def held(msg: Message) -> dict[str, bool]:
    gates["started"].set()
    await gates["released"].wait()
    return {"ok": True}


def worker(url: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microsaga", "--store", url, "worker", *args],
        capture_output=True,
        text=True,
        timeout=45,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--id", "twin"], {}, "--id"),
        ([], {"MICROSAGA_WORKER_ID": "twin"}, "MICROSAGA_WORKER_ID"),
    ],
    ids=["option", "environment"],
)
async def test_an_id_in_use_is_named_as_the_operator_set_it(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    gates.update(started=asyncio.Event(), released=asyncio.Event())
    async with Flow(url, worker_id="twin", lease_ttl=6.0) as live:
        wf = await live.workflow_create("w", FunctionStep(held, id="a"))
        await wf.execute({}, async_=True)
        await eventually(gates["started"].is_set)
        refused = await asyncio.to_thread(worker, url, *args, env=env)
        gates["released"].set()
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"error[configuration]: {named}: 'twin' is in use: "), line
