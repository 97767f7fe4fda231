"""The examples of docs/observability.md run as written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.docblocks import find


def run(block: str, name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(block, "docs/observability.md", "exec", dont_inherit=True), namespace)
    return namespace


def test_the_hooks_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("opentelemetry", reason="the otel extra is part of dev")
    pytest.importorskip("prometheus_client", reason="the prometheus extra is part of dev")
    monkeypatch.chdir(tmp_path)
    run(find("docs/observability.md", "hooks=[Tracing(), Metrics()]").text, "obs_hooks")
    assert capsys.readouterr().out.startswith("traced and measured: ")


def test_the_log_filter_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("microsaga")
    before = list(logger.filters)
    try:
        run(find("docs/observability.md", "addFilter(").text, "obs_logs")
        logger.warning("about an execution", extra={"execution_id": "e-1"})
        assert capsys.readouterr().out == "e-1\n"
    finally:
        logger.filters[:] = before
