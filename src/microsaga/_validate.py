"""Ids and names checked at the edge, with one clear error each."""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError

__all__ = ["MAX_ID", "check_id", "name_problem", "shown"]

MAX_ID = 200
"""The longest id a caller may choose (execution ids; step and workflow ids)."""


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"


def check_id(value: Any, setting: str) -> str:
    """``value`` if it can be an id: at most :data:`MAX_ID` printable characters,
    without spaces or ``:`` (which joins an execution id and a step id into an
    idempotency key, and a parent execution's id and a step id into a child's).

    Raises:
        ConfigurationError: naming ``setting``.
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(setting, f"must be a non-empty string, not {shown(value)}")
    if len(value) > MAX_ID:
        raise ConfigurationError(
            setting, f"must be at most {MAX_ID} characters, not {len(value)} ({shown(value)})"
        )
    if not value.isprintable() or any(c.isspace() or c == ":" for c in value):
        raise ConfigurationError(
            setting, f"must be printable characters without spaces or ':', not {shown(value)}"
        )
    return value


def name_problem(
    value: Any, *, spaces: bool = False, colon: bool = False, limit: int | None = MAX_ID
) -> str | None:
    """Why ``value`` cannot be a step id, a workflow id or a topic, or None: it must be a
    non-empty string of at most ``limit`` printable characters, without spaces at
    its ends, inside it unless ``spaces``, nor ``:`` unless ``colon``."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, not {shown(value)}"
    if limit is not None and len(value) > limit:
        return f"must be at most {limit} characters, not {len(value)} ({shown(value)})"
    if not value.isprintable() or value.strip() != value:
        return f"must be printable characters without spaces at the ends, not {shown(value)}"
    if not spaces and any(c.isspace() for c in value):
        return f"must hold no spaces, not {shown(value)}"
    if not colon and ":" in value:
        return f"must hold no ':' (it joins ids into idempotency keys), not {shown(value)}"
    return None
