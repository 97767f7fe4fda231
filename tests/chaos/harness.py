"""One chaos run: participants, worker processes, a store and a broker of the
harness's own, executions submitted through the public API, faults injected, and the
history handed to the checker.

Everything the run starts lives in its own temporary folder and on free loopback
ports; the workers are ``python -m microsaga worker`` processes, configured only
through ``MICROSAGA_*`` variables, so the harness exercises what a user deploys. The
faults are in :mod:`tests.chaos.scenarios`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microsaga import Flow, load_definition
from tests.chaos import brokers
from tests.chaos.checker import (
    FINISHED,
    Counters,
    Effect,
    Fault,
    Final,
    FinalStep,
    History,
    Invocation,
    Observation,
    Saga,
    check,
)
from tests.chaos.participants import read_records

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = "chaos-order"
TOPIC = "shipping.requested"
RESERVE, CHARGE, POINTS, CONFIRM = (
    "inventory.Inventory.Reserve",
    "payments.Payments.Charge",
    "points.Points.Add",
    "orders.Orders.Confirm",
)
SAGA = Saga(
    requires={
        RESERVE: (),
        CHARGE: (RESERVE,),
        POINTS: (RESERVE,),
        TOPIC: (CHARGE,),
        CONFIRM: (TOPIC, POINTS),
    },
    compensable=frozenset({RESERVE, CHARGE, POINTS}),
    publishes=frozenset({TOPIC}),
)


def definition(services: dict[str, str]) -> dict[str, Any]:
    """The order saga: reserve, then charge and points in parallel, the publish after
    the charge, and the confirmation (declined for ids ending ``-f``) last, so a
    declined order rolls back three compensable steps in reverse order."""
    retry = {"max_attempts": 60, "initial_interval": 0.05, "max_interval": 1.0}

    def call(step: str, undo: str | None, requires: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"call": step, "retry": retry, "timeout": 2}
        if requires:
            out["requires"] = requires
        if undo is not None:
            out["compensate"] = {"call": undo, "timeout": 2}
        return out

    return {
        "id": WORKFLOW,
        "services": services,
        "steps": [
            call(RESERVE, "inventory.Inventory.Release", []),
            call(CHARGE, "payments.Payments.Refund", [RESERVE]),
            call(POINTS, "points.Points.Remove", [RESERVE]),
            {"publish": TOPIC, "requires": [CHARGE], "retry": retry, "timeout": 5},
            call(CONFIRM, None, [TOPIC, POINTS]),
        ],
    }


@dataclass
class Params:
    """The size of a run. ``executions`` are submitted keeping ``in_flight`` unfinished
    at a time; the faults go on until every execution is submitted and, for the
    faults that count, at least ``min_faults`` were injected."""

    executions: int = 200
    in_flight: int = 100
    workers: int = 3
    min_faults: int = 2
    fail_rate: float = 0.1
    lease_ttl: float = 2.0
    max_executions: int = 300  # claimed per worker at once
    drain_timeout: float = 180.0  # after the faults, for every execution to finish
    max_duration: float = 600.0  # of the fault phase


@dataclass
class Report:
    scenario: str
    seed: str
    params: Params
    counters: Counters
    seconds: float
    folder: Path
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return self.counters.line(self.scenario)


class Workers:
    """``microsaga worker`` processes; a worker that dies is replaced (and counted)."""

    def __init__(self, folder: Path, env: dict[str, str], prefix: list[str] | None = None) -> None:
        self.folder, self.env, self.prefix = folder, env, prefix or []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0
        self.exits: list[tuple[int, int]] = []  # (pid, status) of deaths not ours
        self.killed: set[int] = set()

    def spawn(self) -> subprocess.Popen[bytes]:
        self.started += 1
        with open(self.folder / f"worker-{self.started}.log", "wb") as log:
            proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "microsaga", "worker"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def start(self, count: int) -> None:
        for _ in range(count):
            self.spawn()

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        self.killed.add(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def supervise(self, count: int) -> None:
        """Replace the workers that died (a kill of ours, or an exit of theirs)."""
        for proc in list(self.procs):
            if proc.poll() is not None:
                self.procs.remove(proc)
                if proc.pid not in self.killed:
                    self.exits.append((proc.pid, proc.returncode))
        while len(self.procs) < count:
            self.spawn()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        paths = sorted(self.folder.glob("worker-*.log"))
        return "\n".join(p.read_text(errors="replace") for p in paths)


class Run:
    """The parts of one chaos run; :meth:`execute` drives it, a scenario's ``faults``
    coroutine injects faults until ``stop`` is set."""

    def __init__(self, scenario: str, seed: str, params: Params, folder: Path) -> None:
        self.scenario, self.seed, self.params, self.folder = scenario, seed, params, folder
        self.rng = random.Random(f"{seed}:{scenario}")
        self.faults: list[Fault] = []
        self.store_url = f"sqlite:///{folder / 'store' / 'microsaga.db'}"
        self.broker_url = ""
        self.services: dict[str, str] = {}
        self.worker_prefix: list[str] = []  # a command the workers run under
        self.workers: Workers | None = None
        self.submitted: list[str] = []
        self.view: dict[str, str] = {}  # the latest status seen of each execution
        self.observations: list[Observation] = []
        self._last_seen: dict[str, tuple[str, float]] = {}
        self.stop = asyncio.Event()  # the submitter is done: faults may end
        self.enough = asyncio.Event()  # the faults reached ``min_faults``
        self.details: dict[str, Any] = {}
        self.long = False  # the long version of the scenario

    def fault(self, kind: str, detail: str = "", since: float | None = None) -> None:
        """Record a fault; ``since``: it began then and is over now (a restart)."""
        now = time.time()
        if since is None:
            self.faults.append(Fault(now, kind, detail))
        else:
            self.faults.append(Fault(since, kind, detail, until=now))

    @property
    def finished(self) -> int:
        return sum(1 for s in self.view.values() if s in FINISHED)

    def worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSAGA_")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
            MICROSAGA_STORE=self.store_url,
            MICROSAGA_SERVICES=json.dumps(self.services),
            MICROSAGA_BROKER=self.broker_url,
            MICROSAGA_LEASE_TTL=str(self.params.lease_ttl),
            MICROSAGA_MAX_EXECUTIONS=str(self.params.max_executions),
            MICROSAGA_POLL_INTERVAL="0.1",
        )
        return env

    # the run's phases -------------------------------------------------------------------

    async def submit(self, flow: Flow) -> None:
        """Submit every execution, keeping ``in_flight`` unfinished at a time; a
        submission that fails (the store or broker away) is retried with the same
        execution id, which makes it idempotent."""
        wf = await _retrying(lambda: flow.workflow_load(WORKFLOW))
        total = self.params.executions
        n = 0
        # at least ``executions``, and on until the faults are enough
        while n < total or not self.enough.is_set():
            room = self.params.in_flight - (len(self.submitted) - self.finished)
            if room <= 0:
                await asyncio.sleep(0.1)
                continue
            batch = []
            for _ in range(min(room, max(total - n, 1), 50)):
                fail = self.rng.random() < self.params.fail_rate
                batch.append((f"c{n:06d}" + ("-f" if fail else ""), n))
                n += 1

            async def one(eid: str, order: int) -> None:
                await _retrying(lambda: wf.execute({"order": order}, async_=True, execution_id=eid))

            await asyncio.gather(*(one(eid, order) for eid, order in batch))
            self.submitted += [eid for eid, _ in batch]

    async def observe(self, flow: Flow) -> None:
        """Read every execution's status once a second (what the store shows while
        the run goes on: the checker looks for a finished execution that changes)."""
        while True:
            try:
                async with asyncio.timeout(30):
                    found = await flow.executions(WORKFLOW, limit=1_000_000)
            except Exception:  # the store is away: the next round sees it again
                found = []
            now = time.time()
            for info in found:
                status = info.status.name
                self.view[info.id] = status
                if status in FINISHED:
                    seen = (status, info.updated_at.timestamp())
                    if self._last_seen.get(info.id) != seen:  # changes only: memory
                        self._last_seen[info.id] = seen
                        self.observations.append(Observation(now, info.id, *seen))
            await asyncio.sleep(0.5 if found else 1.0)

    async def finals(self, flow: Flow) -> dict[str, Final]:
        found = await _retrying(lambda: flow.executions(WORKFLOW, limit=1_000_000))
        out = {}
        for info in found:
            steps = {
                sid: FinalStep(
                    run.status.name,
                    run.compensation.status.name if run.compensation else None,
                    run.attempts,
                    run.compensation.attempts if run.compensation else 0,
                )
                for sid, run in info.steps.items()
            }
            out[info.id] = Final(info.id, info.status.name, info.updated_at.timestamp(), steps)
        return out

    async def execute(
        self,
        faults: Callable[[Run], Coroutine[Any, Any, None]],
        *,
        store: Callable[[Run], contextlib.AbstractAsyncContextManager[None]] | None = None,
        broker: str = "redis",
        proxied: tuple[str, ...] = (),
    ) -> Report:
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            (self.folder / "store").mkdir(parents=True, exist_ok=True)
            if store is not None:
                await stack.enter_async_context(store(self))
            server = await stack.enter_async_context(brokers.own(broker, self.folder / broker))
            self.details["broker"] = server
            self.broker_url = server.url
            urls = await stack.enter_async_context(participants(self.folder / "participants"))
            pid = urls.pop("_pid")
            dog = asyncio.create_task(watchdog(self, dict(urls), pid))
            stack.push_async_callback(_cancel, dog)
            self.services = dict(urls)
            if proxied:
                from tests.chaos.proxy import FaultyProxy

                for name in proxied:
                    proxy = FaultyProxy(int(urls[name].rsplit(":", 1)[1]), self.rng)
                    port = await proxy.start()
                    stack.push_async_callback(proxy.close)
                    self.details.setdefault("proxies", []).append(proxy)
                    self.services[name] = f"http://127.0.0.1:{port}"
            await brokers.prepare(broker, self.broker_url, TOPIC)
            flow = await stack.enter_async_context(
                Flow(self.store_url, broker=self.broker_url, worker=False)
            )
            wf = load_definition(definition(self.services))
            await flow.workflow_add(wf)
            await flow.workflow_save(wf)
            self.workers = Workers(self.folder, self.worker_env(), self.worker_prefix)
            stack.callback(self.workers.stop)
            self.workers.start(self.params.workers)
            observer = asyncio.create_task(self.observe(flow))
            stack.push_async_callback(_cancel, observer)
            supervisor = asyncio.create_task(self._supervise())
            stack.push_async_callback(_cancel, supervisor)
            submitter = asyncio.create_task(self.submit(flow))
            injector = asyncio.create_task(faults(self))
            async with asyncio.timeout(self.params.max_duration):
                await submitter
            await self._faults_done(injector)
            await self._drain()
            finals = await self.finals(flow)
            await _cancel(observer)
            await _cancel(supervisor)
            self.workers.stop()
            proxies = self.details.pop("proxies", [])
            for proxy in proxies:
                self.faults += proxy.faults
            published = await brokers.published(broker, self.broker_url, TOPIC)
        calls, done = read_records(self.folder / "participants" / "records.db")
        history = History(
            saga=SAGA,
            submitted=self.submitted,
            finals=finals,
            observations=self.observations,
            invocations=[Invocation(t, k, e, bool(r)) for t, k, e, r in calls],
            effects=[Effect(t, k, e) for t, k, e in done],
            published=published,
            faults=self.faults,
            lag=2 * self.params.lease_ttl,
        )
        counters = check(history)
        (self.folder / "faults.txt").write_text(
            "".join(f"{f.t:.3f} {f.kind} {f.key or '-'} {f.detail}\n" for f in self.faults)
        )
        (self.folder / "problems.txt").write_text("".join(p + "\n" for p in counters.problems))
        assert self.workers is not None
        self.details.pop("broker", None)
        self.details["worker_exits"] = len(self.workers.exits)
        if self.workers.exits:
            self.details["exit_statuses"] = dict(Counter(code for _, code in self.workers.exits))
        self.details["fault_kinds"] = dict(Counter(f.kind for f in self.faults))
        stalls = self.details.pop("participant_stalls", [])
        if stalls:  # the participants' own trouble, not microsaga's: stacks in their log
            self.details["participant_stalls"] = f"{len(stalls)}, first {stalls[0]}"
        return Report(
            self.scenario,
            self.seed,
            self.params,
            counters,
            time.monotonic() - started,
            self.folder,
            self.details,
        )

    async def _supervise(self) -> None:
        assert self.workers is not None
        while True:
            self.workers.supervise(self.params.workers)
            await asyncio.sleep(0.2)

    async def _faults_done(self, injector: asyncio.Task[None]) -> None:
        self.stop.set()
        async with asyncio.timeout(self.params.max_duration):
            await injector

    async def _drain(self) -> None:
        """Until every submitted execution finished (bounded), then a few lease
        periods more, so the observer sees any late write."""
        deadline = time.monotonic() + self.params.drain_timeout
        while self.finished < len(self.submitted) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        settle = time.monotonic() + 2 * self.params.lease_ttl + 1.0
        while time.monotonic() < settle:
            await asyncio.sleep(0.2)

    def should_stop(self, count: int) -> bool:
        """Whether the fault loop may end, having injected ``count`` faults: at least
        ``min_faults`` (the submitter goes on until then) and the submitter is done."""
        if count >= self.params.min_faults:
            self.enough.set()
        return self.stop.is_set() and self.enough.is_set()


async def _retrying(fn: Callable[[], Awaitable[Any]], attempts: int = 600) -> Any:
    for attempt in range(attempts):
        try:
            return await fn()
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def watchdog(run: Run, urls: dict[str, str], pid: int) -> None:
    """Ask each participant something cheap every 5 s (an unknown endpoint: 404); when
    one does not answer within 10 s, record it and have the process dump its stacks
    (SIGUSR1, ``faulthandler``) into ``participants.log``."""
    import httpx

    async with httpx.AsyncClient(timeout=10.0) as client:
        while True:
            await asyncio.sleep(5.0)
            for name, url in urls.items():
                try:
                    await client.post(f"{url}/Chaos/Ping", content=b"{}")
                except httpx.HTTPError as exc:
                    run.details.setdefault("participant_stalls", []).append(
                        f"{time.time():.0f} {name}: {type(exc).__name__}"
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR1)


@contextlib.asynccontextmanager
async def participants(folder: Path) -> AsyncIterator[dict[str, Any]]:
    """The participants' process; yields ``{service: url}``."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = folder / "ports.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSAGA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    with open(folder / "participants.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.participants", "--dir", str(folder),
             "--ports-file", str(ports)],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ports.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (folder / "participants.log").read_text(errors="replace")
                raise RuntimeError(f"the participants did not start:\n{text}")
            await asyncio.sleep(0.05)
        urls = json.loads(ports.read_text())
        urls["_pid"] = proc.pid
        yield urls
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def new_folder(scenario: str) -> Path:
    """A folder every user can traverse (PostgreSQL runs as ``postgres``, the
    read-only scenario's workers as ``nobody``)."""
    folder = Path(tempfile.mkdtemp(prefix=f"microsaga-chaos-{scenario}-"))
    folder.chmod(0o755)
    return folder


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
