"""What a user reads about executions: :class:`Execution` and :class:`StepRun`."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .message import Message
from .status import Status

__all__ = ["Execution", "StepRun", "guessed_steps", "notable", "run_id", "run_of", "to_datetime"]


def to_datetime(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True, eq=False)
class StepRun:
    """One step of one execution, as stored.

    ``compensation`` is the run of the step's compensation once it has started.
    """

    step_id: str
    status: Status = Status.PENDING
    request: Message | None = None
    response: Message | None = None
    error: str | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    compensation: StepRun | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, None until finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


_UNDOING = frozenset({Status.FAILURE, Status.COMPENSATING})
_COMP_UNDOING = frozenset({Status.FAILURE, Status.COMPENSATING, Status.RUNNING})


def notable(run: StepRun) -> bool:
    """Whether a map's run is listed even where its map's runs are given in brief
    (``show``, the API's ``map_runs``): it failed, or its undo runs or failed."""
    comp = run.compensation
    return run.status in _UNDOING or (comp is not None and comp.status in _COMP_UNDOING)


@dataclass(frozen=True, slots=True, eq=False)
class Execution:
    """One execution of a workflow, as stored.

    ``note`` says why an execution waits for a worker that can run it (a service this
    worker has no address for, a function it cannot import), while it does.
    """

    id: str
    workflow_id: str
    version: int | None
    status: Status
    request: Message
    response: Message | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    steps: dict[str, StepRun] = field(default_factory=dict)
    deadline_at: datetime | None = None
    parent_id: str | None = None  # the parent execution of a sub-workflow's child
    redrive_of: str | None = None  # the execution this one redrives
    note: str | None = None  # why it waits for a worker, while it does

    @property
    def failed_step(self) -> str | None:
        """The step that failed for good, if any."""
        return next((s for s, r in self.steps.items() if r.status is Status.FAILURE), None)

    @property
    def compensated(self) -> bool:
        """True when no compensation failed."""
        return not any(
            r.compensation is not None and r.compensation.status is Status.FAILURE
            for r in self.steps.values()
        )


def run_id(map_id: str, index: int) -> str:
    """The step id of run ``index`` of map step ``map_id``: ``<map id>[<i>]``."""
    return f"{map_id}[{index}]"


def run_of(step_id: str, step_ids: Collection[str]) -> tuple[str, int] | None:
    """The map step of ``step_ids`` (a definition's) and the index that ``step_id`` is
    a run of (see :func:`run_id`), or None when it is no map's run."""
    if step_id in step_ids or not step_id.endswith("]"):
        return None
    head, _, index = step_id[:-1].rpartition("[")
    return (head, int(index)) if head in step_ids and index.isdigit() else None


def guessed_steps(step_ids: Collection[str]) -> set[str]:
    """The steps among ``step_ids`` (an execution's, its maps' runs included) as the
    ids alone tell them from the runs: those that do not read as ``<step id>[<i>]`` of
    another. A step may be named ``x[0]`` beside a step ``x`` that is no map, which only
    the definition says (hand its step ids to :func:`run_of` where there is one)."""

    def is_run(sid: str) -> bool:
        head, _, index = sid[:-1].rpartition("[")
        return sid.endswith("]") and index.isdigit() and head in step_ids

    return {sid for sid in step_ids if not is_run(sid)}
