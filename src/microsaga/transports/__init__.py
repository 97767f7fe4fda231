"""Transports: how steps reach services (:class:`Client`) and brokers (:class:`Broker`).

=====================  ============================  =================================
URL                    broker                        driver (extra)
=====================  ============================  =================================
``memory://``          :class:`MemoryBroker`         none
``nats://host:4222``   ``nats.NatsBroker``           nats-py (``microsaga[nats]``)
``amqp://u:p@host/``   ``rabbitmq.RabbitMQBroker``   aio-pika (``microsaga[rabbitmq]``)
``redis://host/0``     ``redis.RedisBroker``         redis (``microsaga[redis]``)
=====================  ============================  =================================

Drivers are imported only when their scheme is used. The wire formats are in
``docs/transports.md``.
"""

from __future__ import annotations

import importlib

from .._urls import Url, broker_url
from .base import (
    ERROR_HEADER,
    Broker,
    Client,
    Handler,
    Subscription,
    error_reply,
    raise_for_error_reply,
    redact_url,
)
from .memory import MemoryBroker, MockClient

__all__ = [
    "ERROR_HEADER",
    "Broker",
    "Client",
    "Handler",
    "MemoryBroker",
    "MockClient",
    "Subscription",
    "error_reply",
    "open_broker",
    "raise_for_error_reply",
    "redact_url",
]

# scheme -> (module, class, driver package, extra)
_BROKERS = {
    "nats": (".nats", "NatsBroker", "nats", "nats"),
    "amqp": (".rabbitmq", "RabbitMQBroker", "aio_pika", "rabbitmq"),
    "amqps": (".rabbitmq", "RabbitMQBroker", "aio_pika", "rabbitmq"),
    "redis": (".redis", "RedisBroker", "redis", "redis"),
    "rediss": (".redis", "RedisBroker", "redis", "redis"),
}
_DRIVER_DEPENDENCIES = {"aio_pika": ("aio_pika", "aiormq", "pamqp", "yarl")}


def open_broker(url: str | Url | Broker) -> Broker:
    """The broker for ``url`` (not connected yet); its driver is imported now.

    Raises:
        ConfigurationError: unknown scheme, or the driver is not installed (the
            message names the extra to install), naming the URL's setting.
    """
    if isinstance(url, Broker):
        return url
    if isinstance(url, str):
        url = broker_url(url)
    scheme = url.scheme
    if scheme == "memory":
        return MemoryBroker()
    found = _BROKERS.get(scheme)
    if found is None:
        raise url.error(f"no broker for {str(url)!r}: use nats://, amqp://, redis:// or memory://")
    module_name, class_name, driver, extra = found
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in _DRIVER_DEPENDENCIES.get(driver, (driver,)):
            raise
        raise url.error(
            f"{scheme}:// needs the {driver} driver: pip install 'microsaga[{extra}]'"
        ) from None
    cls = getattr(module, class_name)
    broker: Broker = cls(url.value, setting=url.setting)
    return broker
