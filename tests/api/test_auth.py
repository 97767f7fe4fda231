"""The bearer token and the body cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from microsaga import ConfigurationError, Flow
from microsaga.api import create_app

from .conftest import client_for
from .test_routes import problem

TOKEN = "s3cret-T0ken"


async def test_every_route_but_health_and_the_page_needs_the_token(
    memory_flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(memory_flow, token=TOKEN)
    async with client_for(app, token=TOKEN) as api:
        doc = api.spec.doc
        assert doc["components"]["securitySchemes"] == {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        assert doc["paths"]["/healthz"]["get"]["security"] == []
        bare = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api.test")
        async with bare:
            for method, path in [
                ("GET", "/api/executions"),
                ("GET", "/api/executions/x"),
                ("GET", "/api/executions/x/events"),
                ("POST", "/api/executions/x/suspend"),
                ("POST", "/api/workflows/order/executions"),
                ("PUT", "/api/workflows/order"),
                ("GET", "/api/workflows"),
                ("GET", "/openapi.json"),
                ("GET", "/metrics"),
            ]:
                for headers in (
                    {},
                    {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN},
                    {"Authorization": f"Bearer {TOKEN}x"},
                ):
                    answer = await bare.request(method, path, headers=headers)
                    problem(answer, 401, "unauthorized")
                    assert answer.headers["www-authenticate"] == 'Bearer realm="microsaga"'
                    if path != "/openapi.json":
                        api.spec.check(answer)  # 401 is documented on every route
                    assert TOKEN not in answer.text
            assert (await bare.get("/healthz")).status_code == 200
            assert (await bare.get("/")).status_code == 200
            assert (await bare.get("/static/app.js")).status_code == 200
            # the page's files only: a POST is never public
            problem(await bare.post("/"), 401, "unauthorized")
            lower = await bare.get("/api/executions", headers={"authorization": f"bearer {TOKEN}"})
            assert lower.status_code == 200
        assert (await api.get("/api/executions")).status_code == 200
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("token", ["", "   ", 5])
async def test_an_empty_token_is_refused(memory_flow: Flow, token: Any) -> None:
    with pytest.raises(ConfigurationError, match="token: must be a non-empty string"):
        create_app(memory_flow, token=token)


async def test_a_body_over_the_cap_is_413(memory_flow: Flow) -> None:
    async with client_for(create_app(memory_flow, max_body=1000)) as api:
        small = await api.put("/api/workflows/w", json={"steps": [{"publish": "t"}]})
        assert small.status_code == 200
        big = {"steps": [{"publish": "t"}], "description": "x" * 2000}
        body = problem(await api.put("/api/workflows/w", json=big), 413, "payload_too_large")
        assert body["detail"] == "the request body is larger than 1000 bytes"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            yield b'{"steps": [{"publish": "t"}], "description": "'
            for _ in range(10):
                yield b"x" * 200
            yield b'"}'

        answer = await api.put("/api/workflows/w", content=chunks())
        assert "content-length" not in answer.request.headers
        problem(answer, 413, "payload_too_large")
        assert (await api.get("/api/workflows/w")).json()["steps"] == [{"publish": "t", "id": "t"}]


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
async def test_a_bad_cap_is_refused(memory_flow: Flow, limit: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_body"):
        create_app(memory_flow, max_body=limit)
