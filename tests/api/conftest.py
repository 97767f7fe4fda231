"""Fixtures of the API's tests: the app in-process (httpx's ASGI transport) over a
flow on memory, SQLite or PostgreSQL, with every response checked against the app's
own ``/openapi.json``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from microsaga import Flow
from microsaga.api import create_app
from tests.integration.pg import empty_store

from . import steps
from .openapi_check import OpenApi

STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Client:
    """httpx over the app; each response is checked against ``/openapi.json``."""

    def __init__(self, http: httpx.AsyncClient, spec: OpenApi, app: Any) -> None:
        self.http, self.spec, self.app = http, spec, app

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        response = await self.http.request(method, path, **kw)
        self.spec.check(response)
        return response

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("PUT", path, **kw)

    async def start(self, input: Any = None, **kw: Any) -> str:
        """Start an execution of the order workflow; its id."""
        body = {"input": input, **kw}
        response = await self.post("/api/workflows/order/executions", json=body)
        assert response.status_code == 202, response.text
        eid: str = response.json()["id"]
        return eid


@pytest.fixture(autouse=True)
def _gates() -> Iterator[None]:
    yield
    steps.GATES.clear()


@pytest.fixture(params=STORES)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with empty_store(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def flow(store_url: str) -> AsyncIterator[Flow]:
    async with Flow(store_url, poll_interval=0.05) as opened:
        yield opened


@pytest.fixture
async def memory_flow() -> AsyncIterator[Flow]:
    async with Flow("memory://", poll_interval=0.05) as opened:
        yield opened


@contextlib.asynccontextmanager
async def client_for(app: Any, token: str | None = None) -> AsyncIterator[Client]:
    """A checking client of ``app`` (sending ``token``), closed on exit."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://api.test", headers=headers
    ) as http:
        doc = (await http.get("/openapi.json")).json()
        try:
            yield Client(http, OpenApi(doc), app)
        finally:
            await app.state.feed.close()


@contextlib.asynccontextmanager
async def order_api(flow: Flow) -> AsyncIterator[Client]:
    async with client_for(create_app(flow)) as client:
        saved = await client.put("/api/workflows/order", json=steps.ORDER)
        assert saved.status_code == 200, saved.text
        yield client


@pytest.fixture
async def api(flow: Flow) -> AsyncIterator[Client]:
    """A client of the app over ``flow``, with the order workflow saved."""
    async with order_api(flow) as client:
        yield client


@pytest.fixture
async def memory_api(memory_flow: Flow) -> AsyncIterator[Client]:
    async with order_api(memory_flow) as client:
        yield client
