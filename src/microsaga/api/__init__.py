"""The HTTP API and the dashboard: ``create_app(flow, *, token=None)`` returns the ASGI
app; ``microsaga serve`` serves it (``docs/api.md``).

Needs the ``api`` extra (``pip install 'microsaga[api]'``, Starlette and uvicorn), except
:mod:`microsaga.api.models`, which the CLI uses too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import DEFAULT_MAX_BODY, create_app

__all__ = ["DEFAULT_MAX_BODY", "create_app"]


def __getattr__(name: str) -> Any:
    # Starlette is imported only when the app is asked for: the models need msgspec alone
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
