"""Turning stored rows into the public :class:`Execution` (shared by every store)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from ..execution import Execution, StepRun, to_datetime
from ..message import Message, Metadata
from ..status import Phase, Status
from .base import StepRecord

__all__ = [
    "build_execution",
    "decode_header",
    "encode_header",
    "message_or_none",
    "record_from_row",
    "step_row",
]

_header_decoder = msgspec.json.Decoder(dict[str, list[str]])
_encoder = msgspec.json.Encoder()


def encode_header(header: Metadata) -> bytes | None:
    return _encoder.encode(header.to_dict()) if len(header) else None


def decode_header(raw: bytes | str | None) -> Metadata:
    if not raw:
        return Metadata()
    return Metadata(_header_decoder.decode(raw))


def message_or_none(body: bytes | None, header: bytes | str | None) -> Message | None:
    if body is None:
        return None
    return Message(bytes(body), decode_header(header))


def step_row(
    eid: str, r: StepRecord, header: Callable[[Metadata], Any] = encode_header
) -> tuple[Any, ...]:
    """The step_runs row of a record, headers encoded by ``header``."""
    req, resp = r.request, r.response
    return (
        eid,
        r.step_id,
        int(r.phase),
        int(r.status),
        r.attempts,
        req.body if req is not None else None,
        header(req.header) if req is not None else None,
        resp.body if resp is not None else None,
        header(resp.header) if resp is not None else None,
        r.error,
        r.started_at,
        r.finished_at,
    )


def record_from_row(row: Sequence[Any]) -> StepRecord:
    """A record from the columns of a step_runs row after ``execution_id``."""
    return StepRecord(
        step_id=row[0],
        phase=Phase(row[1]),
        status=Status(row[2]),
        attempts=row[3],
        request=message_or_none(row[4], row[5]),
        response=message_or_none(row[6], row[7]),
        error=row[8],
        started_at=row[9],
        finished_at=row[10],
    )


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
) -> Execution:
    forward: dict[str, StepRecord] = {}
    comps: dict[str, StepRecord] = {}
    for rec in records:
        (comps if rec.phase is Phase.COMPENSATE else forward)[rec.step_id] = rec
    steps: dict[str, StepRun] = {}
    for sid in step_ids:
        comp = comps.get(sid)
        rec = forward.get(sid) or StepRecord(sid, Phase.FORWARD, Status.PENDING)
        steps[sid] = _step_run(rec, _step_run(comp) if comp is not None else None)
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
    )
