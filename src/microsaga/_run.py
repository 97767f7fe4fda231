"""One execution driven by the worker that holds its lease.

The loop: invoke the steps the last commit started; fold the attempts that finished
into the state; ask the engine (:func:`microsaga._engine.saga.decide`) what comes
next; commit that as one :class:`Transition` (shared with other executions' by group
commit); only then start what it started. A retry is recorded before it is made.

A run knows its worker only as a :class:`RunHost`: the clock, the committer, the
slots that bound how many steps run at once, the hooks, and whom to tell when its
status changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from msgspec.structs import replace

from ._aio import Slots, wait_event
from ._engine import data
from ._engine.plan import Node, Plan, RetryPolicy, RunGraph
from ._engine.records import Abort, ExecState, StepRecord
from ._engine.saga import (
    after_success,
    after_successes,
    compensated,
    decide,
    failure_summary,
    first,
)
from ._groupcommit import Committer
from ._signature import result_message
from ._waiting import Waiting
from .errors import LeaseLostError, MicrosagaError, StepTimeoutError, one_line
from .expressions import truthy
from .hooks import ExecutionEvent, Hooks, StepEvent
from .message import Message, encode_json
from .observability.logs import about
from .payloads import DEFAULT_MAX_PAYLOAD, too_large
from .status import Phase, Status
from .step import Retry, Step, StepContext
from .stores.base import Transition, TransitionResult
from .transports.base import to_message
from .waits import MapStep, Marker

if TYPE_CHECKING:
    from .execution import Execution
    from .flow import Flow

__all__ = ["Outcome", "Run", "RunHost", "RunSpec"]

log = logging.getLogger("microsaga.run")


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """How a run stopped, for the caller waiting on it in this process."""

    status: Status
    step_id: str | None = None
    error: str | None = None
    compensated: bool = True


class RunSpec(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a run needs to know of its execution, besides its state."""

    # gc=False, as Outcome: made for every execution, and in no cycle (nothing it
    # refers to refers back to it); the collector need not count or walk it

    execution_id: str
    workflow_id: str
    plan: Plan
    graph: RunGraph
    request: Message
    token: int  # the lease's fencing token
    created_at: float
    step_timeout: float | None = None
    deadline_at: float | None = None
    parent_id: str | None = None  # a sub-workflow's child: its parent execution


class RunHost(Protocol):
    """What a run asks of the worker that runs it."""

    flow: Flow  # handed to steps in their StepContext
    committer: Committer
    slots: Slots
    hooks: Hooks
    compensation_retry: RetryPolicy
    clock: Callable[[], float]  # the flow's clock: seconds since the epoch
    random: Callable[[], float]  # the flow's randomness, in [0, 1)

    def status_changed(self, run: Run) -> None:
        """The run's status changed, or it stopped."""

    def deadline_passed(self, run: Run) -> None:
        """The execution's deadline passed (its timer fired): abort it soon."""

    async def abort_for_deadline(self, run: Run) -> None:
        """Abort the execution (with compensation) because its deadline passed; the
        request reaches the run through :meth:`Run.control`."""

    # waiting steps (microsaga.waits) ------------------------------------------------

    @property
    def can_park(self) -> bool:
        """Whether a worker takes parked executions back (one that claims): else a
        waiting run waits in this process."""

    async def signals(self, execution_id: str) -> dict[str, Message]:
        """The signals kept for an execution, by event."""

    async def park(self, run: Run, until: float, events: list[str], children: list[str]) -> bool:
        """Give up the run's lease until ``until``; False when what it waits for is
        there already (see :meth:`Store.park`)."""

    async def child(self, child_id: str) -> Execution | None:
        """A sub-workflow's child execution, or None before it exists."""

    async def stored_status(self, execution_id: str) -> tuple[Status, Abort] | None:
        """An execution's status and abort request in the store (a request made in
        another process reaches its run only at the worker's next look)."""

    async def start_child(self, run: Run, node: Node, request: Message, attempt: int) -> None:
        """Start the child execution of try ``attempt`` of a SubflowStep (once: its id
        is fixed, see :func:`microsaga.waits.child_id`)."""

    async def abort_child(self, child_id: str) -> None:
        """Abort a child whose parent no longer waits for it (a rollback), or roll it
        back when it succeeded, and wait until it ended.

        Raises:
            MicrosagaError: the child's rollback failed.
        """

    async def step_records(self, execution_id: str) -> list[StepRecord]:
        """The stored records of an execution's steps (and of its map's runs)."""

    async def compensate_child(self, child_id: str) -> None:
        """Roll back a child that succeeded, or retry the rollback of one that failed
        (as a resume of it would), and wait until it is rolled back.

        Raises:
            MicrosagaError: the child's rollback failed.
        """


