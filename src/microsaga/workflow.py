"""A :class:`Workflow`: steps forming a DAG, validated on every change."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import _views
from ._engine import dag
from ._engine.plan import Node, OnFailure, Plan
from ._reads import check_reads
from ._validate import name_problem
from .errors import DefinitionError, DuplicateStepError, MicrosagaError, StepNotExistsError
from .expressions import compile_expression
from .message import Message, encode_json
from .status import Phase, Status
from .step import Retry, Step, check_steps
from .waits import CHILD_ROLLBACK, RUNS_ROLLBACK, MapStep, SleepStep, SubflowStep, WaitingStep

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["Workflow"]


class Snapshot:
    """A workflow's definition as stored with each execution."""

    __slots__ = ("body", "hash", "step_ids")

    def __init__(self, hash: str, body: bytes | None, step_ids: list[str]) -> None:
        self.hash, self.body, self.step_ids = hash, body, step_ids


class Workflow:
    """Steps forming a directed acyclic graph, run by a :class:`~microsaga.Flow`.

    Create one with ``flow.workflow_create(id, *steps)``, or ``load_definition`` and
    ``flow.workflow_add``. Every change is validated (unique ids, known requirements,
    no cycle) and atomic: on error the workflow is unchanged.
    """

    def __init__(
        self,
        id: str,
        steps: Iterable[Step] = (),
        *,
        services: Mapping[str, str] | None = None,
        flow: Flow | None = None,
        description: str | None = None,
        on_failure: OnFailure = "compensate",
    ) -> None:
        problem = name_problem(id, spaces=True)
        if problem is not None:
            raise DefinitionError(f"workflow id {problem}", path="id")
        self._id = id
        if on_failure not in ("compensate", "suspend"):
            raise DefinitionError(
                f"must be 'compensate' or 'suspend', not {on_failure!r}", path="on_failure"
            )
        self.on_failure: OnFailure = on_failure
        self.services: dict[str, str] = dict(services or {})
        self.description = description
        self.flow = flow
        self.version: int | None = None
        self._steps: dict[str, Step] = {}
        self._steps = self._validated(check_steps(list(steps)))
        self._plan_cache: Plan | None = None
        self._snapshot_cache: Snapshot | None = None

    # identity and shape -------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def status(self) -> Status:
        """The status of the latest execution started through this object (PENDING
        before any)."""
        found = _views.seen(self)
        return found.current if found is not None else Status.PENDING

    @property
    def last_execution(self) -> str | None:
        """The id of the latest execution started through this object."""
        found = _views.seen(self)
        return found.execution_id if found is not None else None

    def __repr__(self) -> str:
        return f"<Workflow {self._id!r} steps={len(self._steps)} version={self.version}>"

    def steps(self) -> list[list[Step]]:
        """Steps by level: a step is on a later level than every step it requires
        (levels by longest path from a root); sorted by id inside a level."""
        graph = {sid: step.options.requires for sid, step in self._steps.items()}
        return [[self._steps[sid] for sid in level] for level in dag.levels(graph)]

    def step(self, step_id: str) -> Step:
        try:
            return self._steps[step_id]
        except KeyError:
            raise StepNotExistsError(step_id) from None

    @property
    def step_list(self) -> list[Step]:
        """The steps in the order they were added."""
        return list(self._steps.values())

    @staticmethod
    def _validated(steps: list[Step]) -> dict[str, Step]:
        out: dict[str, Step] = {}
        for n, step in enumerate(steps, 1):
            if isinstance(step, SleepStep) and step.options.id is None:
                step.options = dataclasses.replace(step.options, id=f"sleep-{n}")
            problem = name_problem(step.id, spaces=True, colon=True, limit=1000)
            if problem is not None:
                raise DefinitionError(f"step id {problem}")
            if step.id in out:
                raise DuplicateStepError(step.id)
            out[step.id] = step
        dag.check_graph({sid: s.options.requires for sid, s in out.items()})
        check_reads(list(out.values()))  # as a definition's: null on every run is refused
        return out

    def _changed(self, steps: dict[str, Step]) -> None:
        self._steps = steps
        self.version = None  # the saved version no longer describes these steps
        self._plan_cache = None
        self._snapshot_cache = None

    async def append_steps(self, *steps: Step) -> None:
        """Add steps; raises (changing nothing) on a duplicate id, an unknown
        requirement or a cycle. The workflow is no longer the saved one: ``version``
        becomes None until ``flow.workflow_save(wf)``."""
        new = check_steps(steps)
        self._changed(self._validated([*self._steps.values(), *new]))

    async def remove_steps(self, *steps: Step | str) -> None:
        """Remove steps (objects or ids); raises StepNotExistsError, changing nothing,
        for an unknown step or one that a remaining step requires. ``version`` becomes
        None until the workflow is saved again."""
        ids = set()
        for item in steps:
            sid = item.id if isinstance(item, Step) else item
            if sid not in self._steps:
                raise StepNotExistsError(sid)
            ids.add(sid)
        for sid, step in self._steps.items():
            if sid not in ids:
                for req in step.options.requires:
                    if req in ids:
                        raise StepNotExistsError(req, detail=f"removed, but {sid} requires it")
        self._changed(self._validated([s for sid, s in self._steps.items() if sid not in ids]))

    # running ------------------------------------------------------------------------

    def _bound(self) -> Flow:
        if self.flow is None:
            raise MicrosagaError(
                f"workflow {self._id} is not bound to a flow: use flow.workflow_add(wf)"
            )
        return self.flow

    async def execute(
        self,
        req: Message | Any = None,
        *,
        async_: bool = False,
        start: str | None = None,
        reverse: bool = False,
        timeout: float | None = None,
        deadline: float | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Start an execution and (unless ``async_``) wait until it stops.

        Returns:
            The execution id.

        Raises:
            ExecutionFailedError: the execution ended FAILURE (synchronous call).
            StepNotExistsError: ``start`` names no step.
            MissingClientError: a step needs a client or broker the flow lacks.
        """
        return await self._bound().execute(
            self,
            req,
            async_=async_,
            start=start,
            reverse=reverse,
            timeout=timeout,
            deadline=deadline,
            execution_id=execution_id,
        )

    async def suspend(self, execution_id: str) -> None:
        await self._bound().suspend(execution_id)

    async def resume(self, execution_id: str) -> None:
        await self._bound().resume(execution_id)

    async def abort(self, execution_id: str, compensate: bool = True) -> None:
        await self._bound().abort(execution_id, compensate=compensate)

    # definitions ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The workflow as a definition (see ``load_definition``)."""
        from .definitions import workflow_to_dict

        return workflow_to_dict(self)

    def replan(self) -> None:
        """Compile the steps again at the next :meth:`plan`: their options changed in
        place (a flow imported what a definition named, e.g. ``non_retryable``)."""
        self._plan_cache = None

    def plan(self) -> Plan:
        """The workflow compiled for running (made once per change of its steps)."""
        if self._plan_cache is None:
            self._plan_cache = build_plan(self._id, list(self._steps.values()), self.on_failure)
            _views.steps_of(
                self,
                [
                    (step, sid, phase)
                    for sid, node in self._plan_cache.nodes.items()
                    for step, phase in (
                        (node.step, Phase.FORWARD),
                        (node.compensate, Phase.COMPENSATE),
                    )
                    if isinstance(step, Step)
                ],
            )
        return self._plan_cache

    def snapshot(self) -> Snapshot:
        """The definition stored with executions, hashed; custom steps that cannot be
        saved give a snapshot only this process can run."""
        if self._snapshot_cache is None:
            ids = list(self._steps)
            try:
                body: bytes | None = encode_json(self.to_dict())
            except DefinitionError:
                body = None
            digest = (
                hashlib.sha256(body).hexdigest()[:32]
                if body is not None
                else "local-" + uuid.uuid4().hex
            )
            self._snapshot_cache = Snapshot(digest, body, ids)
        return self._snapshot_cache


_ONE_ATTEMPT = Retry()


def build_plan(workflow_id: str, steps: list[Step], on_failure: OnFailure = "compensate") -> Plan:
    """The plan of ``steps``: each step's options resolved into a node."""
    requires = {step.id: step.options.requires for step in steps}
    order = {sid: n for n, sid in enumerate(dag.topological(requires))}
    nodes: dict[str, Node] = {}
    for step in steps:
        opts = step.options
        comp: object | None = opts.compensate
        fallback = opts.fallback
        uses_context = opts.input is not None or opts.when is not None
        input = compile_expression(opts.input, "input") if opts.input else None
        partial = False
        if isinstance(step, SubflowStep) and comp is None:
            comp = CHILD_ROLLBACK  # the child compensated as a unit
        elif isinstance(step, MapStep):
            uses_context, input, partial = True, step.over, True
            comp = RUNS_ROLLBACK if step.step.options.compensate is not None else None
        comp_opts = comp.options if isinstance(comp, Step) else None
        nodes[step.id] = Node(
            id=step.id,
            step=step,
            requires=opts.requires,
            retry=opts.retry or _ONE_ATTEMPT,
            timeout=opts.timeout,
            fallback=fallback,
            fallback_retry=fallback.options.retry if fallback is not None else None,
            fallback_timeout=fallback.options.timeout if fallback is not None else None,
            compensate=comp,
            compensate_input=opts.compensate_input,
            compensate_retry=comp_opts.retry if comp_opts is not None else None,
            compensate_timeout=comp_opts.timeout if comp_opts is not None else None,
            input=input,
            when=compile_expression(opts.when, "when") if opts.when else None,
            ancestors=tuple(
                sorted(dag.ancestors(requires, step.id) - {step.id}, key=order.__getitem__)
            )
            if uses_context
            else (),
            waits=isinstance(step, WaitingStep),
            partial=partial,
        )
    return Plan(workflow_id, nodes, on_failure)
