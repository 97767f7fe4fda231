"""Every route of the HTTP API over memory, SQLite and PostgreSQL: what it answers,
each error status with its problem+json code; every response is checked against the
app's own /openapi.json by the ``api`` client."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import httpx
import pytest

from microsaga import Flow, Message, StoreError
from microsaga.api import create_app
from tests.docblocks import ROOT
from tests.helpers import eventually

from . import steps
from .conftest import Client, client_for, order_api

ROUTES = {
    ("GET", "/api/executions"),
    ("GET", "/api/executions/{id}"),
    ("GET", "/api/executions/{id}/events"),
    ("GET", "/api/executions/{id}/definition"),
    ("POST", "/api/workflows/{workflow_id}/executions"),
    ("POST", "/api/executions/{id}/suspend"),
    ("POST", "/api/executions/{id}/resume"),
    ("POST", "/api/executions/{id}/abort"),
    ("POST", "/api/executions/{id}/redrive"),
    ("POST", "/api/executions/{id}/signal"),
    ("GET", "/api/workflows"),
    ("GET", "/api/workflows/{id}"),
    ("PUT", "/api/workflows/{id}"),
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
}


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The problem document of an error response, checked."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert body["detail"]
    assert "Traceback" not in body["detail"]
    return body


async def step_status(api: Client, eid: str, step: str) -> str:
    status: str = (await api.get(f"/api/executions/{eid}")).json()["steps"][step]["status"]
    return status


async def test_openapi_is_3_1_and_has_every_route(memory_api: Client) -> None:
    doc = memory_api.spec.doc
    assert doc["openapi"] == "3.1.0"
    found = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert found == ROUTES
    schemas = doc["components"]["schemas"]
    assert schemas["Execution"]["properties"]["status"]["enum"][:4] == [
        "PENDING",
        "RUNNING",
        "FAILURE",
        "SUCCESS",
    ]
    assert {"Problem", "ExecutionPage", "StartExecution", "WorkflowDefinition"} <= set(schemas)
    assert "securitySchemes" not in doc["components"]  # no token: nothing to send


async def test_an_execution_started_runs_and_reads_back(api: Client, flow: Flow) -> None:
    started = await api.post(
        "/api/workflows/order/executions",
        json={"input": {"order": 7, "items": ["a", "b"]}, "execution_id": "order-7"},
    )
    assert started.status_code == 202
    assert started.json() == {"id": "order-7"}
    await flow.wait("order-7", timeout=10)

    got = (await api.get("/api/executions/order-7")).json()
    assert got["id"] == "order-7"
    assert got["workflow_id"] == "order"
    assert got["version"] == 1
    assert got["status"] == "SUCCESS"
    assert got["request"] == {"order": 7, "items": ["a", "b"]}  # decoded, not bytes
    assert got["response"] == {"ship": {"sent": True}, "notify": {"sent": True}}
    assert got["error"] is None
    assert set(got["steps"]) == {"reserve", "charge", "ship", "notify"}
    charge = got["steps"]["charge"]
    assert charge["status"] == "SUCCESS"
    assert charge["attempts"] == 1
    assert charge["request"] == {"order": 7, "items": ["a", "b"]}
    assert charge["response"] == {"charged": True}
    assert charge["started_at"] <= charge["finished_at"]
    assert charge["compensation"] is None

    # the same id again is the same execution (its idempotency key)
    again = await api.post(
        "/api/workflows/order/executions", json={"input": {"other": 1}, "execution_id": "order-7"}
    )
    assert again.status_code == 202
    assert again.json() == {"id": "order-7"}
    page = (await api.get("/api/executions")).json()
    assert [item["id"] for item in page["items"]] == ["order-7"]


def documented_fields(route: str, after: str) -> set[str]:
    """The fields docs/api.md's row of ``route`` lists in backquotes after ``after``."""
    row = next(
        line
        for line in (ROOT / "docs" / "api.md").read_text(encoding="utf-8").splitlines()
        if line.startswith(f"| `{route}")
    )
    listed = re.search(re.escape(after) + r"\s*`\{?([^`}]*)\}?`", row)
    assert listed is not None, row
    return {name.strip() for name in listed[1].split(",")}


