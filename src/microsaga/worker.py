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
Stable ids chosen by the user are never taken for dead; they belong to one live
worker: a worker refuses to start under an id whose leases another renews, and one
that finds executions held under its id that it does not run (two started at once)
says so, and frees them once their leases expire (see ``docs/reliability.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from . import _views
from ._aio import Slots, wait_event
from ._engine.plan import Plan, RetryPolicy, RunGraph
from ._engine.records import Abort, ExecState, Phase, StepRecord
from ._groupcommit import Committer
from ._health import StoreHealth
from ._process import alive as _alive
from ._process import machine
from ._run import Run, RunSpec
from .errors import (
    CodecError,
    ConfigurationError,
    ExecutionConflictError,
    ExecutionNotFoundError,
    InvalidTransitionError,
    MicrosagaError,
    RecoveryLimitError,
    SchemaVersionError,
    StoreError,
    one_line,
)
from .hooks import ExecutionEvent, Hooks
from .message import Message
from .observability.logs import about
from .settings import FlowOptions
from .status import Status
from .stores.base import (
    Claim,
    ControlAction,
    NewExecution,
    Store,
    StoredDefinition,
    StoredExecution,
    Transition,
    TransitionResult,
    prune_paced,
)
from .waits import child_id

if TYPE_CHECKING:
    from ._engine.plan import Node
    from .execution import Execution
    from .flow import Flow

__all__ = ["NewRun", "Started", "Worker"]

log = logging.getLogger("microsaga.worker")

# a default worker id: host:pid:nonce, then :machine where the machine can be told
_DEFAULT_ID = re.compile(r"(?P<pid>[0-9]+):[0-9a-f]{8}:(?P<machine>[0-9a-f]{12})")


def default_worker_id() -> str:
    nonce = uuid.uuid4().hex[:8]
    found = machine()
    tail = f":{found}" if found is not None else ""
    return f"{socket.gethostname()}:{os.getpid()}:{nonce}{tail}"


def running_here(owner: str) -> bool | None:
    """Whether ``owner``, a default worker id of this machine, has its process still
    running; None when that cannot be told (a stable id, another machine's worker)."""
    here = machine()
    if here is None:
        return None
    _, sep, tail = owner.partition(":")  # after the host name
    found = _DEFAULT_ID.fullmatch(tail) if sep else None
    if found is None or found["machine"] != here:
        return None  # a stable id, or another machine's (or namespace's) worker
    return _alive(int(found["pid"]))


class NewRun(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A new execution, as the flow hands it to the worker to create and run."""

    # gc=False, as Started: made for every execution, and in no cycle (nothing it
    # refers to refers back to it); the collector need not count or walk it

    execution_id: str
    workflow_id: str
    version: int | None
    definition_hash: str
    definition: bytes | None  # None when the store has it already
    step_ids: list[str]
    plan: Plan
    graph: RunGraph
    start_step: str | None
    reverse: bool
    request: Message
    step_timeout: float | None
    deadline: float | None  # seconds for the whole execution
    parent_id: str | None = None  # a sub-workflow's child: its parent
    redrive_of: str | None = None  # the execution it redrives


class Started(msgspec.Struct, frozen=True, gc=False):
    """What :meth:`Worker.start` did: created the execution (False: its id exists),
    and the run that runs it in this process, if any."""

    execution_id: str
    created: bool
    run: Run | None


class Worker:
    """Runs executions in this process: those its flow starts and, when the flow is a
    worker, those it claims from the store. It holds their leases, renews them, and
    passes suspend, resume and abort requests to the runs they concern.

    :meth:`start` (a new execution) and :meth:`adopt` (claimed ones) are the only
    places where an execution becomes a :class:`~microsaga._run.Run`; the worker is
    the runs' :class:`~microsaga._run.RunHost`.
    """

    waiting_every = 5.0  # seconds between counts of the steps waiting in the store
    _waiting_due = 0.0  # the loop's time they are counted next (see _count_waiting)
    _claimed_at = 0.0  # the time of the last claim: what came due before was seen
    fatal: MicrosagaError | None = None  # why it stopped on its own (see _halt)
    _halting: asyncio.Task[None] | None = None

    def __init__(
        self,
        *,
        flow: Flow,
        store: Store,
        options: FlowOptions,
        hooks: Hooks,
        plan_for: Callable[[StoredDefinition], Plan],
        notify: Callable[[str], None],
    ) -> None:
        self.flow = flow
        self.store = store
        self.options = options
        self.hooks = hooks
        # a stable id (Flow(worker_id=...)) lets a restarted worker take back at once what
        # its previous life left, instead of waiting for those leases to expire
        self.id = options.worker_id or default_worker_id()
        self.health = StoreHealth(options.clock)
        self.committer = Committer(
            store,
            retry_for=options.store_retry_for,
            quiet=lambda: len(self.runs) <= 1,
            hooks=hooks,
            health=self.health,
        )
        self.slots = Slots(options.concurrency)
        self.compensation_retry: RetryPolicy = options.compensation_retry
        self.clock = options.clock
        self.random = options.random
        self.runs: dict[str, Run] = {}
        self._plan_for = plan_for
        self._notify = notify
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._poke = asyncio.Event()
        self._control_seq = 0
        self._to_release: dict[str, int] = {}
        self._aborting: set[str] = set()  # deadline aborts requested, not yet done
        self._cannot_run: dict[str, str] = {}  # executions left for others, and why
        self._left: dict[str, float] = {}  # those not claimed here again until then
        self._rolling_back_children = 0  # runs waiting for a child's rollback: see _claim
        self._child_changes: dict[str, asyncio.Event] = {}  # by the child a run waits for
        self._dues: list[float] = []  # heap: the timers of what this worker parked
        # executions held under this stable id that this worker does not run: another's
        self._foreign: dict[str, tuple[int, float]] = {}
        self._namesake_told = 0.0  # when the namesake was last told of: once a minute
        self._due_call: asyncio.TimerHandle | None = None  # pokes at the earliest of them
        self.halted = asyncio.Event()  # set once it stopped on its own: see fatal

    # the run's host ---------------------------------------------------------------

    def status_changed(self, run: Run) -> None:
        if run.told is not run.state.status:  # each change told to hooks once
            run.told = run.state.status
            if self.hooks.execution_status:
                self.hooks.emit(self.hooks.execution_status, run.event())
        self._notify(run.id)
        changed = self._child_changes.get(run.id)
        if changed is not None:
            changed.set()
        parent = run.spec.parent_id
        if parent is not None and run.outcome is not None and run.outcome.status.finished:
            self._spawn(self._child_ended(parent))

    async def _child_ended(self, parent_id: str) -> None:
        """A sub-workflow's child finished: its parent looks at it now."""
        run = self.runs.get(parent_id)
        if run is not None and not run.releasing and not run.ended:
            run.poke()  # a park after this sees the child finished, and does not park
            return
        try:  # parked, or parking now: the wake comes after the park, in the store
            await self.store.wake(parent_id, self.clock())
        except MicrosagaError as exc:  # the parent looks at its child now and then
            log.warning("could not wake execution %s: %s", parent_id, exc, extra=about(parent_id))
        self.poke()

    # waiting steps: the run's host (see microsaga.waits) -----------------------------

    @property
    def can_park(self) -> bool:
        return self.options.claim and bool(self._loops)

    async def signals(self, execution_id: str) -> dict[str, Message]:
        return await self.store.signals(execution_id)

    async def park(self, run: Run, until: float, events: list[str], children: list[str]) -> bool:
        note = "waiting for " + ", ".join(sorted(events + children) or ["a timer"])
        parked = await self.store.park(run.id, run.spec.token, until, events, children, note)
        if parked:
            self._remind(until)
        return parked

    def _remind(self, due: float) -> None:
        """Look for work at a parked execution's due time: its timer fires then (SPEC
        section 8: within a second), however long the poll interval. A poll interval
        under a second finds it soon enough without."""
        if self.options.poll_interval <= 1.0 or not self._loops:
            return
        delay = due - self.clock()
        if delay > _REMIND_WITHIN:  # a wait for a signal alone: there is no timer
            return
        heapq.heappush(self._dues, due)
        if self._dues[0] == due:
            self._schedule_due()

    def _schedule_due(self) -> None:
        if self._due_call is not None:
            self._due_call.cancel()
            self._due_call = None
        if self._dues:
            delay = max(0.0, self._dues[0] - self.clock())
            self._due_call = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._due_call = None
        now = self.clock()
        while self._dues and self._dues[0] <= now:
            heapq.heappop(self._dues)
        self.poke()
        self._schedule_due()

    async def child(self, child_id: str) -> Execution | None:
        return await self.store.get_execution(child_id)

    async def stored_status(self, execution_id: str) -> tuple[Status, Abort] | None:
        found = await self.store.get_status(execution_id)
        return None if found is None else (found[0], Abort(found[1]))

    async def start_child(self, run: Run, node: Node, request: Message, attempt: int) -> None:
        await self.flow.start_child(run.id, node, request, attempt=attempt)

    async def abort_child(self, child_id: str) -> None:
        # the parent's rollback goes on once the child's is over: the steps its
        # SubflowStep requires are compensated after the child's (as after any
        # dependent's), and the parent ends after its child (see compensate_child)
        with self._waiting_for_child():
            try:
                await self.control(child_id, "abort")
            except ExecutionNotFoundError:
                return  # never started
            except InvalidTransitionError:
                # finished already; one that succeeded after its parent last looked at
                # it is undone as a unit now: its step, given up, is never compensated
                with contextlib.suppress(InvalidTransitionError):  # failed or aborted
                    await self.control(child_id, "compensate")
            await self._rolled_back(child_id)

    async def step_records(self, execution_id: str) -> list[StepRecord]:
        stored = await self.store.load(execution_id)
        return [] if stored is None else stored.records

    async def compensate_child(self, child_id: str) -> None:
        with self._waiting_for_child():
            try:
                await self.control(child_id, "compensate")
            except InvalidTransitionError:
                # rolling back already, or rolled back; or a retry of this compensation
                # (the parent resumed): a child whose rollback failed retries it, as
                # when its user resumes it
                found = await self.store.get_execution(child_id)
                if found is not None and found.status is Status.FAILURE and not found.compensated:
                    with contextlib.suppress(InvalidTransitionError):  # resumed meanwhile
                        await self.control(child_id, "resume")
            await self._rolled_back(child_id)

    @contextlib.contextmanager
    def _waiting_for_child(self) -> Iterator[None]:
        """A run waits for its child's rollback, which is claimed like any execution:
        meanwhile the parent runs nothing and leaves its place among the
        max_executions this worker holds to the child (else a worker full of such
        parents, one with a concurrency of 1, never claims the children and they all
        wait for ever)."""
        self._rolling_back_children += 1
        try:
            yield
        finally:
            self._rolling_back_children -= 1

    async def _rolled_back(self, child_id: str) -> None:
        """Wait for a child's rollback to end (taking it when this worker does not
        claim).

        Raises:
            MicrosagaError: the child is not undone: the parent's rollback stops above
                its SubflowStep, and a resume of the parent retries this rollback.
        """
        await self._take_back(child_id)
        found = await self._child_end(child_id)
        # undone: rolled back (ABORTED), or a child that failed on its own and rolled
        # itself back
        if found is not None and (found.status is Status.SUCCESS or not found.compensated):
            raise MicrosagaError(
                f"the rollback of child execution {child_id} failed: {found.error}"
            )

    async def _child_end(self, child_id: str) -> Execution | None:
        """The child once finished (None if there is none): woken when its status
        changes in this process, else looking again every ``poll_interval``."""
        changed = self._child_changes[child_id] = asyncio.Event()
        try:
            while True:
                changed.clear()
                found = await self.store.get_execution(child_id)
                if found is None or found.status.finished:
                    return found
                await wait_event(changed, self.options.poll_interval)
        finally:
            if self._child_changes.get(child_id) is changed:
                del self._child_changes[child_id]

    async def _take_back(self, child_id: str) -> None:
        """A child's rollback is claimed like any execution: a worker that does not
        claim (``Flow(claim=False)``, ``microsaga run``) takes this one itself, or it
        would wait for another worker."""
        if not self.options.claim:
            now = self.clock()
            ttl = self.options.lease_ttl
            await self.adopt(await self.store.claim(self.id, now, ttl, 1, only=[child_id]))

    def signalled(self, execution_id: str) -> None:
        """A signal for the execution was stored by this process: its run here, if
        any, looks at it; else the worker looks for work now (it may be parked)."""
        run = self.runs.get(execution_id)
        if run is not None:
            run.poke()
        else:
            self.poke()

    def deadline_passed(self, run: Run) -> None:
        if run.deadline_due() and run.id not in self._aborting:
            self._aborting.add(run.id)
            self._spawn(self.abort_for_deadline(run))

    def _deadlines(self) -> None:
        """Abort the runs whose deadline passed (a method, not a loop in the poll
        loop: a loop variable there would keep the last run, and all it holds, alive
        until the next poll)."""
        for run in list(self.runs.values()):
            if run.spec.deadline_at is not None:
                self.deadline_passed(run)

    async def abort_for_deadline(self, run: Run) -> None:
        try:
            await self.control(run.id, "abort", reason="deadline exceeded")
        except InvalidTransitionError:
            pass  # finished, or aborted already
        except MicrosagaError as exc:
            log.warning(
                "execution %s: deadline abort failed: %s",
                run.id,
                exc,
                extra=about(run.id, run.spec.workflow_id),
            )
        finally:
            self._aborting.discard(run.id)

    # lifecycle ------------------------------------------------------------------

    async def start_polling(self) -> None:
        """Claim executions from the store and take control requests of any process
        (a flow that is a worker)."""
        if self.options.worker_id is not None:
            await self._refuse_a_live_namesake()
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

    async def _refuse_a_live_namesake(self) -> None:
        """Refuse a stable id that another live worker uses: both would take each
        other's executions for their own (a claim skips its owner's rows), and freeing
        them below would fence the other's runs off mid-step.

        A live worker renews its leases every heartbeat, before they expire: leases
        under this id that are still valid are watched for one heartbeat (and until
        they expire, at the latest). Renewed: the id is taken. Not renewed: they were
        left by a previous life of this worker, which died. A namesake holding no lease
        (idle) cannot be told apart from no worker at all.

        Raises:
            ConfigurationError: another worker renews leases under this id.
        """
        expiry = await self.store.lease_expiry(self.id)
        now = self.clock()
        if expiry is None or expiry <= now:
            return  # nothing held, or nobody renewed it in time: dead
        loop = asyncio.get_running_loop()
        end = loop.time() + min(expiry - now, self.options.heartbeat_interval + 0.5)
        while loop.time() < end:
            await asyncio.sleep(min(0.2, max(0.0, end - loop.time())))
            latest = await self.store.lease_expiry(self.id)
            if latest is not None and latest > expiry:
                raise ConfigurationError(
                    "worker_id",
                    f"{self.id!r} is in use: another live worker renews leases under it; "
                    "give each worker an id of its own (or none), or stop the other first",
                )
            if latest is None:
                return  # it released them: stopped

    async def stop(self) -> None:
        """Hand back what this worker runs: no new step starts, the running ones finish
        and are recorded (for up to the lease's TTL), and the leases are released, so
        that another worker continues each execution without invoking a step twice.
        A step still running after that is left RUNNING: the next worker invokes it
        again, with the same idempotency key."""
        halting = self._halting
        if halting is not None and halting is not asyncio.current_task():
            await asyncio.wait([halting])  # it stops this worker: let it end first
        for task in self._loops:
            task.cancel()
        runs = list(self.runs.values())
        for run in runs:
            run.drain()
        running = [run.task for run in runs if run.task is not None and not run.task.done()]
        if running:
            await asyncio.wait(running, timeout=self.options.lease_ttl)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for run in runs:
            if run.outcome is None and not run.handed_back:
                try:
                    await self.store.release(run.id, run.spec.token, 0.0)
                except MicrosagaError as exc:
                    log.warning(
                        "could not release %s: %s",
                        run.id,
                        exc,
                        extra=about(run.id, run.spec.workflow_id),
                    )
        if self._loops:
            await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        if self._due_call is not None:
            self._due_call.cancel()
            self._due_call = None
        self._dues = []

    # runs -----------------------------------------------------------------------

    async def start(self, new: NewRun, *, eager: bool = False) -> Started:
        """Create a new execution and, when this flow runs executions, run it here
        (``eager``: start it in this call, see :meth:`_launch`)."""
        found = self.runs.get(new.execution_id)
        if found is not None:  # the id is running here already
            if found.spec.plan is not new.plan:  # of another workflow or definition?
                await self._same_execution(new)
            return Started(new.execution_id, False, found)
        now = self.clock()
        runs_here = self.options.worker
        status = Status.RUNNING if runs_here else Status.PENDING  # RUNNING: held here
        run = None
        if runs_here:
            spec = RunSpec(
                execution_id=new.execution_id,
                workflow_id=new.workflow_id,
                plan=new.plan,
                graph=new.graph,
                request=new.request,
                token=1,  # the lease of a new execution, held by its creator
                created_at=now,
                step_timeout=new.step_timeout,
                deadline_at=now + new.deadline if new.deadline is not None else None,
                parent_id=new.parent_id,
            )
            run = self._make_run(spec, status, [], fresh=True)
        unit = NewExecution(
            id=new.execution_id,
            workflow_id=new.workflow_id,
            version=new.version,
            definition_hash=new.definition_hash,
            definition=new.definition,
            step_ids=new.step_ids,
            request=new.request,
            status=status,
            owner=self.id if runs_here else None,
            lease_until=now + self.options.lease_ttl if runs_here else 0.0,
            created_at=now,
            start_step=new.start_step,
            reverse=new.reverse,
            step_timeout=new.step_timeout,
            deadline_at=now + new.deadline if new.deadline is not None else None,
            starts=run.first_steps() if run is not None else [],
            parent_id=new.parent_id,
            redrive_of=new.redrive_of,
        )
        created = self.committer.now(unit)  # a store whose commits never wait: no coroutine
        if created is None:
            created = await self.committer.later(unit)
        assert isinstance(created, bool)
        if not created:
            await self._same_execution(new)
            return Started(new.execution_id, False, self.runs.get(new.execution_id))
        hooks = self.hooks
        if hooks.execution_created:
            event = ExecutionEvent(
                execution_id=new.execution_id,
                workflow_id=new.workflow_id,
                status=status,
                at=now,
                created_at=now,
                request=new.request,
            )
            hooks.emit(hooks.execution_created, event)
        if run is not None:
            self._launch(run, eager=eager)
        else:
            self._notify(new.execution_id)
        return Started(new.execution_id, True, run)

    async def _same_execution(self, new: NewRun) -> None:
        """An execution id that exists is the idempotency key of that execution: reused
        with another workflow or definition, it is a conflict.

        Raises:
            ExecutionConflictError: naming the workflow the id belongs to.
        """
        found = await self.store.load(new.execution_id)
        if found is None:
            return
        if found.workflow_id != new.workflow_id:
            raise ExecutionConflictError(
                f"execution {new.execution_id} exists, of workflow {found.workflow_id}, "
                f"not {new.workflow_id}"
            )
        if found.definition.hash != new.definition_hash:
            raise ExecutionConflictError(
                f"execution {new.execution_id} exists, of another definition of workflow "
                f"{new.workflow_id}"
                + (f" (version {found.version})" if found.version is not None else "")
            )

    def _make_run(
        self,
        spec: RunSpec,
        status: Status,
        records: list[Any],
        *,
        fresh: bool,
        abort: Abort = Abort.NONE,
    ) -> Run:
        """An execution made into a run: the one place where that happens."""
        state = ExecState(status, abort, steps=spec.graph.fresh_steps(), comps={})
        items = []  # the runs of map steps: <id>[<i>]
        for rec in records:
            if rec.step_id not in state.steps and rec.step_id.endswith("]"):
                items.append(rec)
            elif rec.phase is Phase.COMPENSATE:
                state.comps[rec.step_id] = rec
            elif rec.step_id in state.steps:
                state.steps[rec.step_id] = rec
        run = Run(spec, state, self, fresh=fresh)
        for rec in items:
            run.waiting.items[rec.step_id, rec.phase] = rec
        return run

    def _launch(self, run: Run, *, eager: bool = False, taken_over: bool = False) -> None:
        """Run ``run`` in a task of its own. ``eager`` (Python 3.12+): the task starts
        in this call and runs until it first waits, so that a run that never waits (on
        the memory store) is over on return, without a turn of the event loop."""
        self.runs[run.id] = run
        if taken_over:  # resumed, woken, or another's: wf.status follows it (_views)
            _views.follow(run.id, run.state)
        if self.hooks.run_started:
            self.hooks.emit(self.hooks.run_started, run.event(taken_over=taken_over))
        name = f"microsaga-{run.id}"
        loop = asyncio.get_running_loop()
        task: asyncio.Task[None]
        if eager and _EAGER_TASKS:
            task = asyncio.Task(run.main(), loop=loop, name=name, eager_start=True)  # type: ignore[call-arg]
        else:
            task = loop.create_task(run.main(), name=name)
        run.task = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._ended(run, t))

    def _ended(self, run: Run, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self.runs.get(run.id) is run:
            del self.runs[run.id]
        if not run.ended:
            run.end(None)
        if self.hooks.run_stopped:
            self.hooks.emit(self.hooks.run_stopped, run.event())
        if run.outcome is None and self._loops and not run.waiting.parked:
            # the run gave up (store away too long, lost lease, a bug): free its lease,
            # else the heartbeat would renew it forever and nobody would take it over
            self._to_release[run.id] = run.spec.token
        if len(self.runs) + 1 >= self.options.max_executions:
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
        except CodecError:
            # one execution this worker cannot decode (a key it lacks) must not hold
            # back the others read with it: read them one at a time
            loaded = await self._load_each(claims)
        except MicrosagaError as exc:
            ids = [c.execution_id for c in claims]
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            log.warning(
                "worker %s: could not load %d claimed executions (%s), left for a later claim: %s",
                self.id,
                len(ids),
                shown,
                one_line(exc),
            )
            self._to_release.update((c.execution_id, c.token) for c in claims)
            return
        for claim in claims:
            stored = loaded.get(claim.execution_id)
            if stored is not None and stored.token == claim.token:
                await self._adopt_one(stored, claim.recovery_attempts)

    async def _load_each(self, claims: list[Claim]) -> dict[str, StoredExecution]:
        """The claimed executions read one at a time; those this worker cannot decode
        are left for a worker that can."""
        loaded: dict[str, StoredExecution] = {}
        for claim in claims:
            try:
                loaded.update(await self.store.load_many([claim.execution_id]))
            except CodecError as exc:
                await self._leave(claim.execution_id, None, claim.token, exc)
            except MicrosagaError as exc:
                log.warning(
                    "worker %s: could not load claimed execution %s, left for a later claim: %s",
                    self.id,
                    claim.execution_id,
                    one_line(exc),
                    extra=about(claim.execution_id),
                )
                self._to_release[claim.execution_id] = claim.token
        return loaded

    async def _leave(
        self, execution_id: str, workflow_id: str | None, token: int, exc: MicrosagaError
    ) -> None:
        """Leave an execution for another worker: this one lacks what it needs (a
        service's address, a broker, a function's code, a codec key). Not the
        execution's failure: another worker may have it, or this one once configured.
        It waits, saying why; an operator can abort it."""
        if isinstance(exc, CodecError) and await self._abort_unread(execution_id, token, exc):
            return
        reason = str(exc)
        named = "MICROSAGA_CODEC_KEYS" in reason  # a flow without a codec says it
        if isinstance(exc, CodecError) and exc.code != "codec_tampered" and not named:
            reason += " (give this worker the key: MICROSAGA_CODEC_KEYS or Flow(codec=...))"
        note = f"waits for a worker that can run it: {reason}"
        if self._cannot_run.get(execution_id) != note:  # said once, not at every claim
            log.warning(
                "execution %s cannot run in this worker: %s",
                execution_id,
                reason,
                extra=about(execution_id, workflow_id),
            )
            self._cannot_run[execution_id] = note
        # claimable at once by the other workers (one that can run it takes it within a
        # poll); this one looks at it again after three lease TTLs
        now = self.clock()
        self._left[execution_id] = now + self.options.lease_ttl * 3
        try:
            await self.store.release(execution_id, token, now, note)
        except MicrosagaError:
            self._to_release[execution_id] = token

    async def _abort_unread(self, execution_id: str, token: int, exc: CodecError) -> bool:
        """End ABORTED an execution aborted without compensation that this worker cannot
        decode (a codec key lost for good): that needs none of its bodies, and prune
        removes it then. Its steps left running or waiting become PENDING, saying why.
        True when it ended."""
        found = await self.store.get_status(execution_id)
        if found is None or found[1] is not Abort.NO_COMPENSATION or found[0].finished:
            return False
        error = f"aborted without reading it: {one_line(exc)}"
        now = self.clock()
        ended = Transition(
            execution_id,
            token,
            expect=found[0],
            status=Status.ABORTED,
            error=error,
            release=True,
            at=now,
            abort=Abort.NO_COMPENSATION,
        )
        (result,) = await self.store.commit([ended])
        if not isinstance(result, TransitionResult) or not result.applied:
            return False
        try:  # ended: a failure here leaves only its steps' records as they were
            await self.store.give_up_unread_steps(execution_id, error, now)
        except MicrosagaError as exc:
            log.warning(
                "execution %s: its steps still show running or waiting: %s",
                execution_id,
                one_line(exc),
                extra=about(execution_id),
            )
        log.warning("execution %s %s", execution_id, error, extra=about(execution_id))
        self._cannot_run.pop(execution_id, None)
        self._left.pop(execution_id, None)
        await self._announce(execution_id)
        return True

    async def _adopt_one(self, stored: StoredExecution, recovery_attempts: int = 0) -> None:
        try:
            plan = self._plan_for(stored.definition)
            graph = plan.graph(stored.start_step, stored.reverse)
        except MicrosagaError as exc:
            await self._leave(stored.id, stored.workflow_id, stored.token, exc)
            return
        self._cannot_run.pop(stored.id, None)
        self._left.pop(stored.id, None)
        spec = RunSpec(
            execution_id=stored.id,
            workflow_id=stored.workflow_id,
            plan=plan,
            graph=graph,
            request=stored.request,
            token=stored.token,
            created_at=stored.created_at,
            step_timeout=stored.step_timeout,
            deadline_at=stored.deadline_at,
            parent_id=stored.parent_id,
        )
        status = Status.RUNNING if stored.status is Status.PENDING else stored.status
        run = self._make_run(spec, status, stored.records, fresh=False, abort=Abort(stored.abort))
        log.info(
            "execution %s: taken up (lease token %d)",
            stored.id,
            stored.token,
            extra=about(stored.id, stored.workflow_id),
        )
        if recovery_attempts > self.options.max_recovery_attempts:
            self._give_up_running(run, recovery_attempts)
        self._launch(run, taken_over=True)

    def _give_up_running(self, run: Run, recovery_attempts: int) -> None:
        """The execution's workers died ``recovery_attempts`` times in a row while running
        it, more than ``max_recovery_attempts``: the steps they were running fail
        instead of being invoked again (they would most likely kill this worker too)."""
        limit = self.options.max_recovery_attempts
        error = RecoveryLimitError(
            f"given up after {recovery_attempts} recovery attempts in a row: the worker "
            f"running it died each time (max_recovery_attempts {limit})"
        )
        given_up = run.give_up_running(one_line(error))
        if given_up:
            log.warning(
                "execution %s: %d recovery attempts in a row, more than %d: steps %s fail",
                run.id,
                recovery_attempts,
                limit,
                ", ".join(given_up),
                extra=about(run.id, run.spec.workflow_id),
            )

    # control ----------------------------------------------------------------------

    async def control(
        self,
        execution_id: str,
        action: ControlAction,
        reason: str | None = None,
        *,
        steps: Sequence[str] | None = None,
        body: bytes | None = None,
    ) -> Status:
        """Suspend, resume or abort an execution, held here or anywhere.

        Raises:
            ExecutionNotFoundError: unknown id.
            InvalidTransitionError: not from the execution's status.
        """
        status = await self.store.request(
            execution_id, action, self.clock(), reason, steps=steps, body=body
        )
        if action in _PASSED_ON:
            await self._pass_on(execution_id, action)
        run = self.runs.get(execution_id)
        if run is not None:
            found = await self.store.get_status(execution_id)
            if found is not None:
                run.control(found[0], Abort(found[1]))
        else:
            await self._announce(execution_id)
        self.poke()
        return status

    async def _announce(self, execution_id: str) -> None:
        """The execution changed without a run of it here: tell the hooks and waiters."""
        if self.hooks.execution_status:
            info = await self.store.get_execution(execution_id)
            if info is not None:
                event = ExecutionEvent(
                    execution_id=execution_id,
                    workflow_id=info.workflow_id,
                    status=info.status,
                    at=self.clock(),
                    created_at=info.created_at.timestamp(),
                    error=info.error,
                    request=info.request,
                )
                self.hooks.emit(self.hooks.execution_status, event)
        self._notify(execution_id)

    async def _pass_on(self, execution_id: str, action: ControlAction) -> None:
        """A suspend, resume or abort of a parent reaches the children its waiting
        sub-workflow steps run (see :func:`microsaga.waits.child_id`), and theirs."""
        info = await self.store.get_execution(execution_id)
        if info is None:
            return
        for sid, run in info.steps.items():
            if run.status is not Status.WAITING:
                continue
            try:
                await self.control(child_id(execution_id, sid, run.attempts), action)
            except (InvalidTransitionError, ExecutionNotFoundError):
                pass  # not a sub-workflow's step, or its child cannot do that

    def poke(self) -> None:
        """Look for work and control requests now rather than at the next poll."""
        self._poke.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # loops -------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        last_prune = 0.0
        while True:
            try:
                await self._controls()
                self._deadlines()
                if self._claim_paused():
                    # only reads were made: they say nothing of whether writes work
                    await wait_event(self._poke, self.options.poll_interval)
                    self._poke.clear()
                    continue
                claimed = await self._claim() if self.options.claim else 0
                now = self.clock()
                if now - last_prune > 60:
                    last_prune = now
                    await self.store.prune_controls(now - 600)
                    if self.options.retention is not None:
                        await self._prune(now - self.options.retention)
                self.health.ok()
            except StoreError as exc:
                self.health.failed(exc)
                claimed = 0
            except MicrosagaError as exc:
                log.warning("worker %s: %s", self.id, exc)
                claimed = 0
            except Exception:  # a bug must not stop the worker from polling
                log.exception("worker %s: polling failed", self.id)
                claimed = 0
            if claimed:
                continue  # a full batch: there may be more waiting
            await self._idle()
            self._poke.clear()

    async def _idle(self) -> None:
        """Wait for the next poll: the poll interval, or a poke. With an interval over
        a second, the store is looked at every second meanwhile (SPEC section 8: within
        a second, however long the interval): for an execution that came due since the
        last claim (a timer parked by a worker that died since, which will not look for
        it at its time), and, when the store tells no other process of control requests
        (SQLite: no LISTEN/NOTIFY), for a signal, suspend or abort from another process.
        """
        interval = self.options.poll_interval
        watched = type(self.store).watch is not Store.watch
        if interval <= 1.0 or (watched and not self.options.claim):
            await wait_event(self._poke, interval)
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + interval
        while (left := end - loop.time()) > 0:
            if await wait_event(self._poke, min(left, 1.0)):
                return
            try:
                if not watched:
                    found, _ = await self.store.controls(self._control_seq)
                    if found:
                        return  # the poll acts on them: runs held here, executions woken
                if self.options.claim and await self.store.due_between(
                    self._claimed_at, self.clock()
                ):
                    return  # the poll claims it
            except MicrosagaError:
                return  # the poll finds out

    async def _prune(self, before: float) -> None:
        """Delete what finished before ``before`` (``Flow(retention=...)``), a batch at
        a time, letting the worker's own work go on between batches."""
        await prune_paced(self.store, before, (Status.SUCCESS, Status.FAILURE, Status.ABORTED))

    async def _controls(self) -> None:
        ids, self._control_seq = await self.store.controls(self._control_seq)
        for eid in dict.fromkeys(ids):
            run = self.runs.get(eid)
            if run is None:
                continue
            found = await self.store.get_status(eid)
            if found is not None:
                run.control(found[0], Abort(found[1]))

    def _claim_paused(self) -> bool:
        """Whether the store failed less than a lease TTL ago. Every worker's leases
        ran out while it could not renew them (the store away, full, restarting):
        claiming them as soon as the store is back would take the executions of live
        workers, each counted as a recovery attempt, as if their workers had died. A
        live worker renews its own within a heartbeat; only then are the others
        claimed (a dead worker's executions wait one TTL more)."""
        return self.clock() - self.health.failed_at < self.options.lease_ttl

    async def _claim(self) -> int:
        """Claim what this worker has room for; the count when it took a full batch."""
        # what came due until now is claimed now, or left for other workers
        now = self._claimed_at = self.clock()
        # what it can start soon: a worker that took more than it runs would hold a
        # backlog that other workers could run
        room = self.options.max_executions - len(self.runs) + self._rolling_back_children
        if room <= 0:
            return 0
        limit = min(room, 256)
        # the other workers of this machine whose process runs: taking over their
        # expired leases is no recovery attempt (see Store.claim). Looked at now, not at
        # the last heartbeat: a worker that held nothing then (every lease taken from it
        # in a stall) may hold what this claim takes
        alive, _ = await self._owners_here()
        ttl = self.options.lease_ttl
        skip = self._left_lately(now)
        if skip:  # only then: a Store written before `skip` still claims
            claims = await self.store.claim(self.id, now, ttl, limit, alive=alive, skip=skip)
        else:
            claims = await self.store.claim(self.id, now, ttl, limit, alive=alive)
        await self.adopt(claims)
        return len(claims) if len(claims) == limit else 0

    def _left_lately(self, now: float) -> list[str]:
        """The executions this worker left for others (it cannot run them) less than
        three lease TTLs ago: it does not claim them, so that it does not read them at
        every poll for nothing, nor take them from a worker that can run them."""
        for eid, until in list(self._left.items()):
            if until <= now:
                del self._left[eid]
        return list(self._left)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_interval)
            if not await self._schema_known():
                return
            try:
                await self._heartbeat()
                self.health.ok()
            except StoreError as exc:
                self.health.failed(exc)
            except MicrosagaError as exc:
                log.warning("worker %s: lease renewal failed: %s", self.id, exc)
            except Exception:  # a bug must not stop the leases from being renewed
                log.exception("worker %s: lease renewal failed", self.id)
            try:
                await self._free_dead_owners()
            except Exception:
                log.exception("worker %s: looking for dead workers failed", self.id)
            if self.options.worker_id is not None:
                try:
                    await self._namesakes()
                except StoreError as exc:
                    self.health.failed(exc)
                except Exception:
                    log.exception("worker %s: looking for namesakes failed", self.id)
            if self.hooks.steps_waiting:
                await self._count_waiting()

    async def _schema_known(self) -> bool:
        """Whether the store's schema is still one this code knows. A newer release
        that migrated it meanwhile may store rows differently (a large body by
        reference, say): this worker would misread them, so it stops (see _halt)."""
        try:
            await self.store.check_schema()
        except SchemaVersionError as exc:
            self._halt(exc)
            return False
        except StoreError as exc:
            self.health.failed(exc)
        except Exception:
            log.exception("worker %s: checking the schema version failed", self.id)
        return True

    def _halt(self, exc: MicrosagaError) -> None:
        """Stop on an error no retry mends, as :meth:`stop` does: no more claims, no
        new step, what it runs handed back to other workers. Said once; the flow
        raises ``exc`` from then on (``Flow.join``, its calls)."""
        self.fatal = exc
        log.error("worker %s stops running executions (they go to other workers): %s", self.id, exc)
        self._halting = asyncio.get_running_loop().create_task(
            self._stop_halted(), name="microsaga-halt"
        )

    async def _stop_halted(self) -> None:
        try:
            await self.stop()
        finally:
            self.halted.set()

    async def _heartbeat(self) -> None:
        # renewals first: the releases are one write each, and hundreds of them (runs
        # stopped at once) would make the leases run out while they are written
        owned = list(self.runs.values())
        held = await self.store.renew(
            self.id, [r.id for r in owned], self.clock(), self.options.lease_ttl
        )
        for run in owned:
            if run.id not in held and not run.ended and not run.releasing:
                log.warning(
                    "execution %s: lease lost", run.id, extra=about(run.id, run.spec.workflow_id)
                )
                run.lose()
        await self._release_abandoned()

    async def _count_waiting(self) -> None:
        """Tell hooks how many steps wait in the store (the ``steps_waiting`` gauge), at
        most every :attr:`waiting_every` seconds, and less often when counting takes
        long (the store's RUNNING executions read: about 4 us each on PostgreSQL):
        never more than 2 % of the time."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        if began < self._waiting_due:
            return
        try:
            count = await self.store.count_waiting()
        except StoreError as exc:
            self.health.failed(exc)
            return
        except Exception:
            log.exception("worker %s: counting the waiting steps failed", self.id)
            return
        finally:
            took = loop.time() - began
            self._waiting_due = began + max(self.waiting_every, 50 * took)
        if count is not None:
            self.hooks.emit(self.hooks.steps_waiting, count)

    async def _free_dead_owners(self) -> None:
        """Free the leases of dead workers of this machine (see the module docstring),
        so they are claimed now rather than when they expire. A store error is logged:
        the next heartbeat looks again."""
        freed = 0
        try:
            _, dead = await self._owners_here()
            for owner in dead:
                count = await self.store.release_all(owner)
                if count:
                    log.info(
                        "worker %s: freed %d executions of dead worker %s", self.id, count, owner
                    )
                freed += count
        except StoreError as exc:
            self.health.failed(exc)
        except MicrosagaError as exc:
            log.warning("worker %s: could not look for dead workers: %s", self.id, exc)
        if freed:
            self._poke.set()

    async def _namesakes(self) -> None:
        """Another worker under this stable id, started while neither held a lease (so
        neither refused to start; see :meth:`_refuse_a_live_namesake`): each takes the
        other's executions for its own and never claims them. An execution held under
        this id that this worker does not run, at two heartbeats in a row (so not one
        claimed or started between the two reads), is the other's: while its lease is
        renewed, that is said (an error, once a minute); once its lease expired (the
        other died, or stalled past it), it is freed for any worker."""
        held = await self.store.held_by(self.id)
        seen, self._foreign = (
            self._foreign,
            {
                eid: lease
                for eid, lease in held.items()
                if eid not in self.runs and eid not in self._to_release
            },
        )
        now = self.clock()
        live = sorted(
            eid for eid, (_, until) in self._foreign.items() if eid in seen and until > now
        )
        if live and now >= self._namesake_told:
            self._namesake_told = now + 60.0
            log.error(
                "worker %s: another live worker runs under this id (%d executions held under "
                "it are not run here: %s); give each worker an id of its own (or none), "
                "and restart the other",
                self.id,
                len(live),
                ", ".join(live[:5]) + (", ..." if len(live) > 5 else ""),
            )
        freed = False
        for eid, (token, until) in self._foreign.items():
            if until <= now and seen.get(eid, (None,))[0] == token:
                await self.store.release(eid, token, 0.0)
                log.warning(
                    "execution %s: freed: held under this worker's id %s by another worker "
                    "that no longer renews its lease",
                    eid,
                    self.id,
                    extra=about(eid),
                )
                freed = True
        if freed:
            self._poke.set()

    async def _owners_here(self) -> tuple[frozenset[str], list[str]]:
        """The other owners of leases that are workers of this machine: those whose
        process runs, and those whose process is gone."""
        alive: set[str] = set()
        dead: list[str] = []
        for owner in await self.store.lease_owners():
            running = running_here(owner) if owner != self.id else None
            if running:
                alive.add(owner)
            elif running is False:
                dead.append(owner)
        return frozenset(alive), dead

    async def _release_abandoned(self) -> None:
        for eid, token in list(self._to_release.items()):
            if eid in self.runs:  # taken up again meanwhile
                del self._to_release[eid]
                continue
            try:
                await self.store.release(eid, token, 0.0)
            except StoreError as exc:
                self.health.failed(exc)
                return
            log.info("execution %s: released for any worker", eid, extra=about(eid))
            del self._to_release[eid]
            self._poke.set()  # claimable now, by this worker too


# control requests that reach the children of sub-workflow steps
_PASSED_ON = ("suspend", "resume", "abort", "abort_nocomp")
# a park due later than this waits for a signal alone (or for a year): polls find it
_REMIND_WITHIN = 366 * 86400.0

# asyncio.Task(..., eager_start=True): Python 3.12+
_EAGER_TASKS = sys.version_info >= (3, 12)
