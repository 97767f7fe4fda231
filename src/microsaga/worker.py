"""The imperative shell around the engine: runs, leases, heartbeats, recovery.

A :class:`Worker` belongs to one :class:`~microsaga.Flow`. It runs the executions
the flow starts, and (with ``Flow(worker=True)``) claims executions whose lease is
free or expired: new ones created by flows that do not run them, resumed ones, and
those whose worker died. It renews the leases it holds, and passes suspend, resume
and abort requests made by any process to the runs they concern.

Dead workers of the same machine: a default worker id is ``host:pid:nonce:machine``,
``machine`` a short hash of the kernel's boot id and of the PID namespace (Linux; no
such part elsewhere). When a worker starts, and at every heartbeat, it looks at the
owners of the leases held in the store: one with its own ``machine`` part whose pid
is gone (or a zombie) died, since pids are only meaningful in the same namespace of
the same boot, and its leases are freed at once instead of expiring. A pid that is
alive, even reused by another program, is left alone: its leases expire as usual.
Stable ids chosen by the user are never taken for dead.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import socket
import uuid
from typing import TYPE_CHECKING, Any

from ._aio import Slots, wait_event
from ._eager import EagerStarter
from ._engine.records import COMPENSATION
from ._engine.saga import ExecState
from ._groupcommit import Committer
from ._run import Run
from .errors import MicrosagaError
from .status import PENDING, RUNNING
from .stores.base import Claim, StoredExecution

if TYPE_CHECKING:
    from ._engine.plan import RunGraph
    from .flow import Flow

__all__ = ["Worker"]

log = logging.getLogger("microsaga.worker")

# a default worker id: host:pid:nonce, then :machine where the machine can be told
_DEFAULT_ID = re.compile(r"(?P<pid>[0-9]+):[0-9a-f]{8}:(?P<machine>[0-9a-f]{12})")


@functools.cache
def machine() -> str | None:
    """This boot of this machine and this PID namespace, hashed; None when unknown.

    Two processes with the same value see the same pids: a pid gone for one is gone.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux, or no /proc
        return None
    return hashlib.blake2s(f"{boot}:{namespace}".encode(), digest_size=6).hexdigest()


def default_worker_id() -> str:
    nonce = uuid.uuid4().hex[:8]
    found = machine()
    tail = f":{found}" if found is not None else ""
    return f"{socket.gethostname()}:{os.getpid()}:{nonce}{tail}"


