"""The ASGI app: the routes of the HTTP API over a :class:`~microsaga.Flow`, and the
dashboard.

Built on Starlette (see ``docs/api.md`` for why); every route is an
:class:`~microsaga.api.openapi.Operation` of one table, from which the requests are
decoded, the responses encoded and ``/openapi.json`` generated.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..definitions import load_definition
from ..errors import (
    ConfigurationError,
    DefinitionError,
    ExecutionNotFoundError,
    MicrosagaError,
    WorkflowNotFoundError,
)
from ..message import Message
from ..observability.metrics import Metrics
from ..status import Status
from ..steps import deferred_imports
from . import models
from .auth import BearerAuth, BodyLimit
from .errors import PROBLEM_JSON, ApiError, problem_bytes, problem_for
from .events import Feed, read_in_brief
from .openapi import Operation, document

if TYPE_CHECKING:
    from ..flow import Flow
    from ..workflow import Workflow

__all__ = ["DEFAULT_MAX_BODY", "create_app"]

log = logging.getLogger("microsaga.api")

DEFAULT_MAX_BODY = 10 * 1024 * 1024
STATIC = Path(__file__).parent / "static"
_encoder = msgspec.json.Encoder()
_NULL = msgspec.Raw(b"null")

# headers of the dashboard's page: nothing loads from anywhere but this server
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


def _problem(exc: BaseException, headers: Mapping[str, str] | None = None) -> Response:
    problem = problem_for(exc)
    if problem.status == 503:
        headers = {**(headers or {}), "Retry-After": "1"}
    return Response(
        problem_bytes(problem), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers
    )


_REGEX = re.compile(r"matching regex '.*'")


def _explain(exc: msgspec.ValidationError) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.limit``` as ``limit: expected
    `int`, got `str```."""
    text = _REGEX.sub(f"of {models.ID_WORDS}", str(exc))  # the only pattern: an id's
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        return text[:1].lower() + text[1:]
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    return f"{path}: {message[:1].lower()}{message[1:]}"


def _message(raw: msgspec.Raw | msgspec.UnsetType) -> Message | None:
    """The request a JSON value stands for, kept byte for byte (None when not given)."""
    if raw is msgspec.UNSET:
        return None
    body = bytes(raw)
    return Message(b"" if body == b"null" else body)


async def _decode_body(request: Request, op: Operation) -> Any:
    raw = await request.body()
    if not raw.strip():
        if op.body_required:
            raise ApiError(422, "invalid_request", "a JSON body is needed")
        raw = b"{}"
    try:
        if op.raw_body:
            return msgspec.json.decode(raw)
        return msgspec.json.decode(raw, type=op.body)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_request", _explain(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec decodes nesting as deep as the stack allows
        raise ApiError(400, "invalid_json", "the body is JSON nested too deep") from None


def _decode_query(request: Request, query: type) -> Any:
    values = {k: v for k, v in request.query_params.items() if v != ""}
    try:
        return msgspec.convert(values, query, strict=False)
    except msgspec.ValidationError as exc:
        detail = _explain(exc).replace("object contains unknown field", "unknown query parameter")
        raise ApiError(400, "invalid_request", detail) from None


