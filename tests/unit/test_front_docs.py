"""The code of docs/python.md and microsaga's program of docs/comparison.md run as
written (DBOS's and Temporal's: tests/integration/test_front_peers.py)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXPECTED = ["{'sent_to': 'ada@example.com'}", "released R-43"]


def python_blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def block_importing(page: str, package: str) -> str:
    found = [b for b in python_blocks(page) if f"from {package} import" in b]
    assert len(found) == 1, f"{page}: one block importing {package}"
    return found[0]


def test_the_python_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    saga_block, wsgi_block = python_blocks("python.md")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "python_md"}
    exec(compile(saga_block, "docs/python.md", "exec", dont_inherit=True), namespace)
    assert capsys.readouterr().out == (
        "{'items': ['tea', 'cups'], 'invoice': '2 items, attempt 1'}\n"
    )
    exec(compile(wsgi_block, "docs/python.md", "exec", dont_inherit=True), namespace)
    flow = namespace["flow"]
    try:
        answers: list[tuple[str, Any]] = []
        body = b'{"order_id": 2, "items": ["pot"]}'
        environ = {"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        chunks = namespace["app"](
            environ, lambda status, headers: answers.append((status, headers))
        )
        assert answers == [("200 OK", [("Content-Type", "application/json")])]
        assert b'"status": "StatusSuccess"' in b"".join(chunks)
    finally:
        flow.close()
    assert (tmp_path / "fulfil.db").exists()


def test_the_microsaga_program_of_the_comparison_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = block_importing("comparison.md", "microsaga")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/comparison.md", "exec", dont_inherit=True), {"__name__": "__main__"})
    assert capsys.readouterr().out.splitlines() == [
        *EXPECTED,
        "failed: step charge failed: card declined",
    ]