class Run:
    """Drives one execution to a stop: finished, suspended, or its lease lost."""

    task: asyncio.Task[None] | None = None  # the task running main(), set by the worker
    releasing = False  # the lease goes with the commit in flight: not "lost" meanwhile
    ended = False  # see end()
    outcome: Outcome | None = None  # how it stopped once ended; None: lost, or gave up
    handed_back = False  # drained: its lease released, for another worker to continue
    # rarely set: class defaults, not stores in every run's __init__
    _wake_event: asyncio.Event | None = None
    _interrupt: asyncio.Event | None = None  # wakes a retry's backoff
    _deadline_timer: asyncio.TimerHandle | None = None
    _lost = False
    _draining = False
    _settled = False  # _start settled a step without starting it
    _resumed = False  # suspended, then resumed while held here: see _take_resets
    _new_waits = False  # _start made WAITING records
    # _start retried a compensation that failed for good (a resume): the execution's
    # stored error names that failure, and is written again when it ends
    _retried_comp = False
    # a lone step runs in the loop's own task (a chain needs no task per step), and
    # then tells the loop it finished by returning, not through _wake
    _inline = False
    _step_error: BaseException | None = None  # raised in a step's own task
    # steps started (recorded RUNNING) waiting for a task of their own: see _spawn
    _queued: deque[StepRecord] | None = None
    _live = 0  # step tasks not done yet, less those waiting to retry (see _step_backoff)

    def __init__(self, spec: RunSpec, state: ExecState, host: RunHost, *, fresh: bool) -> None:
        self.spec = spec
        self.id = spec.execution_id
        self.state = state
        self.host = host
        self._fresh = fresh  # created by this process: nothing to take over
        self._initial: list[StepRecord] = []
        self.headers = data.Headers(spec.request, spec.workflow_id, spec.execution_id, spec.plan)
        self._done: list[StepRecord] = []  # attempts finished, not yet in the state
        self._records: list[StepRecord] = []  # records to write with the next commit
        self._tasks: dict[tuple[str, Phase], asyncio.Task[None]] = {}
        flow = host.flow  # a step's response over it fails the step (payloads.py)
        self._max_payload = flow.options.max_payload if flow is not None else DEFAULT_MAX_PAYLOAD
        self._decoded: dict[str, Any] = {}  # decoded bodies for context documents
        self._waiters: list[asyncio.Future[Outcome | None]] = []
        # its WAITING steps and map runs (a new run of steps that never wait has none)
        waits = spec.graph.waits or not fresh
        self.waiting = Waiting(None if fresh else state.steps) if waits else _NO_WAITING
        # the status hooks were last told of (RunHost.status_changed): a change reaches
        # the run more than once (the request, the commit that finds it, the run's end)
        self.told = state.status

    @property
    def _wake(self) -> asyncio.Event:
        """Set when a step run in a task of its own finishes, or a request arrives;
        made on first use (a chain of steps run inline never waits on it)."""
        if self._wake_event is None:
            self._wake_event = asyncio.Event()
        return self._wake_event

    # called by the worker --------------------------------------------------------

    def control(self, status: Status, abort: Abort) -> None:
        """A suspend, resume or abort request reached this execution."""
        if self.state.status is Status.SUSPEND and status is not Status.SUSPEND:
            self._resumed = True
        self.state.status = status
        if abort > self.state.abort:
            self.state.abort = abort
        self.host.status_changed(self)
        self._wake.set()
        if self._interrupt is not None:
            self._interrupt.set()  # wakes a backoff; the next wait gets a new event
            self._interrupt = None

    def poke(self) -> None:
        """Something a waiting step waits for may have come: look again."""
        self._wake.set()

    # for the steps that wait (microsaga._waiting) ----------------------------------

    @property
    def lost(self) -> bool:
        """Whether the lease was taken over: the run writes nothing more."""
        return self._lost

    async def pause(self, seconds: float) -> None:
        """Wait up to ``seconds``, or until poked (a signal, a control request)."""
        self._wake.clear()
        await wait_event(self._wake, seconds)

    def put(self, rec: StepRecord) -> None:
        """A record settled without a step run (a wait resolved or given up, the
        rollback of a given-up child failed): in the state now, written with the next
        commit."""
        (self.state.steps if rec.phase is Phase.FORWARD else self.state.comps)[rec.step_id] = rec
        self._records.append(rec)

    def drain(self) -> None:
        """The worker stops: start no step; once the running ones finished and were
        recorded, release the lease with the execution as it stands."""
        self._draining = True
        if self._queued:  # never invoked here: recorded RUNNING, the next worker invokes them
            self._queued.clear()
        self._wake.set()
        if self._interrupt is not None:
            self._interrupt.set()
            self._interrupt = None

    def lose(self) -> None:
        """The lease was taken over: stop without writing anything more."""
        self._lost = True
        if self._queued:
            self._queued.clear()
        for task in self._tasks.values():
            task.cancel()
        if self._inline and self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.end(None)
        self._wake.set()

    def give_up_running(self, error: str) -> list[str]:
        """Fail the steps (and compensations) recorded RUNNING with ``error`` instead of
        invoking them again when the run starts: taken over too many times in a row
        (``max_recovery_attempts``). Written with the first commit; the engine then
        decides as after any failure. The ids of the steps given up."""
        now = self.host.clock()
        given_up = []
        for records in (self.state.steps, self.state.comps):
            for sid, rec in records.items():
                if rec.status is Status.RUNNING:
                    failed = replace(rec, status=Status.FAILURE, error=error, finished_at=now)
                    records[sid] = failed
                    self._records.append(failed)
                    given_up.append(sid)
        return given_up

    def first_steps(self) -> list[StepRecord]:
        """The records of the steps a new execution starts with, committed with the
        execution: RUNNING ones are invoked when the run starts; a root whose ``when``
        is false is SKIPPED already."""
        now = self.host.clock()
        records = [self._start(sid, now) for sid in first(self.spec.graph).start]
        if self._settled:
            records = self._with_made_ready(records, now)
        self._records, self._settled = [], False  # settled ones go with the creation
        self._new_waits = False  # the WAITING ones are in waiting.ids: below
        self._initial = []
        for rec in records:
            self.state.steps[rec.step_id] = rec
            if rec.status is Status.RUNNING:
                self._initial.append(rec)
            elif rec.status is Status.WAITING:
                self.waiting.ids.add(rec.step_id)
        return records

    def event(self, *, taken_over: bool = False) -> ExecutionEvent:
        """The execution as it stands, for hooks."""
        state = self.state
        error = None
        if state.status in (Status.FAILURE, Status.ABORTED):
            error = failure_summary(self.spec.plan, self.spec.graph, state)[1]
        return ExecutionEvent(
            execution_id=self.id,
            workflow_id=self.spec.workflow_id,
            status=state.status,
            at=self.host.clock(),
            created_at=self.spec.created_at,
            error=error,
            taken_over=taken_over,
            request=self.spec.request,
            interrupted=taken_over
            and any(
                rec.status is Status.RUNNING
                for records in (state.steps, state.comps)
                for rec in records.values()
            ),
        )

    # the loop ----------------------------------------------------------------------

    async def main(self) -> None:
        try:
            if self.spec.deadline_at is not None:
                self._arm_deadline(self.spec.deadline_at)
            if self._fresh:
                await self._loop(self._initial, decided=True)
            else:  # taken over: the steps recorded RUNNING are invoked again
                await self.waiting.number_tries(self)
                running = [
                    rec
                    for records in (self.state.steps, self.state.comps)
                    for rec in records.values()
                    if rec.status is Status.RUNNING
                ]
                await self._loop(running, decided=False)
        except LeaseLostError:
            log.warning(
                "execution %s: lease lost, another worker runs it now",
                self.id,
                extra=about(self.id, self.spec.workflow_id),
            )
            self.lose()
        except asyncio.CancelledError:
            self.lose()
            raise
        except Exception as exc:
            log.exception(
                "execution %s: stopped by an error, left for recovery: %s",
                self.id,
                exc,
                extra=about(self.id, self.spec.workflow_id),
            )
            self.lose()
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            for task in self._tasks.values():
                task.cancel()

    async def _loop(self, starts: list[StepRecord], *, decided: bool) -> None:
        """Invoke what the last commit started; fold what finished into the state; ask
        the engine what comes next; commit it; again, until the run stops.

        ``decided``: ``starts`` are all that a decision started, not steps found
        running when this worker took over (steps may have become ready meanwhile)."""
        state, plan, graph = self.state, self.spec.plan, self.spec.graph
        committer = self.host.committer
        # the last decision started every step that was ready (decide() did, or the
        # case after_successes answers for held), none settled without running, and
        # none waits: the steps that finish since are all that changed
        exact = False
        seen: dict[str, int] = {}  # see after_successes
        while True:
            lone = None  # a step run here, alone: see saga.after_success
            if self._draining:
                starts = []  # recorded RUNNING: the next worker invokes them
            # not beside waiting steps: the loop looks at them (a signal, a child's
            # end) while the step runs, which it cannot do while it runs the step
            if len(starts) == 1 and not self._tasks and not self._queued and not self.waiting.ids:
                self._inline = True
                try:
                    await self._attempts(starts[0])
                finally:
                    self._inline = False
                if decided:
                    # a compensation's too: after_success declines it, as it declines
                    # any rollback (its record is in state.comps)
                    lone = starts[0].step_id
            else:
                for rec in starts:
                    self._spawn(rec)
            if self._lost:
                return
            if self._step_error is not None:  # the run stops, as when run inline
                raise self._step_error
            decided = True  # from here on, every start comes from a decision made here
            finished = self._fold()
            if self.waiting.ids and not self._draining:
                await self.waiting.resolve(self)
            if self._draining:
                if self._tasks:  # running steps finish and are recorded first
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                if await self._hand_back():
                    return
                continue
            if self._resumed:
                await self._take_resets()
                lone, exact = None, False
            decision = None
            if lone is not None:
                decision = after_success(graph, state, lone)
            elif exact:
                running = bool(self._tasks or self._queued)
                decision = after_successes(graph, state, finished, running, seen)
            if decision is None:
                decision = decide(plan, graph, state)
                exact = (
                    state.status is Status.RUNNING
                    and state.abort is Abort.NONE
                    and decision.status is None
                    and not (decision.compensate or decision.cancel or decision.park)
                    and self.waiting is _NO_WAITING
                )
                if seen:
                    seen.clear()
            if decision.cancel and await self.waiting.cancel(self, decision.cancel):
                # a given-up child's rollback failed: the compensations decided with
                # it may include what its SubflowStep requires, which stays SUCCESS
                decision = decide(plan, graph, state)
            if decision.park and not self._records:
                if await self.waiting.wait_or_park(self):
                    return
                starts = []
                continue
            if decision.start and self.spec.deadline_at is not None and self.deadline_due():
                # the timer may not have fired yet (a resumed or taken-over execution
                # whose deadline passed meanwhile): no step starts after the deadline
                await self.host.abort_for_deadline(self)
                if state.abort is Abort.NONE:
                    raise MicrosagaError(f"execution {self.id}: the deadline abort was refused")
                starts = []
                continue
            now = self.host.clock()
            starts = [self._start(sid, now) for sid in decision.start]
            if self._settled:  # skipped, or failed by their when or input: not started
                starts = self._with_made_ready(starts, now)
                starts = [rec for rec in starts if rec.status in _STARTED]
                self._settled = exact = decided = False  # the next decision is decide()'s
            if decision.compensate:
                starts += [self._start_compensation(sid, now) for sid in decision.compensate]
            final = decision.done or decision.release
            if not (starts or self._records or decision.status is not None or final):
                await self._wake.wait()  # steps are running: wait for one to finish
                if self._lost:
                    return
                self._wake.clear()
                starts = []
                continue
            unit = Transition(
                execution_id=self.id,
                token=self.spec.token,
                expect=state.status,
                abort=state.abort,
                status=decision.status,
                records=self._records,
                starts=starts,
                release=final,
                at=now,
            )
            if decision.status is not None:  # a status written: and the execution's error?
                if decision.done:
                    if decision.status is Status.SUCCESS:
                        unit.response = data.execution_response(graph, state.steps)
                        unit.error = ""  # cleared: a failure a resume or a redrive mended
                    elif (
                        decision.status is not Status.ABORTED
                        or not compensated(state)
                        or self._retried_comp  # else it would keep naming a failure undone
                    ):
                        unit.error = failure_summary(plan, graph, state)[1]
                elif decision.status is Status.SUSPEND:  # the failure policy "suspend"
                    unit.error = failure_summary(plan, graph, state)[1]
            self.releasing = final
            result = committer.now(unit)  # as submit(), without a coroutine where it can
            if result is None:
                result = await committer.later(unit)
            assert isinstance(result, TransitionResult)
            if not result.owned:
                raise LeaseLostError()
            recorded, self._records = self._records, []
            previous = state.status
            state.status = result.status
            if result.abort > state.abort:
                state.abort = result.abort
            if not result.applied:  # a control request came first: nothing started
                if previous is Status.SUSPEND and result.status is not Status.SUSPEND:
                    self._resumed = True
                self.releasing = exact = False
                self.host.status_changed(self)
                starts = []
                continue
            for rec in starts:
                (state.steps if rec.phase is Phase.FORWARD else state.comps)[rec.step_id] = rec
            if self._new_waits:  # WAITING steps are resolved by the loop, never invoked
                self._new_waits = False
                self.waiting.ids.update(r.step_id for r in starts if r.status is Status.WAITING)
                starts = [rec for rec in starts if rec.status is not Status.WAITING]
            hooks = self.host.hooks
            if recorded and hooks.step_recorded:
                for rec in recorded:
                    if rec.status is not Status.RUNNING:
                        hooks.emit(hooks.step_recorded, self.step_event(rec, now))
            if decision.done:
                self._finish()
                return
            if state.status is not previous:
                self.host.status_changed(self)
            if decision.release:
                self._stop(Outcome(Status.SUSPEND))
                return

    async def _take_resets(self) -> None:
        """The execution was resumed while this run held it (suspended, its running
        steps not finished): a resume or redrive of failed steps put them (and their
        map's runs) back to PENDING in the store, not in this run's state. Take those
        records, else the run would find the steps failed and suspend again."""
        self._resumed = False
        state = self.state
        if not any(rec.status is Status.FAILURE for rec in state.steps.values()):
            return
        items = self.waiting.items
        for rec in await self.host.step_records(self.id):
            if rec.status is not Status.PENDING or rec.phase is not Phase.FORWARD:
                continue
            mine = state.steps.get(rec.step_id) or items.get((rec.step_id, rec.phase))
            if mine is None or mine.status is not Status.FAILURE:
                continue
            if rec.step_id in state.steps:
                state.steps[rec.step_id] = rec
            else:  # a map's run
                items[rec.step_id, rec.phase] = rec
        if self.waiting is not _NO_WAITING:
            await self.waiting.number_tries(self)

    async def _hand_back(self) -> bool:
        """Commit what finished and release the lease (the worker stops); False when
        the status changed meanwhile (a request came first: fold it and try again)."""
        unit = Transition(
            execution_id=self.id,
            token=self.spec.token,
            expect=self.state.status,
            abort=self.state.abort,
            records=self._records,
            release=True,
            at=self.host.clock(),
        )
        self.releasing = True
        result = await self.host.committer.submit(unit)
        if not result.owned:
            raise LeaseLostError()
        self._records = []
        if not result.applied:
            self.releasing = False
            self.state.status = result.status
            return False
        self.handed_back = True
        self.end(None)
        return True

    # steps -----------------------------------------------------------------------

    def _start_compensation(self, sid: str, now: float) -> StepRecord:
        """A compensation's RUNNING record; it enters the state once committed."""
        before = self.state.comps.get(sid)
        node = self.spec.plan.nodes[sid]
        request = data.compensation_input(node, self.state.steps[sid], self.headers)
        attempts = before.attempts + 1 if before is not None else 1
        if before is not None and before.error is not None:
            self._retried_comp = True
        return StepRecord(sid, Phase.COMPENSATE, Status.RUNNING, attempts, request, None, None, now)

    def _start(self, sid: str, now: float) -> StepRecord:
        """A forward step's RUNNING record; it enters the state once committed. A step
        whose ``when`` is false, or whose requirements were all skipped, is SKIPPED at
        once instead, and one whose ``when`` or ``input`` cannot be evaluated FAILS:
        those records enter the state now and go with the next commit."""
        state = self.state
        before_step = state.steps[sid]
        node = self.spec.plan.nodes[sid]
        requires = self.spec.graph.requires[sid]
        if node.when is None and node.input is None and before_step.request is None:
            if _all_skipped(self.spec.graph, state.steps, requires):
                return self._settle(sid, Status.SKIPPED, None, now)
            request = data.step_input(
                self.spec.graph, state.steps, sid, self.spec.request, self.headers
            )
        else:
            found = self._input_of(node, before_step, requires, now)
            if isinstance(found, StepRecord):
                return found
            request = found
        if len(request.body) > self._max_payload:  # several responses, or an input's
            why = f"its input is {len(request.body)} bytes, over max_payload {self._max_payload}"
            return self._settle(sid, Status.FAILURE, why, now)
        attempts = before_step.attempts + 1
        if node.waits:  # resolved by the loop: see Waiting.resolve
            # a SubflowStep's attempts are its try, which names its child
            attempts = self.waiting.tries.pop(sid, attempts)
            self._new_waits = True
            return StepRecord(
                sid, Phase.FORWARD, Status.WAITING, attempts, request, None, None, now
            )
        return StepRecord(sid, Phase.FORWARD, Status.RUNNING, attempts, request, None, None, now)

    def _input_of(
        self, node: Node, before: StepRecord, requires: tuple[str, ...], now: float
    ) -> Message | StepRecord:
        """The request of a step with a ``when``, an ``input``, or a request given by a
        redrive; or its settled record (SKIPPED, or FAILURE of an expression)."""
        state, sid = self.state, node.id
        if _all_skipped(self.spec.graph, state.steps, requires):
            return self._settle(sid, Status.SKIPPED, None, now)
        document: dict[str, Any] | None = None
        if node.when is not None:
            document = data.context_document(node, state.steps, self.spec.request, self._decoded)
            try:
                go = truthy(node.when(document))
            except Exception as exc:
                return self._settle(
                    sid,
                    Status.FAILURE,
                    f"when {node.when} cannot be evaluated: {one_line(exc)}",
                    now,
                )
            if not go:
                return self._settle(sid, Status.SKIPPED, None, now)
        if before.request is not None:  # given by a redrive, or kept by an interruption
            return self.headers.request(before.request.body, sid)
        if node.input is None:
            return data.step_input(
                self.spec.graph, state.steps, sid, self.spec.request, self.headers
            )
        if document is None:
            document = data.context_document(node, state.steps, self.spec.request, self._decoded)
        try:
            body = encode_json(node.input(document))
        except Exception as exc:
            what = "over" if isinstance(node.step, MapStep) else "input"  # a map's input
            why = f"{what} {node.input} cannot be evaluated: {one_line(exc)}"
            return self._settle(sid, Status.FAILURE, why, now)
        return self.headers.request(body, sid)

    def _settle(self, sid: str, status: Status, error: str | None, now: float) -> StepRecord:
        """A step settled without being invoked (SKIPPED, or FAILURE of an expression):
        in the state now, written with the next commit."""
        rec = StepRecord(sid, Phase.FORWARD, status, 0, None, None, error, now, now)
        if status is Status.FAILURE:
            self.log_failure(sid, Phase.FORWARD, 0, error, None)
        self.state.steps[sid] = rec
        self._records.append(rec)
        self._settled = True
        return rec

    def _with_made_ready(self, starts: list[StepRecord], now: float) -> list[StepRecord]:
        """``starts`` and the steps that the skips among them made ready, started with
        them (and so on: such a step may be skipped in turn). Started one decision
        later, a step made ready by a skip would wait for the others: for the one
        started alone beside the skip, run inline to its end, or at least for the
        next commit, while the others run on."""
        plan, graph, state = self.spec.plan, self.spec.graph, self.state
        settled = True
        while settled:  # settled ones are in the state already; the started ones not
            self._settled = False
            begun = {rec.step_id for rec in starts}
            more = [sid for sid in decide(plan, graph, state).start if sid not in begun]
            starts += [self._start(sid, now) for sid in more]
            settled = self._settled
        return starts

    def _fold(self) -> list[StepRecord]:
        """Put the step runs that finished in the state and queue their records; the
        records folded."""
        state, done = self.state, self._done
        if not done:
            return done
        self._done = []
        for rec in done:
            sid = rec.step_id
            self._tasks.pop((sid, rec.phase), None)
            self._records.append(rec)
            if rec.phase is Phase.FORWARD:
                state.steps[sid] = rec
            else:
                state.comps[sid] = rec
                # a failed map whose runs were compensated stays the step that failed
                if rec.status is Status.SUCCESS and state.steps[sid].status is Status.SUCCESS:
                    undone = replace(state.steps[sid], status=Status.COMPENSATED)
                    state.steps[sid] = undone
                    self._records.append(undone)
        return done

    def _spawn(self, rec: StepRecord) -> None:
        """Run a started step in a task of its own, or queue it when the run has as
        many step tasks as the worker has slots (the next starts as one ends): a
        fan-out of thousands would otherwise hold a task per step, each waiting for a
        slot, and the garbage collector would walk them all, again and again."""
        if self._live >= self.host.slots.size or self._queued:
            if self._queued is None:
                self._queued = deque()
            self._queued.append(rec)
        else:
            self._task(rec)

    def _task(self, rec: StepRecord) -> None:
        self._live += 1
        task = asyncio.get_running_loop().create_task(self._attempts(rec))
        task.add_done_callback(self._step_task_done)
        self._tasks[rec.step_id, rec.phase] = task

    def _step_task_done(self, task: asyncio.Task[None]) -> None:
        """A step's own task ended: the next queued step starts. One that raised (the
        store away past the commit's retries while recording a retry, a fault point)
        never put a record in ``_done``: the loop must hear of it, or it waits for
        ever while the worker renews the lease."""
        self._live -= 1
        if not task.cancelled() and task.exception() is not None and self._step_error is None:
            self._step_error = task.exception()
            self._wake.set()
        self._start_queued()

    def _start_queued(self) -> None:
        """Start the next queued step, when there is one and it may start."""
        queued = self._queued
        if queued and not (self._lost or self._draining or self._step_error is not None):
            self._task(queued.popleft())

    def interrupt_wanted(self, phase: Phase) -> bool:
        if self.state.abort is Abort.NO_COMPENSATION or self._draining:
            return True
        if phase is Phase.COMPENSATE:
            return False
        return self.state.status is Status.SUSPEND or self.state.abort is not Abort.NONE

    def step_event(
        self,
        rec: StepRecord,
        at: float,
        *,
        status: Status | None = None,
        error: str | None = None,
        retrying: bool = False,
    ) -> StepEvent:
        return StepEvent(
            execution_id=self.id,
            workflow_id=self.spec.workflow_id,
            step_id=rec.step_id,
            phase=rec.phase,
            attempt=rec.attempts,
            status=status or rec.status,
            at=at,
            started_at=rec.started_at,
            error=error or rec.error,
            retrying=retrying,
            request=rec.request,
            response=rec.response,
        )

    async def _attempts(self, rec: StepRecord) -> None:
        """Run a step until it succeeds, fails for good, or is interrupted; the final
        record goes to ``_done`` for the loop to fold and commit."""
        sid, phase = rec.step_id, rec.phase
        forward = phase is Phase.FORWARD
        node = self.spec.plan.nodes[sid]
        if isinstance(node.step, MapStep) or (
            not forward
            # a child's rollback: of a child that succeeded, or the retry of a given-up
            # child's that failed (its step PENDING again, whatever its compensate)
            and (
                isinstance(node.compensate, Marker)
                or self.state.steps[sid].status is not Status.SUCCESS
            )
        ):
            # awaited first: ``self._done.append(await ...)`` would take the list
            # before the await, and _fold replaces it meanwhile when a step beside
            # this one ends: the record would go to a list nobody reads any more
            # a step attempt to hooks, as any step's or compensation's: the map, the
            # compensation of its runs, the rollback of a child
            hooks = self.host.hooks
            if hooks.step_started:
                hooks.emit(hooks.step_started, self.step_event(rec, self.host.clock()))
            special = await self.waiting.run_special(self, rec, node)
            if special.status is Status.FAILURE:
                self.log_failure(sid, phase, special.attempts, special.error, None)
            if hooks.step_finished and special.status is not Status.PENDING:
                hooks.emit(hooks.step_finished, self.step_event(special, self.host.clock()))
            self._done.append(special)
            if not self._inline:
                self._wake.set()
            return
        step: Any
        retry: RetryPolicy
        if forward:
            step, retry = node.step, node.retry
            timeout = node.timeout or self.spec.step_timeout
        else:
            step = node.compensate
            retry = node.compensate_retry or self.host.compensation_retry
            timeout = node.compensate_timeout or self.spec.step_timeout
        hooks = self.host.hooks
        direct, threaded = step.direct, step.threaded
        request = rec.request if rec.request is not None else Message()
        attempt = rec.attempts or 1
        error = rec.error
        response: Message | None = None
        status = Status.SUCCESS  # unless it fails for good, or is interrupted (PENDING)
        while True:
            if hooks.step_started:
                hooks.emit(
                    hooks.step_started,
                    self.step_event(replace(rec, attempts=attempt), self.host.clock()),
                )
            slots = self.host.slots
            if not slots.take():
                await slots.wait()
            try:
                if direct is not None and timeout is None:
                    # a plain async function of the request: awaited without a context
                    response = to_message(await direct(request))
                elif threaded is not None and timeout is None:
                    # a plain sync function of the request: on the flow's step threads
                    # (a Message, or an awaitable it returned: awaited here)
                    got = await self.host.flow.threads.run(threaded, request)
                    response = got if type(got) is Message else result_message(await got)
                else:
                    response = await self.call(step, request, sid, attempt, timeout, phase)
            except Exception as exc:
                failure: Exception | None = exc
            else:
                failure = None
            finally:
                slots.give()  # not held while waiting to retry
            if failure is None and response is not None and len(response.body) > self._max_payload:
                failure = too_large(response, self.host.flow)
            if failure is None:
                break
            error, response = one_line(failure), None
            if retry.should_retry(failure, attempt):
                if hooks.step_finished:
                    event = self.step_event(
                        replace(rec, attempts=attempt),
                        self.host.clock(),
                        status=Status.FAILURE,
                        error=error,
                        retrying=True,
                    )
                    hooks.emit(hooks.step_finished, event)
                delay = retry.interval(attempt, self.host.random())
                # a service that says when to come back (HTTP Retry-After) is obeyed
                if isinstance(failure, MicrosagaError) and failure.retry_after:
                    delay = max(delay, failure.retry_after)
                self.log_failure(sid, phase, attempt, error, delay)
                if not await self._step_backoff(delay, phase) or not await self._next_attempt(
                    rec, attempt + 1, error
                ):
                    status = Status.PENDING  # interrupted: it starts again on resume
                    break
                attempt += 1
                continue
            status = Status.FAILURE
            if forward and node.fallback is not None:
                fallen = await self.fallback(node, rec, request, attempt, timeout, error)
                if fallen is _INTERRUPTED:
                    status = Status.PENDING  # it starts again on resume
                elif isinstance(fallen, Message):
                    response = fallen
                    fallback_id = getattr(node.fallback, "id", node.id)
                    status, error = Status.SUCCESS, f"{error} (fallback {fallback_id} used)"
            break
        finished: float | None = self.host.clock()
        if status is not Status.SUCCESS:
            if status is Status.FAILURE:
                self.log_failure(sid, phase, attempt, error, None)
            else:  # interrupted: not finished
                finished = None
        done = StepRecord(
            sid, phase, status, attempt, request, response, error, rec.started_at, finished
        )
        if hooks.step_finished and status is not Status.PENDING:
            hooks.emit(hooks.step_finished, self.step_event(done, self.host.clock()))
        self._done.append(done)
        if not self._inline:
            self._wake.set()

    def log_failure(
        self, sid: str, phase: Phase, attempt: int, error: str | None, retry_in: float | None
    ) -> None:
        """A failed attempt of a step or compensation: at info, retried or failed for
        good; a compensation failed for good at warning (the rollback stops there until
        an operator resumes the execution)."""
        what = "compensation of step" if phase is Phase.COMPENSATE else "step"
        extra = about(self.id, self.spec.workflow_id, sid)
        if retry_in is not None:
            log.info(
                "execution %s: %s %s failed (attempt %d), retrying in %.3gs: %s",
                *(self.id, what, sid, attempt, retry_in, error),
                extra=extra,
            )
        else:
            level = logging.WARNING if phase is Phase.COMPENSATE else logging.INFO
            log.log(
                level,
                "execution %s: %s %s failed for good (attempt %d): %s",
                *(self.id, what, sid, attempt, error),
                extra=extra,
            )

    def call(
        self,
        step: Step,
        request: Message,
        sid: str,
        attempt: int,
        timeout: float | None,
        phase: Phase = Phase.FORWARD,
    ) -> Awaitable[Message]:
        """One invocation of ``step`` with its context, under its timeout."""
        ctx = StepContext(
            self.host.flow,
            self.spec.workflow_id,
            self.id,
            sid,
            attempt,
            timeout,
            phase is Phase.COMPENSATE,
            self.spec.request,
        )
        if timeout is None:
            return step.execute(request, ctx)
        return _timed(step.execute(request, ctx), sid, timeout)

    async def invoke(
        self, step: Step, request: Message, sid: str, attempt: int, timeout: float | None
    ) -> Message:
        """A fallback's invocation, in one of the worker's slots."""
        slots = self.host.slots
        if not slots.take():
            await slots.wait()
        try:
            return await self.call(step, request, sid, attempt, timeout)
        finally:
            slots.give()

    async def backoff(self, delay: float, phase: Phase) -> bool:
        """Wait before a retry; False when a suspend or abort interrupts the wait."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while not self.interrupt_wanted(phase):
            left = until - loop.time()
            if left <= 0:
                return True
            if self._interrupt is None:
                self._interrupt = asyncio.Event()
            if not await wait_event(self._interrupt, left):
                return True
        return False

    async def _step_backoff(self, delay: float, phase: Phase) -> bool:
        """:meth:`backoff` of a step (or its fallback) run by :meth:`_attempts`."""
        # a step waiting to retry holds no slot, and no place among the run's step
        # tasks either: else, with every place taken by steps waiting to retry, the
        # queued steps would wait for those retries while the slots stay free (a
        # lone step run inline has no place: nothing else runs or is queued)
        own = not self._inline
        if own:
            self._live -= 1
            self._start_queued()
        try:
            return await self.backoff(delay, phase)
        finally:
            if own:
                self._live += 1

    async def _next_attempt(self, rec: StepRecord, attempt: int, error: str) -> bool:
        """Record attempt ``attempt`` before making it; False if it may not start."""
        return await self._record(replace(rec, attempts=attempt, error=error))

    async def _record(self, running: StepRecord) -> bool:
        """Commit a RUNNING record of a step about to be tried again (a retry, or its
        fallback's); False if it may not go on (a suspend or abort came)."""
        return await self.commit_beside(running.phase, starts=[running])

    async def commit_beside(
        self,
        phase: Phase,
        *,
        records: list[StepRecord] | None = None,
        starts: list[StepRecord] | None = None,
    ) -> bool:
        """Commit what a step (or a map's run) records while the run goes on: a retry
        about to be made, a map run's start or end. False when what came meanwhile
        stops steps of ``phase`` (a suspend or an abort)."""
        while True:
            expect = self.state.status
            result = await self.host.committer.submit(
                Transition(
                    execution_id=self.id,
                    token=self.spec.token,
                    expect=expect,
                    abort=self.state.abort,
                    records=records or [],
                    starts=starts or [],
                    at=self.host.clock(),
                )
            )
            if not result.owned:
                self.lose()
                raise asyncio.CancelledError()
            if result.status is not self.state.status or result.abort > self.state.abort:
                self.control(result.status, result.abort)
            if result.applied or result.status is expect or self.interrupt_wanted(phase):
                return result.applied and not self.interrupt_wanted(phase)
            # not applied, yet nothing stops the step: the run's own commit changed the
            # status meanwhile (COMPENSATING: another step failed). The step goes on,
            # as running steps do before a rollback, its record written under the new
            # status instead of dropped (a retry never made, a map run left RUNNING)

    async def fallback(
        self,
        node: Node,
        rec: StepRecord,
        request: Message,
        attempt: int,
        timeout: float | None,
        error: str | None,
    ) -> Message | object | None:
        """The fallback's response; None when it failed for good; _INTERRUPTED when a
        suspend or abort came while it waited to retry. Each retry of the fallback is
        recorded before it is made, as the step's are."""
        assert node.fallback is not None
        fallback: Any = node.fallback
        retry = node.fallback_retry or Retry()
        timeout = node.fallback_timeout or timeout
        req = data.fallback_header(request, self.id, node.id)
        tries = 1
        while True:
            try:
                return await self.invoke(fallback, req, node.id, attempt, timeout)
            except Exception as exc:
                if not retry.should_retry(exc, tries):
                    log.info(
                        "execution %s: fallback of %s failed: %s",
                        self.id,
                        node.id,
                        exc,
                        extra=about(self.id, self.spec.workflow_id, node.id),
                    )
                    return None
                delay = retry.interval(tries, self.host.random())
                note = f"{error}; fallback {fallback.id} attempt {tries}: {one_line(exc)}"
                if not await self._step_backoff(delay, Phase.FORWARD) or not await self._record(
                    replace(rec, attempts=attempt, error=note)
                ):
                    return _INTERRUPTED
                tries += 1

    # ending --------------------------------------------------------------------------

    def _finish(self) -> None:
        state = self.state
        if state.status is Status.SUCCESS:
            self._stop(Outcome(state.status))
            return
        step_id, error = failure_summary(self.spec.plan, self.spec.graph, state)
        self._stop(Outcome(state.status, step_id, error, compensated(state)))

    def _stop(self, outcome: Outcome) -> None:
        self.end(outcome)
        self.host.status_changed(self)

    def end(self, outcome: Outcome | None) -> None:
        """The run stopped (``None``: lost, or gave up); the first call counts."""
        if self.ended:
            return
        self.ended, self.outcome = True, outcome
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(outcome)
        self._waiters.clear()

    async def stopped(self) -> Outcome | None:
        """How the run stopped, once it has. Each waiter has its own future, so
        cancelling a waiter stops only its waiting."""
        if self.ended:
            return self.outcome
        fut: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return await fut

    def deadline_due(self) -> bool:
        """Whether the execution's deadline has passed by the flow's clock and it is
        not aborted yet (its timer fires on time; the worker also asks at every poll,
        which is what a test moving the flow's clock relies on)."""
        deadline = self.spec.deadline_at
        return (
            deadline is not None
            and self.state.abort is Abort.NONE
            and self.host.clock() >= deadline
        )

    def _arm_deadline(self, deadline_at: float) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline_at - self.host.clock())
        self._deadline_timer = loop.call_later(delay, self.host.deadline_passed, self)


_INTERRUPTED = object()  # a fallback's wait for a retry was interrupted
# the records of started steps: RUNNING ones are invoked, WAITING ones resolved by the
# loop (both go with the commit; the settled ones are among the run's records)
_STARTED = (Status.RUNNING, Status.WAITING)

# the Waiting of every new run whose graph has no waiting or map step: always empty
# (only such steps add to it), so one is shared rather than made for each run
_NO_WAITING = Waiting(None)


def _all_skipped(graph: RunGraph, steps: dict[str, StepRecord], requires: tuple[str, ...]) -> bool:
    """Whether a step requires steps and all were skipped (never, in a graph without a
    ``when``: the order saga pays nothing for it)."""
    return (
        graph.skips and bool(requires) and all(steps[r].status is Status.SKIPPED for r in requires)
    )


async def _timed(call: Awaitable[Message], step_id: str, timeout: float) -> Message:
    try:
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError as exc:
        raise StepTimeoutError(f"step {step_id} timed out after {timeout:g}s") from exc
