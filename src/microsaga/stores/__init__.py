"""Stores, chosen by URL: ``memory://``, ``sqlite:///PATH``, ``postgresql://...``."""

from __future__ import annotations

from urllib.parse import urlsplit

from .._urls import redact_url
from ..errors import ConfigurationError
from ..settings import STORE_SCHEMES, check_url
from .base import Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "Store", "open_store"]


def open_store(url: str | Store, setting: str = "store") -> Store:
    """The store for ``url`` (not opened yet); drivers are imported here, lazily."""
    if isinstance(url, Store):
        return url
    scheme = urlsplit(check_url(url, setting, STORE_SCHEMES)).scheme
    if scheme == "memory":
        return MemoryStore.from_url(url)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    try:  # postgresql:// or postgres://, the schemes left
        from .postgres import PostgresStore
    except ImportError as exc:
        raise ConfigurationError(
            setting,
            f"{redact_url(url)} needs the PostgreSQL driver: pip install 'microsaga[postgres]'",
        ) from exc
    return PostgresStore(url)
