"""A property-based fuzz of every route from the app's /openapi.json (schemathesis):
whatever it sends, the server answers with a documented status, content type and body,
and never a 500."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from microsaga import Flow
from microsaga.api import create_app

from .live import LiveServer

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ = {
    "id": "fuzz",
    "steps": [
        {"function": "tests.api.steps:notify", "id": "a"},
        {"function": "tests.api.steps:charge", "id": "b", "requires": ["a"]},
    ],
}
# ids that exist: each case is sent as generated, then at these
KNOWN = {"id": "fuzz-done", "workflow_id": "fuzz"}


@schemathesis.check
def no_internal_error(ctx: Any, response: Any, case: Any) -> None:
    """No 500 (schemathesis's not_a_server_error would also refuse the documented 501
    of redrive and signal in a build without them)."""
    if response.status_code == 500:
        raise AssertionError(f"500 from {case.method} {case.formatted_path}: {response.text}")


CHECKS = [
    no_internal_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    with LiveServer(f"sqlite:///{folder / 'store.db'}", token=TOKEN) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            assert http.put("/api/workflows/fuzz", json=FUZZ).status_code == 200
            started = http.post(
                "/api/workflows/fuzz/executions", json={"execution_id": "fuzz-done"}
            )
            assert started.status_code == 202
        assert server.flow is not None
        flow = server.flow
        server.call(lambda: flow.wait("fuzz-done", timeout=10))
        yield server


def _document() -> Any:
    """The app's /openapi.json (the document needs no open flow)."""

    async def fetch() -> Any:
        app = create_app(Flow("memory://"), token=TOKEN)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            return (await client.get("/openapi.json", headers=AUTH)).json()

    return asyncio.run(fetch())


schema = schemathesis.openapi.from_dict(_document())


@pytest.mark.timeout(600)
@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_route_answers_500(case: Any, live: LiveServer) -> None:
    if case.path == "/api/executions/{id}/events" and case.path_parameters is not None:
        # only at stopped executions: a stream of a running one lasts as long as it runs
        case.path_parameters = dict(KNOWN)
    case.call_and_validate(base_url=live.url, headers=AUTH, checks=CHECKS, timeout=30)
    with contextlib.suppress(AttributeError):
        if case.path_parameters:
            case.path_parameters = {k: KNOWN.get(k, v) for k, v in case.path_parameters.items()}
            case.call_and_validate(base_url=live.url, headers=AUTH, checks=CHECKS, timeout=30)
