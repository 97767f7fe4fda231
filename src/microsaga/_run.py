"""One execution driven by the worker that holds its lease.

The loop is: fold finished step attempts into the state, ask the engine
(:func:`microsaga._engine.saga.decide`) what comes next, commit that as one
:class:`Transition` (shared with other executions' transitions by group commit), and
only then start the steps it started: a lone step in the loop's own task, several as
tasks of their own. A retry is recorded before it is made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from msgspec.structs import replace

from . import _faults
from ._aio import wait_event
from ._engine import data
from ._engine.plan import Node, Plan, RunGraph
from ._engine.records import COMPENSATION, FORWARD, StepRecord
from ._engine.saga import (
    ABORT_NO_COMPENSATION,
    NO_ABORT,
    ExecState,
    after_success,
    compensated,
    decide,
    failure_summary,
    first,
)
from .errors import (
    InvalidTransitionError,
    LeaseLostError,
    MicrosagaError,
    StepTimeoutError,
    one_line,
)
from .message import Message
from .status import ABORTED, COMPENSATED, FAILURE, PENDING, RUNNING, SUCCESS, SUSPEND, Status
from .step import Retry, Step, StepContext
from .stores.base import Transition
from .transports.base import to_message

if TYPE_CHECKING:
    from .worker import Worker
    from .workflow import Workflow

__all__ = ["Outcome", "Run"]

log = logging.getLogger("microsaga.run")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run stopped, for the caller waiting on it in this process."""

    status: Status
    step_id: str | None = None
    error: str | None = None
    compensated: bool = True


_SUCCEEDED = Outcome(SUCCESS)


