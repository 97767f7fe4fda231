"""Prometheus metrics of executions: the :class:`Metrics` hook.

=========================================  =========  ================================
series                                     type       labels
=========================================  =========  ================================
``microsaga_executions_started_total``     counter    ``workflow``
``microsaga_executions_finished_total``    counter    ``workflow``, ``status``
``microsaga_steps_total``                  counter    ``workflow``, ``step``, ``phase``,
                                                      ``outcome``
``microsaga_step_duration_seconds``        histogram  ``workflow``, ``step``, ``phase``
``microsaga_execution_duration_seconds``   histogram  ``workflow``, ``status``
``microsaga_executions_running``           gauge
``microsaga_steps_waiting``                gauge
``microsaga_store_commit_seconds``         histogram
``microsaga_store_batch_size``             histogram
``microsaga_lease_takeovers_total``        counter
=========================================  =========  ================================

``steps_total`` and ``step_duration_seconds`` count attempts: ``outcome`` is
``success``, ``retry`` (it failed and is tried again), ``failure`` (it failed for
good) or ``fallback`` (it failed and its fallback succeeded); ``phase`` is
``forward`` or ``compensate``. ``status`` is the status name (``SUCCESS``,
``FAILURE``, ``ABORTED``). An execution counts as started in the process that created
it and as finished in the one that finished it; ``executions_running`` counts the
executions this process runs: sum it over your workers. ``steps_waiting`` is the
steps WAITING of RUNNING executions in the store, as a worker of the flow read it
(every few seconds): store-wide, the same on every worker of a store, so take their
``max()``, not their ``sum()``.

Labels are bounded: workflow and step ids, never execution ids; the runs of a map
step (``items[3]``) count under ``items[]``, and past 10,000 label sets per series new
ones count under ``_other``.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..hooks import CommitEvent, ExecutionEvent, Hook, StepEvent
from ..status import Status
from ._events import fallback_used

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Metrics", "serve_metrics"]

MAX_LABEL_SETS = 10_000
_FINISHED_KEPT = 10_000  # ids of executions seen finishing, against counting one twice
_MAP_RUN = re.compile(r"\[\d+\]")

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
EXECUTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
                     21600, 86400)  # fmt: skip
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1, 2.5)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        from ..errors import ConfigurationError

        raise ConfigurationError(
            "metrics", "needs prometheus-client: pip install 'microsaga[prometheus]'"
        ) from None
    return prometheus_client


class _Series:
    """One labelled series, its children kept by label values (``labels()`` is slow),
    with at most :data:`MAX_LABEL_SETS` label sets."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}
        self.lock = threading.Lock()

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            with self.lock:
                if len(self.children) >= MAX_LABEL_SETS:
                    values = ("_other",) * len(values)
                child = self.children.get(values)
                if child is None:
                    child = self.children[values] = self.metric.labels(*values)
        return child


