"""HTTP RPC: ``CallStep("svc", "Name", "Method")`` is ``POST {base}/Name/Method``."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from ..errors import MissingClientError, StepError, TransportError
from ..message import Message, Metadata
from .base import Client

__all__ = ["HttpClient"]

_HOP_HEADERS = frozenset(
    {"host", "content-length", "content-type", "connection", "transfer-encoding", "keep-alive"}
)


class HttpClient(Client):
    """One pooled ``httpx.AsyncClient`` for every service of a flow.

    2xx is success; 4xx except 408 and 429 fails the step without retry; 5xx, 408,
    429, refused connections and timeouts are retryable.
    """

    def __init__(self, services: Mapping[str, str], *, timeout: float = 30.0) -> None:
        self.services = services
        self._client = httpx.AsyncClient(timeout=timeout)

    def has_service(self, service: str) -> bool:
        return service in self.services

    def url(self, service: str, endpoint: str) -> str:
        base = self.services.get(service)
        if base is None:
            raise MissingClientError(f"client not set: no address for service {service!r}")
        name, _, method = endpoint.partition(".")
        return f"{base.rstrip('/')}/{name}/{method}"

    async def call(
        self, service: str, endpoint: str, request: Message, *, timeout: float | None = None
    ) -> Message:
        url = self.url(service, endpoint)
        headers = [
            (k, v)
            for k, values in request.header.to_dict().items()
            for v in values
            if k.lower() not in _HOP_HEADERS
        ]
        headers.append(("content-type", "application/json"))
        try:
            resp = await self._client.post(
                url,
                content=request.body,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise TransportError(f"POST {url}: timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {url}: {type(exc).__name__}: {exc}") from exc
        if resp.is_success:
            header = Metadata()
            for key, value in resp.headers.multi_items():
                if key.lower() not in _HOP_HEADERS:
                    header.add(key, value)
            return Message(resp.content, header)
        text = " ".join(resp.text.split())[:300]
        detail = f"POST {url}: HTTP {resp.status_code}" + (f": {text}" if text else "")
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            raise StepError(detail, code=f"http_{resp.status_code}", retryable=False)
        raise TransportError(detail)

    async def close(self) -> None:
        await self._client.aclose()
