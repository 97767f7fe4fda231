"""Ids and names checked at the edge, with one clear error each."""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError

__all__ = ["MAX_ID", "check_id", "shown"]

MAX_ID = 255
"""The longest id a caller may choose (execution ids; step and workflow ids)."""


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"


def check_id(value: Any, setting: str) -> str:
    """``value`` if it can be an id: a non-empty string of printable characters, with
    no space at either end, at most :data:`MAX_ID` characters.

    Raises:
        ConfigurationError: naming ``setting``.
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(setting, f"must be a non-empty string, not {shown(value)}")
    if len(value) > MAX_ID:
        raise ConfigurationError(
            setting, f"must be at most {MAX_ID} characters, not {len(value)} ({shown(value)})"
        )
    if not value.isprintable() or value.strip() != value:
        raise ConfigurationError(
            setting,
            f"must be printable characters without spaces at the ends, not {shown(value)}",
        )
    return value
