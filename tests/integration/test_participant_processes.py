"""A participant run as a user runs it: ``uvicorn module:participant`` processes, here
two of one service sharing a SQLiteDedupeStore, as behind a load balancer.

The same Idempotency-Key reaching both at once (a step retried after its timeout
while the first attempt still runs) runs the handler once; typed handlers answer
through the real server as well.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from microsaga import CallStep, ExecutionFailedError, Flow, Message, Retry

from ..helpers import eventually, free_port

SERVICE = """
import asyncio, os
import msgspec
from microsaga.participant import Participant, SQLiteDedupeStore

inventory = Participant(dedupe=SQLiteDedupeStore(os.environ["DEDUPE_DB"]))

class Order(msgspec.Struct):
    order_id: int

@inventory.handler("Inventory.Reserve")
async def reserve(order: Order) -> dict:
    with open(os.environ["RUNS"], "a") as f:
        f.write(f"{order.order_id}\\n")
    await asyncio.sleep(float(os.environ["SLOW"]))
    return {"reservation": f"R-{order.order_id}"}
"""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    (tmp_path / "inventory_svc.py").write_text(SERVICE)
    runs = tmp_path / "runs.txt"
    runs.touch()
    env = {
        "DEDUPE_DB": str(tmp_path / "dedupe.db"),
        "RUNS": str(runs),
        "SLOW": "1.0",
        "PATH": "/usr/bin:/bin",
    }
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "inventory_svc:inventory", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports], runs
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


async def _up(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/Inventory/Reserve")).status_code == 405
    except httpx.TransportError:
        return False


@pytest.mark.timeout(60)
async def test_two_processes_run_a_key_once_and_the_retried_step_gets_the_answer(
    service: tuple[list[str], Path],
) -> None:
    (first, second), runs = service
    for url in (first, second):
        await eventually(lambda url=url: _up(url), timeout=20)
    key = {"Idempotency-Key": "e1:inventory.Inventory.Reserve"}
    async with httpx.AsyncClient(timeout=10) as client:
        running = asyncio.create_task(
            client.post(f"{first}/Inventory/Reserve", json={"order_id": 7}, headers=key)
        )
        await eventually(lambda: runs.read_text() == "7\n")
        busy = await client.post(f"{second}/Inventory/Reserve", json={"order_id": 7}, headers=key)
        answer = await running
    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "in_progress"
    assert busy.headers["retry-after"] == "1"
    assert answer.json() == {"reservation": "R-7"}

    # the step whose first attempt went to `first`: its retry on `second` is replayed
    async with Flow("memory://", services={"inventory": second}) as flow:
        step = CallStep("inventory", "Inventory", "Reserve", retry=Retry(5, jitter=False))
        wf = await flow.workflow_create("w", step)
        eid = await wf.execute(Message({"order_id": 7}), execution_id="e1")
        info = await flow.execution(eid)
    response = info.steps["inventory.Inventory.Reserve"].response
    assert response is not None
    assert response.json() == {"reservation": "R-7"}
    assert runs.read_text() == "7\n"


@pytest.mark.timeout(60)
async def test_a_typed_handler_refuses_a_body_that_does_not_fit(
    service: tuple[list[str], Path],
) -> None:
    (first, _), runs = service
    await eventually(lambda: _up(first), timeout=20)
    async with Flow("memory://", services={"inventory": first}) as flow:
        step = CallStep("inventory", "Inventory", "Reserve", retry=Retry(5, jitter=False))
        wf = await flow.workflow_create("w", step)
        with pytest.raises(ExecutionFailedError, match=r"invalid_input.*\$\.order_id"):
            await wf.execute(Message({"order_id": "seven"}))
        info = (await flow.executions())[0]
    assert info.steps["inventory.Inventory.Reserve"].attempts == 1  # final: not retried
    assert runs.read_text() == ""


@pytest.mark.timeout(60)
async def test_a_key_claimed_by_a_killed_process_is_answered_by_another_at_once(
    tmp_path: Path,
) -> None:
    """The process answering a key is SIGKILLed mid-handler, leaving its claim (a
    minute long) behind: the step's retry, on the other process, runs the handler
    there at once instead of getting 503 in_progress until the claim expires."""
    (tmp_path / "inventory_svc.py").write_text(SERVICE)
    runs = tmp_path / "runs.txt"
    runs.touch()
    env = {"DEDUPE_DB": str(tmp_path / "dedupe.db"), "RUNS": str(runs), "PATH": "/usr/bin:/bin"}
    urls, procs = [], []
    for slow in ("60", "0"):  # the first hangs in the handler, the second answers
        port = free_port()
        urls.append(f"http://127.0.0.1:{port}")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "inventory_svc:inventory", "--port", str(port)],
                cwd=tmp_path,
                env={**env, "SLOW": slow},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for url in urls:
            await eventually(lambda url=url: _up(url), timeout=20)
        key = {"Idempotency-Key": "e1:inventory.Inventory.Reserve"}
        async with httpx.AsyncClient(timeout=10) as client:
            cut = asyncio.create_task(
                client.post(f"{urls[0]}/Inventory/Reserve", json={"order_id": 7}, headers=key)
            )
            await eventually(lambda: runs.read_text() == "7\n")
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            with pytest.raises(httpx.TransportError):
                await cut
            retried = await client.post(
                f"{urls[1]}/Inventory/Reserve", json={"order_id": 7}, headers=key
            )
            assert retried.status_code == 200, retried.text
            assert retried.json() == {"reservation": "R-7"}
            again = await client.post(
                f"{urls[1]}/Inventory/Reserve", json={"order_id": 7}, headers=key
            )
        assert again.json() == {"reservation": "R-7"}  # replayed: run twice in all
        assert runs.read_text() == "7\n7\n"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=10)