def dead_here(owner: str) -> bool:
    """Whether ``owner`` is a default worker id of this machine whose process is gone."""
    here = machine()
    if here is None:
        return False
    _, sep, tail = owner.partition(":")  # after the host name
    found = _DEFAULT_ID.fullmatch(tail) if sep else None
    if found is None or found["machine"] != here:
        return False  # a stable id, or another machine's (or namespace's) worker
    return not _alive(int(found["pid"]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, OSError):
        return True  # cannot tell: leave its leases to expire
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[:1]
    except OSError:  # exited just now
        return False
    return state not in (["Z"], ["X"])  # a zombie is dead, only not reaped yet


class Worker:
    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        opts = flow.options
        # a stable id (Flow(worker_id=...)) lets a restarted worker take back at once what
        # its previous life left, instead of waiting for those leases to expire
        self.id = opts.worker_id or default_worker_id()
        self.clock = opts.clock
        self._max_executions = opts.max_executions
        self.store = flow.store
        self.committer = Committer(
            self.store, retry_for=opts.store_retry_for, quiet=lambda: len(self.runs) <= 1
        )
        self.slots = Slots(opts.concurrency)
        self.runs: dict[str, Run] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._poke = asyncio.Event()
        self._control_seq = 0
        self._to_release: dict[str, int] = {}
        self._eager = EagerStarter("microsaga-idle")

    # lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if not self.flow.options.worker:
            return
        if self.flow.options.worker_id is not None:
            # nothing runs here yet: what this id holds was left by a previous life
            freed = await self.store.release_all(self.id)
            if freed:
                log.info("worker %s: took back %d executions of its previous run", self.id, freed)
        await self._free_dead_owners()
        _, self._control_seq = await self.store.controls(2**62)
        await self.store.watch(self.poke)
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._poll_loop(), name="microsaga-poll"),
            loop.create_task(self._heartbeat_loop(), name="microsaga-heartbeat"),
        ]

    async def stop(self) -> None:
        self._eager.close()
        for task in self._loops:
            task.cancel()
        runs = list(self.runs.values())
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for run in runs:
            if run.outcome is None:
                try:
                    await self.store.release(run.id, run.token, 0.0)
                except MicrosagaError as exc:
                    log.warning("could not release %s: %s", run.id, exc)
        if self._loops:
            await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

    # runs -----------------------------------------------------------------------

    def launch(self, run: Run, *, eager: bool = False) -> None:
        """Run ``run`` in a task of its own; ``eager``: one that starts in this call
        and runs until the run first waits (see ``_eager``), so that a run
        which never waits (the memory store, steps that do not wait) is over on return."""
        self.runs[run.id] = run
        if eager:
            task = self._eager.start(run.main(), "microsaga-", run.id)
            if task is None:  # it ran to its end already
                self._ended(run, None)
                return
        else:
            task = asyncio.get_running_loop().create_task(run.main(), name=f"microsaga-{run.id}")
        run.task = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._ended(run, t))

    def _ended(self, run: Run, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.discard(task)
        if self.runs.get(run.id) is run:
            del self.runs[run.id]
        if not run.ended:
            run.end(None)
        if run.outcome is None and self._loops:
            # the run gave up (store away too long, lost lease, a bug): free its lease,
            # else the heartbeat would renew it forever and nobody would take it over
            self._to_release[run.id] = run.token
        if len(self.runs) + 1 >= self._max_executions:
            self._poke.set()  # it was full: there is room to claim again

    async def adopt(self, claims: list[Claim]) -> None:
        """Run the executions this worker just claimed (read in one go)."""
        # a claim never takes this worker's own executions (see Store.claim); this is
        # only a guard against running one twice
        claims = [c for c in claims if c.execution_id not in self.runs]
        if not claims:
            return
        try:
            loaded = await self.store.load_many([c.execution_id for c in claims])
        except MicrosagaError as exc:
            log.warning("could not load %d claimed executions: %s", len(claims), exc)
            self._to_release.update((c.execution_id, c.token) for c in claims)
            return
        for claim in claims:
            stored = loaded.get(claim.execution_id)
            if stored is not None and stored.token == claim.token:
                await self._adopt_one(stored)

    async def _adopt_one(self, stored: StoredExecution) -> None:
        try:
            plan = self.flow._plan_for(stored.definition)
            graph = plan.graph(stored.start_step, stored.reverse)
        except MicrosagaError as exc:
            # another process may have the code this one lacks: let it have a go
            log.warning("execution %s cannot run in this process: %s", stored.id, exc)
            until = self.flow.clock() + self.flow.options.lease_ttl * 3
            try:
                await self.store.release(stored.id, stored.token, until)
            except MicrosagaError:
                self._to_release[stored.id] = stored.token
            return
        run = Run(
            self,
            plan,
            graph,
            stored.id,
            stored.workflow_id,
            stored.request,
            stored.token,
            _state(stored, graph),
            stored.step_timeout,
            stored.deadline_at,
        )
        self.launch(run)

    def deadline_passed(self, run: Run) -> None:
        async def abort() -> None:
            try:
                await run.abort_for_deadline()
            except MicrosagaError as exc:
                log.warning("execution %s: deadline abort failed: %s", run.id, exc)

        task = asyncio.get_running_loop().create_task(abort())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def poke(self) -> None:
        """Look for work and control requests now rather than at the next poll."""
        self._poke.set()

    # loops -------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        opts = self.flow.options
        last_prune = 0.0
        while True:
            try:
                await self._controls()
                claimed = await self._claim()
                now = self.flow.clock()
                if now - last_prune > 60:
                    last_prune = now
                    await self.store.prune_controls(now - 600)
            except MicrosagaError as exc:
                log.warning("worker %s: %s", self.id, exc)
                claimed = 0
            except Exception:  # a bug must not stop the worker from polling
                log.exception("worker %s: polling failed", self.id)
                claimed = 0
            if claimed:
                continue  # a full batch: there may be more waiting
            await wait_event(self._poke, opts.poll_interval)
            self._poke.clear()

    async def _controls(self) -> None:
        ids, self._control_seq = await self.store.controls(self._control_seq)
        for eid in dict.fromkeys(ids):
            run = self.runs.get(eid)
            if run is None:
                continue
            found = await self.store.get_status(eid)
            if found is not None:
                run.control(*found)

    async def _claim(self) -> int:
        """Claim what this worker has room for; the count when it took a full batch."""
        opts = self.flow.options
        room = opts.max_executions - len(self.runs)
        if room <= 0:
            return 0
        limit = min(room, 256)
        claims = await self.store.claim(self.id, self.flow.clock(), opts.lease_ttl, limit)
        await self.adopt(claims)
        return len(claims) if len(claims) == limit else 0

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flow.options.heartbeat_interval)
            try:
                await self._heartbeat()
            except MicrosagaError as exc:
                log.warning("worker %s: lease renewal failed: %s", self.id, exc)
            except Exception:  # a bug must not stop the leases from being renewed
                log.exception("worker %s: lease renewal failed", self.id)
            try:
                await self._free_dead_owners()
            except Exception:
                log.exception("worker %s: looking for dead workers failed", self.id)

    async def _heartbeat(self) -> None:
        await self._release_abandoned()
        started = self.flow.clock()
        owned = list(self.runs.values())
        ids = [r.id for r in owned]
        held = await self.store.renew(self.id, ids, started, self.flow.options.lease_ttl)
        for run in owned:
            if run.id not in held and not run.ended and not run.releasing:
                log.warning("execution %s: lease lost", run.id)
                run.lose()

    async def _free_dead_owners(self) -> None:
        """Free the leases of dead workers of this machine (see the module docstring),
        so they are claimed now rather than when they expire. A store error is logged:
        the next heartbeat looks again."""
        freed = 0
        try:
            for owner in await self.store.lease_owners():
                if owner != self.id and dead_here(owner):
                    count = await self.store.release_all(owner)
                    if count:
                        log.info(
                            "worker %s: freed %d executions of dead worker %s",
                            self.id,
                            count,
                            owner,
                        )
                    freed += count
        except MicrosagaError as exc:
            log.warning("worker %s: could not look for dead workers: %s", self.id, exc)
        if freed:
            self._poke.set()

    async def _release_abandoned(self) -> None:
        for eid, token in list(self._to_release.items()):
            if eid in self.runs:  # taken up again meanwhile
                del self._to_release[eid]
                continue
            try:
                await self.store.release(eid, token, 0.0)
            except MicrosagaError as exc:
                log.warning("execution %s: release failed, will retry: %s", eid, exc)
                return
            del self._to_release[eid]
            self._poke.set()  # claimable now, by this worker too


def _state(stored: StoredExecution, graph: RunGraph) -> ExecState:
    state = ExecState(stored.status, stored.abort, steps=graph.fresh_steps())
    for rec in stored.records:
        if rec.phase == COMPENSATION:
            state.comps[rec.step_id] = rec
        elif rec.step_id in state.steps:
            state.steps[rec.step_id] = rec
    if state.status is PENDING:
        state.status = RUNNING
    return state
