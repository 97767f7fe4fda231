"""Rows of the SQL stores to records and back, for SQLite and PostgreSQL alike.

Both databases have the same tables, and the queries of both select the columns named
below in the order below (``tests/unit/test_sql_rows.py`` holds them to it), so one
function maps each kind of row. The databases differ only in how the JSON columns
travel: the SQLite driver takes and gives JSON as bytes, asyncpg takes it as text and
gives a definition's step ids as an array. :data:`SQLITE` and :data:`POSTGRES` are
the mappings of each, built from those few codecs.

:func:`build_execution` also makes the memory store's :class:`Execution`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .._engine.control import ControlChange, control_change
from ..execution import Execution, StepRun, run_of, to_datetime
from ..message import Message, Metadata
from ..payloads import PLAIN, Bodies, Pending
from ..status import Phase, Status
from .base import (
    COMP_UNDOING,
    UNDOING,
    Abort,
    ControlAction,
    MapBrief,
    NewExecution,
    StepRecord,
    StoredDefinition,
    StoredExecution,
    StoredWorkflow,
)

__all__ = [
    "DEFINITION_COLUMNS",
    "EXECUTION_COLUMNS",
    "LOAD_COLUMNS",
    "NEW_EXECUTION_COLUMNS",
    "POSTGRES",
    "SQLITE",
    "STEP_COLUMNS",
    "STEP_IDS",
    "WORKFLOW_COLUMNS",
    "RowMapping",
    "briefs_of_rows",
    "build_execution",
    "decode_header",
]

# A step run, after its execution_id (step_runs written and read; load_executions).
STEP_COLUMNS = (
    "step_id",
    "phase",
    "status",
    "attempts",
    "request_body",
    "request_header",
    "response_body",
    "response_header",
    "error",
    "started_at",
    "finished_at",
)
# An execution as a worker loads it (load_executions, followed by STEP_COLUMNS).
LOAD_COLUMNS = (
    "id",
    "workflow_id",
    "version",
    "definition",
    "status",
    "abort",
    "request_body",
    "request_header",
    "start_step",
    "reverse",
    "step_timeout",
    "deadline_at",
    "lease_token",
    "created_at",
    "parent_id",
)
# A definition (definitions written and read).
DEFINITION_COLUMNS = ("hash", "workflow_id", "body", "step_ids")
# An execution as users see it (get_execution, list_executions...).
EXECUTION_COLUMNS = (
    "id",
    "workflow_id",
    "version",
    "status",
    "request_body",
    "request_header",
    "response_body",
    "response_header",
    "error",
    "created_at",
    "updated_at",
    "deadline_at",
    "step_ids",
    "parent_id",
    "redrive_of",
    "note",
)
# A new execution (insert_execution, create_executions; updated_at is created_at).
NEW_EXECUTION_COLUMNS = (
    "id",
    "workflow_id",
    "version",
    "definition",
    "status",
    "request_body",
    "request_header",
    "start_step",
    "reverse",
    "step_timeout",
    "deadline_at",
    "owner",
    "lease_token",
    "lease_until",
    "created_at",
    "parent_id",
    "redrive_of",
)
# A saved workflow (load_workflow..., list_workflows).
WORKFLOW_COLUMNS = ("id", "version", "hash", "body", "created_at")

_DEFINITION = LOAD_COLUMNS.index("definition")
STEP_IDS = EXECUTION_COLUMNS.index("step_ids")  # a definition's step ids, in its rows

_header_decoder = msgspec.json.Decoder(dict[str, list[str]])
_ids_decoder = msgspec.json.Decoder(list[str])
_encode = msgspec.json.Encoder().encode


# A header's JSON column is ``{"Name": ["value", ...]}`` as ``to_dict`` gives it, here
# made from the frozen form the header keeps (its tuples encode as arrays): to_dict
# builds its lists anew, and a step's header is written when it starts and ends.


def _header_bytes(header: Metadata) -> bytes | None:
    frozen = header.frozen()
    return _encode({name: values for _, name, values in frozen}) if frozen else None


def _header_text(header: Metadata) -> str | None:
    frozen = header.frozen()
    return _encode({name: values for _, name, values in frozen}).decode() if frozen else None


def _ids_text(ids: list[str]) -> str:
    return _encode(ids).decode()


def decode_header(raw: bytes | str | None) -> Metadata:
    if not raw:
        return Metadata()
    return Metadata(_header_decoder.decode(raw))


_NONE_FOUND: Mapping[str, bytes] = {}


@dataclass(frozen=True, slots=True)
class RowMapping:
    """Records to the rows of one database and back.

    Rows are written as tuples in the order of the ``*_COLUMNS`` above, and read in the
    same order. Phases, statuses and abort requests are ints in SQL: they are written
    with ``int()``, so ints and int enums alike go in.
    """

    encode_header: Callable[[Metadata], Any]  # a header to its JSON column, None if empty
    encode_ids: Callable[[list[str]], Any]  # step ids to their JSON column
    decode_ids: Callable[[Any], list[str]]  # a definitions.step_ids column to the ids
    # large bodies by reference, the codec (microsaga.payloads); a store with a codec
    # has a mapping of its own (with_bodies)
    bodies: Bodies = field(default=PLAIN)

    def with_bodies(self, bodies: Bodies) -> RowMapping:
        return RowMapping(self.encode_header, self.encode_ids, self.decode_ids, bodies)

    def body_out(self, body: bytes, execution_id: str, pending: Pending | None) -> bytes:
        return self.bodies.body_out(body, execution_id, pending)

    def header_out(self, header: Metadata) -> Any:
        if self.bodies.codec is not None:
            header = self.bodies.header_out(header)
        return self.encode_header(header)

    def message(
        self,
        body: bytes,
        header: bytes | str | None,
        found: Mapping[str, bytes] = _NONE_FOUND,
        strict: bool = True,
    ) -> Message:
        """A message from its stored body and header."""
        bodies = self.bodies
        md = decode_header(header)
        if not bodies.plain:
            md = bodies.header_in(md, strict)
        return Message(bodies.body_in(bytes(body), found, strict), md)

    def message_or_none(
        self,
        body: bytes | None,
        header: bytes | str | None,
        found: Mapping[str, bytes] = _NONE_FOUND,
        strict: bool = True,
    ) -> Message | None:
        return None if body is None else self.message(body, header, found, strict)

    # writing -----------------------------------------------------------------------------

    def step_row(
        self, execution_id: str, r: StepRecord, pending: Pending | None = None
    ) -> tuple[Any, ...]:
        """The step_runs row of a record: execution_id, then STEP_COLUMNS; large
        bodies go to ``pending`` (stored by reference) when it is given."""
        req, resp = r.request, r.response
        header = self.header_out
        body = self.bodies.body_out
        return (
            execution_id,
            r.step_id,
            int(r.phase),
            int(r.status),
            r.attempts,
            body(req.body, execution_id, pending) if req is not None else None,
            header(req.header) if req is not None else None,
            body(resp.body, execution_id, pending) if resp is not None else None,
            header(resp.header) if resp is not None else None,
            r.error,
            r.started_at,
            r.finished_at,
        )

    def definition_row(self, new: NewExecution) -> tuple[Any, ...]:
        """The definitions row a new execution needs (DEFINITION_COLUMNS)."""
        return (new.definition_hash, new.workflow_id, new.definition, self.encode_ids(new.step_ids))

    def new_execution_row(
        self, new: NewExecution, pending: Pending | None = None
    ) -> tuple[Any, ...]:
        """The executions row of a new execution (NEW_EXECUTION_COLUMNS)."""
        return (
            new.id,
            new.workflow_id,
            new.version,
            new.definition_hash,
            int(new.status),
            self.bodies.body_out(new.request.body, new.id, pending),
            self.header_out(new.request.header),
            new.start_step,
            new.reverse,
            new.step_timeout,
            new.deadline_at,
            new.owner,
            1 if new.owner else 0,
            new.lease_until,
            new.created_at,
            new.parent_id,
            new.redrive_of,
        )

    # reading -----------------------------------------------------------------------------

    def record(
        self, row: Sequence[Any], found: Mapping[str, bytes] = _NONE_FOUND, strict: bool = True
    ) -> StepRecord:
        """A record from the STEP_COLUMNS of a row; ``found``: the payloads it refers
        to; ``strict`` False (views) shows what it cannot decode as ``"[encrypted]"``."""
        (
            step_id,
            phase,
            status,
            attempts,
            request_body,
            request_header,
            response_body,
            response_header,
            error,
            started_at,
            finished_at,
        ) = row
        return StepRecord(
            step_id=step_id,
            phase=Phase(phase),
            status=Status(status),
            attempts=attempts,
            request=self.message_or_none(request_body, request_header, found, strict),
            response=self.message_or_none(response_body, response_header, found, strict),
            error=error,
            started_at=started_at,
            finished_at=finished_at,
        )

    def records_by_execution(
        self,
        rows: Iterable[Sequence[Any]],
        found: Mapping[str, bytes] = _NONE_FOUND,
        strict: bool = True,
    ) -> dict[str, list[StepRecord]]:
        """The records of step_runs rows (execution_id, then STEP_COLUMNS), by execution."""
        out: dict[str, list[StepRecord]] = {}
        for row in rows:
            out.setdefault(row[0], []).append(self.record(row[1:], found, strict))
        return out

    def definition(self, row: Sequence[Any]) -> StoredDefinition:
        """A definition from a row of DEFINITION_COLUMNS."""
        hash, workflow_id, body, step_ids = row
        return StoredDefinition(hash, workflow_id, body, self.decode_ids(step_ids))

    def stored_executions(
        self,
        rows: Iterable[Sequence[Any]],
        definitions: Mapping[str, StoredDefinition],
        found: Mapping[str, bytes] = _NONE_FOUND,
    ) -> dict[str, StoredExecution]:
        """Executions as a worker loads them, from rows of LOAD_COLUMNS then
        STEP_COLUMNS (NULLs for an execution without step runs), by id."""
        out: dict[str, StoredExecution] = {}
        width = len(LOAD_COLUMNS)
        for row in rows:
            eid = row[0]
            one = out.get(eid)
            if one is None:
                (
                    _,
                    workflow_id,
                    version,
                    definition,
                    status,
                    abort,
                    request_body,
                    request_header,
                    start_step,
                    reverse,
                    step_timeout,
                    deadline_at,
                    token,
                    created_at,
                    parent_id,
                ) = row[:width]
                one = out[eid] = StoredExecution(
                    id=eid,
                    workflow_id=workflow_id,
                    version=version,
                    definition=definitions[definition],
                    status=Status(status),
                    abort=Abort(abort),
                    request=self.message(request_body, request_header, found),
                    start_step=start_step,
                    reverse=bool(reverse),
                    step_timeout=step_timeout,
                    deadline_at=deadline_at,
                    token=token,
                    records=[],
                    created_at=created_at,
                    parent_id=parent_id,
                )
            if row[width] is not None:  # the step_id of a step run
                one.records.append(self.record(row[width:], found))
        return out

    def executions(
        self,
        rows: Iterable[Sequence[Any]],
        step_rows: Iterable[Sequence[Any]],
        found: Mapping[str, bytes] = _NONE_FOUND,
    ) -> list[Execution]:
        """Executions from rows of EXECUTION_COLUMNS, with the step_runs rows of them
        (execution_id, then STEP_COLUMNS), to be shown: what cannot be decoded shows
        as ``"[encrypted]"``."""
        records = self.records_by_execution(step_rows, found, strict=False)
        out = []
        for row in rows:
            (
                eid,
                workflow_id,
                version,
                status,
                request_body,
                request_header,
                response_body,
                response_header,
                error,
                created_at,
                updated_at,
                deadline_at,
                step_ids,
                parent_id,
                redrive_of,
                note,
            ) = row
            out.append(
                build_execution(
                    id=eid,
                    workflow_id=workflow_id,
                    version=version,
                    status=Status(status),
                    request=self.message(request_body, request_header, found, False),
                    response=self.message_or_none(response_body, response_header, found, False),
                    error=error,
                    created_at=created_at,
                    updated_at=updated_at,
                    deadline_at=deadline_at,
                    step_ids=self.decode_ids(step_ids),
                    records=records.get(eid, ()),
                    parent_id=parent_id,
                    redrive_of=redrive_of,
                    note=note,
                )
            )
        return out

    def definition_hashes(self, rows: Iterable[Sequence[Any]]) -> set[str]:
        """The definitions that rows of LOAD_COLUMNS refer to."""
        return {row[_DEFINITION] for row in rows}

    def workflow(self, row: Sequence[Any]) -> StoredWorkflow:
        """A saved workflow from a row of WORKFLOW_COLUMNS."""
        id, version, hash, body, created_at = row
        return StoredWorkflow(id, version, hash, body, created_at)

    def status(self, row: Sequence[Any]) -> tuple[Status, Abort]:
        """The status and abort request of a get_status row."""
        status, abort = row
        return Status(status), Abort(abort)

    def control_change(
        self, action: ControlAction, row: Sequence[Any], now: float
    ) -> ControlChange:
        """What ``action`` does to the execution of a control_row row at ``now``."""
        status, abort, owner, lease_until, running, compensation_failed, succeeded = row
        return control_change(
            action,
            Status(status),
            Abort(abort),
            held=owner is not None and lease_until > now,
            steps_running=bool(running),
            compensation_failed=bool(compensation_failed),
            steps_succeeded=bool(succeeded),
        )


SQLITE = RowMapping(encode_header=_header_bytes, encode_ids=_encode, decode_ids=_ids_decoder.decode)
POSTGRES = RowMapping(encode_header=_header_text, encode_ids=_ids_text, decode_ids=list)


def briefs_of_rows(
    rows: Iterable[Sequence[Any]], limit: int
) -> tuple[dict[str, MapBrief], list[str]]:
    """From the rows of a ``map_runs`` query: the maps of more than ``limit`` runs in
    brief, and the runs to read in full (those they list, every run of the others)."""
    counts: dict[str, list[tuple[int, int, int | None, int]]] = {}
    read: dict[str, list[tuple[int, str]]] = {}
    for head, status, undo, count, index, run_id in rows:
        if run_id is None:
            counts.setdefault(head, []).append((index, status, undo, count))
        else:
            read.setdefault(head, []).append((index, run_id))
    maps = {}
    for head, groups in counts.items():
        runs = sum(g[3] for g in groups)
        if runs <= limit:
            continue
        statuses: dict[Status, int] = {}
        comps: dict[Status, int] = {}
        notable = 0
        for _, code, undo_code, count in sorted(groups):  # by their first run
            status = Status(code)
            undo = None if undo_code is None else Status(undo_code)
            statuses[status] = statuses.get(status, 0) + count
            if undo is not None:
                comps[undo] = comps.get(undo, 0) + count
            if status in UNDOING or undo in COMP_UNDOING:  # as the query lists them
                notable += count
        listed = [run_id for _, run_id in sorted(read.get(head, ()))]
        maps[head] = MapBrief(runs, statuses, comps, notable, listed)
    return maps, [run_id for found in read.values() for _, run_id in found]


def _step_run(rec: StepRecord, compensation: StepRun | None = None) -> StepRun:
    return StepRun(
        step_id=rec.step_id,
        status=rec.status,
        request=rec.request,
        response=rec.response,
        error=rec.error,
        attempts=rec.attempts,
        started_at=to_datetime(rec.started_at),
        finished_at=to_datetime(rec.finished_at),
        compensation=compensation,
    )


def _map_runs(
    forward: dict[str, StepRecord], step_ids: Iterable[str]
) -> dict[str, list[StepRecord]]:
    """The runs of map steps (records ``<map id>[<i>]``) by map id, in element order."""
    known = set(step_ids)
    out: dict[str, list[tuple[int, StepRecord]]] = {}
    for sid, rec in forward.items():
        found = run_of(sid, known)
        if found is not None:
            out.setdefault(found[0], []).append((found[1], rec))
    return {head: [rec for _, rec in sorted(found)] for head, found in out.items()}


def build_execution(
    *,
    id: str,
    workflow_id: str,
    version: int | None,
    status: Status,
    request: Message,
    response: Message | None,
    error: str | None,
    created_at: float,
    updated_at: float,
    deadline_at: float | None,
    step_ids: Iterable[str],
    records: Iterable[StepRecord],
    parent_id: str | None = None,
    redrive_of: str | None = None,
    note: str | None = None,
) -> Execution:
    forward: dict[str, StepRecord] = {}
    comps: dict[str, StepRecord] = {}
    for rec in records:
        (comps if rec.phase is Phase.COMPENSATE else forward)[rec.step_id] = rec
    steps: dict[str, StepRun] = {}
    ids = list(step_ids)
    runs = _map_runs(forward, ids)
    for sid in ids:
        comp = comps.get(sid)
        rec = forward.get(sid) or StepRecord(sid, Phase.FORWARD, Status.PENDING)
        steps[sid] = _step_run(rec, _step_run(comp) if comp is not None else None)
        for run in runs.get(sid, ()):  # a map step's runs, <id>[<i>], after it
            comp = comps.get(run.step_id)
            steps[run.step_id] = _step_run(run, _step_run(comp) if comp is not None else None)
    created = to_datetime(created_at)
    updated = to_datetime(updated_at)
    assert created is not None
    assert updated is not None
    return Execution(
        id=id,
        workflow_id=workflow_id,
        version=version,
        status=status,
        request=request,
        response=response,
        error=error,
        created_at=created,
        updated_at=updated,
        steps=steps,
        deadline_at=to_datetime(deadline_at),
        parent_id=parent_id,
        redrive_of=redrive_of,
        note=note,
    )
