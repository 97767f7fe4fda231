"""What the HTTP API reads and writes: msgspec structs, the one source of its schemas.

Request bodies are decoded into these structs (so they are validated once, here),
responses are encoded from them, and ``/openapi.json`` is generated from them. Statuses
are given by name (``"SUCCESS"``); messages as their decoded JSON body (``null`` when
empty, a string when the body is not JSON). :func:`execution` is also what ``microsaga
show --json`` prints: one mapping of an execution to JSON.

This module needs nothing but msgspec: the CLI uses it without the ``api`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from .. import execution as core
from ..message import Message, decode_json_body
from ..status import Status

if TYPE_CHECKING:
    from ..stores.base import MapBrief

__all__ = [
    "STATUS_NAMES",
    "Abort",
    "Execution",
    "ExecutionChange",
    "ExecutionPage",
    "ExecutionSummary",
    "GetExecution",
    "Health",
    "ListExecutions",
    "LoadWorkflow",
    "MapChange",
    "MapRuns",
    "Problem",
    "Redrive",
    "Signal",
    "StartExecution",
    "Started",
    "StepChange",
    "StepRun",
    "WorkflowDefinition",
    "WorkflowList",
    "WorkflowSummary",
    "execution",
    "execution_json",
    "map_runs",
    "message_json",
    "step_run",
    "summary",
]

STATUS_NAMES = list(Status.__members__)

# a status by name; the list comes from Status, so new statuses appear by themselves
StatusName = Annotated[
    str, msgspec.Meta(extra_json_schema={"enum": STATUS_NAMES}, description="A status by name.")
]
AnyJson = Annotated[
    Any, msgspec.Meta(description="Decoded JSON: null when the message is empty, a string "
                      "when its body is not JSON.")
]  # fmt: skip
# an execution id: check_id's rules (no space, no ':'), and no '/' to fit in a URL path
ID_PATTERN = r"^[^/:\s\x00-\x1f\x7f]+$"
ID_WORDS = "printable characters without spaces, ':' or '/'"  # ID_PATTERN, for people
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=ID_PATTERN)]


class Struct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every model: keywords only; a field it does not know is an error, not ignored."""


# executions ----------------------------------------------------------------------------


class StepRun(Struct):
    """One step of an execution (or the run of its compensation)."""

    status: StatusName
    attempts: int
    request: AnyJson
    response: AnyJson
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    compensation: StepRun | None


class MapRuns(Struct):
    """A map step's runs in brief (``map_runs``): how many started, how many are in
    each status, and the runs worth a look, which ``steps`` still holds."""

    runs: int
    statuses: dict[str, int]  # the runs by status, in the order of their first run
    compensations: dict[str, int]  # the runs with a compensation, by its status
    notable: int  # runs failed or undoing: FAILURE, COMPENSATING, or their
    # compensation FAILURE, COMPENSATING or RUNNING
    listed: list[str]  # the first ``map_runs`` of those, in element order


class Execution(Struct):
    """One execution of a workflow, with its steps by id."""

    id: str
    workflow_id: str
    version: int | None
    status: StatusName
    request: AnyJson
    response: AnyJson
    error: str | None
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime | None
    parent_id: str | None
    redrive_of: str | None
    note: str | None  # why it waits for a worker, while it does
    steps: dict[str, StepRun]
    # only with ``map_runs``: the maps of more runs, whose other runs ``steps`` leaves out
    maps: dict[str, MapRuns] | msgspec.UnsetType = msgspec.UNSET


class ExecutionSummary(Struct):
    """An execution in a list: without its messages and steps."""

    id: str
    workflow_id: str
    version: int | None
    status: StatusName
    error: str | None
    note: str | None
    created_at: datetime
    updated_at: datetime
    parent_id: str | None = None  # a sub-workflow's child: its parent's id
    redrive_of: str | None = None  # the execution this one redrives


class ExecutionPage(Struct):
    """Executions newest first; ``next`` is the ``before`` of the next page (null at the
    end)."""

    items: list[ExecutionSummary]
    next: str | None


class ListExecutions(Struct):
    """The query of ``GET /api/executions``."""

    workflow_id: str | None = None
    status: StatusName | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    before: str | None = None
    redrive_of: str | None = None  # only the redrives of this execution


class GetExecution(Struct):
    """The query of ``GET /api/executions/{id}`` and of its ``/events``."""

    map_runs: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=1000,
                description="A map step with more runs than this is given in brief: its "
                "counts in `maps`, and in `steps` only its first `map_runs` failed or undoing "
                "runs (default: every run).",
            ),
        ]
        | None
    ) = None


class StartExecution(Struct):
    """A new execution of the latest saved version of a workflow."""

    input: Annotated[
        msgspec.Raw | msgspec.UnsetType,
        msgspec.Meta(description="The execution's request: any JSON (null: empty)."),
    ] = msgspec.UNSET
    execution_id: Annotated[
        Id | None,
        msgspec.Meta(
            description="Your id for the execution, its idempotency key: a second start "
            "with the same id starts nothing new."
        ),
    ] = None


class Started(Struct):
    id: str


class Abort(Struct):
    compensate: Annotated[
        bool, msgspec.Meta(description="Roll back what the execution did (default true).")
    ] = True


