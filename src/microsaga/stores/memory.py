"""The in-memory store: the reference implementation of :class:`Store`, for tests.

``memory://`` gives a fresh store; ``memory://NAME`` the same store to every Flow of
the process that names it, so several flows can share state in a test.

Everything is kept in dicts of untracked structs, with each message taken apart into
its body and frozen header: a store keeps thousands of them, and a Message or Metadata
is always tracked by the garbage collector, whose full collections would walk them all.
Reads hand out new messages.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Iterable, Sequence
from itertools import dropwhile

import msgspec
from msgspec.structs import replace

from .._engine.control import control_change
from ..errors import ExecutionNotFoundError, InvalidTransitionError
from ..execution import Execution
from ..message import Frozen, Message, frozen_message
from ..status import Phase, Status
from ._rows import build_execution
from .base import (
    RUNNABLE,
    Abort,
    Claim,
    ControlAction,
    NewExecution,
    StepRecord,
    Store,
    StoredDefinition,
    StoredExecution,
    StoredWorkflow,
    Transition,
    TransitionResult,
)

__all__ = ["MemoryStore"]

_NAMED: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_STARTABLE = (Status.RUNNING, Status.COMPENSATING)  # the statuses in which starts are written
# step runs that an abort must see to their end: a WAITING step goes back to PENDING
# (docs/semantics.md, "Rollback gives up waiting"), which takes a worker
_STARTED = (Status.RUNNING, Status.WAITING)


class _Kept(msgspec.Struct, gc=False, frozen=True):
    """A message as the store keeps it: its body and frozen header. The GC never tracks
    one (a Message and its Metadata it always does), and no cycle can go through one:
    its parts are a body (bytes) and tuples of strings, which refer to nothing."""

    body: bytes
    header: Frozen

    def message(self) -> Message:
        return frozen_message(self.body, self.header)


def _keep(msg: Message) -> _Kept:
    return _Kept(msg.body, msg.header.frozen())


def _message(kept: _Kept | None) -> Message | None:
    return None if kept is None else kept.message()


class _Step(msgspec.Struct, gc=False, frozen=True):
    """A step record as the store keeps it, in one struct: each message as its body
    (None: the record has none) and frozen header."""

    step_id: str
    phase: Phase
    status: Status
    attempts: int
    request: bytes | None
    request_header: Frozen
    response: bytes | None
    response_header: Frozen
    error: str | None
    started_at: float | None
    finished_at: float | None

    def full(self) -> StepRecord:
        """The record with new messages (a reader may change one)."""
        request, response = self.request, self.response
        return StepRecord(
            self.step_id,
            self.phase,
            self.status,
            self.attempts,
            None if request is None else frozen_message(request, self.request_header),
            None if response is None else frozen_message(response, self.response_header),
            self.error,
            self.started_at,
            self.finished_at,
        )


def _step(rec: StepRecord) -> _Step:
    request, response = rec.request, rec.response
    return _Step(
        rec.step_id,
        rec.phase,
        rec.status,
        rec.attempts,
        None if request is None else request.body,
        () if request is None else request.header.frozen(),
        None if response is None else response.body,
        () if response is None else response.header.frozen(),
        rec.error,
        rec.started_at,
        rec.finished_at,
    )


class _Row(msgspec.Struct, kw_only=True, gc=False):
    """One execution: what the engine handed over, its messages taken apart."""

    seq: int
    id: str
    workflow_id: str
    version: int | None
    definition_hash: str
    start_step: str | None
    reverse: bool
    step_timeout: float | None
    deadline_at: float | None
    created_at: float
    updated_at: float
    status: Status
    request: _Kept
    response: _Kept | None = None
    # by step id: the forward runs and the compensations (string keys and untracked
    # values: the GC never tracks these dicts; copied per row)
    forward: dict[str, _Step] = {}
    comps: dict[str, _Step] = {}
    abort: Abort = Abort.NONE
    owner: str | None = None
    token: int = 0
    lease_until: float = 0.0
    error: str | None = None
    note: str | None = None
    parent_id: str | None = None
    redrive_of: str | None = None
    recovery_attempts: int = 0  # takeovers in a row from a dead worker (see Store.claim)

    def put(self, records: Sequence[StepRecord]) -> None:
        forward, comps = self.forward, self.comps
        for rec in records:
            (comps if rec.phase is Phase.COMPENSATE else forward)[rec.step_id] = _step(rec)

    def records(self) -> list[StepRecord]:
        """The records, with new messages (a reader may change one)."""
        return [s.full() for s in (*self.forward.values(), *self.comps.values())]


class MemoryStore(Store):
    """Keeps everything in dicts; applies each unit at once, without I/O."""

    batching = False

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._rows: dict[str, _Row] = {}
        self._runnable: dict[str, _Row] = {}  # claims look only here, not at every row
        # the rows whose lease is held, by owner: every poll asks for the owners
        self._held: dict[str, dict[str, _Row]] = {}
        self._seq = 0
        self._definitions: dict[str, StoredDefinition] = {}
        self._workflows: dict[str, list[StoredWorkflow]] = {}
        self._controls: list[tuple[int, str, float]] = []
        self._control_seq = 0
        self._signals: dict[str, dict[str, _Kept]] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        name = url.removeprefix("memory://").strip("/")
        if not name:
            return cls(url)
        found = _NAMED.get(name)
        if found is None:
            found = _NAMED[name] = cls(url)
        return found

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # workflows ----------------------------------------------------------------

    async def save_workflow(self, workflow_id: str, hash: str, body: bytes, now: float) -> int:
        versions = self._workflows.setdefault(workflow_id, [])
        if versions and versions[-1].hash == hash:
            return versions[-1].version
        version = versions[-1].version + 1 if versions else 1
        versions.append(StoredWorkflow(workflow_id, version, hash, body, now))
        return version

    async def load_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> StoredWorkflow | None:
        versions = self._workflows.get(workflow_id)
        if not versions:
            return None
        if version is None:
            return versions[-1]
        return next((v for v in versions if v.version == version), None)

    async def list_workflows(self) -> list[StoredWorkflow]:
        return [v[-1] for _, v in sorted(self._workflows.items()) if v]

    async def remove_workflow(self, workflow_id: str) -> bool:
        return self._workflows.pop(workflow_id, None) is not None

    # running ------------------------------------------------------------------

    async def commit(
        self, units: Sequence[NewExecution | Transition]
    ) -> list[bool | TransitionResult]:
        return [self._apply(unit) for unit in units]

    def _apply(self, unit: NewExecution | Transition) -> bool | TransitionResult:
        if isinstance(unit, Transition):
            return self._transition(unit)
        return self._create(unit)

    commit_now = _apply  # a commit here never waits: applied at once, one call less

    def _transition(self, t: Transition) -> TransitionResult:
        row = self._rows.get(t.execution_id)
        if row is None or row.token != t.token or row.owner is None:
            status = row.status if row is not None else Status.PENDING
            return TransitionResult(owned=False, status=status, abort=Abort.NONE, applied=False)
        row.put(t.records)
        row.recovery_attempts = 0  # its worker is alive and commits
        applied = row.status is t.expect and row.abort <= t.abort
        if applied:
            if t.status is not None:
                row.status = t.status
                self._track(row)
                if t.response is not None:
                    row.response = _keep(t.response)
                if t.error is not None:
                    row.error = t.error or None
            if row.status in _STARTABLE:
                row.put(t.starts)
            if t.release:
                self._free(row)
        row.updated_at = t.at
        return TransitionResult(owned=True, status=row.status, abort=row.abort, applied=applied)

    def _create(self, new: NewExecution) -> bool:
        if new.id in self._rows:
            return False
        if new.definition_hash not in self._definitions:
            self._definitions[new.definition_hash] = StoredDefinition(
                new.definition_hash, new.workflow_id, new.definition, list(new.step_ids)
            )
        self._seq += 1
        row = _Row(
            seq=self._seq,
            id=new.id,
            workflow_id=new.workflow_id,
            version=new.version,
            definition_hash=new.definition_hash,
            request=_keep(new.request),
            start_step=new.start_step,
            reverse=new.reverse,
            step_timeout=new.step_timeout,
            deadline_at=new.deadline_at,
            created_at=new.created_at,
            updated_at=new.created_at,
            status=new.status,
            token=1 if new.owner else 0,
            lease_until=new.lease_until,
            parent_id=new.parent_id,
            redrive_of=new.redrive_of,
        )
        row.put(new.starts)
        self._rows[new.id] = row
        self._track(row)
        if new.owner is not None:
            self._own(row, new.owner)
        return True

    def _track(self, row: _Row) -> None:
        if row.status in RUNNABLE:
            self._runnable[row.id] = row
        else:
            self._runnable.pop(row.id, None)

    def _own(self, row: _Row, owner: str) -> None:
        if row.owner is not None:
            self._free(row)
        row.owner = owner
        self._held.setdefault(owner, {})[row.id] = row

    def _free(self, row: _Row, until: float = 0.0) -> None:
        owner = row.owner
        if owner is not None:
            held = self._held[owner]
            del held[row.id]
            if not held:
                del self._held[owner]
        row.owner, row.lease_until = None, until

    async def claim(
        self,
        owner: str,
        now: float,
        ttl: float,
        limit: int,
        *,
        alive: Collection[str] = (),
        only: Collection[str] | None = None,
        skip: Collection[str] = (),
    ) -> list[Claim]:
        out: list[Claim] = []
        rows: Iterable[_Row] = self._runnable.values()
        if only is not None:
            rows = [row for eid in only if (row := self._runnable.get(eid)) is not None]
        skipped = set(skip)
        for row in sorted(rows, key=lambda r: r.seq):
            if len(out) >= limit:
                break
            if row.id in skipped:
                continue
            # never its own: a live worker whose lease ran out (a stall, the store away)
            # still runs them and renews them; taking them again would fence it off
            if row.lease_until <= now and row.owner != owner:
                if row.owner is not None and row.owner not in alive:  # its worker died
                    row.recovery_attempts += 1
                self._own(row, owner)
                row.token, row.lease_until = row.token + 1, now + ttl
                row.note = None
                if row.status is Status.PENDING:
                    row.status = Status.RUNNING
                out.append(Claim(row.id, row.token, row.recovery_attempts))
        return out

    async def renew(
        self, owner: str, execution_ids: Collection[str], now: float, ttl: float
    ) -> set[str]:
        held = set()
        for eid in execution_ids:
            row = self._rows.get(eid)
            if row is not None and row.owner == owner:
                row.lease_until = now + ttl
                held.add(eid)
        return held

    async def release(
        self, execution_id: str, token: int, until: float, note: str | None = None
    ) -> None:
        row = self._rows.get(execution_id)
        if row is not None and row.token == token:
            row.note = note
            self._free(row, until)

    async def release_all(self, owner: str) -> int:
        held = list(self._held.get(owner, {}).values())
        for row in held:
            row.recovery_attempts += 1  # its worker died
            self._free(row)
        return len(held)

    async def lease_owners(self) -> set[str]:
        return set(self._held)

    async def load(self, execution_id: str) -> StoredExecution | None:
        row = self._rows.get(execution_id)
        if row is None:
            return None
        return StoredExecution(
            id=row.id,
            workflow_id=row.workflow_id,
            version=row.version,
            definition=self._definitions[row.definition_hash],
            status=row.status,
            abort=row.abort,
            request=row.request.message(),
            start_step=row.start_step,
            reverse=row.reverse,
            step_timeout=row.step_timeout,
            deadline_at=row.deadline_at,
            token=row.token,
            records=row.records(),
            created_at=row.created_at,
            parent_id=row.parent_id,
        )

    async def definition_of(self, execution_id: str) -> tuple[Status, StoredDefinition] | None:
        row = self._rows.get(execution_id)
        return None if row is None else (row.status, self._definitions[row.definition_hash])

    # control --------------------------------------------------------------------

    async def request(
        self,
        execution_id: str,
        action: ControlAction,
        now: float,
        reason: str | None = None,
        *,
        steps: Sequence[str] | None = None,
        body: bytes | None = None,
    ) -> Status:
        row = self._rows.get(execution_id)
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        records = row.records()
        change = control_change(
            action,
            row.status,
            row.abort,
            held=row.owner is not None and row.lease_until > now,
            steps_running=any(r.status in _STARTED for r in records),
            compensation_failed=any(
                r.phase is Phase.COMPENSATE and r.status is Status.FAILURE for r in records
            ),
            steps_succeeded=any(
                r.phase is Phase.FORWARD and r.status is Status.SUCCESS for r in records
            ),
        )
        row.status, row.abort, row.updated_at = change.status, change.abort, now
        self._track(row)
        if reason is not None:
            row.error = reason
        if change.free_lease or change.final:
            row.note = None
            self._free(row)
        if change.retry_compensations:
            row.put(
                [
                    replace(r, status=Status.PENDING)
                    for r in records
                    if r.phase is Phase.COMPENSATE and r.status is Status.FAILURE
                ]
            )
        if change.retry_steps:
            row.put(
                [
                    replace(
                        r,
                        status=Status.PENDING,
                        attempts=0,
                        request=Message(body) if body is not None else None,
                        response=None,
                        finished_at=None,
                    )
                    for r in records
                    if r.phase is Phase.FORWARD
                    and r.status is Status.FAILURE
                    and (steps is None or r.step_id in steps)
                ]
            )
        self._control_seq += 1
        self._controls.append((self._control_seq, execution_id, now))
        return row.status

    async def controls(self, after: int) -> tuple[list[str], int]:
        ids = [eid for seq, eid, _ in self._controls if seq > after]
        return ids, self._control_seq

    async def prune(self, before: float, statuses: Collection[Status], limit: int) -> int:
        def old(row: _Row) -> bool:
            return row.status in statuses and row.updated_at < before

        def with_ancestors(row: _Row) -> bool:
            # a child goes only with its ancestors: one still stored and not pruned by
            # the same rule may yet compensate it as a unit (or resume its rollback)
            seen = {row.id}
            parent = self._rows.get(row.parent_id) if row.parent_id is not None else None
            while parent is not None and parent.id not in seen:
                if not old(parent):
                    return False
                seen.add(parent.id)
                up = parent.parent_id
                parent = self._rows.get(up) if up is not None else None
            return True

        gone = [row for row in self._rows.values() if old(row) and with_ancestors(row)][:limit]
        for row in gone:
            del self._rows[row.id]
            self._runnable.pop(row.id, None)
            self._free(row)
            self._signals.pop(row.id, None)
        return len(gone)

    async def prune_controls(self, before: float) -> None:
        self._controls = [c for c in self._controls if c[2] >= before]

    # waiting --------------------------------------------------------------------

    async def signal(self, execution_id: str, event: str, payload: Message, now: float) -> None:
        row = self._rows.get(execution_id)
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        if row.status.finished:
            raise InvalidTransitionError(f"cannot signal an execution that is {row.status.name}")
        kept = self._signals.setdefault(execution_id, {})
        kept.setdefault(event, _keep(payload))
        self._wake(row, "signal", now)

    def _wake(self, row: _Row, action: str, now: float) -> None:
        if row.owner is None and row.status in RUNNABLE:
            row.lease_until = 0.0
        self._control_seq += 1
        self._controls.append((self._control_seq, row.id, now))

    async def signals(self, execution_id: str) -> dict[str, Message]:
        kept = self._signals.get(execution_id, {})
        return {event: m.message() for event, m in kept.items()}

    async def park(
        self,
        execution_id: str,
        token: int,
        until: float,
        events: Collection[str],
        children: Collection[str],
        note: str,
    ) -> bool:
        row = self._rows.get(execution_id)
        if row is None or row.token != token or row.owner is None:
            return False
        # a suspend or an abort came first (one without compensation leaves it RUNNING)
        if row.status is not Status.RUNNING or row.abort is not Abort.NONE:
            return False
        kept = self._signals.get(execution_id, {})
        if any(event in kept for event in events):
            return False
        for cid in children:
            child = self._rows.get(cid)
            if child is not None and child.status.finished:
                return False
        row.note = note
        self._free(row, until)
        return True

    async def wake(self, execution_id: str, now: float) -> None:
        row = self._rows.get(execution_id)
        if row is not None:
            self._wake(row, "wake", now)

    # queries ------------------------------------------------------------------

    def _execution(self, row: _Row, *, steps: bool = True) -> Execution:
        """The execution of ``row``; without its step runs (none read) unless ``steps``."""
        return build_execution(
            id=row.id,
            workflow_id=row.workflow_id,
            version=row.version,
            status=row.status,
            request=row.request.message(),
            response=_message(row.response),
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            deadline_at=row.deadline_at,
            step_ids=self._definitions[row.definition_hash].step_ids if steps else (),
            records=row.records() if steps else (),
            parent_id=row.parent_id,
            redrive_of=row.redrive_of,
            note=row.note,
        )

    async def get_execution(self, execution_id: str) -> Execution | None:
        row = self._rows.get(execution_id)
        return None if row is None else self._execution(row)

    async def get_status(self, execution_id: str) -> tuple[Status, Abort] | None:
        row = self._rows.get(execution_id)
        return None if row is None else (row.status, row.abort)

    async def count_waiting(self) -> int:
        waiting = Status.WAITING
        return sum(
            1
            for row in list(self._runnable.values())
            if row.status is Status.RUNNING
            for step in row.forward.values()
            if step.status is waiting
        )

    async def list_executions(
        self,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 100,
        before: str | None = None,
        *,
        redrive_of: str | None = None,
        steps: bool = True,
    ) -> list[Execution]:
        # self._rows is in creation order (a row is added once, at its creation, and
        # only ever deleted): walked back from the newest, a listing reads the rows it
        # lists and those it skips, never sorts the store
        rows = reversed(self._rows.values())
        if before is not None:
            found = self._rows.get(before)
            if found is None:
                raise ExecutionNotFoundError(before)
            bound = found.seq
            rows = dropwhile(lambda r: r.seq >= bound, rows)
        out = []
        for row in rows:
            if workflow_id is not None and row.workflow_id != workflow_id:
                continue
            if status is not None and row.status is not status:
                continue
            if redrive_of is not None and row.redrive_of != redrive_of:
                continue
            out.append(self._execution(row, steps=steps))
            if len(out) >= limit:
                break
        return out
