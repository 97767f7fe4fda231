"""The API over a flow that runs no steps (``serve --no-worker``) saves, shows and
starts workflows whose ``function:`` steps it cannot import; over a flow that runs
steps, a PUT still imports them at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Flow
from microsaga.api import create_app

from .conftest import Client, client_for

DEFINITION = {
    "steps": [
        {"function": "nowhere_api_shop.notify:send_email"},
        {
            "function": "nowhere_api_shop.notify:log_sent",
            "requires": ["send_email"],
            "retry": {"max_attempts": 3, "non_retryable": ["nowhere_api_shop.errors:Gone"]},
        },
    ]
}


@pytest.fixture
async def no_worker(tmp_path: Path) -> AsyncIterator[Client]:
    async with (
        Flow(f"sqlite:///{tmp_path / 'api.db'}", worker=False) as flow,
        client_for(create_app(flow)) as client,
    ):
        yield client


async def test_it_saves_shows_and_starts_what_it_cannot_import(no_worker: Client) -> None:
    saved = await no_worker.put("/api/workflows/notify", json=DEFINITION)
    assert saved.status_code == 200, saved.text
    assert saved.json()["step_count"] == 2

    shown = await no_worker.get("/api/workflows/notify")
    assert shown.status_code == 200, shown.text
    assert [s["id"] for s in shown.json()["steps"]] == ["send_email", "log_sent"]
    assert shown.json()["steps"][1]["retry"]["non_retryable"] == ["nowhere_api_shop.errors:Gone"]
    listed = await no_worker.get("/api/workflows")
    assert [w["id"] for w in listed.json()["items"]] == ["notify"]

    started = await no_worker.post(
        "/api/workflows/notify/executions", json={"input": {"to": "ada"}, "execution_id": "n-1"}
    )
    assert started.status_code == 202, started.text
    again = await no_worker.post("/api/workflows/notify/executions", json={"execution_id": "n-1"})
    assert again.status_code == 202, again.text  # the idempotency key: the same execution
    found = await no_worker.get("/api/executions/n-1")
    assert found.json()["status"] == "PENDING"
    assert found.json()["request"] == {"to": "ada"}


async def test_it_redrives_an_execution_of_what_it_cannot_import(no_worker: Client) -> None:
    assert (await no_worker.put("/api/workflows/notify", json=DEFINITION)).status_code == 200
    started = await no_worker.post("/api/workflows/notify/executions", json={"input": 1})
    eid = started.json()["id"]
    aborted = await no_worker.post(f"/api/executions/{eid}/abort", json={"compensate": False})
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["status"] == "ABORTED"

    redriven = await no_worker.post(f"/api/executions/{eid}/redrive", json={"input": 2})
    assert redriven.status_code == 200, redriven.text
    assert redriven.json()["id"] != eid
    assert redriven.json()["redrive_of"] == eid
    assert redriven.json()["request"] == 2


async def test_it_still_refuses_a_malformed_function_path(no_worker: Client) -> None:
    bad = {"steps": [{"function": "nowhere_api_shop.notify"}]}
    refused = await no_worker.put("/api/workflows/bad", json=bad)
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "steps[0].function: must be 'module:function', not 'nowhere_api_shop.notify'"
    )


async def test_a_server_that_runs_steps_imports_them_on_put() -> None:
    async with Flow("memory://") as flow, client_for(create_app(flow)) as client:
        refused = await client.put("/api/workflows/notify", json=DEFINITION)
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith(
        "steps[0].function: cannot import nowhere_api_shop.notify:send_email"
    )
