"""``microsaga serve`` as a process: what it refuses, the token, the body cap, stopping."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from microsaga import ConfigurationError
from microsaga.api.serve import is_loopback, parse_size, read_token

TOKEN = "serve-T0ken-123"


def microsaga(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microsaga", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def one_error_line(result: subprocess.CompletedProcess[str], code: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error[{code}]: "), lines[0]
    return lines[0]


class Served:
    """A running ``microsaga serve``; its stderr is collected in a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "microsaga", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **env},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 20
        while not any(line.startswith("serving http") for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError("serve did not start: " + "".join(self.lines))
            time.sleep(0.02)
        announce = next(line for line in self.lines if line.startswith("serving http"))
        found = re.search(r"http://[^/]+", announce)
        assert found is not None
        self.url = found.group(0)
        self.announce = announce

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Served]]:
    started: list[Served] = []

    class Tracked(Served):
        def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
            store = ["--store", f"sqlite:///{tmp_path / 'store.db'}"]
            super().__init__([*store, *args], env or {})
            started.append(self)

    yield Tracked
    for served in started:
        served.close()


def test_no_token_means_loopback_only() -> None:
    line = one_error_line(microsaga("serve", "--host", "0.0.0.0", "--port", "0"), "configuration")
    assert line.startswith("error[configuration]: --host: refusing to serve on 0.0.0.0")
    assert "MICROSAGA_API_TOKEN" in line
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("[::1]")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("example.org")


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "--max-body" in one_error_line(microsaga("serve", "--max-body", "lots"), "configuration")
    line = one_error_line(microsaga("serve", "--token-file", str(empty)), "configuration")
    assert line == (
        f"error[configuration]: --token-file: {empty} is empty: put the token in it, or "
        "leave --token-file out (and MICROSAGA_API_TOKEN unset) to serve without a token, "
        "on a loopback address"
    )
    missing = one_error_line(
        microsaga("serve", "--token-file", str(tmp_path / "nope")), "configuration"
    )
    assert "cannot read" in missing
    spaced = one_error_line(
        microsaga("serve", env={"MICROSAGA_API_TOKEN": "two words"}), "configuration"
    )
    assert spaced.startswith("error[configuration]: MICROSAGA_API_TOKEN:")
    assert "two words" not in spaced  # a token is never echoed
    assert parse_size("10MB") == 10 * 1024 * 1024
    assert parse_size("512kB") == 512 * 1024
    assert parse_size("1000") == 1000


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_an_empty_token_variable_is_refused_not_taken_for_none(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MICROSAGA_API_TOKEN=$TOKEN`` with TOKEN unset: whoever set it believes the
    API is protected, and it served with no token at all, as if it were unset."""
    line = one_error_line(
        microsaga("serve", "--port", "0", env={"MICROSAGA_API_TOKEN": value}), "configuration"
    )
    assert line == (
        "error[configuration]: MICROSAGA_API_TOKEN: is set but empty: set it to the token, "
        "or unset it (unset MICROSAGA_API_TOKEN) to serve without a token, on a loopback "
        "address"
    )
    # serve() in Python reads it alike; unset, there is no token
    monkeypatch.setenv("MICROSAGA_API_TOKEN", value)
    with pytest.raises(ConfigurationError, match="MICROSAGA_API_TOKEN: is set but empty"):
        read_token(None)
    monkeypatch.delenv("MICROSAGA_API_TOKEN")
    assert read_token(None) is None


def test_max_body_takes_the_units_of_max_payload() -> None:
    """An operator writes both limits alike (``MICROSAGA_MAX_PAYLOAD=64MiB``)."""
    assert parse_size("64MiB") == 64 * 1024 * 1024
    assert parse_size("512 KiB") == 512 * 1024
    assert parse_size("1GiB") == 1024**3


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(microsaga("serve", "--port", str(port)), "configuration")
    assert line.startswith(f"error[configuration]: --port: cannot listen on 127.0.0.1:{port}")


def test_serve_with_a_token_file(serve: type[Served], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    served = serve(
        ["-v", "serve", "--port", "0", "--token-file", str(token_file), "--max-body", "1kB"]
    )
    assert "token required" in served.announce
    assert "worker on" in served.announce
    with httpx.Client(base_url=served.url, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/").status_code == 200
        denied = http.get("/api/executions")
        assert denied.status_code == 401
        assert denied.json()["code"] == "unauthorized"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.get("/api/executions", headers=auth).json() == {"items": [], "next": None}
        big = {"steps": [{"publish": "t"}], "description": "x" * 2000}
        too_big = http.put("/api/workflows/w", json=big, headers=auth)
        assert too_big.status_code == 413
        assert too_big.json()["code"] == "payload_too_large"
    assert served.stop() == 0
    logged = "".join(served.lines)
    assert "GET /api/executions" in logged  # -v shows the access log...
    assert TOKEN not in logged  # ...and never the token


def test_serve_without_a_worker(serve: type[Served]) -> None:
    served = serve(["serve", "--port", "0", "--no-worker"], env={"MICROSAGA_API_TOKEN": TOKEN})
    assert "worker off" in served.announce
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=served.url, timeout=10, headers=auth) as http:
        saved = http.put("/api/workflows/w", json={"steps": [{"function": "json:dumps"}]})
        assert saved.status_code == 200
        eid = http.post("/api/workflows/w/executions", json={}).json()["id"]
        assert http.get(f"/api/executions/{eid}").json()["status"] == "PENDING"  # queued
    assert served.stop() == 0
    # a stop line, as the worker's: an operator's log shows it stopped on a signal
    assert served.lines[-1] == "serve stopping: event streams end\n"


def test_serve_says_it_stops(serve: type[Served]) -> None:
    served = serve(["serve", "--port", "0"])
    assert served.stop() == 0
    stopping = "serve stopping: event streams end, unfinished executions go to other workers"
    assert served.lines[-1] == stopping + "\n"


@pytest.mark.parametrize("token", [None, "s3cr3t-token"], ids=["no-token", "token"])
def test_an_empty_host_is_named_as_such(token: str | None) -> None:
    # `--host "$HOST"` with HOST unset: say so, not "cannot listen on :" or "refusing
    # to serve on  without a token"
    env = {"MICROSAGA_API_TOKEN": token} if token else None
    line = one_error_line(microsaga("serve", "--host", "", "--port", "0", env=env), "configuration")
    assert line == "error[configuration]: --host: must not be empty (0.0.0.0 is every address)"


def test_json_access_lines_carry_the_request_as_fields(serve: type[Served]) -> None:
    """A log shipper filters access lines on their status without parsing messages."""
    served = serve(["-v", "--log-format", "json", "serve", "--port", "0"])
    with httpx.Client(base_url=served.url, timeout=10) as http:
        assert http.get("/api/executions/nope").status_code == 404
    assert served.stop() == 0
    records = [json.loads(line) for line in served.lines if line.startswith("{")]
    [access] = [r for r in records if r["logger"] == "uvicorn.access"]
    assert (access["method"], access["path"], access["status"]) == (
        "GET",
        "/api/executions/nope",
        404,
    )
    assert access["client"].startswith("127.0.0.1:")
