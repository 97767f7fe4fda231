"""Steps that wait without holding a worker: :class:`WaitStep` (a signal),
:class:`SleepStep` (a durable timer), :class:`SubflowStep` (a child execution), and
:class:`MapStep` (a dynamic fan-out over a list).

A waiting step is WAITING in the store while it waits; the execution stays RUNNING.
When nothing else of the execution runs, the worker parks it: it gives up the lease
and leaves the execution for any worker to take again when a signal comes, the child
finishes, or the time of its earliest timer comes (see docs/semantics.md, "Waiting").
The run loop (``microsaga._run``) handles these kinds itself: their ``execute`` is
never called.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ._validate import name_problem, shown
from .errors import DefinitionError
from .execution import run_id
from .expressions import Expression, compile_expression
from .message import Message
from .step import Step, StepContext, register_step

if TYPE_CHECKING:
    from .flow import Flow

__all__ = [
    "CHILD_ROLLBACK",
    "RUNS_ROLLBACK",
    "MapStep",
    "Marker",
    "SleepStep",
    "SubflowStep",
    "WaitStep",
    "WaitingStep",
    "Waits",
]


class Marker:
    """A compensation the run loop does itself (a plan's ``Node.compensate``)."""

    __slots__ = ("id",)

    def __init__(self, id: str) -> None:
        self.id = id

    def __repr__(self) -> str:
        return f"<{self.id}>"


CHILD_ROLLBACK = Marker("rollback of the child execution")  # a SubflowStep's
RUNS_ROLLBACK = Marker("compensation of the map's runs")  # a MapStep's


def child_id(execution_id: str, step_id: str, attempt: int) -> str:
    """The id of the child execution that try ``attempt`` of the SubflowStep
    ``step_id`` of ``execution_id`` runs: ``<eid>:<step id>`` for the first,
    ``<eid>:<step id>::<n>`` for the n-th (a resume or redrive of the failed step). No
    other execution has such an id: ``::`` is in none, ids and step ids hold no ``:``."""
    first = f"{execution_id}:{step_id}"
    return first if attempt <= 1 else f"{first}::{attempt}"


def child_step(child: str, parent_id: str) -> str:
    """The SubflowStep of ``parent_id`` whose child execution ``child`` is: the
    inverse of :func:`child_id`."""
    return child[len(parent_id) + 1 :].partition("::")[0]


class Waits(NamedTuple):
    """The signals a definition takes: the events its wait steps (their fallbacks and
    compensations too) wait for, and the ids of its SubflowSteps, whose children take
    their own."""

    events: frozenset[str]
    subflows: tuple[str, ...]

    @classmethod
    def of(cls, steps: Iterable[tuple[str, object, object, object]]) -> Waits:
        """From ``(id, step, fallback, compensation)`` of each step of a definition."""
        events: set[str] = set()
        subflows: list[str] = []
        for sid, *group in steps:
            events.update(s.event for s in group if isinstance(s, WaitStep))
            if isinstance(group[0], SubflowStep):
                subflows.append(sid)
        return cls(frozenset(events), tuple(subflows))

    def refusal(self, execution_id: str, event: str) -> str | None:
        """Why a signal of ``event`` to ``execution_id`` is refused (kept, it would be
        consumed by nothing), or None when a step waits for it."""
        if event in self.events:
            return None
        said = f"no step of execution {execution_id} waits for {event!r}; "
        if self.events:
            said += f"its wait steps wait for: {', '.join(sorted(self.events))}"
        else:
            said += "it has no wait step"
        if self.subflows:
            children = ", ".join(child_id(execution_id, sid, 1) for sid in self.subflows)
            said += f" (a sub-workflow's wait steps take signals at its execution: {children})"
        return said


def redriven_list_problem(
    map_id: str, old: Any, given: Any, succeeded: Mapping[int, Any]
) -> str | None:
    """What is wrong with ``given`` as the new list of map step ``map_id``, redriven
    with an input: its runs keep their indexes, and those that succeeded (``succeeded``:
    index -> element) are not run again, so the list keeps its length and their
    elements. None when nothing is."""
    size = len(old) if isinstance(old, list) else 1 + max(succeeded, default=-1)
    if not isinstance(given, list):
        return (
            f"map step {map_id} runs once per element of its input: it must be a list of "
            f"{size} elements, not {json_type(given)}"
        )
    if isinstance(old, list) and len(given) != len(old):
        return (
            f"map step {map_id} ran over {len(old)} elements: its input must be a list of "
            f"{len(old)} elements (runs {run_id(map_id, 0)} to "
            f"{run_id(map_id, len(old) - 1)}), not {len(given)}"
        )
    for index, element in sorted(succeeded.items()):
        if index >= len(given) or given[index] != element:
            return (
                f"element {index} of the input of map step {map_id} must stay "
                f"{shown(element)}: run {run_id(map_id, index)} succeeded with it and is not "
                "run again"
            )
    return None


def json_type(value: Any) -> str:
    """``value``'s JSON type with its article: ``an object``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "a list"


class WaitingStep(Step):
    """A step the run loop resolves itself, WAITING meanwhile."""

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        raise NotImplementedError(f"{type(self).__name__} is run by the engine, not called")


class WaitStep(WaitingStep):
    """Waits for ``await flow.signal(eid, event, payload)``; SUCCEEDS with the payload.

    A signal sent before the step starts is kept for it. ``timeout`` (seconds from the
    step's start) passed first: the step FAILS with ``StepTimeoutError``. ``id``
    defaults to the event name.
    """

    kind = "wait"
    config_fields = frozenset({"wait"})

    def __init__(self, event: str, *, timeout: float | None = None, **options: Any) -> None:
        problem = name_problem(event, colon=True, limit=200)
        if problem is not None:
            raise DefinitionError(f"WaitStep event {problem}", path="wait")
        self.event = event
        super().__init__(timeout=timeout, **options)

    def default_id(self) -> str:
        return self.event

    @property
    def endpoint(self) -> str:
        return self.event

    def to_config(self) -> dict[str, Any]:
        return {"wait": self.event}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        return cls(config["wait"])


class SleepStep(WaitingStep):
    """Waits ``seconds`` from its start, or ``until`` a time (a timezone-aware
    ``datetime`` or epoch seconds); then SUCCEEDS with its request as its response.

    A durable timer: any live worker fires it, after any restart. Without an ``id``
    in code it is ``sleep-<n>``, ``n`` its position in the workflow (from 1).
    """

    kind = "sleep"
    config_fields = frozenset({"sleep"})
    needs_id = True  # sleep-<n> by position

    def __init__(
        self,
        seconds: float | None = None,
        *,
        until: datetime.datetime | float | None = None,
        **options: Any,
    ) -> None:
        if (seconds is None) == (until is None):
            raise DefinitionError("SleepStep needs seconds or until (one of them)", path="sleep")
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise DefinitionError(f"must be seconds, not {shown(seconds)}", path="sleep")
            if not (math.isfinite(seconds) and seconds >= 0):
                raise DefinitionError(f"must be 0 or more seconds, not {seconds}", path="sleep")
        self.seconds = None if seconds is None else float(seconds)
        self.until = None if until is None else _epoch(until)
        super().__init__(**options)

    def default_id(self) -> str:
        return "sleep"  # made sleep-<n> by the workflow when no id is given

    def due(self, started_at: float) -> float:
        """When the timer fires, for a step started at ``started_at``."""
        if self.until is not None:
            return self.until
        assert self.seconds is not None
        return started_at + self.seconds

    def to_config(self) -> dict[str, Any]:
        if self.until is not None:
            at = datetime.datetime.fromtimestamp(self.until, datetime.UTC)
            return {"sleep": {"until": at.isoformat().replace("+00:00", "Z")}}
        seconds = self.seconds
        assert seconds is not None
        return {"sleep": int(seconds) if seconds.is_integer() else seconds}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        value = config["sleep"]
        if isinstance(value, Mapping):
            extra = [str(k) for k in value if k != "until"]
            if extra or "until" not in value:
                raise DefinitionError("must be seconds or {until: <ISO 8601 time>}", path="sleep")
            return cls(until=_parse_time(value["until"]))
        return cls(value)


def _epoch(value: datetime.datetime | float) -> float:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise DefinitionError(
                "until must be a timezone-aware datetime (say which zone)", path="sleep.until"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DefinitionError(
            f"until must be a datetime or epoch seconds, not {shown(value)}", path="sleep.until"
        )
    return float(value)


def _parse_time(text: Any) -> datetime.datetime:
    if not isinstance(text, str):
        raise DefinitionError(f"must be an ISO 8601 time, not {shown(text)}", path="sleep.until")
    try:
        found = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise DefinitionError(
            f"must be an ISO 8601 time like 2026-12-24T09:00:00Z, not {text!r}",
            path="sleep.until",
        ) from None
    if found.tzinfo is None:
        raise DefinitionError(
            f"must say its time zone (Z, +01:00), not {text!r}", path="sleep.until"
        )
    return found


class SubflowStep(WaitingStep):
    """Starts a child execution of the saved workflow ``workflow_id`` (its latest
    version, or ``version``) with the step's input; WAITING while the child runs; then
    SUCCEEDS with the child's response or FAILS with its error (after the child's own
    rollback). The child's id is ``<execution id>:<step id>``; a failed step tried
    again (resume or redrive) runs a new one (:func:`child_id`), its ``attempts``
    counting the tries. ``timeout`` is the child's deadline. When the parent rolls
    back, a succeeded child is compensated as a unit, unless this step has a
    ``compensate`` of its own.
    """

    kind = "workflow"
    config_fields = frozenset({"workflow", "version"})

    def __init__(self, workflow_id: str, *, version: int | None = None, **options: Any) -> None:
        problem = name_problem(workflow_id, spaces=True)
        if problem is not None:
            raise DefinitionError(f"SubflowStep workflow id {problem}", path="workflow")
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise DefinitionError(f"must be a version from 1, not {shown(version)}", path="version")
        self.workflow_id, self.version = workflow_id, version
        super().__init__(**options)

    def default_id(self) -> str:
        return self.workflow_id

    @property
    def endpoint(self) -> str:
        return self.workflow_id

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workflow": self.workflow_id}
        if self.version is not None:
            out["version"] = self.version
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        return cls(config["workflow"], version=config.get("version"))


class MapStep(Step):
    """Runs ``step`` once per element of the list that the JMESPath expression
    ``over`` selects from the context document, each element as that run's request,
    at most ``concurrency`` at once (default: the worker's concurrency); responds with
    the list of responses in element order.

    Each run is recorded as ``<map id>[<i>]`` with its own idempotency key. A run
    failing for good fails the map step (not retried as a whole); its runs that
    succeeded are compensated by ``step``'s ``compensate`` during the rollback. An
    empty list gives ``[]``; ``over`` not a list fails the step, naming it.
    """

    kind = "map"
    config_fields = frozenset({"map"})

    def __init__(
        self, step: Step, *, over: str, concurrency: int | None = None, **options: Any
    ) -> None:
        if not isinstance(step, Step):
            raise DefinitionError(f"must be a Step, not {shown(step)}", path="map.step")
        if isinstance(step, WaitingStep | MapStep):
            raise DefinitionError(
                f"a map runs calls, functions or publishes, not a {step.kind} step",
                path="map.step",
            )
        inner = step.options
        for name in ("requires", "fallback", "input", "when"):
            if getattr(inner, name):
                raise DefinitionError(
                    f"the step a map runs takes no {name} (the map gives it its request)",
                    path=f"map.step.{name}",
                )
        if "input" in options:
            raise DefinitionError("a map takes no input: over selects its list", path="input")
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise DefinitionError(
                f"must be a whole number, at least 1, not {shown(concurrency)}",
                path="map.concurrency",
            )
        self.step = step
        self.over: Expression = compile_expression(over, "map.over")
        self.concurrency = concurrency
        super().__init__(**options)

    def default_id(self) -> str:
        return f"map-{self.step.id}"

    @property
    def endpoint(self) -> str:
        return self.step.endpoint

    def check(self, flow: Flow) -> None:
        self.step.check(flow)
        comp = self.step.options.compensate
        if comp is not None:
            comp.check(flow)

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        raise NotImplementedError("MapStep is run by the engine, not called")

    def to_config(self) -> dict[str, Any]:
        from .definitions import step_to_dict

        out: dict[str, Any] = {"over": self.over.text}
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        out["step"] = step_to_dict(self.step)
        return {"map": out}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        from .definitions import step_from_dict

        value = config["map"]
        if not isinstance(value, Mapping):
            raise DefinitionError(
                f"must be a mapping with over and step, not {shown(value)}", path="map"
            )
        for key in value:
            if key not in ("over", "concurrency", "step"):
                raise DefinitionError(
                    "unknown field (expected over, concurrency, step)", path=f"map.{key}"
                )
        for key in ("over", "step"):
            if key not in value:
                raise DefinitionError("missing", path=f"map.{key}")
        inner = step_from_dict(value["step"], "map.step")
        return cls(inner, over=value["over"], concurrency=value.get("concurrency"))


for _cls in (WaitStep, SleepStep, SubflowStep, MapStep):
    register_step(_cls)
