"""The :class:`Flow`: the front door to workflows, executions and their store."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from . import _faults, _views
from ._aio import wait_event
from ._engine.plan import OnFailure, Plan
from ._run import Outcome
from ._threads import StepThreads
from ._urls import Url
from ._validate import check_id, name_problem, shown
from .definitions import workflow_from_dict
from .errors import (
    ConfigurationError,
    CycleError,
    DefinitionError,
    ExecutionFailedError,
    ExecutionNotFoundError,
    InvalidTransitionError,
    MicrosagaError,
    MissingClientError,
    WorkflowNotFoundError,
)
from .execution import Execution, run_of
from .hooks import ExecutionEvent, Hook, Hooks
from .message import Message, decode_json_body, encode_json, huge_number, out_of_range
from .payloads import check_size, redacted_execution
from .settings import FlowOptions, resolve_options
from .status import Phase, Status
from .step import Step
from .steps import deferred_imports, import_deferred
from .stores import open_store
from .stores.base import Store, StoredDefinition, StoredExecution, prune_paced
from .transports.base import Broker, Client
from .waits import SubflowStep, Waits, child_id, child_step, redriven_list_problem
from .worker import NewRun, Worker
from .workflow import Workflow

if TYPE_CHECKING:
    from ._engine.plan import Node
    from .saga import Saga

__all__ = ["Flow", "new_execution_id"]

log = logging.getLogger("microsaga")


def _trace_when_configured(hooks: Hooks) -> None:
    """SPEC §10: "with a tracer provider configured", executions are traced. A provider
    set globally means OpenTelemetry is imported already: nothing is imported when it
    is not, nor when it only has its no-op provider."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return
    if isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    ):
        return
    from .observability import Tracing

    if not any(isinstance(hook, Tracing) for hook in hooks):
        hooks.add(Tracing())


def new_execution_id() -> str:
    """A 32-hex-digit id that sorts by creation time (milliseconds, then random)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


_FINISHED = (Status.SUCCESS, Status.FAILURE, Status.ABORTED)
_RAW = (Message, bytes, bytearray, memoryview)  # a request given as bytes: checked


def _execution_id(value: Any, setting: str = "execution_id") -> str:
    """``value`` if it can be an execution id: a string (PostgreSQL would refuse any
    other as a StoreError, other stores would not find it).

    Raises:
        ConfigurationError: naming ``setting``.
    """
    if not isinstance(value, str):
        raise ConfigurationError(setting, f"must be an execution id, not {shown(value)}")
    return value


def _finished_statuses(status: Any) -> tuple[Status, ...]:
    if status is None:
        return _FINISHED
    many = isinstance(status, list | tuple | set | frozenset)
    items = list(status) if many else [status]
    out = []
    for item in items:
        found = Status.lookup(item) if isinstance(item, str) else item
        if type(found) is int and found in _FINISHED:  # Status is an IntEnum: 3 is SUCCESS
            found = Status(found)
        if not isinstance(found, Status) or found not in _FINISHED:
            raise ConfigurationError(
                "status", f"must be SUCCESS, FAILURE or ABORTED (finished), not {item!r}"
            )
        out.append(found)
    return tuple(out)


def not_undone(plan: Plan, stored: StoredExecution) -> list[str]:
    """The steps of a finished execution that left effects a compensation was meant to
    undo and did not (its rollback failed, or an abort skipped it), in definition
    order: ``b``, or ``m (3 runs)`` for a map. Steps with nothing to compensate are not
    named: no rollback undoes them."""
    known = set(stored.definition.step_ids)
    forward: dict[str, Status] = {}
    undone: set[str] = set()
    tried: set[str] = set()  # a compensation that did not succeed
    runs: dict[str, list[str]] = {}
    for rec in stored.records:
        if rec.phase is Phase.COMPENSATE:
            (undone if rec.status is Status.SUCCESS else tried).add(rec.step_id)
            continue
        forward[rec.step_id] = rec.status
        found = run_of(rec.step_id, known)
        if found is not None:
            runs.setdefault(found[0], []).append(rec.step_id)
    out = []
    for sid in stored.definition.step_ids:
        node = plan.nodes.get(sid)
        if node is None or node.compensate is None or sid in undone:
            continue
        if node.partial:  # a map: its runs that succeeded, each compensated alone
            left = [
                r for r in runs.get(sid, ()) if forward[r] is Status.SUCCESS and r not in undone
            ]
            if left:
                out.append(f"{sid} ({len(left)} run{'s' if len(left) > 1 else ''})")
        # a sub-workflow step whose child's rollback failed is PENDING or FAILURE
        elif forward.get(sid) is Status.SUCCESS or sid in tried:
            out.append(sid)
    return out


def _check_map_inputs(stored: StoredExecution, redriven: list[str], body: bytes) -> None:
    """Refuse ``body`` as the new list of a map step among ``redriven`` that it does not
    fit: the map's runs keep their indexes and those that succeeded their elements."""
    known = set(stored.definition.step_ids)
    records = {r.step_id: r for r in stored.records if r.phase is Phase.FORWARD}
    runs: dict[str, dict[int, Any]] = {}  # map id -> index -> element of a run that succeeded
    for rec in records.values():
        found = run_of(rec.step_id, known)
        if found is not None:
            done = runs.setdefault(found[0], {})
            if rec.status is Status.SUCCESS and rec.request is not None:
                done[found[1]] = decode_json_body(rec.request.body)
    given = decode_json_body(body)
    for map_id in (s for s in redriven if s in runs):
        before = records[map_id].request if map_id in records else None
        old = decode_json_body(before.body) if before is not None else None
        problem = redriven_list_problem(map_id, old, given, runs[map_id])
        if problem is not None:
            raise ConfigurationError("input", problem)


