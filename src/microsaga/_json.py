"""Executions as JSON-able dicts (the CLI's ``show --json``, the HTTP API)."""

from __future__ import annotations

from typing import Any

from .execution import Execution, StepRun
from .message import Message, decode_json_body

__all__ = ["execution_json", "message_json"]


def message_json(msg: Message | None) -> dict[str, Any] | None:
    if msg is None:
        return None
    return {"body": decode_json_body(msg.body), "header": msg.header.to_dict()}


def _step_json(run: StepRun) -> dict[str, Any]:
    return {
        "status": run.status.name,
        "attempts": run.attempts,
        "request": message_json(run.request),
        "response": message_json(run.response),
        "error": run.error,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "compensation": _step_json(run.compensation) if run.compensation else None,
    }


def execution_json(info: Execution) -> dict[str, Any]:
    return {
        "id": info.id,
        "workflow_id": info.workflow_id,
        "version": info.version,
        "status": info.status.name,
        "request": message_json(info.request),
        "response": message_json(info.response),
        "error": info.error,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
        "steps": {sid: _step_json(run) for sid, run in info.steps.items()},
    }
