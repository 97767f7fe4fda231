"""Transports: how steps reach services (:class:`Client`) and brokers (:class:`Broker`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Broker, Client, Handler, Subscription
from .memory import MemoryBroker, MockClient

__all__ = [
    "Broker",
    "Client",
    "Handler",
    "MemoryBroker",
    "MockClient",
    "Subscription",
    "open_broker",
]


def open_broker(url: str | Broker, setting: str = "broker") -> Broker:
    """The broker for ``url`` (not connected yet); drivers are imported lazily."""
    if isinstance(url, Broker):
        return url
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker()
    raise ConfigurationError(setting, f"no broker for {url!r} yet")
