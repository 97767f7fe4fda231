"""``microsaga serve --no-worker`` where the steps' code is not importable: it saves,
shows and starts executions of a ``function:`` workflow, and a ``microsaga worker``
that can import the code runs them on the shared SQLite file."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.procs import env

pytestmark = pytest.mark.timeout(120)

STEP = """\
from microsaga import Message


async def send_email(msg: Message) -> dict[str, str]:
    return {"sent_to": msg.json()["customer"]}
"""


class Process:
    """A ``microsaga`` process in ``cwd``; its output is collected in a thread."""

    def __init__(self, args: list[str], cwd: Path, extra: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "microsaga", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env(extra),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, prefix: str) -> str:
        deadline = time.monotonic() + 30
        while not any(line.startswith(prefix) for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no line {prefix!r}: " + "".join(self.lines))
            time.sleep(0.02)
        return next(line for line in self.lines if line.startswith(prefix))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[httpx.Client, Callable[[], Process]]]:
    """An API without the code (its own folder, no PYTHONPATH to it) and a way to start
    a worker that has the code, on one SQLite file."""
    store = ["--store", f"sqlite:///{tmp_path / 'shared.db'}"]
    code = tmp_path / "code"
    (code / "nw_shop").mkdir(parents=True)
    (code / "nw_shop" / "__init__.py").write_text("")
    (code / "nw_shop" / "notify.py").write_text(STEP)
    api_dir = tmp_path / "api"
    api_dir.mkdir()
    started: list[Process] = []
    api = Process([*store, "serve", "--no-worker", "--port", "0"], api_dir)
    started.append(api)

    def worker() -> Process:
        # the worker's folder is not the code's: only PYTHONPATH makes it importable
        proc = Process([*store, "worker"], api_dir, {"PYTHONPATH": f"{code}"})
        started.append(proc)
        proc.wait_for("worker ")
        return proc

    try:
        found = re.search(r"http://[^/ ]+", api.wait_for("serving http"))
        assert found is not None
        with httpx.Client(base_url=found.group(0), timeout=10) as http:
            yield http, worker
    finally:
        for proc in started:
            proc.stop()


def _until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within 60 s")
        time.sleep(0.1)


def test_an_api_without_the_code_starts_executions_a_worker_runs(
    deployment: tuple[httpx.Client, Callable[[], Process]],
) -> None:
    http, worker = deployment
    definition = {"steps": [{"function": "nw_shop.notify:send_email"}]}

    saved = http.put("/api/workflows/notify", json=definition)
    assert saved.status_code == 200, saved.text
    shown = http.get("/api/workflows/notify")
    assert shown.status_code == 200, shown.text
    assert shown.json()["steps"] == [{"function": "nw_shop.notify:send_email", "id": "send_email"}]
    started = http.post(
        "/api/workflows/notify/executions",
        json={"input": {"customer": "ada@example.com"}, "execution_id": "notify-ada"},
    )
    assert started.status_code == 202, started.text
    assert http.get("/api/executions/notify-ada").json()["status"] == "PENDING"

    worker()

    def finished() -> dict[str, Any] | None:
        found: dict[str, Any] = http.get("/api/executions/notify-ada").json()
        return found if found["status"] == "SUCCESS" else None

    done = _until(finished, "the worker did not run the execution")
    assert done["steps"]["send_email"]["response"] == {"sent_to": "ada@example.com"}


def test_a_function_no_worker_can_import_is_named_in_the_note(
    deployment: tuple[httpx.Client, Callable[[], Process]],
) -> None:
    http, worker = deployment
    definition = {"steps": [{"function": "nw_shop.notfy:send_email"}]}  # a typo
    assert http.put("/api/workflows/typo", json=definition).status_code == 200
    started = http.post("/api/workflows/typo/executions", json={"execution_id": "typo-1"})
    assert started.status_code == 202, started.text

    worker()

    def noted() -> str | None:
        note: str | None = http.get("/api/executions/typo-1").json()["note"]
        return note

    note = _until(noted, "no note on the execution")
    assert "cannot import nw_shop.notfy:send_email" in note
    assert http.get("/api/executions/typo-1").json()["status"] in {"PENDING", "RUNNING"}


def test_its_event_stream_follows_an_execution_a_worker_runs(
    deployment: tuple[httpx.Client, Callable[[], Process]],
) -> None:
    http, worker = deployment
    definition = {"steps": [{"function": "nw_shop.notify:send_email"}]}
    assert http.put("/api/workflows/notify", json=definition).status_code == 200
    body = {"input": {"customer": "bob@example.com"}, "execution_id": "notify-bob"}
    assert http.post("/api/workflows/notify/executions", json=body).status_code == 202
    lines: list[str] = []

    def follow() -> None:
        with http.stream("GET", "/api/executions/notify-bob/events", timeout=60) as events:
            for line in events.iter_lines():
                lines.append(line)
                if line.startswith("data: ") and lines[-2:-1] == ["event: end"]:
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    _until(lambda: any(line.startswith("event: execution") for line in lines), "no event")
    worker()
    reader.join(60)
    assert not reader.is_alive(), "the stream did not end: " + "\n".join(lines)
    assert lines[-2:] == ["event: end", 'data: {"id":"notify-bob","status":"SUCCESS"}']
    assert "event: step" in lines  # the worker's step, seen by the API's stream
