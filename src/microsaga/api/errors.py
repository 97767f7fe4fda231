"""Errors as ``application/problem+json`` (RFC 9457) with the error tree's ``code``.

=============================================  ======  ==========================
error                                          status  code
=============================================  ======  ==========================
body not JSON, query parameter of a wrong type  400    ``invalid_request``
no or wrong bearer token                        401    ``unauthorized``
unknown execution / workflow / route            404    ``execution_not_found``,
                                                       ``workflow_not_found``,
                                                       ``not_found``
method not allowed                              405    ``method_not_allowed``
invalid transition (resume a SUCCESS...)        409    ``invalid_transition``
an execution id taken by another workflow       409    ``execution_conflict``
body over ``max_body``, input over the flow's  413    ``payload_too_large``
``max_payload``
body of the wrong shape, bad definition         422    ``invalid_request``,
                                                       ``definition``, ``cycle``...
metrics without prometheus-client installed     501    ``not_implemented``
store or broker unavailable                     503    ``store_unavailable``...
=============================================  ======  ==========================

Anything else is a 500 ``internal`` whose detail says nothing of the cause (the log has
it): no traceback, token or internal name reaches a client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import msgspec

from ..errors import (
    CodecError,
    ConfigurationError,
    DefinitionError,
    ExecutionConflictError,
    ExecutionNotFoundError,
    InvalidTransitionError,
    MicrosagaError,
    MissingClientError,
    PayloadTooLargeError,
    StoreError,
    TransportError,
    WorkflowNotFoundError,
    one_line,
)
from .models import Problem

__all__ = [
    "PROBLEM_JSON",
    "ApiError",
    "BodyTooLargeError",
    "problem_bytes",
    "problem_for",
    "status_for",
]

log = logging.getLogger("microsaga.api")

PROBLEM_JSON = "application/problem+json"
_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """An error of the HTTP layer itself (not of the library's tree)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class BodyTooLargeError(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"the request body is larger than {limit} bytes")


def status_for(exc: MicrosagaError) -> int:
    """The HTTP status of an error of the tree."""
    if isinstance(exc, ExecutionNotFoundError | WorkflowNotFoundError):
        return 404
    if isinstance(exc, InvalidTransitionError | ExecutionConflictError):
        return 409
    if isinstance(exc, StoreError | TransportError):
        return 503
    if isinstance(exc, CodecError):  # stored data the server's keys cannot read
        return 500
    if isinstance(exc, PayloadTooLargeError):  # over the flow's max_payload
        return 413
    if isinstance(exc, DefinitionError | ConfigurationError | MissingClientError):
        return 422
    return 400


def problem_for(exc: BaseException) -> Problem:
    """The problem document of any exception a route let through."""
    if isinstance(exc, ApiError):
        return _problem(exc.status, exc.code, exc.detail)
    if isinstance(exc, MicrosagaError):
        return _problem(status_for(exc), exc.code, one_line(exc))
    log.error("internal error answering a request", exc_info=exc)
    return _problem(500, "internal", "internal error; the server's log has the details")


def _problem(status: int, code: str, detail: str) -> Problem:
    return Problem(
        type=f"urn:microsaga:problem:{code}",
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        code=code,
    )


def problem_bytes(problem: Problem) -> bytes:
    return _encoder.encode(problem)
