"""The :class:`Flow`: the front door to workflows, executions and their store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _faults
from ._aio import wait_event
from ._engine.saga import NO_ABORT, ExecState
from ._run import Outcome, Run
from .definitions import workflow_from_dict
from .errors import (
    ConfigurationError,
    DefinitionError,
    ExecutionFailedError,
    ExecutionNotFoundError,
    MicrosagaError,
    MissingClientError,
    WorkflowNotFoundError,
)
from .execution import Execution
from .message import Message, encode_json
from .settings import FlowOptions, resolve_options
from .status import FAILURE, PENDING, RUNNING, Status
from .step import Step
from .stores import open_store
from .stores.base import NewExecution, Store, StoredDefinition
from .transports.base import Broker, Client
from .worker import Worker
from .workflow import Workflow

if TYPE_CHECKING:
    from .saga import Saga

__all__ = ["Flow", "new_execution_id"]

log = logging.getLogger("microsaga")


# the random part of execution ids: the OS's random bytes, read 256 ids at a time (a
# system call per id cost more than the rest of the id); a forked child starts afresh,
# so that parent and child never hand out the same bytes
_random_parts: list[str] = []
os.register_at_fork(after_in_child=_random_parts.clear)


def _random_part() -> str:
    while True:
        try:
            return _random_parts.pop()
        except IndexError:
            raw = os.urandom(10 * 256).hex()
            _random_parts.extend([raw[i : i + 20] for i in range(0, len(raw), 20)])


_millisecond = (-1, "")  # the last millisecond and its hex form, made once per millisecond


def new_execution_id() -> str:
    """A 32-hex-digit id that sorts by creation time (milliseconds, then random)."""
    global _millisecond
    now = time.time_ns() // 1_000_000
    last, hexed = _millisecond
    if last != now:
        hexed = f"{now:012x}"
        _millisecond = (now, hexed)
    return hexed + _random_part()


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(name, f"must be a positive number of seconds, not {value!r}")
    if math.isinf(value):
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
            ``max_executions``, ``compensation_retry`` (see ``microsaga.settings``).

    Use it as ``async with Flow(...) as flow:``, or ``await flow.open()`` and
    ``await flow.close()``.
    """

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        services: Mapping[str, str] | None = None,
        client: Client | None = None,
        broker: str | Broker | None = None,
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
        self._plans: dict[str, Any] = {}
        self._stored_definitions: set[str] = set()
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._yielded_at = 0.0  # when _execute last yielded to the event loop
        self._threads: ThreadPoolExecutor | None = None

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

    @property
    def store(self) -> Store:
        if self._store is None:
            raise MicrosagaError("the flow is not open: use 'async with Flow(...) as flow'")
        return self._store

    @property
    def services(self) -> Mapping[str, str]:
        """Service addresses: the flow's, then those of definitions added to it."""
        return self._services

    @property
    def threads(self) -> ThreadPoolExecutor:
        """The threads sync :class:`FunctionStep` functions run in: as many as the
        flow's ``concurrency``, made on first use and shut down with the flow."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(
                self._options.concurrency, thread_name_prefix="microsaga-step"
            )
        return self._threads

    def clock(self) -> float:
        return self._options.clock()

    def random(self) -> float:
        return self._options.random()

    async def open(self) -> Flow:
        if self._open:
            return self
        with self._naming("store"):
            store = open_store(self._options.store)
            await store.open()
        self._store = store
        try:
            broker = self._options.broker
            if broker is not None:
                from .transports import open_broker

                with self._naming("broker"):
                    self._broker = open_broker(broker)
                    await self._broker.connect()
            self._worker = Worker(self)
            await self._worker.start()
        except BaseException:
            await self._close_parts()
            raise
        self._open = True
        return self

    @contextlib.contextmanager
    def _naming(self, name: str) -> Iterator[None]:
        """Errors of the store or broker name the setting its URL came from: the
        argument ``name``, else its ``MICROSAGA_*`` variable."""
        setting = name if self._explicit.get(name) is not None else f"MICROSAGA_{name.upper()}"
        try:
            yield
        except ConfigurationError as exc:
            if exc.setting != name or setting == name:
                raise
            raise ConfigurationError(setting, exc.reason) from exc

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
            self._threads.shutdown(wait=False, cancel_futures=True)
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
        return self._worker

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

    async def workflow_create(self, id: str, *steps: Step) -> Workflow:
        """A new workflow of ``steps``, validated, bound to this flow (not saved)."""
        return Workflow(id, steps, flow=self)

    async def workflow_add(self, wf: Workflow | Saga) -> Workflow:
        """Bind a workflow (from ``load_definition``), or a Saga's, to this flow."""
        if not isinstance(wf, Workflow):
            wf = wf.workflow
        wf.flow = self
        for name, url in wf.services.items():
            self._services.setdefault(name, url)
        return wf

    async def workflow_save(self, wf: Workflow) -> int:
        """Save the definition; a changed definition gets a new version.

        Returns:
            The saved version, also set on ``wf.version``.
        """
        body = encode_json(wf.to_dict())
        digest = hashlib.sha256(body).hexdigest()[:32]
        wf.version = await self.store.save_workflow(wf.id, digest, body, self.clock())
        await self.workflow_add(wf)
        return wf.version

    async def workflow_load(self, id: str, version: int | None = None) -> Workflow:
        """The saved workflow (latest version unless ``version``).

        Raises:
            WorkflowNotFoundError: nothing saved under ``id``.
        """
        stored = await self.store.load_workflow(id, version)
        if stored is None:
            raise WorkflowNotFoundError(id if version is None else f"{id} version {version}")
        return await self._bind_stored(stored.body, stored.version)

    async def _bind_stored(self, body: bytes, version: int) -> Workflow:
        wf = workflow_from_dict(Message(body).json())
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

    def _plan_for(self, definition: StoredDefinition) -> Any:
        plan = self._plans.get(definition.hash)
        if plan is None:
            if definition.body is None:
                raise DefinitionError(
                    f"workflow {definition.workflow_id} has steps that cannot be saved; "
                    "only the process that started the execution can run it"
                )
            wf = workflow_from_dict(Message(definition.body).json())
            for name, url in wf.services.items():
                self._services.setdefault(name, url)
            plan = self._plans[definition.hash] = wf._plan()
        return plan

    # executions -------------------------------------------------------------------------

    async def _execute(
        self,
        wf: Workflow,
        req: Any,
        async_: bool,
        start: str | None,
        reverse: bool,
        timeout: float | None,
        deadline: float | None,
        execution_id: str | None,
    ) -> str:
        worker = self._running()
        request = req if isinstance(req, Message) else Message(req)
        if timeout is not None:
            timeout = _positive(timeout, "timeout")
        if deadline is not None:
            deadline = _positive(deadline, "deadline")
        if execution_id is not None and (not isinstance(execution_id, str) or not execution_id):
            raise ConfigurationError("execution_id", "must be a non-empty string")
        plan = wf._plan()
        graph = plan.graph(start, reverse)
        checked = plan.checked  # the flow and services the steps were checked against
        if checked is None or checked[0] is not self or checked[1] != len(self._services):
            for node in plan.nodes.values():
                for step in (node.step, node.fallback, node.compensate):
                    if step is not None:
                        step.check(self)
            plan.checked = (self, len(self._services))
        snap = wf._snapshot()
        if snap.hash not in self._plans:
            self._plans[snap.hash] = plan
        eid = execution_id or new_execution_id()
        options = self._options
        now = options.clock()
        runs_here = options.worker
        workflow_id = wf._id
        new = NewExecution(  # positional, in field order: see Workflow.execute
            eid,
            workflow_id,
            wf.version,
            snap.hash,
            None if snap.hash in self._stored_definitions else snap.body,
            snap.step_ids,
            request,
            RUNNING if runs_here else PENDING,
            worker.id if runs_here else None,
            now + options.lease_ttl if runs_here else 0.0,
            now,
            start,
            reverse,
            timeout,
            now + deadline if deadline is not None else None,
        )
        wf._last_execution = eid
        wf._status = new.status
        run: Run | None = worker.runs.get(eid)
        created = False  # when the id is running here already
        if run is None:
            if runs_here:
                state = ExecState(RUNNING, NO_ABORT, graph.fresh_steps(), {})
                run = Run(
                    worker,
                    plan,
                    graph,
                    eid,
                    workflow_id,
                    request,
                    1,
                    state,
                    timeout,
                    new.deadline_at,
                    True,
                    wf,
                )
                new.starts = run.first_steps()
            committed = worker.committer.now(new)
            if committed is None:
                committed = await worker.committer.later(new)
            created = bool(committed)
            if created:
                if new.definition is not None:
                    self._stored_definitions.add(snap.hash)
                if _faults.ARMED:
                    _faults.hit("execution_created")
                if run is not None:
                    # a caller that waits for the run can start it at once, when the
                    # store's commits never wait (the memory store); else the run waits
                    # for its first commit in the caller, alone, and runs of many
                    # callers no longer share commits (SQLite went from 2,200 to 930
                    # order sagas/s that way)
                    worker.launch(run, eager=not async_ and not worker.store.batching)
            else:
                run = worker.runs.get(eid)
        if not created:  # the id exists: this call behaves as the one that started it
            if run is not None:
                wf._status = run.state.status
            else:
                found = await self.store.get_status(eid)
                if found is not None:
                    wf._status = found[0]
        if async_:
            return eid
        if run is not None and run.ended and run.outcome is not None:
            outcome = run.outcome  # it ran to its end without waiting
            # now and then let others run: callers of executions that never wait, one
            # after another, would otherwise starve the worker's tasks and everyone's
            now = asyncio.get_running_loop().time()
            if now - self._yielded_at > 0.005:
                self._yielded_at = now  # before the wait: other callers go on meanwhile
                await asyncio.sleep(0)
        else:
            outcome = await self._outcome(eid, run)
        if wf._last_execution == eid:
            wf._status = outcome.status
        if outcome.status is FAILURE:
            raise ExecutionFailedError(
                eid, outcome.step_id, outcome.error or "failed", compensated=outcome.compensated
            )
        return eid

    async def _outcome(self, eid: str, run: Run | None) -> Outcome:
        if run is not None:
            found = await run.stopped()
            if found is not None:
                return found
        info = await self.wait(eid)
        return Outcome(info.status, info.failed_step, info.error, info.compensated)

    async def settle(self, execution_id: str) -> None:
        """Wait until this process has stopped working on the execution (its running
        steps finished and were recorded), e.g. after it was suspended."""
        worker = self._running()
        run = worker.runs.get(execution_id)
        if run is not None:
            await run.stopped()

    async def execution(self, execution_id: str) -> Execution:
        """The stored state of one execution.

        Raises:
            ExecutionNotFoundError: unknown id.
        """
        found = await self.store.get_execution(execution_id)
        if found is None:
            raise ExecutionNotFoundError(execution_id)
        return found

    async def executions(
        self,
        workflow_id: str | None = None,
        status: Status | str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Execution]:
        """Executions newest first; ``before`` (an execution id) pages back in time."""
        if isinstance(status, str):
            parsed = Status.lookup(status)
            if parsed is None:
                raise ConfigurationError("status", f"unknown status {status!r}")
            status = parsed
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ConfigurationError("limit", f"must be a positive integer, not {limit!r}")
        return await self.store.list_executions(workflow_id, status, limit, before)

    async def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Wait until the execution stops (SUCCESS, FAILURE, ABORTED or SUSPEND).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ExecutionNotFoundError: unknown id.
        """
        async with asyncio.timeout(timeout):
            while True:
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
        for event in self._waiters.get(execution_id, ()):
            event.set()

    # control ------------------------------------------------------------------------------

    async def suspend(self, execution_id: str) -> None:
        """Stop starting steps; running steps finish and are recorded. Status SUSPEND.

        Raises:
            InvalidTransitionError: the execution is finished or compensating.
        """
        await self._request(execution_id, "suspend")

    async def resume(self, execution_id: str) -> None:
        """Continue a suspended execution (status RUNNING at once), or retry the failed
        compensations of a failed one.

        Raises:
            InvalidTransitionError: nothing to resume.
        """
        await self._request(execution_id, "resume")

    async def abort(self, execution_id: str, compensate: bool = True) -> None:
        """Stop starting steps, let running ones finish, then roll back (unless
        ``compensate=False``); the execution ends ABORTED.

        Raises:
            InvalidTransitionError: the execution is finished.
        """
        await self._request(execution_id, "abort" if compensate else "abort_nocomp")

    async def _request(self, execution_id: str, action: str, reason: str | None = None) -> None:
        worker = self._running()
        await self.store.request(execution_id, action, self.clock(), reason)
        run = worker.runs.get(execution_id)
        if run is not None:
            found = await self.store.get_status(execution_id)
            if found is not None:
                run.control(*found)
        worker.poke()
        self._notify(execution_id)
