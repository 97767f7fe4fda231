"""JMESPath expressions over a step's context document: ``input=`` and ``when=``.

The context document of a step is ``{"request": <the execution's request>, "steps":
{<id>: <response>, ...}}`` over the steps it requires, directly or not, that succeeded,
every message decoded as JSON (null when empty, a string when not JSON). An expression
is compiled once (per text), when the step is made.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import jmespath
import jmespath.exceptions

from .errors import DefinitionError

__all__ = ["Expression", "compile_expression", "truthy"]


class Expression:
    """A compiled JMESPath expression; ``str()`` is its text."""

    __slots__ = ("_search", "text")

    def __init__(self, text: str, search: Callable[[Any], Any]) -> None:
        self.text = text
        self._search = search

    def __call__(self, document: Any) -> Any:
        return self._search(document)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


@functools.lru_cache(maxsize=4096)
def _compiled(text: str) -> Expression:
    parsed = jmespath.compile(text)
    return Expression(text, parsed.search)


def compile_expression(text: Any, path: str) -> Expression:
    """``text`` compiled.

    Raises:
        DefinitionError: naming ``path`` (``input``, ``when``) and what is wrong.
    """
    if not isinstance(text, str) or not text.strip():
        raise DefinitionError(f"must be a JMESPath expression, not {text!r}", path=path)
    try:
        return _compiled(text)
    except jmespath.exceptions.JMESPathError as exc:
        problem = " ".join(str(exc).split())
        quoted = _DASHED.sub(r'"\1"', text)
        if quoted != text and _parses(quoted):  # steps.cool-off: JMESPath has no '-'
            problem += f"; an id with '-' is quoted: {quoted}"
        raise DefinitionError(
            f"not a valid JMESPath expression {text!r}: {problem}", path=path
        ) from None


# a name after a dot holding '-' (a step id such as cool-off, or a map's map-<id>)
_DASHED = re.compile(r"(?<=\.)([A-Za-z_][\w-]*-[\w-]*)")


def _parses(text: str) -> bool:
    try:
        jmespath.compile(text)
    except jmespath.exceptions.JMESPathError:
        return False
    return True


def truthy(value: Any) -> bool:
    """JMESPath's truth: false for null, false, "", [], {} (and 0 is true)."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return bool(value)
    return True