def _endpoint(
    op: Operation, ready: Callable[[], None] | None = None
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            if ready is not None:
                ready()
            kwargs: dict[str, Any] = dict(request.path_params)
            if op.query is not None:
                kwargs["query"] = _decode_query(request, op.query)
            if op.body is not None:
                kwargs["body"] = await _decode_body(request, op)
            result = await op.handler(**kwargs)
        except Exception as exc:  # every error a problem document, never a traceback
            return _problem(exc)
        if isinstance(result, Response):
            return result
        return _json(result, op.ok)

    endpoint.__name__ = op.name
    return endpoint


class _IdConvertor(Convertor[str]):
    """An id in a route's path. An id made in Python may hold a '/' (``execution_id=
    "order/42"``, a workflow ``billing/refund``): sent as ``%2F``, which the server
    decodes before routing, it spans segments. A last segment naming an action of the
    routes is the action, so that ``GET .../x/suspend`` stays a 405."""

    _ACTIONS = "events|definition|executions|suspend|resume|abort|redrive|signal"
    regex = rf"[^/]+(?:/(?!(?:{_ACTIONS})$)[^/]+)*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("microsaga_id", _IdConvertor())


def _route_path(path: str) -> str:
    """``/api/executions/{id}`` as Starlette's route path, its ids ``_IdConvertor``'s."""
    return re.sub(r"{(\w+)}", r"{\1:microsaga_id}", path)


@contextlib.contextmanager
def _field(setting: str, field: str) -> Iterator[None]:
    """A value of the body that the flow refuses (JSON, but a number no float holds) as
    the client's bad input, naming its field: 422 ``invalid_request``, not a
    ``configuration`` error about the flow's ``request``."""
    try:
        yield
    except ConfigurationError as exc:
        if exc.setting != setting or exc.reason is None:
            raise
        raise ApiError(422, "invalid_request", f"{field}: {exc.reason}") from None


def _with_step_ids(wf: Workflow) -> dict[str, Any]:
    """``wf`` as a definition with every step's id written out (the same definition), so
    that a client can match requirements and executions' steps without knowing how each
    kind names its steps."""
    definition = wf.to_dict()
    for entry, step in zip(definition["steps"], wf.step_list, strict=True):
        entry.setdefault("id", step.id)
    return definition


# routes that answer without the flow's store
_NO_FLOW = frozenset({"openapi", "metrics"})

# ids that no execution or workflow can have: answered without asking the store (a NUL
# byte, say, which PostgreSQL cannot even compare)
_BAD_ID = re.compile(r"[\x00-\x1f\x7f]")


class Api:
    """The handlers of the routes, over one flow."""

    def __init__(self, flow: Flow, feed: Feed) -> None:
        self.flow = flow
        self.feed = feed

    def ready(self) -> None:
        """The flow is open: a closed one is the server's state, not the client's error
        (503, as a store away, not a 400)."""
        try:
            self.flow.store  # noqa: B018 - raises while the flow is not open
        except MicrosagaError:
            raise ApiError(
                503,
                "store_unavailable",
                "the flow is not open: open it before the first request (docs/api.md, "
                "'Mounting it in your own service')",
            ) from None

    # executions ----------------------------------------------------------------------

    async def list_executions(self, query: models.ListExecutions) -> models.ExecutionPage:
        status: Status | None = None
        if query.status is not None:
            status = Status.lookup(query.status)
            if status is None:
                raise ApiError(
                    400,
                    "invalid_request",
                    f"status: unknown status {query.status!r} "
                    f"(expected one of {', '.join(models.STATUS_NAMES)})",
                )
            if status in (Status.WAITING, Status.SKIPPED, Status.COMPENSATED):
                raise ApiError(
                    400,
                    "invalid_request",
                    f"status: {status.name} is a status of steps, not of executions (an "
                    "execution waiting for a signal, a timer or a child is RUNNING)",
                )
        before = query.before
        if before is not None:
            self._check_id(before)
        redrive_of = query.redrive_of
        if redrive_of is not None and _BAD_ID.search(redrive_of):
            return models.ExecutionPage(items=[], next=None)  # no execution has that id
        found = await self.flow.executions(  # a summary shows none of the step runs
            query.workflow_id, status, query.limit + 1, before, redrive_of=redrive_of, steps=False
        )
        items = found[: query.limit]
        more = len(found) > query.limit
        return models.ExecutionPage(
            items=[models.summary(info) for info in items], next=items[-1].id if more else None
        )

    async def get_execution(self, id: str, query: models.GetExecution) -> models.Execution:
        self._check_id(id)
        if query.map_runs is None:
            return models.execution(await self.flow.execution(id))
        return models.execution(*await read_in_brief(self.flow, id, query.map_runs))

    async def get_execution_definition(self, id: str) -> dict[str, Any]:
        # the definition stored with the execution: that of a workflow never saved too,
        # and the version it runs even when its workflow was saved again or removed
        self._check_id(id)
        stored = await self.flow.store.load(id)
        if stored is None:
            raise ExecutionNotFoundError(id)
        body = stored.definition.body
        if body is None:
            raise ApiError(
                404,
                "definition_not_stored",
                f"execution {id} runs a workflow with steps that cannot be saved as data "
                "(a lambda, a local function): its definition was not stored",
            )
        try:
            with deferred_imports():  # a definition to show: its functions are not run
                wf = load_definition(Message(body).json())
        except DefinitionError:  # a step kind this process does not know: as stored
            stored_body: dict[str, Any] = Message(body).json()
            return stored_body
        return _with_step_ids(wf)

    async def execution_events(self, id: str, query: models.GetExecution) -> Response:
        self._check_id(id)
        sub = await self.feed.subscribe(id, map_runs=query.map_runs)
        return StreamingResponse(
            sub.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def start_execution(
        self, workflow_id: str, body: models.StartExecution
    ) -> models.Started:
        self._check_workflow_id(workflow_id)
        wf = await self.flow.workflow_load(workflow_id)
        request = _message(body.input)
        with _field("request", "input"):
            eid = await wf.execute(request, async_=True, execution_id=body.execution_id)
        return models.Started(id=eid)

    async def suspend(self, id: str) -> models.Execution:
        self._check_id(id)
        await self.flow.suspend(id)
        return await self._changed(id)

    async def resume(self, id: str) -> models.Execution:
        self._check_id(id)
        await self.flow.resume(id)
        return await self._changed(id)

    async def abort(self, id: str, body: models.Abort) -> models.Execution:
        self._check_id(id)
        await self.flow.abort(id, compensate=body.compensate)
        return await self._changed(id)

    async def redrive(self, id: str, body: models.Redrive) -> models.Execution:
        redrive = self._optional("redrive")
        self._check_id(id)
        kwargs: dict[str, Any] = {}
        if body.step is not None:
            kwargs["step"] = body.step
        given = _message(body.input)
        if given is not None:
            kwargs["input"] = given
        with _field("input", "input"):
            eid = await redrive(id, **kwargs)
        self.feed.touch(id)
        return await self._changed(eid if isinstance(eid, str) else id)

    async def signal(self, id: str, body: models.Signal) -> models.Execution:
        signal = self._optional("signal")
        self._check_id(id)
        payload = _message(body.payload)
        with _field("payload", "payload"), _field("event", "event"):
            await signal(id, body.event, payload=payload)
        return await self._changed(id)

    def _optional(self, name: str) -> Callable[..., Awaitable[Any]]:
        """A method of the flow that a build may not have yet (501 until it does)."""
        method: Callable[..., Awaitable[Any]] | None = getattr(self.flow, name, None)
        if method is None:
            raise ApiError(
                501, "not_implemented", f"{name} is not available in this version of microsaga"
            )
        return method

    async def _changed(self, id: str) -> models.Execution:
        self.feed.touch(id)
        return models.execution(await self.flow.execution(id))

    @staticmethod
    def _check_id(id: str) -> None:
        if _BAD_ID.search(id):
            raise ExecutionNotFoundError(id)

    @staticmethod
    def _check_workflow_id(id: str) -> None:
        if _BAD_ID.search(id):
            raise WorkflowNotFoundError(id)

    # workflows -------------------------------------------------------------------------

    async def list_workflows(self) -> models.WorkflowList:
        # read as stored, not loaded: loading imports each `function:` step's module, and
        # one that this process cannot import would fail the whole list
        items = []
        for stored in await self.flow.store.list_workflows():
            definition = Message(stored.body).json()
            description = definition.get("description")
            items.append(
                models.WorkflowSummary(
                    id=stored.id,
                    version=stored.version,
                    step_count=len(definition.get("steps") or ()),
                    description=description if isinstance(description, str) else None,
                )
            )
        return models.WorkflowList(items=items)

    async def get_workflow(self, id: str, query: models.LoadWorkflow) -> dict[str, Any]:
        self._check_workflow_id(id)
        try:
            wf = await self.flow.workflow_load(id, query.version)
        except DefinitionError:
            # it does not load here (a module this process cannot import): the
            # definition as saved, for an operator to see and mend (PUT)
            stored = await self.flow.store.load_workflow(id, query.version)
            if stored is None:
                raise
            saved: dict[str, Any] = Message(stored.body).json()
            return saved
        return _with_step_ids(wf)

    async def put_workflow(self, id: str, body: Any) -> models.WorkflowSummary:
        self._check_workflow_id(id)
        if not isinstance(body, dict):
            raise DefinitionError(f"must be a JSON object, not {type(body).__name__}")
        if body.get("id") is None:  # left out, or null: the URL names it
            body["id"] = id
        given = body["id"]
        if given != id:
            raise DefinitionError(
                f"the definition's id {given!r} is not the id in the URL ({id!r})", path="id"
            )
        if self.flow.options.worker:
            wf = load_definition(body)  # a function it cannot import: 422 at once
        else:
            # the workers import the functions, where the steps run; a function they
            # cannot import leaves its executions waiting, with a note naming it
            with deferred_imports():
                wf = load_definition(body)
        version = await self.flow.workflow_save(wf)
        return models.WorkflowSummary(
            id=wf.id, version=version, step_count=len(wf.step_list), description=wf.description
        )

    # the rest ----------------------------------------------------------------------------

    async def health(self) -> models.Health:
        await self.flow.executions(limit=1)  # the store answers
        return models.Health(status="ok")

    async def metrics(self) -> Response:
        try:
            import prometheus_client
        except ImportError:
            raise ApiError(
                501,
                "not_implemented",
                "metrics need prometheus-client: pip install 'microsaga[prometheus]'",
            ) from None
        registry = next(
            (hook.registry for hook in self.flow.hooks if isinstance(hook, Metrics)),
            prometheus_client.REGISTRY,
        )
        return Response(
            prometheus_client.generate_latest(registry),
            media_type=prometheus_client.CONTENT_TYPE_LATEST,
        )

    # the table ---------------------------------------------------------------------------

    def operations(self) -> list[Operation]:
        ex, wf, ops = "executions", "workflows", "operations"
        eid = "/api/executions/{id}"
        return [
            Operation("GET", "/api/executions", "list_executions",
                      "Executions, newest first (keyset pagination: pass `next` as `before`)",
                      self.list_executions, ex, query=models.ListExecutions,
                      result=models.ExecutionPage, errors=(404, 503)),
            Operation("GET", eid, "get_execution", "One execution with its steps",
                      self.get_execution, ex, query=models.GetExecution,
                      result=models.Execution, errors=(404, 503)),
            Operation("GET", eid + "/definition", "get_execution_definition",
                      "The definition the execution runs, stored with it (as `GET "
                      "/api/workflows/{id}` answers), of a workflow never saved too",
                      self.get_execution_definition, ex, result=models.WorkflowDefinition,
                      errors=(404, 503)),
            Operation("GET", eid + "/events", "execution_events",
                      "Server-Sent Events: the execution's current state, then one event per "
                      "status change of it or a step, until it stops",
                      self.execution_events, ex, query=models.GetExecution, result=Any,
                      media="text/event-stream",
                      errors=(404, 503), extra_media=_EVENTS_MEDIA, description=_EVENTS_DOC),
            Operation("POST", "/api/workflows/{workflow_id}/executions", "start_execution",
                      "Start an execution of the workflow's latest saved version",
                      self.start_execution, ex, body=models.StartExecution, ok=202,
                      result=models.Started, errors=(404, 409, 503)),
            Operation("POST", eid + "/suspend", "suspend", "Suspend: no new step starts",
                      self.suspend, ex, result=models.Execution, errors=(404, 409, 503)),
            Operation("POST", eid + "/resume", "resume",
                      "Resume a suspended execution (or retry its failed compensations)",
                      self.resume, ex, result=models.Execution, errors=(404, 409, 503)),
            Operation("POST", eid + "/abort", "abort",
                      "Abort, rolling back what was done unless `compensate` is false",
                      self.abort, ex, body=models.Abort, result=models.Execution,
                      errors=(404, 409, 503)),
            Operation("POST", eid + "/redrive", "redrive",
                      "Run failed steps again, or the execution anew; answers the execution "
                      "that runs (a new one for a finished execution, which runs every "
                      "step again: the effects of the old one's steps whose rollback "
                      "failed, `compensation.status` FAILURE or none, stay)",
                      self.redrive, ex, body=models.Redrive, result=models.Execution,
                      errors=(404, 409, 500, 501, 503)),
            Operation("POST", eid + "/signal", "signal",
                      "Deliver an event to the steps waiting for it",
                      self.signal, ex, body=models.Signal, body_required=True,
                      result=models.Execution, errors=(404, 409, 501, 503)),
            Operation("GET", "/api/workflows", "list_workflows",
                      "Saved workflow definitions (latest versions)",
                      self.list_workflows, wf, result=models.WorkflowList, errors=(503,)),
            Operation("GET", "/api/workflows/{id}", "get_workflow",
                      "A saved definition (the latest version, or `version`)",
                      self.get_workflow, wf, query=models.LoadWorkflow,
                      result=models.WorkflowDefinition, errors=(404, 503)),
            Operation("PUT", "/api/workflows/{id}", "put_workflow",
                      "Save a definition; a changed one gets a new version",
                      self.put_workflow, wf, body=models.WorkflowDefinition, raw_body=True,
                      body_required=True, result=models.WorkflowSummary, errors=(404, 503)),
            Operation("GET", "/healthz", "health", "The server and its store answer",
                      self.health, ops, result=models.Health, errors=(503,), public=True),
            Operation("GET", "/metrics", "metrics", "Prometheus metrics", self.metrics, ops,
                      result=Any, media="text/plain", errors=(501,)),
        ]  # fmt: skip


_EVENTS_DOC = """\
Each event is `event: <type>` and one `data:` line of JSON. `execution`
(ExecutionChange): the execution's status; `step` (StepChange): a step whose status,
compensation status or attempts changed, with the whole step run; `end`:
`{"id", "status"}`, the last event, once the execution stops (SUCCESS, FAILURE, ABORTED
or SUSPEND) and none of its steps runs any more. A stream starts with the current state:
the execution and each step that has started. A comment line comes after each 15 s of
silence. With `map_runs`, a map step of more runs is given in brief as in `GET
/api/executions/{id}?map_runs=`: `map` (MapChange) when its counts or its listed runs
change, and the `step` events of its listed runs only."""

_EVENTS_MEDIA = {
    "x-events": {
        "execution": {"$ref": "#/components/schemas/ExecutionChange"},
        "step": {"$ref": "#/components/schemas/StepChange"},
        "map": {"$ref": "#/components/schemas/MapChange"},
        "end": {"type": "object", "properties": {"id": {"type": "string"}}},
    }
}


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    detail = exc.detail if exc.status_code not in (404, 405) else None
    if exc.status_code == 404:
        detail = f"no route {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return _problem(ApiError(exc.status_code, code, str(detail)), exc.headers)


def _dashboard_routes() -> list[BaseRoute]:
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        html = page.replace("{{base}}", base.replace('"', "%22"))
        return Response(html, media_type="text/html", headers=_PAGE_HEADERS)

    return [
        Route("/", index, methods=["GET"], include_in_schema=False),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def create_app(flow: Flow, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY) -> Any:
    """The ASGI app of the HTTP API and the dashboard over an open ``flow``.

    Mount it in an existing Starlette or FastAPI app (``app.mount("/saga",
    create_app(flow))``) or serve it with any ASGI server; ``microsaga serve`` does both
    for you.

    Args:
        flow: the flow whose store the API reads and steers (open it before the first
            request; the app never closes it).
        token: when set, every request but ``/healthz`` and the dashboard's files needs
            ``Authorization: Bearer <token>``.
        max_body: the largest request body accepted, in bytes (413 beyond).

    ``/metrics`` serves the registry of the flow's
    :class:`~microsaga.observability.Metrics` hook; when the flow has none and
    prometheus-client is installed, one on the default registry is added to it.
    """
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ConfigurationError("token", "must be a non-empty string")
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
        raise ConfigurationError(
            "max_body", f"must be a positive number of bytes, not {max_body!r}"
        )
    if not any(isinstance(hook, Metrics) for hook in flow.hooks):
        try:  # /metrics serves the flow's metrics (docs/observability.md)
            flow.add_hook(Metrics())
        except ConfigurationError:
            pass  # prometheus-client is not installed: /metrics says so
    feed = Feed(flow)
    api = Api(flow, feed)
    openapi: list[bytes] = []

    async def openapi_json() -> Response:
        return Response(openapi[0], media_type="application/json")

    operations = api.operations()
    operations.append(
        Operation("GET", "/openapi.json", "openapi", "This document (OpenAPI 3.1)",
                  openapi_json, "operations", result=Any)
    )  # fmt: skip
    doc = document(
        operations,
        title="microsaga",
        version=__version__,
        secured=token is not None,
        extra=(models.ExecutionChange, models.StepChange, models.MapChange),
    )
    openapi.append(_encoder.encode(doc))
    routes: list[BaseRoute] = [
        Route(
            _route_path(op.path),
            _endpoint(op, None if op.name in _NO_FLOW else api.ready),
            methods=[op.method],
            name=op.name,
        )
        for op in operations
    ]
    routes += _dashboard_routes()
    middleware = [Middleware(BodyLimit, limit=max_body)]
    if token is not None:
        middleware.insert(0, Middleware(BearerAuth, token=token.strip()))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await feed.close()

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _not_found},
        lifespan=lifespan,
    )
    app.state.feed = feed
    return app