async def test_the_docs_list_the_fields_an_execution_has(
    memory_api: Client, memory_flow: Flow
) -> None:
    eid = await memory_api.start()
    await memory_flow.wait(eid, timeout=10)
    got = (await memory_api.get(f"/api/executions/{eid}")).json()
    assert set(got) == documented_fields("GET /api/executions/{id}`", "the execution:")
    step = documented_fields("GET /api/executions/{id}`", "maps step ids to")
    assert all(set(run) == step for run in got["steps"].values())
    summary = (await memory_api.get("/api/executions")).json()["items"][0]
    assert set(summary) == documented_fields("GET /api/executions?", "A summary has")


async def test_an_empty_input_is_null(api: Client, flow: Flow) -> None:
    eid = await api.start()
    await flow.wait(eid, timeout=10)
    got = (await api.get(f"/api/executions/{eid}")).json()
    assert got["request"] is None
    assert got["steps"]["reserve"]["response"] is None


async def test_a_failed_execution_shows_its_compensated_steps(api: Client, flow: Flow) -> None:
    eid = await api.start({"fail": True})
    await flow.wait(eid, timeout=10)
    got = (await api.get(f"/api/executions/{eid}")).json()
    assert got["status"] == "FAILURE"
    assert "card declined" in got["error"]
    assert got["steps"]["charge"]["status"] == "FAILURE"
    assert got["steps"]["charge"]["error"] == "card declined"
    assert got["steps"]["reserve"]["status"] == "COMPENSATED"
    assert got["steps"]["reserve"]["compensation"]["status"] == "SUCCESS"
    assert got["steps"]["reserve"]["compensation"]["response"] is None
    assert got["steps"]["ship"]["status"] == "PENDING"
    assert got["steps"]["ship"]["request"] is None


async def test_executions_page_by_keyset_and_filter(api: Client, flow: Flow) -> None:
    ids = [await api.start({"n": n}) for n in range(5)]
    failed = await api.start({"fail": True})
    for eid in [*ids, failed]:
        await flow.wait(eid, timeout=10)
    newest_first = [failed, *reversed(ids)]

    seen: list[str] = []
    before = None
    while True:
        query = {"limit": 2} | ({"before": before} if before else {})
        page = (await api.get("/api/executions", params=query)).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        before = page["next"]
        if before is None:
            break
    assert seen == newest_first

    only_failed = (await api.get("/api/executions", params={"status": "FAILURE"})).json()
    assert [item["id"] for item in only_failed["items"]] == [failed]
    assert only_failed["items"][0]["status"] == "FAILURE"
    assert only_failed["next"] is None
    by_name = (await api.get("/api/executions", params={"status": "success"})).json()
    assert len(by_name["items"]) == 5
    other = (await api.get("/api/executions", params={"workflow_id": "other"})).json()
    assert other == {"items": [], "next": None}
    empty_filters = await api.get("/api/executions", params={"status": "", "workflow_id": ""})
    assert len(empty_filters.json()["items"]) == 6


