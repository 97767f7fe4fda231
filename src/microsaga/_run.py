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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _faults
from ._aio import wait_event
from ._engine import data
from ._engine.plan import Node, Plan, RunGraph
from ._engine.records import COMPENSATION, FORWARD, StepRecord
from ._engine.saga import (
    ABORT_NO_COMPENSATION,
    NO_ABORT,
    ExecState,
    compensated,
    decide,
    failure_summary,
)
from .errors import (
    InvalidTransitionError,
    LeaseLostError,
    MicrosagaError,
    StepTimeoutError,
    one_line,
)
from .message import Message
from .status import Status
from .step import Retry, Step, StepContext
from .stores.base import Transition

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


class Run:
    """Drives one execution to a stop: finished, suspended, or its lease lost."""

    def __init__(
        self,
        worker: Worker,
        plan: Plan,
        graph: RunGraph,
        *,
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
        self._clock = worker.flow.options.clock
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
        self._base = data.base_header(request, workflow_id, execution_id)
        self._done: list[StepRecord] = []
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        # made when first needed: a chain of inline steps never waits on them
        self._wake_event: asyncio.Event | None = None
        self._records: list[StepRecord] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._prev: dict[tuple[str, int], StepRecord | None] = {}
        self._lost = False
        self.releasing = False
        self._inline = False
        self._main: asyncio.Task[None] | None = None
        self._interrupt: asyncio.Event | None = None
        self.outcome: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()

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
        if self._inline and self._main is not None and self._main is not asyncio.current_task():
            self._main.cancel()
        if not self.outcome.done():
            self.outcome.set_result(None)
        self._wake.set()

    @property
    def _wake(self) -> asyncio.Event:
        if self._wake_event is None:
            self._wake_event = asyncio.Event()
        return self._wake_event

    # the loop ----------------------------------------------------------------------

    async def main(self) -> None:
        self._main = asyncio.current_task()
        try:
            self._arm_deadline()
            if self._fresh:
                await self._launch(self._initial)
            else:
                await self._respawn()
            await self._loop()
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
        first = decide(self.plan, self.graph, self.state)
        self._initial = [self._start(sid, FORWARD) for sid in first.start]
        return self._initial

    async def _respawn(self) -> None:
        """Invoke again the step runs recorded RUNNING when this worker took over."""
        again = [
            rec
            for states in (self.state.steps, self.state.comps)
            for rec in states.values()
            if rec.status is Status.RUNNING
        ]
        await self._launch(again)

    async def _loop(self) -> None:
        state = self.state
        while not self._lost:
            self._fold()
            decision = decide(self.plan, self.graph, state)
            if decision.start and self._deadline_passed():
                # the timer may not have fired yet (a resumed or taken-over execution
                # whose deadline passed meanwhile): no step starts after the deadline
                await self.abort_for_deadline()
                if state.abort == NO_ABORT:
                    raise MicrosagaError(f"execution {self.id}: the deadline abort was refused")
                continue
            starts = [self._start(sid, FORWARD) for sid in decision.start]
            starts += [self._start(sid, COMPENSATION) for sid in decision.compensate]
            final = decision.done or decision.release
            if not (starts or self._records or decision.status is not None or final):
                await self._wake.wait()
                if self._lost:
                    return
                self._wake.clear()
                continue
            unit = Transition(
                execution_id=self.id,
                token=self.token,
                expect=state.status,
                status=decision.status,
                records=self._records,
                starts=starts,
                release=final,
                at=self._clock(),
            )
            if decision.done:
                if decision.status is Status.SUCCESS:
                    unit.response = data.execution_response(self.graph, state.steps)
                elif decision.status is not Status.ABORTED or not compensated(state):
                    unit.error = failure_summary(self.plan, self.graph, state)[1]
            self._records = []
            self.releasing = final  # the lease may go with this commit: not "lost" then
            result = await self.worker.committer.submit(unit)
            assert not isinstance(result, bool)
            if not result.owned:
                raise LeaseLostError()
            if unit.records and _faults.ARMED:
                _faults.hit("step_recorded")
            previous = state.status
            state.status, state.abort = result.status, max(state.abort, result.abort)
            if not result.applied:
                self.releasing = False
                for rec in starts:
                    self._unstart(rec)
                self._set_status(state.status)
                continue
            if state.status is not previous:
                self._set_status(state.status)
            await self._launch(starts)
            if decision.done:
                self._finish(unit.response)
                return
            if decision.release:
                self._stop(Outcome(Status.SUSPEND))
                return

    # steps -----------------------------------------------------------------------

    def _states(self, phase: int) -> dict[str, StepRecord]:
        return self.state.steps if phase == FORWARD else self.state.comps

    def _start(self, sid: str, phase: int) -> StepRecord:
        """A step's RUNNING record, in place of its record in the state."""
        states = self._states(phase)
        before = states.get(sid)
        if phase == FORWARD:
            request = data.step_input(
                self.graph, self.state.steps, sid, self.request, self._base, self.id
            )
        else:
            forward = self.state.steps[sid]
            request = data.compensation_input(self.plan.nodes[sid], forward, self._base, self.id)
        attempts = before.attempts + 1 if before is not None else 1
        rec = StepRecord(sid, phase, Status.RUNNING, attempts, request, None, None, self._clock())
        states[sid] = rec
        self._prev[sid, phase] = before  # restored if the start is not applied
        return rec

    def _unstart(self, rec: StepRecord) -> None:
        before = self._prev.pop((rec.step_id, rec.phase), None)
        states = self._states(rec.phase)
        if before is None:
            states.pop(rec.step_id, None)
        else:
            states[rec.step_id] = before

    async def _launch(self, starts: list[StepRecord]) -> None:
        """Invoke the started steps: a lone step in this loop's own task (a chain needs
        no task per step), several as tasks of their own."""
        prev = self._prev
        for rec in starts:
            prev.pop((rec.step_id, rec.phase), None)
            live = self._live_step(rec)
            if live is not None:
                live.status, live.request, live.response = Status.RUNNING, rec.request, None
        if len(starts) == 1 and not self._tasks:
            self._inline = True
            try:
                await self._attempts(starts[0])
            finally:
                self._inline = False
            return
        loop = asyncio.get_running_loop()
        for rec in starts:
            self._tasks[rec.step_id, rec.phase] = loop.create_task(self._attempts(rec))

    def _live_step(self, rec: StepRecord) -> Step | None:
        node = self.plan.nodes[rec.step_id]
        return node.step if rec.phase == FORWARD else node.compensate

    def _fold(self) -> None:
        """Put finished step runs in the state; queue their records."""
        if not self._done:
            return
        done, self._done = self._done, []
        records = self._records
        for rec in done:
            sid = rec.step_id
            self._tasks.pop((sid, rec.phase), None)
            records.append(rec)
            live = self.plan.nodes[sid].step
            if rec.phase == FORWARD:
                self.state.steps[sid] = rec
                live.status, live.response = rec.status, rec.response
            else:
                self.state.comps[sid] = rec
                if rec.status is Status.SUCCESS:
                    forward = self.state.steps[sid]
                    forward.status = Status.COMPENSATED  # written below, not in flight
                    records.append(forward)
                    live.status = Status.COMPENSATED

    def _policy(self, node: Node, phase: int) -> tuple[Step, Retry, float | None]:
        if phase == FORWARD:
            return node.step, node.retry, node.timeout or self.step_timeout
        assert node.compensate is not None
        retry = node.compensate_retry or self.flow.options.compensation_retry
        return node.compensate, retry, node.compensate_timeout or self.step_timeout

    def _interrupt_wanted(self, phase: int) -> bool:
        if self.state.abort == ABORT_NO_COMPENSATION:
            return True
        if phase == COMPENSATION:
            return False
        return self.state.status is Status.SUSPEND or self.state.abort != NO_ABORT

    async def _attempts(self, rec: StepRecord) -> None:
        """Run a step until it succeeds, fails for good, or is interrupted."""
        sid, phase = rec.step_id, rec.phase
        node = self.plan.nodes[sid]
        step, retry, timeout = self._policy(node, phase)
        request = rec.request if rec.request is not None else Message()
        attempt = max(rec.attempts, 1)
        hook = "step_started" if phase == FORWARD else "compensation_started"
        if _faults.ARMED:
            _faults.hit(hook)
        result = StepRecord(
            sid, phase, Status.RUNNING, attempt, request, None, rec.error, rec.started_at
        )
        while True:
            try:
                response = await self._invoke(step, request, sid, phase, attempt, timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = one_line(exc)
                result.error = error
                if retry.should_retry(exc, attempt):
                    delay = retry.interval(attempt, self.flow.random())
                    # a service that says when to come back (HTTP Retry-After) is obeyed
                    if isinstance(exc, MicrosagaError) and exc.retry_after:
                        delay = max(delay, exc.retry_after)
                    if not await self._backoff(delay, phase) or not await self._next_attempt(
                        sid, phase, attempt + 1, request, error, rec.started_at
                    ):
                        result.status = Status.PENDING
                        break
                    attempt += 1
                    result.attempts = attempt
                    continue
                if phase == FORWARD and node.fallback is not None:
                    fallback = await self._fallback(node, request, attempt, timeout)
                    if fallback is not None:
                        result.status, result.response = Status.SUCCESS, fallback
                        result.error = f"{error} (fallback {node.fallback.id} used)"
                        break
                result.status = Status.FAILURE
                break
            else:
                result.status, result.response = Status.SUCCESS, response
                break
        result.finished_at = self._clock() if result.status is not Status.PENDING else None
        if _faults.ARMED:
            _faults.hit("step_returned")
        self._done.append(result)
        if not self._inline:
            self._wake.set()

    async def _invoke(
        self,
        step: Step,
        request: Message,
        sid: str,
        phase: int,
        attempt: int,
        timeout: float | None,
    ) -> Message:
        ctx = StepContext(
            self.flow, self.workflow_id, self.id, sid, attempt, timeout, phase == COMPENSATION
        )
        slots = self.worker.slots
        if not slots.take():
            await slots.wait()
        try:
            if timeout is None:
                return await step.execute(request, ctx)
            try:
                async with asyncio.timeout(timeout):
                    return await step.execute(request, ctx)
            except TimeoutError as exc:
                raise StepTimeoutError(f"step {sid} timed out after {timeout:g}s") from exc
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
        rec = StepRecord(sid, phase, Status.RUNNING, attempt, request, None, error, started_at)
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
                return await self._invoke(fallback, req, node.id, FORWARD, attempt, timeout)
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

    def _finish(self, response: Message | None) -> None:
        state = self.state
        if state.status is Status.SUCCESS:
            self._stop(Outcome(Status.SUCCESS))
            return
        step_id, error = failure_summary(self.plan, self.graph, state)
        self._stop(Outcome(state.status, step_id, error, compensated(state)))

    def _stop(self, outcome: Outcome) -> None:
        self._set_status(outcome.status)
        if not self.outcome.done():
            self.outcome.set_result(outcome)

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

    def _arm_deadline(self) -> None:
        if self.deadline_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.deadline_at - self._clock())
        self._deadline_timer = loop.call_later(delay, self.worker.deadline_passed, self)
