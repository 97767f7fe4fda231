"""HTTP RPC: ``CallStep("svc", "Name", "Method")`` is ``POST {base}/Name/Method``.

Addresses
    ``Flow(services=...)``, ``MICROSAGA_SERVICES`` or a definition's ``services:`` give
    each service an address. A plain base URL (``http://127.0.0.1:8001``) is called as
    ``POST {base}/Name/Method``. An address with placeholders is a URL template for
    services that use other paths: ``{name}``, ``{method}``, ``{endpoint}``
    (``Name.Method``) and ``{service}`` are substituted (percent-encoded), as in
    ``http://127.0.0.1:8001/rpc/{name}/{method}`` or ``http://gw/call?op={endpoint}``.
    Any other ``{...}`` is refused where the address is given to a flow (settings,
    definitions); given to this client directly, it fails the step with a
    :class:`ConfigurationError` naming ``services.<service>``.

Request
    The step's request body as is, with ``Content-Type: application/json``; every
    header of the message (``Idempotency-Key``, ``Micro-Flow-*``, ``traceparent`` ...)
    as an HTTP header, one line per value, except HTTP's own (``Host``,
    ``Content-*``, hop-by-hop), which httpx sets.

Response
    2xx: the body and the response headers except HTTP's own (``Content-*``, ``Date``,
    ``Server``, hop-by-hop) become the step's response. The body must be JSON or empty:
    step bodies are JSON, and anything else in a 2xx (an HTML page from a proxy or a UI
    at the wrong address) fails the step at once, without retry, as a
    :class:`StepError` with code ``http_invalid_json`` naming the service and endpoint.

Errors
    ===============================  ==========================================  =======
    outcome                          raised                                      retried
    ===============================  ==========================================  =======
    3xx (redirects are not followed) ``StepError`` code ``http_<status>``        no
    4xx except 408 and 429           ``StepError`` code ``http_<status>``        no
    5xx, 408, 429                    ``TransportError`` code ``http_<status>``   yes
    refused connection, reset, DNS   ``TransportError``                          yes
    timeout                          ``TransportError``                          yes
    header that HTTP cannot carry    ``StepError`` code ``http_bad_request``     no
    ===============================  ==========================================  =======

    On any retryable answer (5xx, 408, 429) a ``Retry-After`` header (seconds or an
    HTTP date, capped at ``max_retry_after``) is set as ``retry_after`` on the error;
    the engine waits at least that long before the next attempt. A participant's JSON error body
    (``{"error": {"code", "message"}}``, see :mod:`microsaga.participant`) is quoted in
    the error message.

One :class:`HttpClient` (one pooled ``httpx.AsyncClient``) serves every service of a
flow; :class:`~microsaga.Flow` creates it on first use and closes it with the flow.
At most ``max_connections`` requests are in httpx at once; the others wait in the
client, up to the call's timeout, and fail as a timeout (``PoolTimeout``) when no
connection comes free.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx
import msgspec

from .._aio import Slots
from ..errors import ConfigurationError, MissingClientError, StepError, TransportError
from ..message import Message, Metadata
from .base import Client, redact_url

__all__ = ["HttpClient"]

# Headers that describe one HTTP exchange rather than the message: never copied from a
# message into a request, nor from a response into a message.
HTTP_OWN_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "content-encoding",
        "accept-encoding",
        "date",
        "server",
        "via",
        "alt-svc",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_json_check = msgspec.json.Decoder(msgspec.Raw)  # validates without building objects


class HttpClient(Client):
    """Calls services over HTTP: one pooled ``httpx.AsyncClient`` for every service.

    Args:
        services: ``{service: base URL or URL template}``; read on every call, so
            addresses added to the mapping later are seen.
        timeout: seconds per call when the step sets no timeout.
        max_connections: connections open at once, over all services.
        max_retry_after: the longest ``Retry-After`` honoured, in seconds.
        transport: an httpx transport, e.g. ``httpx.ASGITransport(app)`` in tests.
    """

    def __init__(
        self,
        services: Mapping[str, str],
        *,
        timeout: float = 30.0,
        max_connections: int = 100,
        max_retry_after: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.services = services
        self.max_retry_after = max_retry_after
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"user-agent": "microsaga", "accept": "application/json"},
            transport=transport,
        )
        # requests in flight, each in a task of its own (see _post)
        self._requests: set[asyncio.Future[httpx.Response]] = set()
        # one per connection: requests beyond them wait here, never in httpcore's pool
        self._admitted = Slots(max_connections)

    def has_service(self, service: str) -> bool:
        """Whether ``service`` has an address."""
        return service in self.services

    def url(self, service: str, endpoint: str) -> str:
        """The URL that ``endpoint`` (``"Name.Method"``) of ``service`` is posted to.

        Raises:
            MissingClientError: the service has no address.
            ConfigurationError: the address is a template with an unknown placeholder.
        """
        address = self.services.get(service)
        if address is None:
            raise MissingClientError(f"client not set: no address for service {service!r}")
        name, _, method = endpoint.partition(".")
        if "{" not in address:
            return f"{address.rstrip('/')}/{quote(name, safe='')}/{quote(method, safe='')}"
        values = {"name": name, "method": method, "endpoint": endpoint, "service": service}

        def substitute(match: re.Match[str]) -> str:
            value = values.get(match.group(1))
            if value is None:
                raise ConfigurationError(
                    f"services.{service}",
                    f"unknown placeholder {match.group(0)} in {address!r}; "
                    "use {name}, {method}, {endpoint} or {service}",
                )
            return quote(value, safe="")

        return _PLACEHOLDER.sub(substitute, address)

    async def call(
        self, service: str, endpoint: str, request: Message, *, timeout: float | None = None
    ) -> Message:
        """POST ``request`` to ``service``'s ``endpoint``; the 2xx response as a Message.

        Raises:
            StepError: a non-retryable failure (4xx but 408/429, 3xx, non-JSON 2xx).
            TransportError: a retryable failure (5xx, 408, 429, network, timeout).
        """
        url = self.url(service, endpoint)
        where = f"{service} {endpoint}: POST {redact_url(url)}"  # stored, logged: no password
        headers = _request_headers(request.header, where)
        headers.append((b"content-type", b"application/json"))
        try:
            resp = await self._post(url, request.body, headers, timeout)
        except httpx.TimeoutException as exc:
            raise TransportError(f"{where}: timed out ({type(exc).__name__})") from exc
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            # our request is wrong: sending it again cannot help
            raise StepError(
                f"{where}: cannot send: {exc}", code="http_bad_request", retryable=False
            ) from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{where}: {_describe(exc)}") from exc
        if resp.is_success:
            return _response_message(resp, where)
        raise self._status_error(resp, where)

    async def _post(
        self, url: str, body: bytes, headers: list[tuple[bytes, bytes]], timeout: float | None
    ) -> httpx.Response:
        """The request, in a task of its own that a cancelled caller (a step timeout, an
        abort) leaves to end by httpx's own timeout.

        httpcore's pool (1.0.9) loses a connection slot for good when a request leaves
        its wait for a connection (a cancellation, or its pool timeout) just as a new
        connection was created for it: the connection stays CONNECTING, owned by no
        request, and once every slot is lost all requests wait (``PoolTimeout``) with
        no connection open. So a request enters httpx only with one of the client's
        ``max_connections`` slots, when the pool has a connection for it at once, and
        waits for a slot here instead, where leaving costs nothing."""
        admitted = self._admitted
        if not admitted.take():
            wait = timeout if timeout is not None else self._client.timeout.pool
            try:
                async with asyncio.timeout(wait):
                    await admitted.wait()
            except TimeoutError:
                raise httpx.PoolTimeout(f"no connection free within {wait:g}s") from None
        try:
            task = asyncio.ensure_future(
                self._client.post(
                    url,
                    content=body,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            )
        except BaseException:
            admitted.give()
            raise
        self._requests.add(task)
        task.add_done_callback(self._request_done)
        return await asyncio.shield(task)

    def _request_done(self, task: asyncio.Future[httpx.Response]) -> None:
        """A request ended: its slot is free; its outcome is read so that one whose
        caller was cancelled is not reported as never retrieved."""
        self._requests.discard(task)
        self._admitted.give()
        if not task.cancelled():
            task.exception()

    def _status_error(self, resp: httpx.Response, where: str) -> StepError | TransportError:
        status = resp.status_code
        detail = f"{where}: HTTP {status}"
        text = _error_text(resp)
        if text:
            detail += f": {text}"
        if 300 <= status < 400:
            location = resp.headers.get("location")
            detail += f" (redirect to {location} not followed)" if location else ""
            return StepError(detail, code=f"http_{status}", retryable=False)
        if 400 <= status < 500 and status not in (408, 429):
            return StepError(detail, code=f"http_{status}", retryable=False)
        # whatever the status: a server that says when to come back knows best
        wait = _retry_after(resp.headers.get("retry-after"), self.max_retry_after)
        # the code lets Retry(non_retryable=("http_500",)) stop retries; the engine waits
        # at least ``retry_after`` before the next attempt
        return TransportError(
            detail if wait is None else f"{detail} (retry after {wait:g}s)",
            code=f"http_{status}",
            retry_after=wait,
        )

    async def close(self) -> None:
        """Close the pooled connections, ending the requests still in flight."""
        requests = list(self._requests)
        for task in requests:
            task.cancel()
        if requests:
            await asyncio.gather(*requests, return_exceptions=True)
        await self._client.aclose()


def _request_headers(header: Metadata, where: str) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for key, values in header.to_dict().items():
        if key.lower() in HTTP_OWN_HEADERS:
            continue
        if not _TOKEN.fullmatch(key):
            raise StepError(
                f"{where}: header name {key!r} cannot be sent over HTTP",
                code="http_bad_request",
                retryable=False,
            )
        name = key.encode("ascii")
        for value in values:
            if "\r" in value or "\n" in value or "\0" in value:
                raise StepError(
                    f"{where}: header {key} has a line break or NUL, which HTTP cannot carry",
                    code="http_bad_request",
                    retryable=False,
                )
            out.append((name, value.encode("utf-8")))
    return out


def _response_message(resp: httpx.Response, where: str) -> Message:
    body = resp.content
    if body:
        try:
            _json_check.decode(body)
        except msgspec.DecodeError as exc:
            kind = resp.headers.get("content-type", "no content type")
            raise StepError(
                f"{where}: HTTP {resp.status_code} with a body that is not JSON "
                f"({kind}; {exc}): {_snippet(resp.text)}",
                code="http_invalid_json",
                retryable=False,
            ) from None
    header = Metadata()
    for key, value in resp.headers.multi_items():
        if key.lower() not in HTTP_OWN_HEADERS:
            header.add(key, value)
    return Message(body, header)


def _error_text(resp: httpx.Response) -> str:
    """The participant's ``{"error": {"code", "message"}}``, else the body's start."""
    try:
        data = msgspec.json.decode(resp.content)
    except msgspec.DecodeError:
        return _snippet(resp.text)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code")
        prefix = f"[{code}] " if isinstance(code, str) and code else ""
        return _snippet(prefix + error["message"])
    return _snippet(resp.text)


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc).strip()
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({text or 'connection failed'})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), cap)
