"""What a run does for the steps that wait (:mod:`microsaga.waits`) and for the runs of
map steps.

A run (:mod:`microsaga._run`) keeps one :class:`Waiting`. Before each decision it
resolves the WAITING steps whose signal came, whose time came, or whose child
execution finished (:meth:`Waiting.resolve`); when only WAITING steps are left it parks
the execution in the store, or waits in its process when the wait is short or no
worker would take it back (:meth:`Waiting.wait_or_park`). A map step, the compensation
of a map's runs and the rollback of a sub-workflow's child are run here too
(:meth:`Waiting.run_special`), each run of a map recorded as ``<map id>[<i>]``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from msgspec.structs import replace

from . import _faults
from ._engine import data
from ._engine.plan import Node, RetryPolicy
from ._engine.records import Abort, StepRecord
from .errors import MicrosagaError, StepError, StepTimeoutError, one_line
from .execution import run_id
from .message import Message, decode_json_body, encode_json
from .observability.logs import about
from .payloads import too_large
from .status import Phase, Status
from .step import Retry
from .waits import (
    RUNS_ROLLBACK,
    MapStep,
    SleepStep,
    SubflowStep,
    WaitStep,
    child_id,
    json_type,
)

if TYPE_CHECKING:
    from ._run import Run

__all__ = ["Waiting"]

log = logging.getLogger("microsaga.run")

_FAR = 1e15  # "never": a park that only a signal ends
_LOOK_AGAIN = 1.0  # a run waiting in its process looks for signals this often
_CHILD_LOOK = 60.0  # a parked parent looks at its child at least this often


class Waiting:
    """The WAITING steps of one run, and the runs of its map steps."""

    def __init__(self, steps: dict[str, StepRecord] | None) -> None:
        # a new execution (None) has none yet; one taken over may. The run is passed to
        # each method rather than kept: a run and its Waiting referring to each other
        # would be a cycle, left for the garbage collector instead of freed at its end
        self.ids: set[str] = set()
        if steps is not None:
            self.ids.update(sid for sid, rec in steps.items() if rec.status is Status.WAITING)
        self.items: dict[tuple[str, Phase], StepRecord] = {}  # runs of map steps
        self.parked = False  # gave up its lease to wait: not lost, not finished
        self._refused = False  # the last park found what it waits for
        # SubflowSteps that ran before (resumed or redriven), by the try they start next
        self.tries: dict[str, int] = {}

    async def number_tries(self, run: Run) -> None:
        """Find the try each SubflowStep that ran before and is PENDING again (its
        failure resumed or redriven) starts next: the first whose child id is free.
        Its WAITING record keeps that number as its ``attempts``, committed before the
        child is started: a run that takes it over finds that child, or starts it."""
        for sid, rec in run.state.steps.items():
            if rec.status is not Status.PENDING or rec.started_at is None:
                continue
            if not isinstance(run.spec.plan.nodes[sid].step, SubflowStep):
                continue
            attempt = 1
            while await run.host.child(child_id(run.id, sid, attempt)) is not None:
                attempt += 1
            self.tries[sid] = attempt

    async def resolve(self, run: Run) -> None:
        """Resolve the WAITING steps whose signal came, whose time came, or whose child
        finished: their records enter the state and go with the next commit."""
        state, nodes, now = run.state, run.spec.plan.nodes, run.host.clock()
        signals: dict[str, Message] | None = None
        for sid in sorted(self.ids):
            rec, node = state.steps[sid], nodes[sid]
            step = node.step
            started = rec.started_at if rec.started_at is not None else now
            if isinstance(step, WaitStep):
                if signals is None:
                    signals = await run.host.signals(run.id)
                payload = signals.get(step.event)
                if payload is not None:
                    self._settle(run, sid, Status.SUCCESS, payload, None, now)
                elif node.timeout is not None and now >= started + node.timeout:
                    why = f"step {sid} timed out after {node.timeout:g}s waiting for {step.event}"
                    await self._timed_out(run, node, rec, StepTimeoutError(why), now)
            elif isinstance(step, SleepStep):
                if now >= step.due(started):
                    self._settle(run, sid, Status.SUCCESS, rec.request, None, now)
            elif isinstance(step, SubflowStep):
                cid = child_id(run.id, sid, rec.attempts)
                child = await run.host.child(cid)
                if child is None:
                    await run.host.start_child(run, node, rec.request or Message(), rec.attempts)
                elif child.status is Status.SUCCESS:
                    self._settle(run, sid, Status.SUCCESS, child.response or Message(), None, now)
                elif child.status.finished:
                    if await self._aborted(run):
                        # the abort of the parent reached the child (passed on) before
                        # this run gave it up: the rollback gives it up now (see cancel),
                        # a failure of its rollback the step's compensation failing
                        continue
                    why = f"child execution {cid} ended {child.status.name}: {child.error}"
                    self._settle(run, sid, Status.FAILURE, None, why, now)
                    if child.status is Status.FAILURE and not child.compensated:
                        # its own rollback failed: the step's undo failing, as for a
                        # child given up (see cancel); a resume retries it
                        self._undo_failed(run, sid, f"the rollback of {why}", now)

    async def _aborted(self, run: Run) -> bool:
        """Whether the execution is aborted (with compensation), maybe by a request
        that this run has not heard of yet: it hears of it now."""
        state = run.state
        if state.abort is not Abort.COMPENSATE:
            found = await run.host.stored_status(run.id)
            if found is not None and found[1] is Abort.COMPENSATE:
                run.control(*found)
        return state.abort is Abort.COMPENSATE

    async def _timed_out(
        self, run: Run, node: Node, rec: StepRecord, exc: Exception, now: float
    ) -> None:
        """A wait's timeout passed: the step fails, or its fallback answers for it."""
        error = one_line(exc)
        if node.fallback is not None:
            request = rec.request or Message()
            timeout = run.spec.step_timeout  # the execution's, as for any invocation
            fallen = await run.fallback(node, rec, request, rec.attempts, timeout, error)
            if isinstance(fallen, Message):
                fallback_id = getattr(node.fallback, "id", node.id)
                note = f"{error} (fallback {fallback_id} used)"
                self._settle(run, node.id, Status.SUCCESS, fallen, note, run.host.clock())
                return
            if fallen is not None:
                return  # interrupted: still WAITING, decided again on resume
        self._settle(run, node.id, Status.FAILURE, None, error, now)

    def _settle(
        self,
        run: Run,
        sid: str,
        status: Status,
        response: Message | None,
        error: str | None,
        now: float,
    ) -> None:
        rec = run.state.steps[sid]
        if status is Status.FAILURE:
            run.log_failure(sid, Phase.FORWARD, rec.attempts, error, None)
        done = StepRecord(
            sid,
            Phase.FORWARD,
            status,
            rec.attempts,
            rec.request,
            response,
            error,
            rec.started_at,
            now,
        )
        run.put(done)
        self.ids.discard(sid)
        hooks = run.host.hooks
        if hooks.step_finished:
            hooks.emit(hooks.step_finished, run.step_event(done, now))

    async def cancel(self, run: Run, sids: tuple[str, ...]) -> bool:
        """Give up waiting steps (a rollback or an abort): back to PENDING, never
        compensated; a child that runs for one of them is aborted, and its rollback
        ends before anything the step requires is compensated.

        A child whose rollback failed is the step's compensation failing (as for a
        child that succeeded, see :meth:`run_special`): recorded FAILURE, it stops the
        rollback of what the step requires, and a resume retries it. True when one
        did: what the run decided before is stale (decide again)."""
        now = run.host.clock()
        failed = False
        for sid in sids:
            rec = run.state.steps[sid]
            pending = replace(rec, status=Status.PENDING, finished_at=now, error="cancelled")
            run.put(pending)
            self.ids.discard(sid)
            if not isinstance(run.spec.plan.nodes[sid].step, SubflowStep):
                continue
            try:
                await run.host.abort_child(child_id(run.id, sid, rec.attempts))
            except MicrosagaError as exc:
                error = one_line(exc)
                if run.state.abort is Abort.NO_COMPENSATION:  # nothing is compensated
                    log.warning(
                        "execution %s: %s",
                        run.id,
                        error,
                        extra=about(run.id, run.spec.workflow_id, sid),
                    )
                    continue
                self._undo_failed(run, sid, error, now)
                failed = True
        return failed

    def _undo_failed(self, run: Run, sid: str, error: str, started: float) -> None:
        """The rollback of a SubflowStep's child failed: its compensation FAILURE."""
        before = run.state.comps.get(sid)
        attempts = before.attempts + 1 if before is not None else 1
        run.log_failure(sid, Phase.COMPENSATE, attempts, error, None)
        done = run.host.clock()
        run.put(
            StepRecord(
                sid, Phase.COMPENSATE, Status.FAILURE, attempts, None, None, error, started, done
            )
        )

    async def wait_or_park(self, run: Run) -> bool:
        """Only WAITING steps are left: park the execution (True: the run is over), or,
        when the wait is short or no worker would take it back, wait here."""
        now = run.host.clock()
        due, events, children = _FAR, [], []
        nodes = run.spec.plan.nodes
        for sid in self.ids:
            rec, node = run.state.steps[sid], nodes[sid]
            step = node.step
            started = rec.started_at if rec.started_at is not None else now
            if isinstance(step, SleepStep):
                due = min(due, step.due(started))
            elif isinstance(step, WaitStep):
                events.append(step.event)
                if node.timeout is not None:
                    due = min(due, started + node.timeout)
            elif isinstance(step, SubflowStep):
                children.append(child_id(run.id, sid, rec.attempts))
                due = min(due, now + _CHILD_LOOK)  # in case a wake went astray
        deadline, passed = run.spec.deadline_at, False
        if deadline is not None and run.state.abort is Abort.NONE:
            if deadline > now:
                due = min(due, deadline)  # the deadline is a timer too: it aborts the execution
            else:  # its abort is on its way (Worker.deadline_passed) and pokes the run
                passed = True
        wait = due - now
        if self._refused or passed or wait < 1.0 or not run.host.can_park:
            # a wait of its own: a poke (a signal, a child's end) or a look now and then
            self._refused = False
            await run.pause(max(0.0, min(wait, _LOOK_AGAIN)))
            return run.lost
        await _faults.reached("before_park")
        run.releasing = True
        if not await run.host.park(run, due, events, children):
            run.releasing = False
            self._refused = True  # what it waits for came: look again, then wait
            return False
        self.parked = True
        run.end(None)
        log.debug(
            "execution %s: parked, waiting for %s",
            run.id,
            ", ".join(sorted(self.ids)),
            extra=about(run.id, run.spec.workflow_id),
        )
        return True

    async def run_special(self, run: Run, rec: StepRecord, node: Node) -> StepRecord:
        """A run the loop does itself: a map (its runs), the compensation of a map's
        runs, or the rollback of a sub-workflow's child."""
        sid, phase = rec.step_id, rec.phase
        response: Message | None = None
        error = None
        try:
            if phase is Phase.FORWARD:
                response = await self._map(run, node, rec)
            elif node.compensate is RUNS_ROLLBACK:
                response = await self._compensate_runs(run, node)
            else:
                done = run.state.steps[sid]  # the try whose child succeeded
                await run.host.compensate_child(child_id(run.id, sid, done.attempts))
                response = Message()
            status = Status.SUCCESS
        except _Interrupted:
            status = Status.PENDING  # it starts again on resume
        except run.host.hooks.passthrough:
            raise  # a fault point at a run's step_started: a crash, not a failure
        except Exception as exc:
            status, error = Status.FAILURE, one_line(exc)
        finished = run.host.clock() if status is not Status.PENDING else None
        return StepRecord(
            sid,
            phase,
            status,
            rec.attempts,
            rec.request,
            response,
            error,
            rec.started_at,
            finished,
        )

    async def _map(self, run: Run, node: Node, rec: StepRecord) -> Message:
        """Run a MapStep's step once per element of its list, each run recorded as
        ``<id>[<i>]``; the responses as a JSON list, in element order."""
        step = node.step
        assert isinstance(step, MapStep)
        sid = node.id
        items = decode_json_body(rec.request.body if rec.request is not None else b"")
        if not isinstance(items, list):
            raise StepError(f"map {sid}: over {step.over} is {json_type(items)}, not a list")
        inner = step.step
        retry: RetryPolicy = inner.options.retry or Retry()
        timeout = inner.options.timeout or run.spec.step_timeout
        gate = asyncio.Semaphore(step.concurrency or len(items) or 1)
        responses: list[Message | None] = [None] * len(items)
        failed: list[str] = []

        async def one(i: int) -> None:
            rid = run_id(sid, i)
            before = self.items.get((rid, Phase.FORWARD))
            if before is not None and before.status is Status.SUCCESS:
                responses[i] = before.response  # done before a takeover
                return
            async with gate:
                if failed or run.interrupt_wanted(Phase.FORWARD):
                    return
                request = run.headers.request(encode_json(items[i]), rid)
                attempt = (before.attempts if before is not None else 0) + 1
                now = run.host.clock()
                running = StepRecord(
                    rid, Phase.FORWARD, Status.RUNNING, attempt, request, None, None, now
                )
                if not await self._commit(run, [running]):
                    # a suspend or an abort came as it was recorded: the run is not
                    # made, so its record goes back as it was (the store keeps the
                    # records of a refused commit), the attempt not counted on resume
                    unmade = replace(running, status=Status.PENDING, attempts=attempt - 1)
                    await self._commit(run, [before or unmade])
                    return
                while True:
                    _started(run, replace(running, attempts=attempt))
                    slots = run.host.slots
                    if not slots.take():
                        await slots.wait()
                    try:
                        response = await run.call(inner, request, rid, attempt, timeout)
                        failure: Exception | None = too_large(response, run.host.flow)
                    except Exception as exc:
                        failure = exc
                    finally:
                        slots.give()
                    if failure is None or not retry.should_retry(failure, attempt):
                        break
                    _finished(run, replace(running, attempts=attempt), one_line(failure))
                    # as any step's retry: recorded before it is made; a suspend or
                    # abort meanwhile leaves the run RUNNING, to start again on resume
                    delay = retry.interval(attempt, run.host.random())
                    again = replace(running, attempts=attempt + 1, error=one_line(failure))
                    if not await run.backoff(delay, Phase.FORWARD) or not await self._commit(
                        run, [again]
                    ):
                        return
                    attempt += 1
                if failure is None:
                    responses[i] = response
                    status, error = Status.SUCCESS, None
                else:
                    status, error = Status.FAILURE, one_line(failure)
                    failed.append(f"run {rid} failed: {error}")
                done = replace(
                    running,
                    status=status,
                    attempts=attempt,
                    response=response if failure is None else None,
                    error=error,
                    finished_at=run.host.clock(),
                )
                _finished(run, done)
                await self._commit(run, [done])

        await asyncio.gather(*(one(i) for i in range(len(items))))
        if failed:
            raise StepError(failed[0])
        if any(r is None for r in responses):
            raise _Interrupted()
        response = Message(
            encode_json([decode_json_body(r.body) if r is not None else None for r in responses])
        )
        # each run's response is within max_payload, their list may not be: the map's
        # response is a step's, held to the same limit
        over = too_large(response, run.host.flow, f"map {sid}: the list of its runs' responses")
        if over is not None:
            raise over
        return response

    async def _compensate_runs(self, run: Run, node: Node) -> Message:
        """Compensate the runs of a map that succeeded, the last element first."""
        step = node.step
        assert isinstance(step, MapStep)
        comp = step.step.options.compensate
        assert comp is not None
        retry = comp.options.retry or run.host.compensation_retry
        timeout = comp.options.timeout or run.spec.step_timeout
        what = step.step.options.compensate_input
        runs = [
            rec
            for (rid, phase), rec in self.items.items()
            if phase is Phase.FORWARD
            and rec.status is Status.SUCCESS
            and rid.startswith(node.id + "[")
        ]
        runs.sort(key=lambda r: int(r.step_id[len(node.id) + 1 : -1]), reverse=True)
        for item in runs:
            rid = item.step_id
            body = data.compensation_body(what, item)
            request = run.headers.request(body, rid, ":compensate")
            attempt = 1
            started = run.host.clock()
            running = StepRecord(
                rid, Phase.COMPENSATE, Status.RUNNING, attempt, request, None, None, started
            )
            if not await self._commit(run, [running], Phase.COMPENSATE):
                raise _Interrupted()
            while True:
                _started(run, replace(running, attempts=attempt))
                try:
                    response = await run.invoke(comp, request, rid, attempt, timeout)
                    break
                except Exception as exc:
                    if not retry.should_retry(exc, attempt):
                        failed = StepRecord(
                            rid,
                            Phase.COMPENSATE,
                            Status.FAILURE,
                            attempt,
                            request,
                            None,
                            one_line(exc),
                            started,
                            run.host.clock(),
                        )
                        _finished(run, failed)
                        await self._commit(run, [failed])
                        why = f"compensation of run {rid} failed: {one_line(exc)}"
                        raise StepError(why) from exc
                    _finished(run, replace(running, attempts=attempt), one_line(exc))
                    again = replace(running, attempts=attempt + 1, error=one_line(exc))
                    if not await run.backoff(
                        retry.interval(attempt, run.host.random()), Phase.COMPENSATE
                    ) or not await self._commit(run, [again], Phase.COMPENSATE):
                        raise _Interrupted() from None
                    attempt += 1
            done = StepRecord(
                rid,
                Phase.COMPENSATE,
                Status.SUCCESS,
                attempt,
                request,
                response,
                None,
                started,
                run.host.clock(),
            )
            _finished(run, done)
            await self._commit(run, [done, replace(item, status=Status.COMPENSATED)])
        return Message()

    async def _commit(
        self, run: Run, records: list[StepRecord], phase: Phase = Phase.FORWARD
    ) -> bool:
        """Commit records of a map's runs; False when what came meanwhile stops runs
        of ``phase`` (a suspend or an abort: no run starts then)."""
        go_on = await run.commit_beside(phase, records=records)
        for rec in records:
            self.items[rec.step_id, rec.phase] = rec
        return go_on


def _started(run: Run, rec: StepRecord) -> None:
    """Tell hooks that an attempt of a map's run (or of its compensation) starts."""
    hooks = run.host.hooks
    if hooks.step_started:
        hooks.emit(hooks.step_started, run.step_event(rec, run.host.clock()))


def _finished(run: Run, rec: StepRecord, retried: str | None = None) -> None:
    """Tell hooks that an attempt of a map's run (or of its compensation) ended:
    ``rec`` its final record, or ``retried`` the error of an attempt tried again."""
    hooks = run.host.hooks
    if not hooks.step_finished:
        return
    if retried is None:
        event = run.step_event(rec, run.host.clock())
    else:
        event = run.step_event(
            rec, run.host.clock(), status=Status.FAILURE, error=retried, retrying=True
        )
    hooks.emit(hooks.step_finished, event)


class _Interrupted(Exception):
    """A map's runs were stopped by a suspend or an abort: the map starts again."""
