"""The in-memory store: the reference implementation of :class:`Store`, for tests.

``memory://`` gives a fresh store; ``memory://NAME`` the same store to every Flow of
the process that names it, so several flows can share state in a test.
"""

from __future__ import annotations

import marshal
import weakref
from collections.abc import Collection, Sequence

import msgspec

from .._engine.control import control_change
from ..errors import ExecutionNotFoundError
from ..execution import Execution
from ..message import Frozen, Message, Metadata
from ..status import COMPENSATING, FAILURE, PENDING, RUNNING, SUCCESS, Status
from ._rows import build_execution
from .base import (
    COMPENSATION,
    FORWARD,
    RUNNABLE,
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


# While its owner holds an execution, its row keeps the objects the engine handed over
# (the engine never changes a record or message it has handed to a store), and reads
# get copies. Once no worker holds it (finished, suspended, released), the row packs
# them into one bytes object: a test (or a benchmark) that keeps many executions in
# memory would otherwise keep a few dozen objects per execution that the garbage
# collector tracks and walks at every full collection.
_Record = tuple[
    str,  # step id
    int,  # phase
    int,  # status
    int,  # attempts
    bytes | None,  # request body
    Frozen | None,  # request header
    bytes | None,  # response body
    Frozen | None,  # response header
    str | None,  # error
    float | None,  # started_at
    float | None,  # finished_at
]
_Packed = tuple[bytes, Frozen, bytes | None, Frozen | None, list[_Record]]


# marshal: the bytes never leave the process, and it writes an object shared in several
# places once (a step's request body is the response of the step before it; the step
# headers share their entries): about 60 % of msgpack's size, as fast. Storing is mostly
# the first touch of new memory, so smaller is faster.
def _encode(packed: _Packed) -> bytes:
    return marshal.dumps(packed)


def _decode(data: bytes) -> _Packed:
    packed: _Packed = marshal.loads(data)
    return packed


_STATUS_NUMBER = [int(status) for status in Status]  # indexed by a status
_STARTABLE = (RUNNING, COMPENSATING)  # the statuses in which starts are written

# the usual result of a transition, by status (results are never changed, so shared)
_APPLIED = [TransitionResult(True, status, 0, True) for status in Status]


def _copy(msg: Message | None) -> Message | None:
    return None if msg is None else Message(msg.body, msg.header.copy())


def _copy_record(r: StepRecord) -> StepRecord:
    return StepRecord(
        r.step_id,
        r.phase,
        r.status,
        r.attempts,
        _copy(r.request),
        _copy(r.response),
        r.error,
        r.started_at,
        r.finished_at,
    )


def _message(body: bytes | None, header: Frozen | None) -> Message | None:
    return None if body is None else Message(body, Metadata.from_frozen(header or ()))


def _unpack_record(t: _Record) -> StepRecord:
    sid, phase, status, attempts, req, req_h, resp, resp_h, error, started, finished = t
    return StepRecord(
        sid,
        phase,
        Status(status),
        attempts,
        _message(req, req_h),
        _message(resp, resp_h),
        error,
        started,
        finished,
    )


class _Row(msgspec.Struct, gc=False):
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
    status: Status
    abort: int = 0
    owner: str | None = None
    token: int = 0
    lease_until: float = 0.0
    error: str | None = None
    updated_at: float = 0.0
    # held: the engine's own objects; settled: packed (see the note above)
    request: Message | None = None
    response: Message | None = None
    steps: dict[tuple[str, int], StepRecord] | None = None
    packed: bytes | None = None

    def put(self, rec: StepRecord) -> None:
        steps = self.steps if self.steps is not None else self._unpack()
        steps[rec.step_id, rec.phase] = rec

    def records(self) -> list[StepRecord]:
        if self.steps is not None:
            return [_copy_record(r) for r in self.steps.values()]
        assert self.packed is not None
        return [_unpack_record(t) for t in _decode(self.packed)[4]]

    def request_message(self) -> Message:
        if self.packed is not None:
            body, header = _decode(self.packed)[:2]
            return Message(body, Metadata.from_frozen(header))
        assert self.request is not None
        return Message(self.request.body, self.request.header.copy())

    def response_message(self) -> Message | None:
        if self.packed is not None:
            return _message(*_decode(self.packed)[2:4])
        return _copy(self.response)

    def settle(self) -> None:
        """Pack the row once no worker holds it."""
        steps, req, resp = self.steps, self.request, self.response
        if self.owner is not None or steps is None or req is None:
            return
        records: list[_Record] = []
        for r in steps.values():  # a loop, not a call per record: this runs per execution
            rq, rs = r.request, r.response
            records.append(
                (
                    r.step_id,
                    r.phase,
                    _STATUS_NUMBER[r.status],  # marshal takes ints, not IntEnum members
                    r.attempts,
                    None if rq is None else rq.body,
                    None if rq is None else rq.header.frozen(),
                    None if rs is None else rs.body,
                    None if rs is None else rs.header.frozen(),
                    r.error,
                    r.started_at,
                    r.finished_at,
                )
            )
        self.packed = _encode(
            (
                req.body,
                req.header.frozen(),
                None if resp is None else resp.body,
                None if resp is None else resp.header.frozen(),
                records,
            )
        )
        self.steps = self.request = self.response = None

    def _unpack(self) -> dict[tuple[str, int], StepRecord]:
        assert self.packed is not None
        body, header, resp, resp_h, records = _decode(self.packed)
        self.request = Message(body, Metadata.from_frozen(header))
        self.response = _message(resp, resp_h)
        self.steps = steps = {}
        for t in records:
            rec = _unpack_record(t)
            steps[rec.step_id, rec.phase] = rec
        self.packed = None
        return steps


class MemoryStore(Store):
    """Keeps everything in dicts; applies each batch at once, without I/O."""

    batching = False

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._rows: dict[str, _Row] = {}
        self._runnable: dict[str, _Row] = {}  # claims look only here, not at every row
        self._seq = 0
        self._definitions: dict[str, StoredDefinition] = {}
        self._workflows: dict[str, list[StoredWorkflow]] = {}
        self._controls: list[tuple[int, str, float]] = []
        self._control_seq = 0

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        name = url.removeprefix("memory://").strip("/")
        if not name:
            return cls(url)
        found = _NAMED.get(name)
        if found is None:
            found = cls(url)
            _NAMED[name] = found
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
        return [self._apply(u) for u in units]

    def _apply(self, unit: NewExecution | Transition) -> bool | TransitionResult:
        # a transition is applied here, not in a call of its own: one per step run
        if type(unit) is not Transition:
            assert isinstance(unit, NewExecution)
            return self._create(unit)
        t = unit
        row = self._rows.get(t.execution_id)
        if row is None or row.token != t.token or row.owner is None:
            return TransitionResult(False, row.status if row else PENDING, 0, False)
        steps = row.steps if row.steps is not None else row._unpack()
        for rec in t.records:
            steps[rec.step_id, rec.phase] = rec
        applied = row.status is t.expect
        if applied:
            if t.status is not None:
                row.status = t.status
                self._track(row)
                if t.response is not None:
                    row.response = t.response
                if t.error is not None:
                    row.error = t.error
            if t.starts and row.status in _STARTABLE:
                for rec in t.starts:
                    steps[rec.step_id, rec.phase] = rec
            if t.release:
                row.owner = None
                row.lease_until = 0.0
                row.settle()
        row.updated_at = t.at
        if applied and not row.abort:
            return _APPLIED[row.status]
        return TransitionResult(True, row.status, row.abort, applied)

    commit_now = _apply  # a commit here never waits

    def _create(self, new: NewExecution) -> bool:
        if new.id in self._rows:
            return False
        if new.definition_hash not in self._definitions:
            self._definitions[new.definition_hash] = StoredDefinition(
                new.definition_hash, new.workflow_id, new.definition, list(new.step_ids)
            )
        self._seq += 1
        steps = {}  # a loop, not a comprehension: a comprehension is a call (3.11)
        for rec in new.starts:
            steps[rec.step_id, rec.phase] = rec
        row = _Row(  # positional, in field order: keywords cost more than the rest
            self._seq,
            new.id,
            new.workflow_id,
            new.version,
            new.definition_hash,
            new.start_step,
            new.reverse,
            new.step_timeout,
            new.deadline_at,
            new.created_at,
            new.status,
            0,
            new.owner,
            1 if new.owner else 0,
            new.lease_until,
            None,
            new.created_at,
            new.request,
            None,
            steps,
        )
        if row.owner is None:
            row.settle()
        self._rows[new.id] = row
        self._track(row)
        return True

    def _track(self, row: _Row) -> None:
        if row.status in RUNNABLE:
            self._runnable[row.id] = row
        else:
            self._runnable.pop(row.id, None)

    async def claim(self, owner: str, now: float, ttl: float, limit: int) -> list[Claim]:
        out: list[Claim] = []
        for row in sorted(self._runnable.values(), key=lambda r: r.seq):
            if len(out) >= limit:
                break
            # never its own: a live worker whose lease ran out (a stall, the store away)
            # still runs them and renews them; taking them again would fence it off
            if row.status in RUNNABLE and row.lease_until < now and row.owner != owner:
                row.owner, row.token, row.lease_until = owner, row.token + 1, now + ttl
                if row.status is PENDING:
                    row.status = RUNNING
                out.append(Claim(row.id, row.token))
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

    async def release(self, execution_id: str, token: int, until: float) -> None:
        row = self._rows.get(execution_id)
        if row is not None and row.token == token:
            row.owner, row.lease_until = None, until
            row.settle()

    async def release_all(self, owner: str) -> int:
        freed = 0
        for row in self._rows.values():
            if row.owner == owner:
                row.owner, row.lease_until = None, 0.0
                row.settle()
                freed += 1
        return freed

    async def lease_owners(self) -> set[str]:
        return {row.owner for row in self._rows.values() if row.owner is not None}

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
            request=row.request_message(),
            start_step=row.start_step,
            reverse=row.reverse,
            step_timeout=row.step_timeout,
            deadline_at=row.deadline_at,
            token=row.token,
            records=row.records(),
        )

    # control --------------------------------------------------------------------

    async def request(
        self, execution_id: str, action: ControlAction, now: float, reason: str | None = None
    ) -> Status:
        row = self._rows.get(execution_id)
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        records = row.records()
        change = control_change(
            action,
            row.status,
            row.abort,
            held=row.owner is not None and row.lease_until >= now,
            steps_running=any(r.status is RUNNING for r in records),
            compensation_failed=any(
                r.phase == COMPENSATION and r.status is FAILURE for r in records
            ),
            steps_succeeded=any(r.phase == FORWARD and r.status is SUCCESS for r in records),
        )
        row.status, row.abort, row.updated_at = change.status, change.abort, now
        self._track(row)
        if reason is not None:
            row.error = reason
        if change.free_lease:
            row.owner, row.lease_until = None, 0.0
        if change.final:
            row.owner, row.lease_until = None, 0.0
        if change.retry_compensations:
            for rec in records:
                if rec.phase == COMPENSATION and rec.status is FAILURE:
                    row.put(msgspec.structs.replace(rec, status=PENDING))
        row.settle()
        self._control_seq += 1
        self._controls.append((self._control_seq, execution_id, now))
        return row.status

    async def controls(self, after: int) -> tuple[list[str], int]:
        ids = [eid for seq, eid, _ in self._controls if seq > after]
        return ids, self._control_seq

    async def prune_controls(self, before: float) -> None:
        self._controls = [c for c in self._controls if c[2] >= before]

    # queries ------------------------------------------------------------------

    def _execution(self, row: _Row) -> Execution:
        return build_execution(
            id=row.id,
            workflow_id=row.workflow_id,
            version=row.version,
            status=row.status,
            request=row.request_message(),
            response=row.response_message(),
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            deadline_at=row.deadline_at,
            step_ids=self._definitions[row.definition_hash].step_ids,
            records=row.records(),
        )

    async def get_execution(self, execution_id: str) -> Execution | None:
        row = self._rows.get(execution_id)
        return None if row is None else self._execution(row)

    async def get_status(self, execution_id: str) -> tuple[Status, int] | None:
        row = self._rows.get(execution_id)
        return None if row is None else (row.status, row.abort)

    async def list_executions(
        self,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Execution]:
        bound = self._rows[before].seq if before in self._rows else None
        if before is not None and bound is None:
            raise ExecutionNotFoundError(before)
        rows = sorted(self._rows.values(), key=lambda r: r.seq, reverse=True)
        out = []
        for row in rows:
            if bound is not None and row.seq >= bound:
                continue
            if workflow_id is not None and row.workflow_id != workflow_id:
                continue
            if status is not None and row.status is not status:
                continue
            out.append(self._execution(row))
            if len(out) >= limit:
                break
        return out
