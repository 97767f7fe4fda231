"""Helpers for tests: poll until a condition holds, with a bound (never sleep-then-assert)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, settings

from microsaga import Flow, FunctionStep, Message, Status

# the property tests that run flows: the same examples at every run (no example
# database), no deadline (an example runs executions), and a flow fixture shared by
# the examples of a test; each test adds its max_examples
FLOW_EXAMPLES = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


async def eventually(
    check: Callable[[], Awaitable[Any] | Any], *, timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll ``check`` until it returns a truthy value; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last) or isinstance(last, asyncio.Future):
            last = await last
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


async def killed_in_time(flow: Flow, eid: str, kill_at: int, killed: asyncio.Event) -> bool:
    """The takeover tests' moment to kill a worker: at its ``kill_at``-th call (a step
    sets ``killed``), once a step waits (``kill_at`` 0), or once only waiting steps are
    left (the dying worker's clock never moves: its timers never fire). True once it
    is killed, or the execution (read through ``flow``) finished first."""
    if killed.is_set():
        return True
    info = await flow.execution(eid)
    if info.status.finished:
        return True
    statuses = {r.status for r in info.steps.values()}
    if Status.WAITING in statuses and (kill_at == 0 or Status.RUNNING not in statuses):
        killed.set()
    return killed.is_set()


def metric_value(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    """The sum of a Prometheus family's samples with ``labels`` (``families`` by name, as
    ``text_string_to_metric_families`` reads them): a counter's ``_total``, or
    ``suffix`` (``_count``, ``_sum``...)."""
    family = families[name]
    wanted = name + (suffix or ("_total" if family.type == "counter" else ""))
    return float(
        sum(
            s.value
            for s in family.samples
            if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items())
        )
    )


def trace_ids(traceparent: str) -> tuple[int, int]:
    """The trace id and the span id of a W3C ``traceparent``."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


def free_port() -> int:
    """A loopback port with nothing listening (closed right after it is found)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def logged_undo(log: list[tuple[str, str]], sid: str) -> FunctionStep:
    """The compensation of step ``sid`` in the property tests: logs ``("undo", sid)``,
    lets the others run once, then logs ``("undone", sid)``."""

    async def undo(msg: Message) -> None:
        log.append(("undo", sid))
        await asyncio.sleep(0)
        log.append(("undone", sid))

    return FunctionStep(undo, id=f"undo-{sid}")