def _workflow_of(wf: Any) -> Workflow:
    """The Workflow of ``wf`` (a Workflow or a Saga), or a ConfigurationError."""
    if isinstance(wf, Workflow):
        return wf
    found = getattr(wf, "workflow", None)  # a Saga's
    if isinstance(found, Workflow):
        return found
    raise ConfigurationError(
        "wf",
        f"must be a Workflow (from workflow_create, workflow_load or load_definition) or a "
        f"Saga, not {wf!r}",
    )


def _copy(wf: Workflow) -> Workflow:
    """``wf`` as a new Workflow of the same steps, bound to no flow."""
    copy = Workflow(
        wf.id,
        wf.step_list,
        services=wf.services,
        description=wf.description,
        on_failure=wf.on_failure,
    )
    copy.version = wf.version
    return copy


def _import_functions(wf: Workflow) -> None:
    """Import what ``wf`` was read without importing (in a flow that runs no steps:
    functions, ``non_retryable`` classes): a flow that runs steps reports what it
    cannot import at once.

    Raises:
        DefinitionError: naming the step and what it cannot import.
    """
    changed = False
    for step in wf.step_list:
        for one in (step, step.options.fallback, step.options.compensate):
            if one is not None and import_deferred(one):
                changed = True
    if changed:
        wf.replan()  # its nodes hold the retry policies that changed


