"""The code of docs/python.md, microsaga's program of docs/comparison.md (DBOS's and
Temporal's: tests/integration/test_front_peers.py) and the mounted API of docs/api.md
run as written."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from tests.docblocks import find

EXPECTED = ["{'sent_to': 'ada@example.com'}", "released R-43"]


def test_the_python_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    saga_block = find("docs/python.md", 'Saga("fulfil")').text
    wsgi_block = find("docs/python.md", "def app(environ").text
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
        assert b'"status": "SUCCESS"' in b"".join(chunks)
    finally:
        flow.close()
    assert (tmp_path / "fulfil.db").exists()


def test_the_microsaga_program_of_the_comparison_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = find("docs/comparison.md", "from microsaga import").text
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/comparison.md", "exec", dont_inherit=True), {"__name__": "__main__"})
    assert capsys.readouterr().out.splitlines() == [
        *EXPECTED,
        "failed: step charge failed: card declined",
    ]


async def test_the_api_mount_example_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    code = find("docs/api.md", "app.mount(").text
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAGA_TOKEN", "a-token")
    namespace: dict[str, Any] = {"__name__": "api_md"}
    exec(compile(code, "docs/api.md", "exec", dont_inherit=True), namespace)
    app = namespace["app"]

    async with (
        app.router.lifespan_context(app),  # as a server runs it: the flow opens
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as client,
    ):
        refused = await client.get("/saga/api/executions")
        listed = await client.get(
            "/saga/api/executions", headers={"Authorization": "Bearer a-token"}
        )
        page = await client.get("/saga/")

    assert refused.status_code == 401
    assert (listed.status_code, listed.json()["items"]) == (200, [])
    assert page.status_code == 200
    assert (tmp_path / "orders.db").exists()
