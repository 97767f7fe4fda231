"""The route table and the OpenAPI 3.1 document generated from it.

Each :class:`Operation` names its query, body and result models (structs of
:mod:`microsaga.api.models`); the app decodes requests and encodes responses with them,
and :func:`document` turns the same table into ``/openapi.json``: the schemas come from
msgspec (JSON Schema 2020-12, the dialect of OpenAPI 3.1), nothing is written twice.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec

from .errors import PROBLEM_JSON
from .models import Problem

__all__ = ["Operation", "document"]

JSON = "application/json"
_REF = "#/components/schemas/{name}"


@dataclass(frozen=True, slots=True)
class Operation:
    """One route of the API.

    Attributes:
        method, path: ``POST``, ``/api/executions/{id}/abort``.
        name: the operationId, also the handler's name.
        summary: one line for the document.
        handler: called with the path parameters as keywords, plus ``query=`` and
            ``body=`` (decoded) when the operation has them; returns a model (encoded
            as JSON with status ``ok``) or a Starlette response.
        query: the struct the query string is decoded into.
        body: the struct the JSON body is decoded into; with ``raw_body`` the handler
            gets the decoded JSON as is (it validates it itself) and ``body`` only
            describes it.
        body_required: whether an empty body is refused.
        ok, result, media: the success status, its model, its media type.
        errors: the error statuses it may answer, besides the ones every route may
            (401 with a token, 400/422/413 with a query or a body).
    """

    method: str
    path: str
    name: str
    summary: str
    handler: Callable[..., Awaitable[Any]]
    tag: str
    query: type | None = None
    body: type | None = None
    raw_body: bool = False
    body_required: bool = False
    ok: int = 200
    result: Any = None
    media: str = JSON
    errors: tuple[int, ...] = ()
    description: str | None = None
    extra_media: dict[str, Any] | None = None
    public: bool = False


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF.format(name="Problem")}}},
    }


def _query_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: absent rather than null (a query has no null)."""
    prop = {k: v for k, v in prop.items() if not (k == "default" and v is None)}
    branches = [b for b in prop.pop("anyOf", ()) if b != {"type": "null"}]
    if len(branches) == 1:
        prop = {**branches[0], **prop}
    elif branches:
        prop["anyOf"] = branches
    return prop


def document(
    operations: Sequence[Operation],
    *,
    title: str,
    version: str,
    secured: bool,
    extra: Sequence[type] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` (``extra``: models that only
    descriptions refer to)."""
    models: set[Any] = {Problem, *extra}
    for op in operations:
        models.update(t for t in (op.query, op.body, op.result) if t not in (None, Any))
    ordered = sorted(models, key=lambda t: getattr(t, "__name__", str(t)))
    refs, components = msgspec.json.schema_components(ordered, ref_template=_REF)
    schema_of = dict(zip(ordered, refs, strict=True))
    query_names = {op.query.__name__ for op in operations if op.query is not None}

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        if op.query is not None:
            query = components[op.query.__name__]
            for name, prop in query["properties"].items():
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in query.get("required", ()),
                        "schema": _query_schema(prop),
                    }
                )
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": HTTPStatus(op.ok).phrase}
        if op.result is not None:
            media: dict[str, Any] = {"schema": schema_of[op.result] if op.result is not Any else {}}
            if op.extra_media:
                media.update(op.extra_media)
            ok["content"] = {op.media: media}
        responses[str(op.ok)] = ok
        statuses = set(op.errors)
        if secured and not op.public:
            statuses.add(401)
        if op.query is not None:
            statuses.add(400)
        if op.body is not None:
            statuses.update((400, 413, 422))
        for status in sorted(statuses):
            responses[str(status)] = _problem(status)
        operation: dict[str, Any] = {
            "operationId": op.name,
            "summary": op.summary,
            "tags": [op.tag],
            "responses": responses,
        }
        if op.description:
            operation["description"] = op.description
        if params:
            operation["parameters"] = params
        if op.body is not None:
            operation["requestBody"] = {
                "required": op.body_required,
                "content": {JSON: {"schema": schema_of[op.body]}},
            }
        if secured and op.public:
            operation["security"] = []
        paths.setdefault(op.path, {})[op.method.lower()] = operation

    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Executions and workflow definitions of microsaga. Errors are "
            "application/problem+json with the stable `code` of microsaga's error tree.",
        },
        "paths": paths,
        "components": {"schemas": {k: v for k, v in components.items() if k not in query_names}},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