class Run:
    """Drives one execution to a stop: finished, suspended, or its lease lost."""

    def __init__(
        self,
        worker: Worker,
        plan: Plan,
        graph: RunGraph,
        execution_id: str,
        workflow_id: str,
        request: Message,
        token: int,
        state: ExecState,
        step_timeout: float | None,
        deadline_at: float | None,
        fresh: bool = False,
        workflow: Workflow | None = None,
    ) -> None:
        self.worker = worker
        self.flow = worker.flow
        self._clock = worker.clock
        self.plan, self.graph = plan, graph
        self.id = execution_id
        self.workflow_id = workflow_id
        self.request = request
        self.token = token
        self.state = state
        self.step_timeout = step_timeout
        self.deadline_at = deadline_at
        self.workflow = workflow
        self._fresh = fresh  # created by this process: nothing to take over
        self._initial: list[StepRecord] = []
        self._headers = data.Headers(request, workflow_id, execution_id)
        self._done: list[StepRecord] = []
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._records: list[StepRecord] = []

    # set when they change (class attributes until then: fewer writes per execution)
    task: asyncio.Task[None] | None = None  # the task running main(), set by the worker
    # made when first needed: a chain of inline steps never waits on them
    _wake_event: asyncio.Event | None = None
    _interrupt: asyncio.Event | None = None
    _deadline_timer: asyncio.TimerHandle | None = None
    _lost = False
    _inline = False
    releasing = False
    # how the run stopped (None: lost, or gave up) once ``ended``; see stopped()
    ended = False
    outcome: Outcome | None = None
    _waiters: list[asyncio.Future[Outcome | None]] | None = None  # see stopped()

    # called by the worker --------------------------------------------------------

    def control(self, status: Status, abort: int) -> None:
        """A suspend, resume or abort request reached this execution."""
        self.state.status = status
        self.state.abort = max(self.state.abort, abort)
        self._set_status(status)
        self._wake.set()
        if self._interrupt is not None:
            self._interrupt.set()  # wakes a backoff; the next wait gets a new event
            self._interrupt = None

    def lose(self) -> None:
        """The lease was taken over: stop without writing anything more."""
        self._lost = True
        for task in self._tasks.values():
            task.cancel()
        if self._inline and self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.end(None)
        self._wake.set()

    @property
    def _wake(self) -> asyncio.Event:
        if self._wake_event is None:
            self._wake_event = asyncio.Event()
        return self._wake_event

    # the loop ----------------------------------------------------------------------

    async def main(self) -> None:
        try:
            if self.deadline_at is not None:
                self._arm_deadline(self.deadline_at)
            starts = self._initial if self._fresh else self._running_records()
            self._started(starts)  # in the state already: shown
            await self._loop(starts, self._fresh)
        except LeaseLostError:
            log.warning("execution %s: lease lost, another worker runs it now", self.id)
            self.lose()
        except asyncio.CancelledError:
            self.lose()
            raise
        except Exception as exc:
            log.exception("execution %s: stopped by an error, left for recovery: %s", self.id, exc)
            self.lose()
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            for task in self._tasks.values():
                task.cancel()

    def first_steps(self) -> list[StepRecord]:
        """The RUNNING records of the steps a new execution starts with; they are
        committed with the execution and invoked when the run is launched."""
        decision = first(self.graph)
        self._initial = starts = []
        steps = self.state.steps  # a run whose execution is not created is dropped
        now = self._clock()
        for sid in decision.start:
            rec = steps[sid] = self._start(sid, FORWARD, now)
            starts.append(rec)
        return starts

    def _running_records(self) -> list[StepRecord]:
        """The step runs recorded RUNNING when this worker took over: invoked again."""
        return [
            rec
            for states in (self.state.steps, self.state.comps)
            for rec in states.values()
            if rec.status is RUNNING
        ]

    async def _loop(self, starts: list[StepRecord], decided: bool) -> None:
        """Invoke what the last commit started; fold what finished into the state; ask
        the engine what comes next; commit it; again, until the run stops.

        ``decided``: ``starts`` are all that a decision started (a new execution's
        first steps), not steps found running when this worker took over, when steps
        that became ready meanwhile may not have started yet."""
        state, plan, graph = self.state, self.plan, self.graph
        committer = self.worker.committer
        unit = Transition(self.id, self.token, state.status, None, self._records)
        while True:
            lone = None  # a forward step run here, alone: see saga.after_success
            if starts:
                if len(starts) == 1 and not self._tasks:
                    # a lone step runs in this loop's own task: a chain needs no task
                    self._inline = True
                    try:
                        await self._attempts(starts[0])
                    finally:
                        self._inline = False
                    if decided and starts[0].phase == FORWARD:
                        lone = starts[0].step_id
                else:
                    loop = asyncio.get_running_loop()
                    for rec in starts:
                        self._tasks[rec.step_id, rec.phase] = loop.create_task(self._attempts(rec))
            if self._lost:
                return
            decided = True  # from here on, every start comes from a decision made here
            if self._done:
                self._fold()
            decision = (lone is not None and after_success(graph, state, lone)) or decide(
                plan, graph, state
            )
            if decision.start and self.deadline_at is not None and self._deadline_passed():
                # the timer may not have fired yet (a resumed or taken-over execution
                # whose deadline passed meanwhile): no step starts after the deadline
                await self.abort_for_deadline()
                if state.abort == NO_ABORT:
                    raise MicrosagaError(f"execution {self.id}: the deadline abort was refused")
                starts = []
                continue
            now = self._clock()  # the moment of this decision: its starts and its commit
            starts = []  # loops, not comprehensions: a comprehension is a call (3.11)
            for sid in decision.start:
                starts.append(self._start(sid, FORWARD, now))
            for sid in decision.compensate:
                starts.append(self._start(sid, COMPENSATION, now))
            final = decision.done or decision.release
            if not (starts or self._records or decision.status is not None or final):
                await self._wake.wait()
                if self._lost:
                    return
                self._wake.clear()
                continue
            # one unit per run, filled anew for each transition: a store does not keep
            # a unit once its commit returned (see Store.commit)
            unit.expect, unit.status, unit.starts = state.status, decision.status, starts
            unit.response = unit.error = None
            unit.release, unit.at = final, now
            if decision.done:
                if decision.status is SUCCESS:
                    unit.response = data.execution_response(graph, state.steps)
                elif decision.status is not ABORTED or not compensated(state):
                    unit.error = failure_summary(plan, graph, state)[1]
            self.releasing = final  # the lease may go with this commit: not "lost" then
            result = committer.now(unit)
            if result is None:
                result = await committer.later(unit)
            assert not isinstance(result, bool)
            if not result.owned:
                raise LeaseLostError()
            if unit.records:
                if _faults.ARMED:
                    _faults.hit("step_recorded")
                self._records.clear()  # written: the list serves the next transition
            previous = state.status
            state.status = result.status
            if result.abort > state.abort:
                state.abort = result.abort
            if not result.applied:  # nothing started: the state keeps its records
                self.releasing = False
                self._set_status(state.status)
                starts = []
                continue
            self._started(starts)
            if state.status is not previous and not decision.done:  # _finish tells it
                self._set_status(state.status)
            if decision.done:
                self._finish()
                return
            if decision.release:
                self._stop(Outcome(SUSPEND))
                return

    # steps -----------------------------------------------------------------------

    def _start(self, sid: str, phase: int, now: float) -> StepRecord:
        """A step's RUNNING record; it enters the state once committed (_started)."""
        state = self.state
        if phase == FORWARD:
            before: StepRecord | None = state.steps[sid]
            request = data.step_input(self.graph, state.steps, sid, self.request, self._headers)
        else:
            before = state.comps.get(sid)
            forward = state.steps[sid]
            request = data.compensation_input(self.plan.nodes[sid], forward, self._headers)
        attempts = before.attempts + 1 if before is not None else 1
        return StepRecord(sid, phase, RUNNING, attempts, request, None, None, now)

    def _started(self, starts: list[StepRecord]) -> None:
        """Committed starts: into the state, and shown as this process shows the steps
        about to be invoked (``Step.status``)."""
        steps, comps, nodes = self.state.steps, self.state.comps, self.plan.nodes
        for rec in starts:  # one loop for both: this runs for every transition
            sid = rec.step_id
            node = nodes[sid]
            live: Step | None
            if rec.phase == FORWARD:
                steps[sid] = rec
                live = node.step
            else:
                comps[sid] = rec
                live = node.compensate
            if live is not None:
                live.status, live.request, live.response = RUNNING, rec.request, None

    def _fold(self) -> None:
        """Put finished step runs in the state; queue their records."""
        done = self._done
        records = self._records
        state = self.state
        tasks = self._tasks
        for rec in done:
            sid = rec.step_id
            if tasks:
                tasks.pop((sid, rec.phase), None)
            records.append(rec)
            live = self.plan.nodes[sid].step
            if rec.phase == FORWARD:
                state.steps[sid] = rec
                live.status, live.response = rec.status, rec.response
            else:
                state.comps[sid] = rec
                if rec.status is SUCCESS:
                    # a new record: the one the store has may be the engine's own object
                    forward = replace(state.steps[sid], status=COMPENSATED)
                    state.steps[sid] = forward
                    records.append(forward)
                    live.status = COMPENSATED
        done.clear()

    def _interrupt_wanted(self, phase: int) -> bool:
        if self.state.abort == ABORT_NO_COMPENSATION:
            return True
        if phase == COMPENSATION:
            return False
        return self.state.status is SUSPEND or self.state.abort != NO_ABORT

    async def _attempts(self, rec: StepRecord) -> None:
        """Run a step until it succeeds, fails for good, or is interrupted."""
        sid, phase = rec.step_id, rec.phase
        node = self.plan.nodes[sid]
        if phase == FORWARD:
            step, retry, timeout = node.step, node.retry, node.timeout or self.step_timeout
        else:
            assert node.compensate is not None
            step, timeout = node.compensate, node.compensate_timeout or self.step_timeout
            retry = node.compensate_retry or self.flow.options.compensation_retry
        request = rec.request if rec.request is not None else Message()
        attempt = rec.attempts or 1
        if _faults.ARMED:
            _faults.hit("step_started" if phase == FORWARD else "compensation_started")
        slots = self.worker.slots
        direct = step.direct if timeout is None else None
        error = rec.error
        response: Message | None = None
        while True:
            if not slots.take():
                await slots.wait()
            try:
                if direct is not None:  # a function that wants neither context nor timeout
                    value = await direct(request)
                    response = to_message(value)
                else:
                    response = await self._call(
                        step, request, sid, attempt, timeout, phase == COMPENSATION
                    )
            except Exception as exc:
                failure: Exception | None = exc
            else:
                failure = None
            finally:
                slots.give()  # not held while waiting to retry
            if failure is None:
                status: Status = SUCCESS
                break
            error = one_line(failure)
            response = None
            if retry.should_retry(failure, attempt):
                delay = retry.interval(attempt, self.flow.random())
                # a service that says when to come back (HTTP Retry-After) is obeyed
                if isinstance(failure, MicrosagaError) and failure.retry_after:
                    delay = max(delay, failure.retry_after)
                if not await self._backoff(delay, phase) or not await self._next_attempt(
                    sid, phase, attempt + 1, request, error, rec.started_at
                ):
                    status = PENDING
                    break
                attempt += 1
                continue
            if phase == FORWARD and node.fallback is not None:
                response = await self._fallback(node, request, attempt, timeout)
                if response is not None:
                    status, error = SUCCESS, f"{error} (fallback {node.fallback.id} used)"
                    break
            status = FAILURE
            break
        finished = self._clock() if status is not PENDING else None
        if _faults.ARMED:
            _faults.hit("step_returned")
        self._done.append(
            StepRecord(
                sid, phase, status, attempt, request, response, error, rec.started_at, finished
            )
        )
        if not self._inline:
            self._wake.set()

    def _call(
        self,
        step: Step,
        request: Message,
        sid: str,
        attempt: int,
        timeout: float | None,
        compensation: bool = False,
    ) -> Awaitable[Message]:
        """One invocation of ``step`` with its context, under its timeout."""
        ctx = StepContext(self.flow, self.workflow_id, self.id, sid, attempt, timeout, compensation)
        if timeout is None:
            return step.execute(request, ctx)
        return _timed(step, request, ctx, timeout)

    async def _invoke(
        self, step: Step, request: Message, sid: str, attempt: int, timeout: float | None
    ) -> Message:
        """Invoke a fallback, in a slot (_attempts takes one for steps and compensations)."""
        slots = self.worker.slots
        if not slots.take():
            await slots.wait()
        try:
            return await self._call(step, request, sid, attempt, timeout)
        finally:
            slots.give()

    async def _backoff(self, delay: float, phase: int) -> bool:
        """Wait before a retry; False when a suspend or abort interrupts the wait."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while not self._interrupt_wanted(phase):
            left = until - loop.time()
            if left <= 0:
                return True
            if self._interrupt is None:
                self._interrupt = asyncio.Event()
            if not await wait_event(self._interrupt, left):
                return True
        return False

    async def _next_attempt(
        self,
        sid: str,
        phase: int,
        attempt: int,
        request: Message,
        error: str,
        started_at: float | None,
    ) -> bool:
        """Record attempt ``attempt`` before making it; False if it may not start."""
        rec = StepRecord(sid, phase, RUNNING, attempt, request, None, error, started_at)
        result = await self.worker.committer.submit(
            Transition(self.id, self.token, self.state.status, starts=[rec], at=self._clock())
        )
        assert not isinstance(result, bool)
        if not result.owned:
            self.lose()
            raise asyncio.CancelledError()
        if result.status is not self.state.status:
            self.control(result.status, result.abort)
        return result.applied and not self._interrupt_wanted(phase)

    async def _fallback(
        self, node: Node, request: Message, attempt: int, timeout: float | None
    ) -> Message | None:
        assert node.fallback is not None
        fallback = node.fallback
        retry = fallback.options.retry or Retry()
        timeout = fallback.options.timeout or timeout
        req = data.fallback_header(request, self.id, node.id)
        tries = 1
        while True:
            try:
                return await self._invoke(fallback, req, node.id, attempt, timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not retry.should_retry(exc, tries):
                    log.info("execution %s: fallback of %s failed: %s", self.id, node.id, exc)
                    return None
                await asyncio.sleep(retry.interval(tries, self.flow.random()))
                tries += 1

    # ending --------------------------------------------------------------------------

    def _set_status(self, status: Status) -> None:
        if self.workflow is not None and self.workflow._last_execution == self.id:
            self.workflow._status = status
        self.flow._notify(self.id)

    def _finish(self) -> None:
        state = self.state
        if state.status is SUCCESS:
            self._stop(_SUCCEEDED)
            return
        step_id, error = failure_summary(self.plan, self.graph, state)
        self._stop(Outcome(state.status, step_id, error, compensated(state)))

    def _stop(self, outcome: Outcome) -> None:
        self._set_status(outcome.status)
        self.end(outcome)

    def end(self, outcome: Outcome | None) -> None:
        """The run stopped (``None``: lost, or gave up); the first call counts."""
        if self.ended:
            return
        self.ended, self.outcome = True, outcome
        if self._waiters:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(outcome)
            self._waiters = None

    async def stopped(self) -> Outcome | None:
        """How the run stopped, once it has. Each waiter has its own future, so
        cancelling a waiter stops only its waiting."""
        if self.ended:
            return self.outcome
        fut: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        return await fut

    def _deadline_passed(self) -> bool:
        return (
            self.deadline_at is not None
            and self.state.abort == NO_ABORT
            and self._clock() >= self.deadline_at
        )

    async def abort_for_deadline(self) -> None:
        """Request the abort a passed deadline means (from its timer, or from the loop
        when the timer has not fired yet); the request reaches this run's state."""
        try:
            await self.flow._request(self.id, "abort", reason="deadline exceeded")
        except InvalidTransitionError:
            pass  # finished, or aborted already

    def _arm_deadline(self, deadline_at: float) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline_at - self._clock())
        self._deadline_timer = loop.call_later(delay, self.worker.deadline_passed, self)


async def _timed(step: Step, request: Message, ctx: StepContext, timeout: float) -> Message:
    try:
        async with asyncio.timeout(timeout):
            return await step.execute(request, ctx)
    except TimeoutError as exc:
        raise StepTimeoutError(f"step {ctx.step_id} timed out after {timeout:g}s") from exc
