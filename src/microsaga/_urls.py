"""Store and broker URLs: checked once, named by their setting, never showing a password."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigurationError

__all__ = [
    "BROKER_SCHEMES",
    "STORE_SCHEMES",
    "Url",
    "broker_url",
    "check_url",
    "redact_url",
    "store_url",
]

STORE_SCHEMES = ("memory", "sqlite", "postgresql", "postgres")
BROKER_SCHEMES = ("nats", "amqp", "amqps", "redis", "rediss", "memory")


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


@dataclass(frozen=True, slots=True)
class Url:
    """A store or broker URL, checked once, with the setting it came from (``store``,
    ``MICROSAGA_STORE``, ``--store``...), which errors about it name."""

    value: str
    setting: str

    @property
    def scheme(self) -> str:
        return urlsplit(self.value).scheme

    def __str__(self) -> str:
        return redact_url(self.value)

    def __repr__(self) -> str:
        return repr(redact_url(self.value))

    def error(self, reason: str) -> ConfigurationError:
        """A :class:`ConfigurationError` about this URL, naming its setting."""
        return ConfigurationError(self.setting, reason)


def check_url(value: str, setting: str, schemes: tuple[str, ...]) -> Url:
    """``value`` as a :class:`Url` of one of ``schemes``, named ``setting`` in errors."""
    if not isinstance(value, str):
        raise ConfigurationError(setting, f"must be a URL, not {value!r}")
    try:
        scheme = urlsplit(value).scheme
    except ValueError as exc:  # an unclosed [ in the host
        raise ConfigurationError(setting, f"{redact_url(value)}: not a valid URL ({exc})") from None
    if scheme not in schemes:
        usable = ", ".join(f"{s}://" for s in schemes)
        raise ConfigurationError(setting, f"unknown scheme in {redact_url(value)!r}; use {usable}")
    return Url(value, setting)


def store_url(value: str, setting: str = "store") -> Url:
    """A store URL given as ``setting`` (``--store`` on the command line, say)."""
    return check_url(value, setting, STORE_SCHEMES)


def broker_url(value: str, setting: str = "broker") -> Url:
    """A broker URL given as ``setting``."""
    return check_url(value, setting, BROKER_SCHEMES)
