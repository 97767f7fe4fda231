"""Stores, chosen by URL: ``memory://``, ``sqlite:///PATH``, ``postgresql://...``."""

from __future__ import annotations

from .._urls import Url, store_url
from .base import Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "Store", "open_store"]


def open_store(url: str | Url | Store) -> Store:
    """The store for ``url`` (not opened yet); drivers are imported here, lazily.

    Raises:
        ConfigurationError: naming the URL's setting.
    """
    if isinstance(url, Store):
        return url
    if isinstance(url, str):
        url = store_url(url)
    scheme = url.scheme
    if scheme == "memory":
        return MemoryStore.from_url(url.value)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url.value, setting=url.setting)
    try:  # postgresql:// or postgres://, the schemes left
        from .postgres import PostgresStore
    except ImportError as exc:
        raise url.error(
            f"{url} needs the PostgreSQL driver: pip install 'microsaga[postgres]'"
        ) from exc
    return PostgresStore(url.value, setting=url.setting)
