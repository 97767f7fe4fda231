"""Stores, chosen by URL: ``memory://``, ``sqlite:///PATH``, ``postgresql://...``."""

from __future__ import annotations

from urllib.parse import urlsplit

from .._urls import redact_url
from ..errors import ConfigurationError
from .base import Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "Store", "open_store"]


def open_store(url: str | Store, setting: str = "store") -> Store:
    """The store for ``url`` (not opened yet); drivers are imported here, lazily."""
    if isinstance(url, Store):
        return url
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:  # an unclosed [ in the host
        raise ConfigurationError(setting, f"{redact_url(url)}: not a valid URL ({exc})") from None
    if scheme == "memory":
        return MemoryStore.from_url(url)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                setting,
                f"{redact_url(url)} needs the PostgreSQL driver: pip install 'microsaga[postgres]'",
            ) from exc
        return PostgresStore(url)
    raise ConfigurationError(setting, f"unknown store URL {redact_url(url)!r}")
