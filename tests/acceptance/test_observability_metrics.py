"""Metrics and JSON log lines of real processes, as a user reads them: ``serve``'s
``/metrics`` after a known run, and a worker that takes an execution over after
``kill -9`` counting the takeover on its ``--metrics-port``."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from microsaga import Flow, Status
from tests.acceptance.test_observability import ORDER, Procs, procs
from tests.helpers import eventually, free_port
from tests.helpers import metric_value as _value

__all__ = ["procs"]  # the fixture, used by name

pytestmark = pytest.mark.slow

prometheus_parser = pytest.importorskip("prometheus_client.parser", reason="the prometheus extra")


def _get(url: str, data: bytes | None = None, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}


async def _scrape(url: str, finished: int) -> dict[str, Any]:
    """The metrics at ``url`` once ``finished`` executions ended there and their runs
    stopped (an execution's end is counted just before its run stops)."""

    async def ready() -> dict[str, Any] | None:
        status, text = await asyncio.to_thread(_get, url)
        if status != 200:
            return None
        families = _families(text)
        if "microsaga_executions_finished" not in families:
            return None
        done = _value(families, "microsaga_executions_finished")
        running = _value(families, "microsaga_executions_running")
        return families if done >= finished and running == 0 else None

    found: dict[str, Any] = await eventually(ready, timeout=30, interval=0.2)
    return found


async def test_serve_metrics_count_the_executions_it_ran(procs: Procs) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.spawn("serve", "--port", str(port))

    async def up() -> bool:
        status, _ = await asyncio.to_thread(_get, base + "/healthz")
        return status == 200

    await eventually(up, timeout=30, interval=0.2)
    (procs.tmp / "log.charge.open").touch()
    import yaml

    definition = json.dumps(yaml.safe_load(Path(ORDER).read_text())).encode()
    status, _ = await asyncio.to_thread(_get, base + "/api/workflows/order", definition, "PUT")
    assert status == 200
    for request in ({"id": 1}, {"id": 2, "fail": True}):
        body = json.dumps({"input": request}).encode()
        status, _ = await asyncio.to_thread(
            _get, base + "/api/workflows/order/executions", body, "POST"
        )
        assert status == 202

    families = await _scrape(base + "/metrics", finished=2)
    assert families["microsaga_executions_started"].type == "counter"
    assert _value(families, "microsaga_executions_started", workflow="order") == 2
    for outcome in ("SUCCESS", "FAILURE"):
        assert (
            _value(families, "microsaga_executions_finished", workflow="order", status=outcome) == 1
        )
        assert (
            _value(
                families,
                "microsaga_execution_duration_seconds",
                "_count",
                workflow="order",
                status=outcome,
            )
            == 1
        )
    steps = "microsaga_steps"
    assert _value(families, steps, step="reserve", phase="forward", outcome="success") == 2
    assert _value(families, steps, step="ship", outcome="failure") == 1
    assert _value(families, steps, step="notify", outcome="success") == 1
    for compensated in ("charge", "reserve"):
        assert _value(families, steps, step=compensated, phase="compensate") == 1
    assert _value(families, "microsaga_step_duration_seconds", "_count", step="ship") == 2
    assert _value(families, "microsaga_lease_takeovers") == 0
    assert _value(families, "microsaga_store_commit_seconds", "_count") > 0


async def test_a_worker_taking_over_after_kill_9_counts_it_and_logs_json(procs: Procs) -> None:
    runner = procs.spawn("run", ORDER, "--input", '{"id": 1}', "--execution-id", "k1")
    await eventually(lambda: "charge k1:charge" in procs.lines(), timeout=30)
    runner.send_signal(signal.SIGKILL)  # in the middle of charge
    runner.wait(10)
    (procs.tmp / "log.charge.open").touch()
    port = free_port()
    # --log-format and -v after the command, as docs/observability.md allows
    worker = procs.spawn("worker", "--metrics-port", str(port), "-v", "--log-format", "json")
    families = await _scrape(f"http://127.0.0.1:{port}/metrics", finished=1)
    async with Flow(procs.store, worker=False) as flow:
        assert (await flow.execution("k1")).status is Status.SUCCESS
    assert _value(families, "microsaga_lease_takeovers") == 1
    assert _value(families, "microsaga_executions_started") == 0  # created elsewhere
    assert (
        _value(families, "microsaga_executions_finished", workflow="order", status="SUCCESS") == 1
    )
    steps = "microsaga_steps"
    assert _value(families, steps, step="charge", outcome="success") == 1  # run again
    assert _value(families, steps, step="reserve") == 0  # done before the crash
    worker.send_signal(signal.SIGTERM)
    worker.wait(20)

    output = (procs.tmp / f"proc-{procs.procs.index(worker)}.out").read_text()
    lines = output.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # the rest are the command's own lines (docs/observability.md, "Logs")
    assert all(line.startswith(("metrics on ", "worker ")) for line in lines if line[:1] != "{")
    taken = [r for r in records if r.get("execution_id") == "k1"]
    assert taken, output
    assert all(r["workflow_id"] == "order" for r in taken)
    assert all({"time", "level", "logger", "message", "step_id"} <= r.keys() for r in taken)