class _Families:
    """The metrics of one registry: made once, shared by every :class:`Metrics` on it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = _prometheus()
        on = {"registry": registry}
        self.started = _Series(
            p.Counter("microsaga_executions_started", "Executions created.", ["workflow"], **on)
        )
        self.finished = _Series(
            p.Counter(
                "microsaga_executions_finished",
                "Executions that ended, by status.",
                ["workflow", "status"],
                **on,
            )
        )
        self.steps = _Series(
            p.Counter(
                "microsaga_steps",
                "Step attempts, by outcome (success, retry, failure, fallback).",
                ["workflow", "step", "phase", "outcome"],
                **on,
            )
        )
        self.step_duration = _Series(
            p.Histogram(
                "microsaga_step_duration_seconds",
                "How long a step attempt took.",
                ["workflow", "step", "phase"],
                buckets=STEP_BUCKETS,
                **on,
            )
        )
        self.execution_duration = _Series(
            p.Histogram(
                "microsaga_execution_duration_seconds",
                "From an execution's creation to its end.",
                ["workflow", "status"],
                buckets=EXECUTION_BUCKETS,
                **on,
            )
        )
        self.running = p.Gauge(
            "microsaga_executions_running", "Executions this process runs now.", **on
        )
        self.waiting = p.Gauge(
            "microsaga_steps_waiting",
            "Steps waiting for a signal, a timer or a child execution, in the whole store"
            " (the same on every worker of a store: take the max, not the sum).",
            **on,
        )
        self.commit_seconds = p.Histogram(
            "microsaga_store_commit_seconds",
            "How long a group commit took.",
            buckets=COMMIT_BUCKETS,
            **on,
        )
        self.batch_size = p.Histogram(
            "microsaga_store_batch_size",
            "How many executions' writes a group commit held.",
            buckets=BATCH_BUCKETS,
            **on,
        )
        self.takeovers = p.Counter(
            "microsaga_lease_takeovers",
            "Executions taken over mid-run from a worker that died, lost its lease or gave up.",
            **on,
        )


_families: dict[int, tuple[Any, _Families]] = {}
_families_lock = threading.Lock()


def _families_of(registry: CollectorRegistry) -> _Families:
    with _families_lock:
        found = _families.get(id(registry))
        if found is None or found[0] is not registry:
            found = _families[id(registry)] = (registry, _Families(registry))
        return found[1]


def _step_label(step_id: str) -> str:
    return _MAP_RUN.sub("[]", step_id) if "[" in step_id else step_id


class Metrics(Hook):
    """Counts executions, steps and commits in Prometheus metrics:
    ``Flow(hooks=[Metrics()])``.

    Args:
        registry: where the metrics are registered; prometheus-client's default
            registry by default (what ``microsaga serve``'s ``/metrics`` and
            :func:`serve_metrics` expose). Several hooks on one registry share its
            metrics.

    Raises:
        ConfigurationError: prometheus-client is not installed (``microsaga[prometheus]``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        p = _prometheus()
        self.registry: CollectorRegistry = registry if registry is not None else p.REGISTRY
        self._m = _families_of(self.registry)
        self._attempts: dict[tuple[str, str, int], float] = {}
        # each end counted once; a child that succeeded and is then rolled back with
        # its parent ends twice (SUCCESS, then ABORTED)
        self._finished: OrderedDict[tuple[str, Status], None] = OrderedDict()
        self._running: set[str] = set()

    def execution_created(self, event: ExecutionEvent) -> None:
        self._m.started(event.workflow_id).inc()

    def run_started(self, event: ExecutionEvent) -> None:
        self._running.add(event.execution_id)
        self._m.running.inc()
        if event.interrupted:
            self._m.takeovers.inc()

    def run_stopped(self, event: ExecutionEvent) -> None:
        eid = event.execution_id
        if eid in self._running:  # not one that ran before this hook
            self._running.discard(eid)
            self._m.running.dec()
        if self._attempts:
            # attempts cut short (the run lost its lease, was cancelled): they never
            # finish here, so their starts would be kept for ever
            for key in [key for key in self._attempts if key[0] == eid]:
                del self._attempts[key]

    def execution_status(self, event: ExecutionEvent) -> None:
        status = event.status
        if not status.finished:
            return
        end = (event.execution_id, status)
        if end in self._finished:
            return
        self._finished[end] = None
        if len(self._finished) > _FINISHED_KEPT:
            self._finished.popitem(last=False)
        m = self._m
        m.finished(event.workflow_id, status.name).inc()
        m.execution_duration(event.workflow_id, status.name).observe(
            max(0.0, event.at - event.created_at)
        )

    def step_started(self, event: StepEvent) -> None:
        self._attempts[event.execution_id, event.step_id, event.phase] = event.at

    def step_finished(self, event: StepEvent) -> None:
        started = self._attempts.pop((event.execution_id, event.step_id, event.phase), None)
        if event.status is Status.SUCCESS:
            outcome = "fallback" if fallback_used(event.error) else "success"
        elif event.retrying:
            outcome = "retry"
        else:
            outcome = "failure"
        step, phase = _step_label(event.step_id), str(event.phase)
        m = self._m
        m.steps(event.workflow_id, step, phase, outcome).inc()
        if started is not None:
            m.step_duration(event.workflow_id, step, phase).observe(max(0.0, event.at - started))

    def store_committed(self, event: CommitEvent) -> None:
        m = self._m
        m.commit_seconds.observe(event.seconds)
        m.batch_size.observe(event.units)

    def steps_waiting(self, count: int) -> None:
        self._m.waiting.set(count)


def serve_metrics(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> Any:
    """Serve ``registry`` (the default one by default) at ``http://host:port/metrics``
    from a thread of this process; returns the server (``.shutdown()`` stops it).

    Raises:
        ConfigurationError: prometheus-client is not installed, or the port is taken.
    """
    p = _prometheus()
    from ..errors import ConfigurationError

    try:
        server, _ = p.start_http_server(
            port, addr=host, registry=registry if registry is not None else p.REGISTRY
        )
    except OSError as exc:
        raise ConfigurationError(
            "--metrics-port", f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return server