async def test_the_list_does_not_read_the_step_runs(
    api: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard re-reads the list every 2 s: an execution with a map of 10,000 runs
    on its page made each read take 230 ms instead of 2 ms (SQLite and PostgreSQL),
    for step runs that a summary does not show."""
    eid = await api.start({})
    await flow.wait(eid, timeout=10)
    asked: list[bool] = []
    listing = flow.store.list_executions

    async def spied(*args: Any, steps: bool = True, **kwargs: Any) -> Any:
        asked.append(steps)
        return await listing(*args, steps=steps, **kwargs)

    monkeypatch.setattr(flow.store, "list_executions", spied)
    page = (await api.get("/api/executions")).json()
    assert [(x["id"], x["status"]) for x in page["items"]] == [(eid, "SUCCESS")]
    assert asked == [False]


async def test_the_redrives_of_an_execution_are_listed_by_redrive_of(
    api: Client, flow: Flow
) -> None:
    failed = await api.start({"fail": True})
    other = await api.start({"fail": True})
    for eid in (failed, other):
        await flow.wait(eid, timeout=10)
    redrives = []
    for eid in (failed, other, failed):
        answer = await api.post(f"/api/executions/{eid}/redrive")
        assert answer.status_code == 200, answer.text
        redrives.append(answer.json()["id"])
        await flow.wait(redrives[-1], timeout=10)
    first, _, second = redrives

    async def listed(**query: Any) -> list[str]:
        page = (await api.get("/api/executions", params=query)).json()
        assert all(item["redrive_of"] == query["redrive_of"] for item in page["items"])
        return [item["id"] for item in page["items"]]

    assert await listed(redrive_of=failed) == [second, first]
    assert await listed(redrive_of=failed, limit=1, before=second) == [first]
    assert await listed(redrive_of=failed, status="SUCCESS") == []
    assert await listed(redrive_of=first) == []  # not redriven itself
    assert await listed(redrive_of="no-such-execution") == []
    assert await listed(redrive_of="bad\x00id") == []
    everything = (await api.get("/api/executions", params={"redrive_of": ""})).json()
    assert len(everything["items"]) == 5


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"status": "DONE"}, "status: unknown status 'DONE'"),
        ({"limit": "0"}, "limit: expected `int` >= 1"),
        ({"limit": "1001"}, "limit: expected `int` <= 1000"),
        ({"limit": "many"}, "limit: expected `int`, got `str`"),
        ({"state": "RUNNING"}, "unknown query parameter `state`"),  # not "object contains"
    ],
)
async def test_a_bad_query_is_400(memory_api: Client, query: dict[str, str], words: str) -> None:
    body = problem(await memory_api.get("/api/executions", params=query), 400, "invalid_request")
    assert words in body["detail"]


async def test_unknown_ids_are_404(api: Client) -> None:
    for path in ("/api/executions/nope", "/api/executions/nope/events"):
        body = problem(await api.get(path), 404, "execution_not_found")
        assert body["detail"] == "execution not found: nope"
    for action in ("suspend", "resume", "abort"):
        problem(await api.post(f"/api/executions/nope/{action}"), 404, "execution_not_found")
    problem(await api.get("/api/executions", params={"before": "nope"}), 404, "execution_not_found")
    problem(await api.get("/api/executions/a%00b"), 404, "execution_not_found")
    problem(await api.post("/api/workflows/nope/executions", json={}), 404, "workflow_not_found")
    problem(await api.get("/api/workflows/nope"), 404, "workflow_not_found")
    problem(await api.get("/api/workflows/order?version=9"), 404, "workflow_not_found")


async def test_suspend_resume_from_the_api(api: Client, flow: Flow) -> None:
    eid = await api.start({"gate": "g1"})
    await eventually(lambda: step_status(api, eid, "reserve"), timeout=10)
    assert await step_status(api, eid, "reserve") == "RUNNING"

    suspended = await api.post(f"/api/executions/{eid}/suspend")
    assert suspended.status_code == 200
    assert suspended.json()["status"] == "SUSPEND"
    assert suspended.json()["id"] == eid
    steps.gate("g1").set()  # the running step finishes and is recorded; nothing new starts
    await eventually(lambda: _is(api, eid, "reserve", "SUCCESS"), timeout=10)
    assert await step_status(api, eid, "charge") == "PENDING"

    resumed = await api.post(f"/api/executions/{eid}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "RUNNING"
    info = await flow.wait(eid, timeout=10)
    assert info.status.name == "SUCCESS"

    body = problem(await api.post(f"/api/executions/{eid}/resume"), 409, "invalid_transition")
    assert body["detail"] == "cannot resume an execution that is SUCCESS"
    problem(await api.post(f"/api/executions/{eid}/suspend"), 409, "invalid_transition")
    problem(await api.post(f"/api/executions/{eid}/abort"), 409, "invalid_transition")


async def _is(api: Client, eid: str, step: str, status: str) -> bool:
    return await step_status(api, eid, step) == status


@pytest.mark.parametrize(("compensate", "reserve"), [(True, "COMPENSATED"), (False, "SUCCESS")])
async def test_abort_with_and_without_compensation(
    api: Client, flow: Flow, compensate: bool, reserve: str
) -> None:
    eid = await api.start({"gate": f"abort-{compensate}"})
    await eventually(lambda: _is(api, eid, "reserve", "RUNNING"), timeout=10)
    aborted = await api.post(f"/api/executions/{eid}/abort", json={"compensate": compensate})
    assert aborted.status_code == 200
    assert aborted.json()["status"] in ("COMPENSATING", "RUNNING", "ABORTED")
    steps.gate(f"abort-{compensate}").set()
    info = await flow.wait(eid, timeout=10)
    assert info.status.name == "ABORTED"
    got = (await api.get(f"/api/executions/{eid}")).json()
    assert got["steps"]["reserve"]["status"] == reserve
    assert got["steps"]["charge"]["status"] == "PENDING"


async def test_bad_bodies(memory_api: Client) -> None:
    api = memory_api
    eid = await api.start()
    start = "/api/workflows/order/executions"
    body = problem(await api.post(start, content=b"{not json"), 400, "invalid_json")
    assert body["detail"].startswith("the body is not valid JSON")
    # JSON, but no float holds it: the client's input, named as the client sent it
    body = problem(
        await api.post(start, content=b'{"input": {"x": 1e999}}'), 422, "invalid_request"
    )
    assert body["detail"].startswith("input: the number 1e999 is out of range")
    signal = f"/api/executions/{eid}/signal"
    huge = b'{"event": "go", "payload": [-1e999]}'
    body = problem(await api.post(signal, content=huge), 422, "invalid_request")
    assert body["detail"].startswith("payload: the number -1e999 is out of range")
    body = problem(await api.post(start, json={"inputs": 1}), 422, "invalid_request")
    assert "unknown field `inputs`" in body["detail"]
    body = problem(await api.post(start, json={"execution_id": "a/b"}), 422, "invalid_request")
    assert body["detail"].startswith("execution_id:")
    body = problem(await api.post(start, json={"execution_id": 5}), 422, "invalid_request")
    assert body["detail"] == "execution_id: expected `str | null`, got `int`"
    problem(await api.post(start, json=[1]), 422, "invalid_request")
    body = problem(
        await api.post(f"/api/executions/{eid}/abort", json={"compensate": "yes"}),
        422,
        "invalid_request",
    )
    assert body["detail"] == "compensate: expected `bool`, got `str`"
    # a lone surrogate is no text: refused before it reaches a store
    problem(await api.post(start, content=b'{"input": "\\ud800"}'), 400, "invalid_json")


async def test_starting_needs_what_the_steps_need(memory_api: Client) -> None:
    calls = {"id": "calls", "steps": [{"call": "nowhere.Svc.Do"}]}
    assert (await memory_api.put("/api/workflows/calls", json=calls)).status_code == 200
    body = problem(
        await memory_api.post("/api/workflows/calls/executions", json={}), 422, "missing_client"
    )
    assert "nowhere" in body["detail"]


class Redriving(Flow):
    """A flow whose build has redrive and signal (as the contract will): the routes
    call them as documented."""

    calls: list[tuple[Any, ...]]

    async def redrive(
        self, execution_id: str, *, step: str | None = None, input: Any = None
    ) -> str:
        self.calls.append(("redrive", execution_id, step, input))
        return execution_id

    async def signal(self, execution_id: str, event: str, payload: Any = None) -> None:
        self.calls.append(("signal", execution_id, event, payload))


async def test_a_signal_completes_a_waiting_execution(api: Client) -> None:
    approval = {"id": "approval", "steps": [{"wait": "approved", "timeout": 3600}]}
    assert (await api.put("/api/workflows/approval", json=approval)).status_code == 200
    started = await api.post("/api/workflows/approval/executions", json={"input": {"n": 1}})
    eid = started.json()["id"]
    misspelt = problem(
        await api.post(f"/api/executions/{eid}/signal", json={"event": "aproved"}),
        422,
        "invalid_request",
    )
    assert misspelt["detail"] == (
        f"event: no step of execution {eid} waits for 'aproved'; its wait steps wait for: approved"
    )
    answer = await api.post(
        f"/api/executions/{eid}/signal", json={"event": "approved", "payload": {"by": "ann"}}
    )
    assert answer.status_code == 200, answer.text

    async def done() -> Any:
        found = (await api.get(f"/api/executions/{eid}")).json()
        return found if found["status"] == "SUCCESS" else None

    found = await eventually(done)
    assert found["steps"]["approved"]["response"] == {"by": "ann"}
    assert found["response"] == {"by": "ann"}
    problem(
        await api.post(f"/api/executions/{eid}/signal", json={"event": "approved"}),
        409,
        "invalid_transition",
    )
    problem(
        await api.post("/api/executions/nope/signal", json={"event": "approved"}),
        404,
        "execution_not_found",
    )


async def test_redrive_and_signal_call_the_flow() -> None:
    async with Redriving("memory://") as flow:
        flow.calls = []
        async with order_api(flow) as client:
            eid = await client.start({"fail": True})
            await flow.wait(eid, timeout=10)
            redriven = await client.post(
                f"/api/executions/{eid}/redrive", json={"step": "charge", "input": {"ok": 1}}
            )
            assert redriven.status_code == 200
            assert redriven.json()["id"] == eid
            assert (await client.post(f"/api/executions/{eid}/redrive")).status_code == 200
            signalled = await client.post(
                f"/api/executions/{eid}/signal", json={"event": "paid", "payload": [1, 2]}
            )
            assert signalled.status_code == 200
            problem(
                await client.post(f"/api/executions/{eid}/signal", json={}),
                422,
                "invalid_request",
            )
            problem(await client.post(f"/api/executions/{eid}/signal"), 422, "invalid_request")
    (_, _, step, given), (_, _, no_step, no_input), (_, _, event, payload) = flow.calls
    assert (step, given.json(), no_step, no_input) == ("charge", {"ok": 1}, None, None)
    assert (event, payload.json()) == ("paid", [1, 2])


async def test_an_execution_has_the_definition_it_runs_saved_or_not(
    api: Client, flow: Flow
) -> None:
    from microsaga import FunctionStep, SubflowStep

    saved = await api.start({"n": 1})
    await flow.wait(saved, timeout=10)
    ran = (await api.get(f"/api/executions/{saved}/definition")).json()
    assert ran == (await api.get("/api/workflows/order", params={"version": 1})).json()
    await flow.workflow_remove("order")  # its executions keep their own copy
    assert (await api.get(f"/api/executions/{saved}/definition")).json() == ran

    await flow.workflow_save(
        await flow.workflow_create("payment", FunctionStep(steps.release, id="refund"))
    )
    adhoc = await flow.workflow_create(
        "adhoc",
        FunctionStep(steps.held, id="first"),
        SubflowStep("payment", id="pay", requires=["first"]),
    )
    unsaved = await flow.execute(adhoc, {"n": 2}, async_=True)
    got = (await api.get(f"/api/executions/{unsaved}/definition")).json()
    assert got["id"] == "adhoc"
    assert [(s["id"], s.get("requires", [])) for s in got["steps"]] == [
        ("first", []),
        ("pay", ["first"]),
    ]
    assert got["steps"][1]["workflow"] == "payment"

    local = await flow.workflow_create("local", FunctionStep(lambda msg: None, id="anon"))
    unstored = await flow.execute(local)
    body = problem(
        await api.get(f"/api/executions/{unstored}/definition"), 404, "definition_not_stored"
    )
    assert "cannot be saved" in body["detail"]
    problem(await api.get("/api/executions/nope/definition"), 404, "execution_not_found")


async def test_workflow_definitions(api: Client) -> None:
    listed = (await api.get("/api/workflows")).json()
    assert listed == {
        "items": [
            {
                "id": "order",
                "version": 1,
                "step_count": 4,
                "description": "reserve, charge, then ship and notify",
            }
        ]
    }
    got = (await api.get("/api/workflows/order")).json()
    assert got["id"] == "order"
    assert [s["id"] for s in got["steps"]] == ["reserve", "charge", "ship", "notify"]
    assert got["steps"][1]["requires"] == ["reserve"]

    same = await api.put("/api/workflows/order", json=steps.ORDER)
    assert same.json()["version"] == 1  # unchanged: no new version
    changed = copy.deepcopy(steps.ORDER)
    del changed["steps"][3]
    changed.pop("id")  # the URL names it
    saved = await api.put("/api/workflows/order", json=changed)
    assert saved.status_code == 200
    assert saved.json() == {
        "id": "order",
        "version": 2,
        "step_count": 3,
        "description": "reserve, charge, then ship and notify",
    }
    assert len((await api.get("/api/workflows/order")).json()["steps"]) == 3
    old = (await api.get("/api/workflows/order", params={"version": 1})).json()
    assert len(old["steps"]) == 4


async def test_a_definition_read_back_saves_as_the_same_version(memory_api: Client) -> None:
    """GET writes every step's id out, the default ones too: that is the definition
    PUT had, not a new version (nor, run by the CLI, a conflicting execution)."""
    plain = {
        "steps": [
            {"function": "tests.api.steps:charge"},
            {"function": "tests.api.steps:notify", "requires": ["charge"]},
        ]
    }
    first = await memory_api.put("/api/workflows/plain", json=plain)
    assert first.json()["version"] == 1
    got = (await memory_api.get("/api/workflows/plain")).json()
    assert [s["id"] for s in got["steps"]] == ["charge", "notify"]
    again = await memory_api.put("/api/workflows/plain", json=got)
    assert again.json()["version"] == 1


@pytest.mark.parametrize(
    ("change", "status", "code", "words"),
    [
        (lambda d: d["steps"][0].update(requires=["notify"]), 422, "cycle", "cycle between"),
        (
            lambda d: d["steps"][1].update(requires=["nope"]),
            422,
            "step_not_exists",
            "step not exists: nope (required by charge, at steps[1].requires)",
        ),
        (
            lambda d: d["steps"][0].update(retry={"max_attempts": 0}),
            422,
            "definition",
            "steps[0].retry.max_attempts",
        ),
        (lambda d: d["steps"].append(d["steps"][0]), 422, "duplicate_step", "steps[4]"),
        (lambda d: d.update(id="other"), 422, "definition", "id: the definition's id"),
        (lambda d: d.update(steps=[]), 422, "definition", "steps: must be a non-empty list"),
        (lambda d: d.update(colour="red"), 422, "definition", "colour: unknown field"),
        (
            lambda d: d["steps"][2].update(function="tests.api.steps:nothing_here"),
            422,
            "definition",
            "steps[2]",
        ),
    ],
)
async def test_a_bad_definition_names_its_path(
    memory_api: Client, change: Any, status: int, code: str, words: str
) -> None:
    definition = copy.deepcopy(steps.ORDER)
    change(definition)
    body = problem(await memory_api.put("/api/workflows/order", json=definition), status, code)
    assert words in body["detail"]


async def test_a_definition_body_that_is_no_definition(memory_api: Client) -> None:
    put = "/api/workflows/order"
    problem(await memory_api.put(put, content=b"steps: []"), 400, "invalid_json")
    problem(await memory_api.put(put, json=[1, 2]), 422, "definition")
    problem(await memory_api.put(put, content=b""), 422, "invalid_request")


async def test_health_metrics_and_unknown_routes(memory_api: Client) -> None:
    health = await memory_api.get("/healthz")
    assert health.json() == {"status": "ok"}
    metrics = await memory_api.get("/metrics")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        problem(metrics, 501, "not_implemented")
    else:
        assert metrics.status_code == 200
    # not in the document, so asked without the check
    problem(await memory_api.http.get("/api/nothing"), 404, "not_found")
    problem(await memory_api.http.delete("/api/executions"), 405, "method_not_allowed")


async def test_a_store_away_is_503(memory_flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    async def away(*args: Any, **kw: Any) -> Any:
        raise StoreError("store memory:// is not available: connection refused")

    monkeypatch.setattr(memory_flow, "execution", away)
    monkeypatch.setattr(memory_flow, "executions", away)
    async with client_for(create_app(memory_flow)) as client:
        for path in ("/api/executions/x", "/api/executions", "/healthz"):
            answer = await client.get(path)
            problem(answer, 503, "store_unavailable")
            assert answer.headers["retry-after"] == "1"


async def test_an_unexpected_error_is_a_bare_500(
    memory_flow: Flow, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(memory_flow, "execution", broken)
    async with client_for(create_app(memory_flow)) as client:
        answer = await client.http.get("/api/executions/x")
    body = problem(answer, 500, "internal")
    assert "secret" not in answer.text
    assert body["detail"] == "internal error; the server's log has the details"
    assert "secret internals" in caplog.text  # the log has it


async def test_show_json_prints_the_api_model(memory_api: Client, memory_flow: Flow) -> None:
    from microsaga.api.models import execution_json

    eid = await memory_api.start({"fail": True})
    info = await memory_flow.wait(eid, timeout=10)
    assert execution_json(info) == (await memory_api.get(f"/api/executions/{eid}")).json()
    assert isinstance(info.request, Message)


@pytest.mark.parametrize("bad", ["a:b", "a b", "a/b", "tab\there", "x" * 201])
async def test_an_execution_id_the_docs_refuse_is_refused_by_its_schema(
    memory_api: Client, bad: str
) -> None:
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert "1-200 printable characters without spaces, `:`" in page
    assert "or `/` (so that it fits in a URL)" in page
    start = "/api/workflows/order/executions"
    body = problem(await memory_api.post(start, json={"execution_id": bad}), 422, "invalid_request")
    assert body["detail"].startswith("execution_id: expected `str")
    # in words, not the regular expression the schema holds
    assert "regex" not in body["detail"]
    if len(bad) <= 200:
        assert body["detail"] == (
            "execution_id: expected `str` of printable characters without spaces, ':' or '/'"
        )


@pytest.mark.parametrize("status", ["WAITING", "SKIPPED", "COMPENSATED"])
async def test_a_status_only_steps_have_is_refused_when_listing_executions(
    memory_api: Client, status: str
) -> None:
    found = await memory_api.get(f"/api/executions?status={status}")
    body = problem(found, 400, "invalid_request")
    assert body["detail"].startswith(f"status: {status} is a status of steps, not of executions")


async def test_ids_made_in_python_with_a_slash_are_reachable(memory_api: Client) -> None:
    """Python allows a '/' in a workflow id and an execution id; the dashboard sends
    them as %2F (encodeURIComponent), which the server decodes before routing."""
    api = memory_api
    definition = {"steps": [{"wait": "go"}]}
    saved = await api.put("/api/workflows/billing%2Frefund", json=definition)
    assert saved.status_code == 200, saved.text
    assert saved.json()["id"] == "billing/refund"
    got = await api.get("/api/workflows/billing%2Frefund")
    assert got.status_code == 200, got.text
    assert got.json()["id"] == "billing/refund"
    wf = await api.app.state.feed.flow.workflow_load("billing/refund")
    eid = await wf.execute(Message({"n": 1}), async_=True, execution_id="refund/42")
    assert eid == "refund/42"
    started = await api.post("/api/workflows/billing%2Frefund/executions", json={})
    assert started.status_code == 202, started.text
    shown = await api.get("/api/executions/refund%2F42")
    assert shown.status_code == 200, shown.text
    assert shown.json()["workflow_id"] == "billing/refund"
    assert (await api.post("/api/executions/refund%2F42/suspend")).json()["status"] == "SUSPEND"
    assert (await api.post("/api/executions/refund%2F42/resume")).json()["status"] == "RUNNING"
    signalled = await api.post("/api/executions/refund%2F42/signal", json={"event": "go"})
    assert signalled.status_code == 200, signalled.text
    done = await api.app.state.feed.flow.wait("refund/42", timeout=10)
    assert done.status.name == "SUCCESS"
    async with api.http.stream("GET", "/api/executions/refund%2F42/events") as stream:
        assert stream.status_code == 200
        text = "".join([chunk async for chunk in stream.aiter_text()])
    assert 'event: end\ndata: {"id":"refund/42","status":"SUCCESS"}' in text
    # an action's name ends a path: still the action's route, a GET of it still a 405
    suspend = await api.http.get("/api/executions/refund%2F42/suspend")
    problem(suspend, 405, "method_not_allowed")
    problem(await api.get("/api/executions/nope%2Fx"), 404, "execution_not_found")


async def test_a_saved_workflow_that_no_longer_loads_leaves_the_list_whole(
    api: Client, flow: Flow
) -> None:
    """A definition saved while its module imported (or by a process that has it) and
    read where it does not: the list shows every workflow, and the definition reads
    as saved, for an operator to mend."""
    broken = {"id": "broken", "steps": [{"function": "module_gone_since:send"}]}
    body = json.dumps(broken).encode()
    await flow.store.save_workflow("broken", "h" * 32, body, flow.clock())
    listed = await api.get("/api/workflows")
    assert listed.status_code == 200, listed.text
    summaries = {item["id"]: item for item in listed.json()["items"]}
    assert summaries["broken"] == {
        "id": "broken",
        "version": 1,
        "step_count": 1,
        "description": None,
    }
    assert summaries["order"]["step_count"] == len(steps.ORDER["steps"])
    shown = await api.get("/api/workflows/broken")
    assert shown.status_code == 200, shown.text
    assert shown.json() == broken
    # starting it is still refused, naming what does not import
    started = await api.post("/api/workflows/broken/executions", json={})
    assert "module_gone_since" in problem(started, 422, "definition")["detail"]


async def test_a_definition_id_left_null_is_the_urls(memory_api: Client) -> None:
    """A client that writes absent fields as null (a typed client's optional id) saves
    as one that leaves the id out."""
    saved = await memory_api.put(
        "/api/workflows/nulled", json={"id": None, "steps": [{"wait": "go"}]}
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["id"] == "nulled"
    assert (await memory_api.get("/api/workflows/nulled")).json()["id"] == "nulled"


async def test_a_redrive_input_no_float_holds_is_the_clients_bad_input(
    memory_api: Client, memory_flow: Flow
) -> None:
    eid = await memory_api.start({"fail": True})
    assert (await memory_flow.wait(eid, timeout=10)).status.name == "FAILURE"
    redrive = await memory_api.post(
        f"/api/executions/{eid}/redrive", content=b'{"input": {"fail": 1e400}}'
    )
    body = problem(redrive, 422, "invalid_request")
    assert body["detail"].startswith("input: the number 1e400 is out of range")


async def test_a_flow_not_opened_is_the_servers_503_not_the_clients_400() -> None:
    """A service that mounts the app but forgets to open the flow (no lifespan)."""
    flow = Flow("memory://")
    async with client_for(create_app(flow)) as api:
        for path in ("/api/executions", "/api/workflows", "/healthz", "/api/executions/x"):
            response = await api.get(path)
            body = problem(response, 503, "store_unavailable")
            assert body["detail"].startswith("the flow is not open: open it before the first")
            assert response.headers["retry-after"] == "1"
        assert (await api.get("/openapi.json")).status_code == 200


async def test_an_input_over_the_flows_max_payload_is_413() -> None:
    """docs/api.md: 413 payload_too_large; a flow's max_payload below the API's
    max_body refused the input as a 400."""
    flow = Flow("memory://", max_payload=1000)
    async with flow, client_for(create_app(flow)) as api:
        saved = await api.put("/api/workflows/w", json={"steps": [{"wait": "go"}]})
        assert saved.status_code == 200
        started = await api.post("/api/workflows/w/executions", json={"input": "x" * 5000})
        body = problem(started, 413, "payload_too_large")
        assert "over max_payload 1000" in body["detail"]


async def test_an_empty_redrive_step_is_refused_by_its_schema(memory_api: Client) -> None:
    eid = await memory_api.start()
    redrive = await memory_api.post(f"/api/executions/{eid}/redrive", json={"step": ""})
    body = problem(redrive, 422, "invalid_request")
    assert body["detail"] == "step: expected `str` of length >= 1"