class Redrive(Struct):
    """Run failed steps again, or the whole execution anew (see ``Flow.redrive``)."""

    step: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(description="The step to run again (default: every failed one)."),
    ] = None
    input: Annotated[
        msgspec.Raw | msgspec.UnsetType,
        msgspec.Meta(description="The request to run with instead: any JSON."),
    ] = msgspec.UNSET


class Signal(Struct):
    """An event for the steps of an execution that wait for it."""

    event: Annotated[str, msgspec.Meta(min_length=1)]
    payload: Annotated[
        msgspec.Raw | msgspec.UnsetType,
        msgspec.Meta(description="The waiting step's response: any JSON."),
    ] = msgspec.UNSET


# live events (Server-Sent Events) ---------------------------------------------------


class ExecutionChange(Struct):
    """``event: execution``: the execution's status changed."""

    id: str
    workflow_id: str
    status: StatusName
    error: str | None
    updated_at: datetime


class StepChange(Struct):
    """``event: step``: a step's status (or its compensation's, or its attempts)
    changed; ``step`` is the whole step run as it is now."""

    execution_id: str
    step_id: str
    step: StepRun


class MapChange(Struct):
    """``event: map`` (with ``map_runs``): the runs in brief of a map step of more
    runs changed; the step events of its runs come for its ``listed`` ones only."""

    execution_id: str
    step_id: str
    runs: MapRuns


# workflows ---------------------------------------------------------------------------


class WorkflowSummary(Struct):
    id: str
    version: int
    step_count: int
    description: str | None = None


class WorkflowList(Struct):
    """The latest version of every saved workflow, by id."""

    items: list[WorkflowSummary]


class WorkflowDefinition(Struct, forbid_unknown_fields=False):
    """A workflow definition as in ``load_definition`` (JSON). Validated by the
    definition loader, which names the path of a bad field (``steps[1].retry``)."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    steps: Annotated[
        list[dict[str, Any]],
        msgspec.Meta(
            min_length=1,
            description="Steps: each names its kind as a key (call, publish, function, or "
            "a registered kind) with the common options id, requires, retry, timeout, "
            "fallback, compensate.",
        ),
    ]
    description: str | None = None
    services: dict[str, str] | None = None


class LoadWorkflow(Struct):
    """The query of ``GET /api/workflows/{id}``."""

    version: Annotated[int, msgspec.Meta(ge=1)] | None = None


# the rest ----------------------------------------------------------------------------


class Problem(Struct, forbid_unknown_fields=False):
    """An error (RFC 9457, ``application/problem+json``); ``code`` is the stable code of
    microsaga's error tree (``execution_not_found``, ``invalid_transition``...)."""

    type: str
    title: str
    status: int
    detail: str
    code: str


class Health(Struct):
    status: str


# core -> models ----------------------------------------------------------------------


def message_json(msg: Message | None) -> Any:
    """A message as decoded JSON: None when absent or empty, a string when not JSON."""
    return None if msg is None else decode_json_body(msg.body)


def step_run(run: core.StepRun) -> StepRun:
    return StepRun(
        status=run.status.name,
        attempts=run.attempts,
        request=message_json(run.request),
        response=message_json(run.response),
        error=run.error,
        started_at=run.started_at,
        finished_at=run.finished_at,
        compensation=step_run(run.compensation) if run.compensation is not None else None,
    )


def map_runs(brief: MapBrief) -> MapRuns:
    """The API's form of a map's runs in brief."""
    return MapRuns(
        runs=brief.runs,
        statuses={status.name: n for status, n in brief.statuses.items()},
        compensations={status.name: n for status, n in brief.compensations.items()},
        notable=brief.notable,
        listed=list(brief.listed),
    )


def execution(info: core.Execution, maps: Mapping[str, MapBrief] | None = None) -> Execution:
    """The API's form of an execution; with ``maps``, read with ``map_runs``: its maps
    of more runs in brief (see :class:`GetExecution`), whose other runs ``info`` left
    out."""
    briefs: dict[str, MapRuns] | msgspec.UnsetType = msgspec.UNSET
    if maps is not None:
        briefs = {map_id: map_runs(runs) for map_id, runs in maps.items()}
    return Execution(
        id=info.id,
        workflow_id=info.workflow_id,
        version=info.version,
        status=info.status.name,
        request=message_json(info.request),
        response=message_json(info.response),
        error=info.error,
        created_at=info.created_at,
        updated_at=info.updated_at,
        deadline_at=info.deadline_at,
        parent_id=info.parent_id,
        redrive_of=info.redrive_of,
        note=info.note,
        steps={sid: step_run(run) for sid, run in info.steps.items()},
        maps=briefs,
    )


def summary(info: core.Execution) -> ExecutionSummary:
    return ExecutionSummary(
        id=info.id,
        workflow_id=info.workflow_id,
        version=info.version,
        status=info.status.name,
        error=info.error,
        note=info.note,
        created_at=info.created_at,
        updated_at=info.updated_at,
        parent_id=info.parent_id,
        redrive_of=info.redrive_of,
    )


def summary_json(info: core.Execution) -> dict[str, Any]:
    """An execution in a list as JSON-able builtins (``microsaga list --json``)."""
    out: dict[str, Any] = msgspec.to_builtins(summary(info))
    return out


def execution_json(info: core.Execution) -> dict[str, Any]:
    """An execution as JSON-able builtins (``microsaga show --json``)."""
    out: dict[str, Any] = msgspec.to_builtins(execution(info))
    return out
