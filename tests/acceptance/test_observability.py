"""Traces, metrics and logs of real processes: a trace continued after ``kill -9``,
a worker's ``--metrics-port`` scraped, ``--log-format json`` lines."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Flow, Status
from tests.acceptance.procs import ROOT, cli, env
from tests.helpers import eventually, free_port

ORDER = str(ROOT / "tests" / "acceptance" / "order.yaml")
pytestmark = pytest.mark.slow

pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")
prometheus_parser = pytest.importorskip("prometheus_client.parser", reason="the prometheus extra")


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "log"
        self.spans = tmp / "spans.jsonl"
        self.store = f"sqlite:///{tmp / 'shared.db'}"
        self.env = {
            "MICROSAGA_TEST_LOG": str(self.log),
            "MICROSAGA_TEST_SPANS": str(self.spans),
            "MICROSAGA_STORE": self.store,
            "MICROSAGA_LEASE_TTL": "1",
            "MICROSAGA_POLL_INTERVAL": "0.1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        """``microsaga ARGS`` with an OpenTelemetry SDK writing spans to ``spans``."""
        output = self.tmp / f"proc-{len(self.procs)}.out"
        with open(output, "ab") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.acceptance.traced", *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env(self.env),
                cwd=ROOT,
            )
        self.procs.append(proc)
        return proc

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def read_spans(self) -> list[dict[str, object]]:
        if not self.spans.exists():
            return []
        return [json.loads(line) for line in self.spans.read_text().splitlines() if line]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


async def test_a_worker_that_takes_over_after_kill_9_continues_the_trace(procs: Procs) -> None:
    runner = procs.spawn("run", ORDER, "--input", '{"id": 1}', "--execution-id", "t1")
    await eventually(lambda: "charge t1:charge" in procs.lines(), timeout=30)
    runner.send_signal(signal.SIGKILL)  # in the middle of charge
    runner.wait(10)
    async with Flow(procs.store, worker=False) as flow:
        info = await flow.execution("t1")
        assert info.request is not None
        stored = info.request.header.get("traceparent")
        assert stored is not None, "the execution's trace context is stored with it"
        _, trace_id, first_span, _ = stored.split("-")
        before = procs.read_spans()
        reserve = [s for s in before if s["attributes"].get("microsaga.step_id") == "reserve"]
        assert [(s["trace_id"], s["parent_id"]) for s in reserve] == [(trace_id, first_span)]

        (procs.tmp / "log.charge.open").touch()
        worker = procs.spawn("worker")
        await eventually(lambda: _status(flow, "t1", Status.SUCCESS), timeout=30, interval=0.1)
    worker.terminate()
    worker.wait(10)
    after = [s for s in procs.read_spans() if s["pid"] == worker.pid]
    executions = [s for s in after if s["name"] == "microsaga.execution"]
    assert len(executions) == 1
    execution = executions[0]
    assert execution["trace_id"] == trace_id
    assert execution["parent_id"] == first_span  # a child of the killed process's span
    assert execution["attributes"]["microsaga.taken_over"] is True
    assert execution["attributes"]["microsaga.status"] == "SUCCESS"
    steps = {
        s["attributes"]["microsaga.step_id"]: s for s in after if s["name"] == "microsaga.step"
    }
    assert set(steps) == {"charge", "ship", "notify"}  # reserve is not run again
    assert all(s["trace_id"] == trace_id for s in steps.values())
    assert all(s["parent_id"] == execution["span_id"] for s in steps.values())


async def _status(flow: Flow, eid: str, status: Status) -> bool:
    found = await flow.store.get_status(eid)
    return found is not None and found[0] is status


def _scrape(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}


def _value(families: dict[str, object], name: str, **labels: str) -> float:
    family = families[name]
    total = 0.0
    for sample in family.samples:  # type: ignore[attr-defined]
        if sample.name == name + ("_total" if family.type == "counter" else "") and all(  # type: ignore[attr-defined]
            sample.labels.get(k) == v for k, v in labels.items()
        ):
            total += sample.value
    return total


async def test_worker_metrics_port_serves_the_series_of_its_executions(procs: Procs) -> None:
    port = free_port()
    procs.spawn("worker", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    await eventually(lambda: asyncio.to_thread(_scrape, url), timeout=30, interval=0.2)
    (procs.tmp / "log.charge.open").touch()
    for eid, request in (("m-ok", '{"id": 1}'), ("m-fail", '{"id": 2, "fail": true}')):
        done = await asyncio.to_thread(
            cli, "run", ORDER, "--async", "--input", request, "--execution-id", eid,
            extra_env=procs.env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    async def finished() -> dict[str, object] | None:
        families = await asyncio.to_thread(_scrape, url)
        if families is None or "microsaga_executions_finished" not in families:
            return None
        if _value(families, "microsaga_executions_finished") < 2:
            return None
        # an execution's end is counted just before its run stops
        if _value(families, "microsaga_executions_running") != 0:
            return None
        return families

    families = await eventually(finished, timeout=30, interval=0.2)
    assert (
        _value(families, "microsaga_executions_finished", workflow="order", status="SUCCESS") == 1
    )
    assert (
        _value(families, "microsaga_executions_finished", workflow="order", status="FAILURE") == 1
    )
    assert _value(families, "microsaga_steps", step="ship", outcome="failure") == 1
    assert _value(families, "microsaga_steps", step="charge", phase="compensate") == 1
    # created by `run --async` elsewhere: counted there, not here
    assert _value(families, "microsaga_executions_started") == 0


def test_log_format_json_prints_one_object_a_line_with_the_execution(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'logs.db'}"
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "id: logged\n"
        "steps:\n"
        "  - function: tests.acceptance.steps:ship\n"
        "    fallback: {call: 'nowhere.Svc.Call'}\n"
    )
    done = cli(
        "--store", store, "--services", "nowhere=http://user:s3cret@127.0.0.1:9",
        "--log-format", "json", "-v",
        "run", str(broken), "--input", '{"order": {"fail": true}}', "--execution-id", "j1",
        extra_env={"MICROSAGA_TEST_LOG": str(tmp_path / "log")},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert records, done.stderr
    about = [r for r in records if r.get("execution_id") == "j1"]
    assert about, records
    fallback = next(r for r in about if "fallback" in r["message"])
    assert fallback["workflow_id"] == "logged"
    assert fallback["step_id"] == "ship"
    assert {"time", "level", "logger", "message"} <= fallback.keys()
    assert "s3cret" not in done.stderr


async def test_no_secret_in_any_log_line_of_serve_run_and_list(tmp_path: Path) -> None:
    token = "tok-4f9a8c1d2e"
    port = free_port()
    store = f"sqlite:///{tmp_path / 'api.db'}"
    output = tmp_path / "serve.out"
    secrets = {
        "MICROSAGA_API_TOKEN": token,
        "MICROSAGA_TEST_LOG": str(tmp_path / "log"),
    }
    with open(output, "ab") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "microsaga", "--store", store,
             "--services", "pay=http://shop:svc-pass-77@127.0.0.1:9",
             "--log-format", "json", "-v", "serve", "--port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, env=env(secrets), cwd=ROOT,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        def get(path: str, auth: str) -> int:
            request = urllib.request.Request(base + path, headers={"Authorization": auth})
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return 0

        await eventually(lambda: asyncio.to_thread(get, "/healthz", ""), timeout=30, interval=0.2)
        assert await asyncio.to_thread(get, "/api/executions", f"Bearer {token}") == 200
        assert await asyncio.to_thread(get, "/api/executions", "Bearer wrong-guess-9") == 401
        assert await asyncio.to_thread(get, f"/api/executions?token={token}", "") == 401
        body = json.dumps(
            {"id": "pay", "steps": [{"call": "pay.Pay.Charge", "retry": {"max_attempts": 2}}]}
        ).encode()
        put = urllib.request.Request(
            base + "/api/workflows/pay", data=body, method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        await asyncio.to_thread(urllib.request.urlopen, put, timeout=5)
        start = urllib.request.Request(
            base + "/api/workflows/pay/executions", data=b'{"input": {}}', method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with await asyncio.to_thread(urllib.request.urlopen, start, timeout=5) as resp:
            eid = json.loads(resp.read())["id"]

        async def failed() -> bool:
            async with Flow(store, worker=False) as flow:
                return (await flow.execution(eid)).status is Status.FAILURE

        await eventually(failed, timeout=30, interval=0.2)
    finally:
        server.terminate()
        server.wait(20)
    listed = cli(
        "--store", "postgresql://saga:pg-pass-31@127.0.0.1:1/saga", "--log-format", "json",
        "-v", "list",
    )  # fmt: skip
    text = output.read_text() + listed.stdout + listed.stderr
    lines = [line for line in output.read_text().splitlines() if line.strip()]
    assert any("/api/executions" in line for line in lines)  # access lines were logged
    announced = ("serving", "serve stopping")  # serve's start and stop lines, as worker's
    assert all(line.startswith("{") for line in lines if not line.startswith(announced))
    for secret in (token, "wrong-guess-9", "svc-pass-77", "pg-pass-31"):
        assert secret not in text, secret
