"""What the hooks read off events."""

from __future__ import annotations

__all__ = ["fallback_used"]


def fallback_used(error: str | None) -> bool:
    """Whether a step that SUCCEEDED with ``error`` did so through its fallback: the
    run keeps the failure as ``"<error> (fallback <step> used)"``; a success after
    retries keeps the last attempt's error as it is."""
    return error is not None and error.endswith(" used)") and " (fallback " in error
