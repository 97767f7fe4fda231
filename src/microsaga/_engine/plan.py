"""A workflow compiled for running: nodes with their resolved options, and the graph
of one run (all steps, or those selected by ``start``/``reverse``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import StepNotExistsError
from ..status import PENDING
from ..step import Retry
from . import dag
from .records import FORWARD, StepRecord

if TYPE_CHECKING:
    from ..step import Step
    from .saga import Decision

__all__ = ["Node", "Plan", "RunGraph"]

_ONE_ATTEMPT = Retry()


@dataclass(frozen=True, slots=True)
class Node:
    """One step of a plan, its options resolved."""

    id: str
    step: Step
    requires: tuple[str, ...]
    retry: Retry
    timeout: float | None
    fallback: Step | None
    compensate: Step | None
    compensate_input: str
    compensate_retry: Retry | None  # None: the flow's compensation_retry
    compensate_timeout: float | None


@dataclass(frozen=True, slots=True)
class RunGraph:
    """The steps of one run and the order between them.

    In a reverse run the edges are turned around: a step runs after the steps that
    require it. ``inputs`` names the steps whose responses make each step's input.
    """

    order: tuple[str, ...]
    requires: dict[str, tuple[str, ...]]
    dependents: dict[str, tuple[str, ...]]
    inputs: dict[str, tuple[str, ...]]
    leaves: tuple[str, ...]
    pending: dict[str, StepRecord]  # a new run's records: copy the dict, share these
    roots: tuple[str, ...]  # the steps that require none, in order
    # decisions made once per graph and shared (saga): to start one step, by its id;
    # the first one of a run, under None
    decisions: dict[str | None, Decision] = field(default_factory=dict)

    def fresh_steps(self) -> dict[str, StepRecord]:
        """The records of a run that has not started: every step PENDING. The engine
        replaces a PENDING record when the step starts and never changes it, so runs
        share them."""
        return self.pending.copy()


@dataclass(slots=True)
class Plan:
    workflow_id: str
    nodes: dict[str, Node]
    _graphs: dict[tuple[str | None, bool], RunGraph] = field(default_factory=dict)
    # (flow, number of services) once every step found what it needs in that flow
    checked: tuple[object, int] | None = None

    @classmethod
    def build(cls, workflow_id: str, steps: list[Step]) -> Plan:
        nodes: dict[str, Node] = {}
        for step in steps:
            opts = step.options
            comp = opts.compensate
            nodes[step.id] = Node(
                id=step.id,
                step=step,
                requires=opts.requires,
                retry=opts.retry or _ONE_ATTEMPT,
                timeout=opts.timeout,
                fallback=opts.fallback,
                compensate=comp,
                compensate_input=opts.compensate_input,
                compensate_retry=comp.options.retry if comp is not None else None,
                compensate_timeout=comp.options.timeout if comp is not None else None,
            )
        return cls(workflow_id, nodes)

    def graph(self, start: str | None = None, reverse: bool = False) -> RunGraph:
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
            requires = forward
            inputs = forward
        dependents = dag.dependents_of(requires)
        order = tuple(dag.topological(requires))
        leaves = tuple(s for s in order if not dependents[s])
        pending = {s: StepRecord(s, FORWARD, PENDING) for s in order}
        roots = tuple(s for s in order if not requires[s])
        return RunGraph(order, requires, dependents, inputs, leaves, pending, roots)
