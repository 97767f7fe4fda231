"""A blocking front door: :class:`SyncFlow` runs a :class:`~microsaga.Flow` on an event
loop of its own, in a background thread, for scripts and sync web frameworks::

    with SyncFlow("sqlite:///orders.db") as flow:
        wf = flow.workflow_add(saga)
        eid = wf.execute({"order_id": 42})

Every method blocks until the flow's coroutine finishes on that loop; any number of
threads may call them at once (a threaded WSGI server's request threads, say). The
loop starts with ``open()`` (or ``with``) and stops with ``close()``, or at interpreter
exit when it was left open.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import inspect
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import MicrosagaError
from .execution import Execution
from .flow import Flow
from .hooks import Hook, Hooks
from .message import Message
from .settings import FlowOptions
from .status import Status
from .step import Step
from .workflow import Workflow

if TYPE_CHECKING:
    from .saga import Saga
    from .stores.base import Store
    from .transports.base import Broker, Client

__all__ = ["SyncFlow", "SyncWorkflow"]

T = TypeVar("T")


class SyncFlow:
    """The :class:`~microsaga.Flow` with blocking methods (same arguments, same names).

    Use it as ``with SyncFlow(...) as flow:``, or ``flow.open()`` and ``flow.close()``.
    Workflows it returns are :class:`SyncWorkflow` objects, whose ``execute``,
    ``suspend``, ``resume`` and ``abort`` block too. Do not call it from a step
    function of the same flow's loop (async steps); sync step functions, which run in
    the flow's threads, may.
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
        self._flow = Flow(
            store,
            services=services,
            client=client,
            broker=broker,
            concurrency=concurrency,
            worker=worker,
            **options,
        )
        self._lock = threading.Lock()  # guards the loop's start, stop and submissions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0  # the process that opened it: a forked child has not its thread

    # lifecycle -------------------------------------------------------------------------

    @property
    def flow(self) -> Flow:
        """The async Flow underneath (its coroutines run on this object's loop)."""
        return self._flow

    @property
    def options(self) -> FlowOptions:
        return self._flow.options

    def init(self, **options: Any) -> None:
        """Change options before the flow is opened (upstream ``Init``)."""
        self._flow.init(**options)

    @property
    def hooks(self) -> Hooks:
        """The flow's hooks (``hooks=`` and those added since)."""
        return self._flow.hooks

    def add_hook(self, hook: Hook) -> None:
        """Add a hook (see :class:`~microsaga.Hook`); it sees what happens from now on.
        Added on the flow's loop when it runs, so no event is being dispatched then."""
        self._on_loop(self._flow.add_hook, hook)

    def remove_hook(self, hook: Hook) -> None:
        self._on_loop(self._flow.remove_hook, hook)

    def _on_loop(self, fn: Callable[[Hook], None], hook: Hook) -> None:
        if self._loop is None:
            fn(hook)
            return

        async def call() -> None:
            fn(hook)

        self.run(call())

    def open(self) -> SyncFlow:
        """Start the loop's thread and open the flow on it (the store, the worker)."""
        with self._lock:
            if self._loop is not None:
                self._check_process()
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_serve, args=(loop,), name="microsaga-flow-loop", daemon=True
            )
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self._flow.open(), loop).result()
            except BaseException:
                _stop(loop, thread)
                raise
            self._loop, self._thread, self._pid = loop, thread, os.getpid()
        # a script that never closes its flow still closes its store and loop
        atexit.register(self.close)
        return self

    def close(self) -> None:
        """Close the flow (waiting for its worker to stop) and stop the loop's thread.
        Calls still waiting in other threads then raise ``CancelledError`` (of
        ``concurrent.futures``), saying so."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            self._loop = self._thread = None  # no call is submitted from now on
        atexit.unregister(self.close)
        if self._pid != os.getpid():
            return  # a forked child: the loop, its thread and the store are the parent's
        try:
            asyncio.run_coroutine_threadsafe(self._flow.close(), loop).result()
        finally:
            _stop(loop, thread)

    def _check_process(self) -> None:
        """Refuse calls in a process forked after ``open()``: its loop's thread is not
        there, and a call would wait for ever (a pre-forking server's workers)."""
        if self._pid != os.getpid():
            raise MicrosagaError(
                f"this SyncFlow was opened in process {self._pid}, before this process "
                f"({os.getpid()}) was forked from it, and its thread did not come along: "
                "open a SyncFlow in each worker process (gunicorn: no --preload, or open "
                "it in post_fork; uWSGI: lazy-apps)"
            )

    def __enter__(self) -> SyncFlow:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the flow's loop and return its result (any coroutine
        using this flow's async API, for what has no blocking method)."""
        with self._lock:
            loop = self._loop
            if loop is None or threading.current_thread() is self._thread:
                coro.close()
                if loop is None:
                    raise MicrosagaError("the flow is not open: use 'with SyncFlow(...) as flow'")
                raise MicrosagaError(
                    "a SyncFlow method was called on its own event loop (from an async "
                    "step?): use the async Flow there (ctx.flow)"
                )
            try:
                self._check_process()
            except MicrosagaError:
                coro.close()
                raise
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._loop is not loop:  # close() cancelled what was left on the loop
                raise concurrent.futures.CancelledError(
                    "the SyncFlow was closed while this call waited"
                ) from None
            raise
        except BaseException:
            future.cancel()  # interrupted (KeyboardInterrupt): stop only the waiting
            raise

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """Any other coroutine method of Flow, blocking."""
        if not name.startswith("_") and inspect.iscoroutinefunction(getattr(Flow, name, None)):
            method = getattr(self._flow, name)

            def blocking(*args: Any, **kwargs: Any) -> Any:
                return self.run(method(*args, **kwargs))

            return blocking
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        state = "open" if self._loop is not None else "closed"
        return f"<SyncFlow {state} store={self._flow.options.store!r}>"

    # workflows -------------------------------------------------------------------------

    def _sync(self, wf: Workflow) -> SyncWorkflow:
        return SyncWorkflow(wf, self)

    def workflow_create(self, id: str, *steps: Step, **options: Any) -> SyncWorkflow:
        """A new workflow of ``steps``, validated, bound to this flow (not saved)."""
        return self._sync(self.run(self._flow.workflow_create(id, *steps, **options)))

    def workflow_add(self, wf: Workflow | SyncWorkflow | Saga) -> SyncWorkflow:
        """Bind a workflow (from ``load_definition``), or a Saga's, to this flow."""
        target = wf.workflow if isinstance(wf, SyncWorkflow) else wf
        return self._sync(self.run(self._flow.workflow_add(target)))

    def workflow_save(self, wf: Workflow | SyncWorkflow) -> int:
        """Save the definition; a changed definition gets a new version."""
        target = wf.workflow if isinstance(wf, SyncWorkflow) else wf
        return self.run(self._flow.workflow_save(target))

    def workflow_load(self, id: str, version: int | None = None) -> SyncWorkflow:
        """The saved workflow (latest version unless ``version``)."""
        return self._sync(self.run(self._flow.workflow_load(id, version)))

    def workflow_list(self) -> list[SyncWorkflow]:
        """The latest version of every saved workflow (definitions, not executions)."""
        return [self._sync(wf) for wf in self.run(self._flow.workflow_list())]

    def workflow_remove(self, id: str) -> None:
        """Forget a saved workflow; its executions keep their own copy of it."""
        self.run(self._flow.workflow_remove(id))

    # executions ------------------------------------------------------------------------

    def execution(self, execution_id: str) -> Execution:
        """The stored state of one execution."""
        return self.run(self._flow.execution(execution_id))

    def executions(
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
        return self.run(
            self._flow.executions(
                workflow_id, status, limit, before, redrive_of=redrive_of, steps=steps
            )
        )

    def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Wait until the execution stops (SUCCESS, FAILURE, ABORTED or SUSPEND)."""
        return self.run(self._flow.wait(execution_id, timeout))

    def settle(self, execution_id: str) -> None:
        """Wait until this process has stopped working on the execution."""
        self.run(self._flow.settle(execution_id))

    def suspend(self, execution_id: str) -> None:
        """Stop starting steps; running steps finish and are recorded. Status SUSPEND."""
        self.run(self._flow.suspend(execution_id))

    def resume(self, execution_id: str) -> None:
        """Continue a suspended execution, or retry a failed one's compensations."""
        self.run(self._flow.resume(execution_id))

    def abort(self, execution_id: str, compensate: bool = True) -> None:
        """Stop starting steps, let running ones finish, then roll back."""
        self.run(self._flow.abort(execution_id, compensate=compensate))

    def signal(self, execution_id: str, event: str, payload: Any = None) -> None:
        """Deliver ``event`` to an execution (see :meth:`Flow.signal`)."""
        self.run(self._flow.signal(execution_id, event, payload))

    def redrive(self, execution_id: str, *, step: str | None = None, input: Any = None) -> str:
        """Run a failed execution again (see :meth:`Flow.redrive`); the id of the
        execution that runs (a new one for a finished execution)."""
        return self.run(self._flow.redrive(execution_id, step=step, input=input))

    def prune(self, older_than: float, *, status: Any = None) -> int:
        """Delete executions that finished more than ``older_than`` seconds ago (see
        :meth:`Flow.prune`); how many."""
        return self.run(self._flow.prune(older_than, status=status))


class SyncWorkflow:
    """A :class:`~microsaga.Workflow` bound to a :class:`SyncFlow`, with blocking
    methods. ``workflow`` is the async Workflow itself."""

    def __init__(self, workflow: Workflow, flow: SyncFlow) -> None:
        self.workflow = workflow
        self.flow = flow

    def __repr__(self) -> str:
        return f"<SyncWorkflow {self.workflow.id!r} version={self.workflow.version}>"

    @property
    def id(self) -> str:
        return self.workflow.id

    @property
    def version(self) -> int | None:
        return self.workflow.version

    @property
    def status(self) -> Status:
        """The status of the latest execution started through this workflow."""
        return self.workflow.status

    @property
    def last_execution(self) -> str | None:
        return self.workflow.last_execution

    @property
    def services(self) -> dict[str, str]:
        return self.workflow.services

    @property
    def description(self) -> str | None:
        return self.workflow.description

    def steps(self) -> list[list[Step]]:
        """Steps by level (see ``Workflow.steps``)."""
        return self.workflow.steps()

    def step(self, step_id: str) -> Step:
        return self.workflow.step(step_id)

    @property
    def step_list(self) -> list[Step]:
        return self.workflow.step_list

    def to_dict(self) -> dict[str, Any]:
        return self.workflow.to_dict()

    def append_steps(self, *steps: Step) -> None:
        """Add steps (see ``Workflow.append_steps``)."""
        self.flow.run(self.workflow.append_steps(*steps))

    def remove_steps(self, *steps: Step | str) -> None:
        """Remove steps (see ``Workflow.remove_steps``)."""
        self.flow.run(self.workflow.remove_steps(*steps))

    def execute(
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
        """Start an execution and (unless ``async_``) wait until it stops; see
        ``Workflow.execute``. Returns the execution id.

        Raises:
            ExecutionFailedError: the execution ended FAILURE (unless ``async_``).
            KeyboardInterrupt: Ctrl-C stopped the waiting, not the execution: its
                note names the execution when it was stored.
        """
        before = self.workflow.last_execution
        try:
            return self.flow.run(
                self.workflow.execute(
                    req,
                    async_=async_,
                    start=start,
                    reverse=reverse,
                    timeout=timeout,
                    deadline=deadline,
                    execution_id=execution_id,
                )
            )
        except KeyboardInterrupt as exc:
            started = self.workflow.last_execution
            if started is not None and started != before:  # stored: it goes on
                exc.add_note(
                    f"execution {started} goes on without this call: in this flow while "
                    "it is open, else in a worker (microsaga worker) on the same store; "
                    f"'microsaga abort {started}' rolls it back"
                )
            raise

    def suspend(self, execution_id: str) -> None:
        self.flow.run(self.workflow.suspend(execution_id))

    def resume(self, execution_id: str) -> None:
        self.flow.run(self.workflow.resume(execution_id))

    def abort(self, execution_id: str, compensate: bool = True) -> None:
        self.flow.run(self.workflow.abort(execution_id, compensate=compensate))


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The loop's thread: run until stopped, then cancel what is left and close."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()  # callers still waiting get CancelledError
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
