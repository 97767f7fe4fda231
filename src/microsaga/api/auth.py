"""Bearer-token authentication and the request body cap, as plain ASGI middleware.

With a token, every request but ``/healthz`` and the dashboard's own files (the page
and its scripts, which hold no data and must load before the page can ask for the
token) needs ``Authorization: Bearer <token>``. The comparison takes the same time
wherever the tokens differ; the token is never logged nor put into a response. Only a
header is accepted (never a cookie or a query parameter), so a state-changing request
cannot be forged from another site, and the token never lands in an access log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import PROBLEM_JSON, ApiError, BodyTooLargeError, problem_bytes, problem_for

__all__ = ["BearerAuth", "BodyLimit", "route_path"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = ("/healthz", "/", "/index.html")
PUBLIC_PREFIX = "/static/"


def route_path(scope: Scope) -> str:
    """The request's path inside this app (without the prefix it is mounted under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


async def send_problem(send: Send, error: ApiError, headers: list[tuple[bytes, bytes]]) -> None:
    body = problem_bytes(problem_for(error))
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Refuses (401) requests without the right bearer token."""

    def __init__(self, app: App, token: str) -> None:
        if not token:
            raise ValueError("the API token must not be empty")
        self.app = app
        self._expected = _digest(b"bearer " + token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._public(scope) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        error = ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' is needed")
        await send_problem(send, error, [(b"www-authenticate", b'Bearer realm="microsaga"')])

    @staticmethod
    def _public(scope: Scope) -> bool:
        if scope["method"] not in ("GET", "HEAD"):
            return False
        path = route_path(scope)
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)

    def _allowed(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        # the scheme is case-insensitive (RFC 7235); digests of equal length are compared
        # in constant time, so neither the token nor its length shows in the timing
        scheme, _, token = given.partition(b" ")
        return hmac.compare_digest(_digest(scheme.lower() + b" " + token.strip()), self._expected)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class BodyLimit:
    """Refuses (413) request bodies larger than ``limit`` bytes: at once when the
    ``Content-Length`` says so, else as soon as the body read passes the limit."""

    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the server refuses a malformed length itself
                if declared > self.limit:
                    await send_problem(send, BodyTooLargeError(self.limit), [])
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLargeError(self.limit)
            return message

        await self.app(scope, limited, send)
