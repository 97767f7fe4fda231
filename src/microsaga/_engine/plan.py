"""A workflow compiled for running: nodes with their resolved options, and the graph
of one run (all steps, or those selected by ``start``/``reverse``).

The engine does not know what a step is: a node carries the step, its fallback and its
compensation as opaque objects for the shell to invoke, and its retry policies as
objects that answer two questions (:class:`RetryPolicy`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..errors import StepNotExistsError
from ..status import Phase, Status
from . import dag
from .records import StepRecord

__all__ = ["Node", "Plan", "RetryPolicy", "RunGraph"]

CompensateInput = Literal["request", "response", "both"]
OnFailure = Literal["compensate", "suspend"]
Expression = Callable[[Any], Any]  # evaluated on a step's context document


class RetryPolicy(Protocol):
    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt ``attempt`` that raised ``exc`` is followed by another."""
        ...

    def interval(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt ``attempt``; ``rand`` in [0, 1)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One step of a plan, its options resolved."""

    id: str
    step: object
    requires: tuple[str, ...]
    retry: RetryPolicy
    timeout: float | None
    fallback: object | None = None
    fallback_retry: RetryPolicy | None = None
    fallback_timeout: float | None = None
    compensate: object | None = None
    compensate_input: CompensateInput = "both"
    compensate_retry: RetryPolicy | None = None  # None: the flow's compensation_retry
    compensate_timeout: float | None = None
    input: Expression | None = None  # the request body, from the context document
    when: Expression | None = None  # falsy: the step is SKIPPED
    ancestors: tuple[str, ...] = ()  # the steps it requires, transitively (in order)
    waits: bool = False  # WAITING once started, until the shell resolves it (waits.py)
    partial: bool = False  # a failed run may have done part of its work: compensate it


@dataclass(frozen=True, slots=True)
class RunGraph:
    """The steps of one run and the order between them.

    In a reverse run the edges are turned around: a step runs after the steps that
    require it. ``inputs`` names the steps whose responses make each step's input.
    """

    order: tuple[str, ...]
    requires: Mapping[str, tuple[str, ...]]
    dependents: Mapping[str, tuple[str, ...]]
    inputs: Mapping[str, tuple[str, ...]]
    leaves: tuple[str, ...]
    roots: tuple[str, ...]  # the steps that require none, in order
    pending: Mapping[str, StepRecord]  # every step PENDING: a run that has not started
    skips: bool  # some step has a ``when``: only then can a step be SKIPPED
    waits: bool  # some step waits or maps: only then does a run need the shell's Waiting

    def fresh_steps(self) -> dict[str, StepRecord]:
        """The step records of a run that has not started. Records are frozen, so
        every run shares these until its steps start."""
        return dict(self.pending)


@dataclass(slots=True)
class Plan:
    """The nodes of a workflow, and the graphs of its runs (made on first use)."""

    workflow_id: str
    nodes: dict[str, Node]
    on_failure: OnFailure = "compensate"
    _graphs: dict[tuple[str | None, bool], RunGraph] = field(default_factory=dict)
    # each step's id as a header entry, made once for every execution (data.Headers)
    step_headers: dict[str, tuple[str, str, tuple[str, ...]]] = field(default_factory=dict)

    def graph(self, start: str | None = None, reverse: bool = False) -> RunGraph:
        """The graph of a run of every step, or of ``start`` and its descendants
        (``reverse``: its ancestors, the edges turned around).

        Raises:
            StepNotExistsError: ``start`` names no step.
        """
        key = (start, reverse)
        found = self._graphs.get(key)
        if found is None:
            found = self._graphs[key] = self._make_graph(start, reverse)
        return found

    def _make_graph(self, start: str | None, reverse: bool) -> RunGraph:
        full = {sid: node.requires for sid, node in self.nodes.items()}
        if start is not None and start not in full:
            raise StepNotExistsError(start)
        if start is None:
            selected = set(full)
        elif reverse:
            selected = dag.ancestors(full, start)
        else:
            selected = dag.descendants(full, start)
        forward = {s: tuple(r for r in full[s] if r in selected) for s in selected}
        if reverse:
            back = dag.dependents_of(forward)
            requires = {s: back[s] for s in selected}
            inputs: dict[str, tuple[str, ...]] = dict.fromkeys(selected, ())
        else:
            requires = inputs = forward
        dependents = dag.dependents_of(requires)
        order = tuple(dag.topological(requires))
        return RunGraph(
            order=order,
            requires=requires,
            dependents=dependents,
            inputs=inputs,
            leaves=tuple(s for s in order if not dependents[s]),
            roots=tuple(s for s in order if not requires[s]),
            pending={s: StepRecord(s, Phase.FORWARD, Status.PENDING) for s in order},
            skips=any(self.nodes[s].when is not None for s in order),
            waits=any(self.nodes[s].waits or self.nodes[s].partial for s in order),
        )