def _check_json(body: bytes) -> None:
    """A request's body is JSON (empty: no body), or a ConfigurationError."""
    if not body:
        return
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        huge = huge_number(body) if "out of range" in str(exc) else None
        if huge is not None:  # JSON, but no step could read it
            raise ConfigurationError("request", out_of_range(huge)) from None
        raise ConfigurationError("request", f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise ConfigurationError("request", "the body is JSON nested too deep") from None


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(name, f"must be a positive number of seconds, not {value!r}")
    if value >= 2**53:  # too long to mean anything but "never"
        return None
    return float(value)


class Flow:
    """Creates, saves and runs workflows on a store.

    Args:
        store: ``memory://``, ``sqlite:///PATH`` (default ``sqlite:///microsaga.db``,
            or ``MICROSAGA_STORE``), ``postgresql://...``, or a Store object.
        services: ``{service: base URL}`` for :class:`CallStep` over HTTP (merged over
            ``MICROSAGA_SERVICES``).
        client: a :class:`~microsaga.transports.Client` used for every service.
        broker: a broker URL (``nats://``, ``amqp://``, ``redis://``, ``memory://``) or a
            :class:`~microsaga.transports.Broker`, for :class:`PublishStep`.
        concurrency: steps running at once in this flow.
        worker: run executions here and take over those other workers left.
        **options: ``lease_ttl``, ``heartbeat_interval``, ``poll_interval``,
            ``max_executions``, ``max_recovery_attempts``, ``compensation_retry``,
            ``hooks`` (see
            ``microsaga.settings`` and :class:`~microsaga.Hook`).

    With an OpenTelemetry tracer provider set globally when it opens, the flow traces
    its executions (it adds ``microsaga.observability.Tracing()`` unless ``hooks``
    has one).

    Use it as ``async with Flow(...) as flow:``, or ``await flow.open()`` and
    ``await flow.close()``.
    """

    def __init__(
        self,
        store: str | Url | Store | None = None,
        *,
        services: Mapping[str, str] | None = None,
        client: Client | None = None,
        broker: str | Url | Broker | None = None,
        concurrency: int | None = None,
        worker: bool | None = None,
        **options: Any,
    ) -> None:
        self._explicit: dict[str, Any] = dict(
            store=store,
            services=services,
            client=client,
            broker=broker,
            concurrency=concurrency,
            worker=worker,
            **options,
        )
        self._options = resolve_options(self._explicit)
        self._open = False
        self._store: Store | None = None
        self._worker: Worker | None = None
        self._broker: Broker | None = None
        self._http: Client | None = None
        self._services: dict[str, str] = dict(self._options.services)
        self.hooks = Hooks(self._options.hooks)
        _faults.attach(self.hooks)
        # plans by the hash of the definition stored with their executions: a claimed
        # execution's plan (definitions of local steps cannot be loaded, only found here)
        self._plans: dict[str, Plan] = {}
        # definitions this flow has seen stored: a new execution need not send it again
        self._stored_definitions: set[str] = set()
        # plans whose steps found what they need here: (plan, number of services)
        self._checked: dict[int, tuple[Plan, int]] = {}
        self._subflows: dict[int, tuple[Plan, bool]] = {}  # plans with SubflowSteps
        self._waits: dict[str, Waits | None] = {}  # the signals a stored definition takes
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._yielded_at = 0.0  # when execute() last let other tasks run
        self._threads: StepThreads | None = None

    # options and lifecycle -------------------------------------------------------------

    @property
    def options(self) -> FlowOptions:
        return self._options

    def init(self, **options: Any) -> None:
        """Change options before the flow is opened (upstream ``Init``)."""
        if self._open:
            raise ConfigurationError("init", "options cannot change while the flow is open")
        self._explicit.update(options)
        self._options = resolve_options(self._explicit)
        self._services = dict(self._options.services)
        for hook in self._options.hooks:
            if hook not in self.hooks:
                self.hooks.add(hook)

    def add_hook(self, hook: Hook) -> None:
        """Add a hook (see :class:`~microsaga.Hook`); it sees what happens from now on."""
        self.hooks.add(hook)

    def remove_hook(self, hook: Hook) -> None:
        self.hooks.remove(hook)

    @property
    def store(self) -> Store:
        if self._store is None:
            raise MicrosagaError("the flow is not open: use 'async with Flow(...) as flow'")
        return self._store

    @property
    def worker_id(self) -> str:
        """The id under which this flow holds the leases of the executions it runs."""
        return self._running().id

    @property
    def services(self) -> Mapping[str, str]:
        """Service addresses: the flow's, then those of definitions added to it."""
        return self._services

    @property
    def threads(self) -> StepThreads:
        """The threads sync :class:`FunctionStep` functions run in, off the event loop
        (they may block): one for quick functions, more when functions block or compute
        with the GIL let go, at most as many as the flow's ``concurrency``; stopped
        with the flow. A call costs one asyncio future, and the calls that finish
        together are handed back to the loop in one wake-up (``microsaga._threads``;
        docs/semantics.md)."""
        if self._threads is None:
            self._threads = StepThreads(self._options.concurrency)
        return self._threads

    def clock(self) -> float:
        return self._options.clock()

    def random(self) -> float:
        return self._options.random()

    async def open(self) -> Flow:
        if self._open:
            return self
        _trace_when_configured(self.hooks)
        store = open_store(self._options.store)
        if self._options.codec is not None:
            store.use_codec(self._options.codec)
        await store.open()
        self._store = store
        try:
            broker = self._options.broker
            if broker is not None:
                from .transports import open_broker

                self._broker = open_broker(broker)
                await self._broker.connect()
            self._worker = Worker(
                flow=self,
                store=store,
                options=self._options,
                hooks=self.hooks,
                plan_for=self._plan_of_stored,
                notify=self._notify,
            )
            if self._options.worker:
                await self._worker.start_polling()
        except BaseException:
            await self._close_parts()
            raise
        self._open = True
        return self

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        await self._close_parts()

    async def _close_parts(self) -> None:
        if self._worker is not None:
            await self._worker.stop()
            self._worker = None
        for part in (self._http, self._broker):
            if part is not None:
                try:
                    await part.close()
                except Exception as exc:  # closing must go on
                    log.warning("closing %r: %s", part, exc)
        self._http = self._broker = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._threads is not None:
            # a sync step still running (it timed out, say) cannot be stopped: not waited for
            self._threads.shutdown()
            self._threads = None

    async def __aenter__(self) -> Flow:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _running(self) -> Worker:
        if not self._open or self._worker is None:
            raise MicrosagaError("the flow is not open: use 'async with Flow(...) as flow'")
        if self._worker.fatal is not None:
            raise self._worker.fatal
        return self._worker

    async def join(self) -> None:
        """Wait while this flow runs executions, as a worker process does instead of
        sleeping: until cancelled, or until its worker stops on its own, which it does
        when another process of a newer microsaga migrates the store. Then it raises
        why (:class:`~microsaga.SchemaVersionError`, as opening the store would), and
        so does every later call on the flow; the executions it ran were handed back
        to other workers, as when it closes.

        Raises:
            SchemaVersionError: the store's schema became newer than this microsaga.
        """
        worker = self._running()
        await worker.halted.wait()
        assert worker.fatal is not None
        raise worker.fatal

    # transports -----------------------------------------------------------------------

    def client_for(self, service: str) -> Client:
        """The client that reaches ``service``.

        Raises:
            MissingClientError: no client is set and the service has no address.
        """
        client = self._options.client
        if client is not None and client.has_service(service):
            return client  # type: ignore[no-any-return]
        if service in self._services:
            if self._http is None:
                from .transports.http import HttpClient

                self._http = HttpClient(self._services)
            return self._http
        raise MissingClientError(
            f"client not set: no client and no address for service {service!r}"
        )

    def require_broker(self) -> Broker:
        """The flow's broker.

        Raises:
            MissingClientError: no broker is configured.
        """
        if self._broker is None:
            raise MissingClientError("client not set: no broker configured for publish steps")
        return self._broker

    # workflows ------------------------------------------------------------------------

    async def workflow_create(
        self, id: str, *steps: Step, on_failure: OnFailure = "compensate"
    ) -> Workflow:
        """A new workflow of ``steps``, validated, bound to this flow (not saved).

        ``on_failure``: what a step failing for good does: ``"compensate"`` rolls back
        what succeeded; ``"suspend"`` leaves the execution SUSPEND, nothing compensated,
        for an operator to ``resume`` (the failed steps are tried again), ``redrive``
        (with a new input) or ``abort`` (roll back)."""
        return Workflow(id, steps, flow=self, on_failure=on_failure)

    async def workflow_add(self, wf: Workflow | Saga) -> Workflow:
        """Bind a workflow (from ``load_definition``), or a Saga's, to this flow.

        Returns:
            The workflow; a copy of it when it is bound to another flow that is open
            (a saga added to two flows), so that each runs its executions on its own.

        Raises:
            ConfigurationError: ``wf`` is neither.
        """
        wf = _workflow_of(wf)
        if self._options.worker:
            _import_functions(wf)
        if wf.flow is not None and wf.flow is not self and wf.flow._open:
            wf = _copy(wf)
        wf.flow = self
        for name, url in wf.services.items():
            self._services.setdefault(name, url)
        return wf

    async def workflow_save(self, wf: Workflow | Saga) -> int:
        """Save the definition; a changed definition gets a new version.

        Returns:
            The saved version, also set on ``wf.version`` (on the copy bound to this
            flow, when ``wf`` is bound to another open flow: see ``workflow_add``).

        Raises:
            ConfigurationError: ``wf`` is not a Workflow (or a Saga).
        """
        wf = _workflow_of(wf)
        body = encode_json(wf.to_dict())
        digest = hashlib.sha256(body).hexdigest()[:32]
        version = await self.store.save_workflow(wf.id, digest, body, self.clock())
        bound = await self.workflow_add(wf)
        bound.version = version
        return version

    async def workflow_load(self, id: str, version: int | None = None) -> Workflow:
        """The saved workflow (latest version unless ``version``).

        Raises:
            WorkflowNotFoundError: nothing saved under ``id``.
        """
        if version is not None and not 0 < version < 2**63:  # no store holds such a version
            raise WorkflowNotFoundError(f"{id} version {version}")
        stored = await self.store.load_workflow(id, version)
        if stored is None:
            raise WorkflowNotFoundError(id if version is None else f"{id} version {version}")
        return await self._bind_stored(stored.body, stored.version)

    async def _bind_stored(self, body: bytes, version: int) -> Workflow:
        wf = self._read(body)
        wf.version = version
        return await self.workflow_add(wf)

    async def workflow_list(self) -> list[Workflow]:
        """The latest version of every saved workflow (definitions, not executions)."""
        return [
            await self._bind_stored(s.body, s.version) for s in await self.store.list_workflows()
        ]

    async def workflow_remove(self, id: str) -> None:
        """Forget a saved workflow; its executions keep their own copy of it."""
        if not await self.store.remove_workflow(id):
            raise WorkflowNotFoundError(id)

    def _read(self, body: bytes) -> Workflow:
        """A stored definition as a workflow. A flow that runs no steps imports none of
        its functions: the workers do, where the steps run (``deferred_imports``)."""
        data = Message(body).json()
        if self._options.worker:
            return workflow_from_dict(data)
        with deferred_imports():
            return workflow_from_dict(data)

    def _plan_of_stored(self, definition: StoredDefinition) -> Plan:
        """The plan of a definition stored with an execution (one this process did not
        start: claimed from the store)."""
        plan = self._plans.get(definition.hash)
        if plan is None:
            if definition.body is None:
                raise DefinitionError(
                    f"workflow {definition.workflow_id} has steps that cannot be saved; "
                    "only the process that started the execution can run it"
                )
            wf = self._read(definition.body)
            for name, url in wf.services.items():
                self._services.setdefault(name, url)
            plan = self._plans[definition.hash] = wf.plan()
        self._check(plan)
        return plan

    def _checked_plan(self, wf: Workflow) -> Plan:
        """``wf``'s plan, once every step found what it needs in this flow (its client,
        its broker).

        Raises:
            MissingClientError: before anything is stored.
        """
        plan = wf.plan()
        self._check(plan)
        return plan

    def _check(self, plan: Plan) -> None:
        """Every step of ``plan`` finds what it needs in this flow (once per plan and
        set of services).

        Raises:
            MissingClientError: a service without an address, no broker.
        """
        checked = self._checked.get(id(plan))
        if checked is None or checked[0] is not plan or checked[1] != len(self._services):
            for node in plan.nodes.values():
                for step in (node.step, node.fallback, node.compensate):
                    if isinstance(step, Step):
                        step.check(self)
            self._checked[id(plan)] = (plan, len(self._services))

    # executions -------------------------------------------------------------------------

    async def execute(
        self,
        wf: Workflow,
        req: Any = None,
        *,
        async_: bool = False,
        start: str | None = None,
        reverse: bool = False,
        timeout: float | None = None,
        deadline: float | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Start an execution of ``wf`` and (unless ``async_``) wait until it stops:
        what ``wf.execute(...)`` does (see :meth:`Workflow.execute`)."""
        worker = self._running()
        request = self._body(req, "request")
        if timeout is not None:
            timeout = _positive(timeout, "timeout")
        if deadline is not None:
            deadline = _positive(deadline, "deadline")
        if execution_id is not None:
            check_id(execution_id, "execution_id")
        plan = self._checked_plan(wf)
        graph = plan.graph(start, reverse)  # an unknown start raises here, before anything
        if self._starts_children(plan):
            await self._check_children(plan, (wf.id,))
        if self.hooks.execution_header:
            request = self._with_hook_headers(wf.id, request)
        snap = wf.snapshot()
        self._plans.setdefault(snap.hash, plan)
        eid = execution_id or new_execution_id()
        new = NewRun(
            execution_id=eid,
            workflow_id=wf.id,
            version=wf.version,
            definition_hash=snap.hash,
            definition=None if snap.hash in self._stored_definitions else snap.body,
            step_ids=snap.step_ids,
            plan=plan,
            graph=graph,
            start_step=start,
            reverse=reverse,
            request=request,
            step_timeout=timeout,
            deadline=deadline,
        )
        # a run that waits on nothing (the memory store, steps that do not wait) is
        # done when the call returns, when it starts in this call (see Worker._launch)
        started = await worker.start(new, eager=not async_ and not worker.store.batching)
        if started.created:
            self._stored_definitions.add(snap.hash)
        run = started.run
        if run is not None:
            _views.started(wf, eid, run.state, run.state.status)
        else:
            found = await self.store.get_status(eid)
            status = found[0] if found is not None else Status.PENDING
            _views.started(wf, eid, None, status)
        if async_:
            return eid
        if run is not None and run.outcome is not None:
            outcome = run.outcome  # it ran to its end in this call
            # callers that never wait would starve the worker's tasks and everyone's:
            # now and then they let the others run
            now = asyncio.get_running_loop().time()
            if now - self._yielded_at > 0.005:
                self._yielded_at = now
                await asyncio.sleep(0)
        else:
            ended = await run.stopped() if run is not None else None
            if ended is not None:
                outcome = ended
            else:  # it went on after its run here stopped (parked), or ran elsewhere
                outcome = await self._stored_outcome(eid)
                # wf.status shows how it stopped (a later run here is followed, a run
                # elsewhere is not)
                _views.observed(eid, outcome.status)
        if outcome.status is Status.FAILURE:
            raise ExecutionFailedError(
                eid, outcome.step_id, outcome.error or "failed", compensated=outcome.compensated
            )
        return eid

    def _starts_children(self, plan: Plan) -> bool:
        found = self._subflows.get(id(plan))
        if found is None or found[0] is not plan:
            has = any(isinstance(n.step, SubflowStep) for n in plan.nodes.values())
            found = self._subflows[id(plan)] = (plan, has)
        return found[1]

    async def _check_children(self, plan: Plan, chain: tuple[str, ...]) -> None:
        """The workflows that the SubflowSteps of ``plan`` start are saved, and none of
        them starts a workflow of ``chain`` again.

        Raises:
            WorkflowNotFoundError: naming the step.
            CycleError: naming the workflows of the cycle.
        """
        for node in plan.nodes.values():
            step = node.step
            if not isinstance(step, SubflowStep):
                continue
            target = step.workflow_id
            if target in chain:
                cycle = [*chain[chain.index(target) :], target]
                raise CycleError(cycle, between="workflows")
            stored = await self.store.load_workflow(target, step.version)
            if stored is None:
                version = "" if step.version is None else f" version {step.version}"
                raise WorkflowNotFoundError(
                    f"{target}{version} (started by step {node.id} of workflow {chain[-1]})"
                )
            child = self._plans.get(stored.hash)
            if child is None:
                child = self._plans[stored.hash] = self._read(stored.body).plan()
            await self._check_children(child, (*chain, target))

    async def start_child(
        self, parent_id: str, node: Node, request: Message, *, attempt: int = 1
    ) -> None:
        """Start the child execution of try ``attempt`` of the SubflowStep ``node`` of
        execution ``parent_id``, with ``request``: ``<parent_id>:<step id>`` (then
        ``::<attempt>`` from the second try), once (the id is its idempotency key)."""
        step = node.step
        assert isinstance(step, SubflowStep)
        wf = await self.workflow_load(step.workflow_id, step.version)
        plan = self._checked_plan(wf)
        snap = wf.snapshot()
        self._plans.setdefault(snap.hash, plan)
        if self.hooks.execution_header:  # the child's own trace context is stored
            request = self._with_hook_headers(wf.id, request)
        new = NewRun(
            execution_id=child_id(parent_id, node.id, attempt),
            workflow_id=wf.id,
            version=wf.version,
            definition_hash=snap.hash,
            definition=snap.body,
            step_ids=snap.step_ids,
            plan=plan,
            graph=plan.graph(),
            start_step=None,
            reverse=False,
            request=request,
            step_timeout=None,
            deadline=node.timeout,
            parent_id=parent_id,
        )
        await self._running().start(new)

    async def signal(self, execution_id: str, event: str, payload: Any = None) -> None:
        """Deliver ``event`` to an execution: a :class:`~microsaga.WaitStep` waiting for
        it SUCCEEDS with ``payload`` (a Message, or anything ``Message(body=...)``
        takes) as its response. A signal that comes before the step starts is kept for
        it; a second one of the same event is ignored. Stored when this returns; the
        execution wakes within a second, wherever it is parked.

        Raises:
            ExecutionNotFoundError: unknown id.
            InvalidTransitionError: the execution is finished.
            ConfigurationError: an id that is no string, ``event`` is not a name, or no
                wait step of the execution waits for it (a sub-workflow's take signals
                at its own execution); ``payload`` is not JSON.
            PayloadTooLargeError: ``payload`` is over the flow's ``max_payload``.
        """
        _execution_id(execution_id)
        problem = name_problem(event, colon=True, limit=200)
        if problem is not None:
            raise ConfigurationError("event", problem)
        message = self._body(payload, "payload")  # the waiting step's response
        worker = self._running()
        # the status and definition only: never the step runs (a map's 10,000 of them)
        stored = await self.store.definition_of(execution_id)
        if stored is not None and not stored[0].finished:  # else the store says why
            waits = self._waits_of(stored[1])
            refused = waits.refusal(execution_id, event) if waits is not None else None
            if refused is not None:
                raise ConfigurationError("event", refused)
        await self.store.signal(execution_id, event, message, self.clock())
        worker.signalled(execution_id)
        await self._observe(execution_id)

    def _waits_of(self, definition: StoredDefinition) -> Waits | None:
        """The signals a stored definition takes; None when that cannot be told here (a
        step kind that this process does not know, steps that cannot be saved)."""
        if definition.hash in self._waits:
            return self._waits[definition.hash]
        plan = self._plans.get(definition.hash)
        waits: Waits | None = None
        if plan is not None:
            waits = Waits.of((n.id, n.step, n.fallback, n.compensate) for n in plan.nodes.values())
        elif definition.body is not None:
            try:
                with deferred_imports():  # no step's code imported to take a signal
                    wf = workflow_from_dict(Message(definition.body).json())
            except (ValueError, MicrosagaError):
                pass
            else:
                waits = Waits.of(
                    (s.id, s, s.options.fallback, s.options.compensate) for s in wf.step_list
                )
        self._waits[definition.hash] = waits
        return waits

    def _body(self, value: Any, setting: str) -> Message:
        """``value`` as the Message of a body (``setting``: ``request``, ``payload``):
        JSON, within ``max_payload``.

        Raises:
            ConfigurationError: naming ``setting``: not JSON, or NaN or infinity in it.
            PayloadTooLargeError: over ``max_payload``.
        """
        try:
            message = Message.of(value)
            if isinstance(value, _RAW):
                _check_json(message.body)  # bytes of the caller's: checked, not trusted
        except ConfigurationError as exc:  # not JSON, NaN or infinity
            raise ConfigurationError(setting, exc.reason) from None
        except (TypeError, ValueError) as exc:  # a type JSON cannot hold
            raise ConfigurationError(setting, f"must be JSON: {exc}") from None
        check_size(message, self._options.max_payload, f"the {setting}")
        return message

    def _with_hook_headers(self, workflow_id: str, request: Message) -> Message:
        """``request`` with the headers the hooks add to a new execution's (its trace
        context: stored with it, so that a worker taking it over continues the trace)."""
        event = ExecutionEvent(
            execution_id="",
            workflow_id=workflow_id,
            status=Status.PENDING,
            at=self.clock(),
            created_at=self.clock(),
            request=request,
        )
        header = request.header.copy()
        for extra in self.hooks.collect(self.hooks.execution_header, event):
            for key, value in (extra or {}).items():
                header.set(key, value)
        return Message(request.body, header)

    async def _stored_outcome(self, eid: str) -> Outcome:
        """How an execution stopped that no run here saw to its end (it ran elsewhere,
        or its run here gave up)."""
        info = await self.wait(eid)
        return Outcome(info.status, info.failed_step, info.error, info.compensated)

    async def settle(self, execution_id: str) -> None:
        """Wait until this process has stopped working on the execution (its running
        steps finished and were recorded), e.g. after it was suspended."""
        _execution_id(execution_id)
        run = self._running().runs.get(execution_id)
        if run is not None:
            await run.stopped()

    async def execution(self, execution_id: str) -> Execution:
        """The stored state of one execution.

        Raises:
            ExecutionNotFoundError: unknown id.
            ConfigurationError: an id that is no string.
        """
        _execution_id(execution_id)
        found = await self.store.get_execution(execution_id)
        if found is None:
            raise ExecutionNotFoundError(execution_id)
        self._observed(execution_id, found.status)
        return redacted_execution(found, self._options.redact_headers)

    def _stale_view(self, execution_id: str) -> bool:
        """Whether ``wf.status`` shows the execution without a run of it here (which
        would hold its newer state)."""
        worker = self._worker
        return _views.watched(execution_id) and (worker is None or execution_id not in worker.runs)

    def _observed(self, execution_id: str, status: Status) -> None:
        """``status`` was read in the store: what ``wf.status`` shows of it."""
        if self._stale_view(execution_id):
            _views.observed(execution_id, status)

    async def _observe(self, execution_id: str) -> None:
        """After a request changed an execution (suspend, resume, abort, signal): the
        status ``wf.status`` shows, read in the store when it may be stale."""
        if self._stale_view(execution_id):
            try:
                found = await self.store.get_status(execution_id)
            except MicrosagaError:  # the request was made: the view can wait
                return
            if found is not None:
                _views.observed(execution_id, found[0])

    async def executions(
        self,
        workflow_id: str | None = None,
        status: Status | str | None = None,
        limit: int = 100,
        before: str | None = None,
        *,
        redrive_of: str | None = None,
        steps: bool = True,
    ) -> list[Execution]:
        """Executions newest first; ``before`` (an execution id) pages back in time;
        ``redrive_of`` (an execution id) keeps only the executions redriving that one;
        ``steps=False`` leaves their step runs unread (``steps`` empty), for a list."""
        if isinstance(status, str):
            parsed = Status.lookup(status)
            if parsed is None:
                raise ConfigurationError("status", f"unknown status {status!r}")
            status = parsed
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ConfigurationError("limit", f"must be a positive integer, not {limit!r}")
        if before is not None:
            _execution_id(before, "before")
        if redrive_of is not None:
            _execution_id(redrive_of, "redrive_of")
        if steps:
            found = await self.store.list_executions(
                workflow_id, status, limit, before, redrive_of=redrive_of
            )
        else:  # only when asked: a Store written before `steps` still lists
            found = await self.store.list_executions(
                workflow_id, status, limit, before, redrive_of=redrive_of, steps=False
            )
        return [redacted_execution(info, self._options.redact_headers) for info in found]

    async def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Wait until the execution stops (SUCCESS, FAILURE, ABORTED or SUSPEND).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ExecutionNotFoundError: unknown id.
            ConfigurationError: an id that is no string.
        """
        _execution_id(execution_id)
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await self._wait(execution_id)
        except TimeoutError:
            if not scope.expired():
                raise
            raise TimeoutError(f"execution {execution_id} did not stop in {timeout}s") from None

    async def _wait(self, execution_id: str) -> Execution:
        while True:
            if self._worker is not None and self._worker.fatal is not None:
                raise self._worker.fatal  # it stopped on its own: see join
            event = asyncio.Event()
            self._waiters.setdefault(execution_id, set()).add(event)
            try:
                found = await self.store.get_status(execution_id)
                if found is None:
                    raise ExecutionNotFoundError(execution_id)
                if found[0].stopped:
                    return await self.execution(execution_id)
                await wait_event(event, self._options.poll_interval)
            finally:
                waiting = self._waiters.get(execution_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[execution_id]

    def _notify(self, execution_id: str) -> None:
        """The execution changed in this process: wake who waits for it."""
        for event in self._waiters.get(execution_id, ()):
            event.set()

    # control ------------------------------------------------------------------------------

    async def suspend(self, execution_id: str) -> None:
        """Stop starting steps; running steps finish and are recorded. Status SUSPEND.

        Raises:
            InvalidTransitionError: the execution is finished or compensating.
            ConfigurationError: an id that is no string.
        """
        _execution_id(execution_id)
        await self._running().control(execution_id, "suspend")
        await self._observe(execution_id)

    async def resume(self, execution_id: str) -> None:
        """Continue a suspended execution (status RUNNING at once), or retry the failed
        compensations of a failed one. An execution that a step's failure suspended (the
        failure policy ``"suspend"``) tries its failed steps again, each with a fresh
        retry budget.

        Raises:
            InvalidTransitionError: nothing to resume.
            ConfigurationError: an id that is no string.
        """
        _execution_id(execution_id)
        info = await self.execution(execution_id)
        action = "resume"
        failed = info.status is Status.SUSPEND and info.failed_step is not None
        if failed and await self._failure_policy(execution_id) == "suspend":
            action = "retry"
        await self._running().control(execution_id, action)
        await self._observe(execution_id)

    async def _failure_policy(self, execution_id: str) -> str:
        """The failure policy of the definition an execution runs."""
        found = await self.store.definition_of(execution_id)  # no step runs read
        if found is None:
            raise ExecutionNotFoundError(execution_id)
        definition = found[1]
        plan = self._plans.get(definition.hash)
        if plan is not None:
            return plan.on_failure
        body = definition.body
        found = Message(body).json().get("on_failure") if body else None
        return found if isinstance(found, str) else "compensate"

    async def redrive(
        self, execution_id: str, *, step: str | None = None, input: Any = None
    ) -> str:
        """Run a failed execution again, with an edited input if given.

        - A SUSPEND execution with a FAILURE step (the failure policy ``"suspend"``):
          runs ``step`` again (default: every FAILURE step), with ``input`` as its
          request when given, then carries on; finished steps are not run again.
          Returns ``execution_id``.
        - A finished FAILURE or ABORTED execution: starts a new execution of the same
          definition with the same request, or ``input``; returns its id
          (``Execution.redrive_of`` is the old one). It runs every step again, also
          those whose effects the old one's rollback left (a compensation failed for
          good: ``resume`` of the old one retries it, best before the redrive).

        Raises:
            InvalidTransitionError: the execution is in neither case, ``step`` did not
                fail, or it is a finished sub-workflow's child (``parent_id`` set: no
                parent would wait for a new execution; the error says what to redrive).
            ExecutionNotFoundError: unknown id.
            ConfigurationError: an id that is no string, an ``input`` that is not JSON
                or that a map step cannot take as its list.
            PayloadTooLargeError: ``input`` is over ``max_payload``.
        """
        _execution_id(execution_id)
        if step is not None and not isinstance(step, str):
            raise ConfigurationError("step", f"must be a step id, not {shown(step)}")
        body = None if input is None else self._body(input, "input").body
        stored = await self.store.load(execution_id)
        if stored is None:
            raise ExecutionNotFoundError(execution_id)
        status = stored.status
        failed = [
            r.step_id
            for r in stored.records
            if r.phase is Phase.FORWARD and r.status is Status.FAILURE
        ]
        if status is Status.SUSPEND and failed:
            named = None
            if step is not None:
                known = set(stored.definition.step_ids)
                run = run_of(step, known)
                if run is not None:
                    raise InvalidTransitionError(
                        f"cannot redrive {step} of execution {execution_id}: it is a run of "
                        f"map step {run[0]}, which redrives its failed runs"
                    )
                if step not in known:
                    raise InvalidTransitionError(
                        f"cannot redrive step {step} of execution {execution_id}: its "
                        f"workflow has no such step (failed: {', '.join(failed)})"
                    )
                if step not in failed:
                    raise InvalidTransitionError(
                        f"cannot redrive step {step} of execution {execution_id}: "
                        f"it did not fail (failed: {', '.join(failed)})"
                    )
                # a map's failed runs (<id>[<i>]) go with it, each with a fresh retry
                # budget, as every failed run does on resume
                named = [step, *(s for s in failed if (r := run_of(s, known)) and r[0] == step)]
            if body is not None:
                _check_map_inputs(stored, named or failed, body)
            await self._running().control(execution_id, "redrive", steps=named, body=body)
            return execution_id
        if status in (Status.FAILURE, Status.ABORTED):
            if stored.parent_id is not None:
                raise InvalidTransitionError(await self._child_redrive_refused(stored))
            if step is not None:
                raise InvalidTransitionError(
                    f"execution {execution_id} is {status.name}: a redrive starts a "
                    "new execution from the start, so it takes no step"
                )
            return await self._redrive_anew(stored, body)
        raise InvalidTransitionError(
            f"cannot redrive an execution that is {status.name}: only a SUSPEND one "
            "whose step failed, or a FAILURE or ABORTED one" + await self._held_by_child(stored)
        )

    async def _held_by_child(self, stored: StoredExecution) -> str:
        """For a refused redrive of a running execution: its sub-workflow steps that
        wait for a SUSPEND child (a failed step of the child's own, its failure policy
        ``"suspend"``), the one to redrive; else ``""``."""
        if stored.status is not Status.RUNNING:
            return ""
        known = set(stored.definition.step_ids)
        for rec in stored.records:
            if rec.phase is Phase.FORWARD and rec.status is Status.WAITING and rec.step_id in known:
                cid = child_id(stored.id, rec.step_id, max(rec.attempts, 1))
                found = await self.store.get_status(cid)  # None: a wait or a sleep
                if found is not None and found[0] is Status.SUSPEND:
                    return (
                        f"; its step {rec.step_id} waits for child execution {cid}, which "
                        "is SUSPEND: redrive (or resume) that one"
                    )
        return ""

    async def _child_redrive_refused(self, stored: StoredExecution) -> str:
        """Why a finished sub-workflow's child is not redriven, and what to do instead: a
        new execution would have no parent waiting for it, doing the child's work again
        after the parent rolled back, or while it waits for an operator."""
        parent_id = stored.parent_id
        assert parent_id is not None
        # the parent's status and step ids; its step runs only where they tell more
        found = await self.store.definition_of(parent_id)
        step = child_step(stored.id, parent_id)
        said = (
            f"cannot redrive execution {stored.id}: it is the child of step {step} of "
            f"execution {parent_id}, and a new execution would have no parent waiting for it"
        )
        if found is None:
            return f"{said}; that parent is gone: start workflow {stored.workflow_id} anew"
        status = found[0]
        parent = await self.store.load(parent_id) if status is Status.SUSPEND else None
        if parent is not None and any(
            r.step_id == step and r.phase is Phase.FORWARD and r.status is Status.FAILURE
            for r in parent.records
        ):
            return (
                f"{said}; redrive step {step} of execution {parent_id} instead (it is "
                "SUSPEND on it): that runs a new child"
            )
        if status in (Status.FAILURE, Status.ABORTED):
            return (
                f"{said}; redrive execution {parent_id} instead (it is "
                f"{status.name}): that starts it anew, with a new child"
            )
        if status is Status.SUCCESS:  # a later try of the step succeeded
            return f"{said}; execution {parent_id} succeeded: nothing is left to redrive"
        return (
            f"{said}; execution {parent_id} is {status.name}: redrive it once it "
            f"failed, or its step {step} while it is SUSPEND on it"
        )

    async def _redrive_anew(self, stored: StoredExecution, body: bytes | None) -> str:
        plan = self._plan_of_stored(stored.definition)
        request = stored.request if body is None else Message(body, stored.request.header)
        if self.hooks.execution_header:  # its own trace context, not the old one's
            request = self._with_hook_headers(stored.workflow_id, request)
        new = NewRun(
            execution_id=new_execution_id(),
            workflow_id=stored.workflow_id,
            version=stored.version,
            definition_hash=stored.definition.hash,
            definition=None,  # the store has it: this execution's
            step_ids=stored.definition.step_ids,
            plan=plan,
            graph=plan.graph(stored.start_step, stored.reverse),
            start_step=stored.start_step,
            reverse=stored.reverse,
            request=request,
            step_timeout=stored.step_timeout,
            deadline=None,
            redrive_of=stored.id,
        )
        started = await self._running().start(new)
        return started.execution_id

    async def prune(self, older_than: float, *, status: Any = None) -> int:
        """Delete executions that finished more than ``older_than`` seconds ago (every
        finished status, or those of ``status``: one or a list), with their steps and
        signals; how many. Running, suspended and waiting executions are never pruned.
        """
        if isinstance(older_than, bool) or not isinstance(older_than, int | float):
            raise ConfigurationError("older_than", f"must be seconds, not {older_than!r}")
        if not older_than >= 0:
            raise ConfigurationError("older_than", f"must be 0 or more, not {older_than!r}")
        statuses = _finished_statuses(status)
        before = self.clock() - older_than
        return await prune_paced(self.store, before, statuses)

    async def abort(self, execution_id: str, compensate: bool = True) -> None:
        """Stop starting steps, let running ones finish, then roll back (unless
        ``compensate=False``); the execution ends ABORTED.

        Raises:
            InvalidTransitionError: the execution is finished.
            ConfigurationError: an id that is no string.
        """
        _execution_id(execution_id)
        await self._running().control(execution_id, "abort" if compensate else "abort_nocomp")
        await self._observe(execution_id)


async def left_by_rollback(flow: Flow, execution_id: str) -> list[str]:
    """The steps of a finished execution whose effects its rollback left (see
    :func:`not_undone`): what a redrive of it runs a second time. For the CLI's note."""
    stored = await flow.store.load(execution_id)
    if stored is None:
        raise ExecutionNotFoundError(execution_id)
    return not_undone(flow._plan_of_stored(stored.definition), stored)
