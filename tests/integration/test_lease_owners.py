"""Dead workers of this machine: their leases are freed at once, not left to expire.

A default worker id carries the pid and a hash of this boot and PID namespace; a worker
whose pid is gone (or a zombie) is dead. Live pids, other machines' workers and stable
ids chosen by users are left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from microsaga import Flow, FunctionStep, Message, Status
from microsaga.worker import default_worker_id, machine, running_here
from tests.helpers import eventually

pytestmark = pytest.mark.skipif(
    machine() is None, reason="dead workers are told only on Linux (/proc)"
)


def worker_id(pid: int, where: str | None = None) -> str:
    return f"host:{pid}:{uuid.uuid4().hex[:8]}:{where or machine()}"


@pytest.fixture
def zombie() -> Iterator[int]:
    """The pid of a child process that exited and was not reaped yet."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while True:  # Popen.poll would reap it: read its state instead
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                break
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    yield child.pid
    child.wait()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid is free
    return child.pid


def test_default_worker_ids_tell_the_machine() -> None:
    me = default_worker_id()
    assert me.split(":")[1] == str(os.getpid())
    assert me.endswith(f":{machine()}")
    assert me != default_worker_id()  # two flows of one process differ


def test_only_default_ids_of_this_machine_with_a_gone_pid_are_dead(zombie: int) -> None:
    gone = dead_pid()
    assert running_here(worker_id(gone)) is False
    assert running_here(worker_id(zombie)) is False  # exited, only not reaped yet
    assert running_here(worker_id(os.getpid())) is True  # another flow of this process
    assert running_here(worker_id(1)) is True  # alive, someone else's
    assert running_here(worker_id(gone, where="0123456789ab")) is None  # another machine
    assert running_here(f"host:{gone}:0123abcd") is None  # no machine part: cannot tell
    for stable in ("api-1", f"{gone}", f"orders:{gone}", f"h:{gone}:x:{machine()}"):
        assert running_here(stable) is None


async def _step(msg: Message) -> object:
    return {"ok": True}


async def test_a_starting_worker_frees_the_leases_of_dead_workers_of_this_machine() -> None:
    url = f"memory://dead-owners-{uuid.uuid4().hex}"
    dead, alive = worker_id(dead_pid()), worker_id(os.getpid())
    async with Flow(url, worker=False) as creator:
        wf = await creator.workflow_create("order", FunctionStep(_step, id="step"))
        ids = [await wf.execute({"n": n}, async_=True) for n in range(6)]
        store = creator.store
        # held for an hour by a worker that died and by one that is alive
        now = time.time()
        assert len(await store.claim(dead, now, 3600.0, 4)) == 4
        assert len(await store.claim(alive, now, 3600.0, 2)) == 2
    async with Flow(url, lease_ttl=60.0) as flow:

        async def dead_ones_finished() -> bool:
            statuses = [(await flow.execution(e)).status for e in ids[:4]]
            return statuses == [Status.SUCCESS] * 4

        await eventually(dead_ones_finished, timeout=10)
        assert await flow.store.lease_owners() == {alive}
        assert [(await flow.execution(e)).status for e in ids[4:]] == [Status.RUNNING] * 2


async def test_a_running_worker_frees_them_at_its_heartbeat() -> None:
    url = f"memory://dead-owners-{uuid.uuid4().hex}"
    # polling far away: the worker takes the execution only once its heartbeat freed it
    async with (
        Flow(url, lease_ttl=60.0, heartbeat_interval=0.05, poll_interval=30.0) as flow,
        Flow(url, worker=False) as creator,
    ):
        wf = await creator.workflow_create("order", FunctionStep(_step, id="step"))
        eid = await wf.execute({}, async_=True)
        (claim,) = await creator.store.claim(worker_id(dead_pid()), time.time(), 3600.0, 1)
        assert claim.execution_id == eid
        done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
