"""Turning stored rows into the public :class:`Execution` (shared by every store)."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from ..execution import Execution, StepRun, to_datetime
from ..message import Message, Metadata
from ..status import Status
from .base import COMPENSATION, FORWARD, StepRecord

__all__ = ["build_execution", "decode_header", "encode_header", "message_or_none"]

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
        (comps if rec.phase == COMPENSATION else forward)[rec.step_id] = rec
    steps: dict[str, StepRun] = {}
    for sid in step_ids:
        comp = comps.get(sid)
        rec = forward.get(sid) or StepRecord(sid, FORWARD, Status.PENDING)
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
