"""URLs in messages and logs never show a password."""

from __future__ import annotations

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``.

    Never fails, even on a URL too malformed to parse (a bad port, an unclosed ``[``):
    it is what error messages about such URLs show. The authority ends at the first
    ``/``, ``?`` or ``#``, and the user information at its last ``@``, as
    :func:`urllib.parse.urlsplit` and the drivers read them.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    userinfo, at, hosts = rest[:end].rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return url
    return f"{scheme}://{user}:***@{hosts}{rest[end:]}"
