"""Every setting of a flow in one place: explicit arguments, then ``MICROSAGA_*``.

=====================  ===================================  =====================================
setting                environment                          default
=====================  ===================================  =====================================
store                  ``MICROSAGA_STORE``                  ``sqlite:///microsaga.db``
services               ``MICROSAGA_SERVICES``               none (JSON object or ``a=url,b=url``)
broker                 ``MICROSAGA_BROKER``                 none
concurrency            ``MICROSAGA_CONCURRENCY``            64 steps running at once
lease_ttl              ``MICROSAGA_LEASE_TTL``              10 s
heartbeat_interval     ``MICROSAGA_HEARTBEAT``              lease_ttl / 3
poll_interval          ``MICROSAGA_POLL_INTERVAL``          0.25 s
max_executions         ``MICROSAGA_MAX_EXECUTIONS``         executions held at once: concurrency
worker_id              ``MICROSAGA_WORKER_ID``              host:pid:nonce:machine (see below)
max_recovery_attempts  ``MICROSAGA_MAX_RECOVERY_ATTEMPTS``  5 takeovers in a row (see below)
max_payload            ``MICROSAGA_MAX_PAYLOAD``            64 MiB (bytes of a request or response)
codec                  ``MICROSAGA_CODEC_KEYS``             none; keys make an AES-GCM codec
redact_headers         none                                 authorization, cookie, proxy-...
=====================  ===================================  =====================================

``redact_headers`` defaults to authorization, cookie and proxy-authorization.
``MICROSAGA_MAX_PAYLOAD`` is a number of bytes or one with a unit of B, KiB, MiB or GiB
(``64MiB``, ``512 KiB``).
Explicit values win over the environment (``MICROSAGA_SERVICES`` is merged under
explicit ``services``); a wrong value raises
:class:`~microsaga.errors.ConfigurationError` naming where it came from: the argument
(``broker: ...``) or the variable (``MICROSAGA_BROKER: ...``). The CLI names its
options (``--broker: ...``).

A default worker id carries the process id and a hash of the machine (boot id and PID
namespace): a worker frees at once the leases of a dead worker of its own machine, so
a process restarted after a crash resumes its executions without waiting for their
leases to expire (``docs/stores.md``). A stable ``worker_id``, unique among the
workers running at the same time (e.g. the name of a service's replica), does the same
across machines and containers: a worker restarted under it takes back its previous
life's executions at once.

An execution is taken over when its worker died (or stalled past its lease) while
running it. After more than ``max_recovery_attempts`` takeovers in a row with nothing
committed in between (a step that crashes the worker every time), the next worker does
not invoke the steps that were running again: they fail with
:class:`~microsaga.errors.RecoveryLimitError` and the execution rolls back.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._urls import (
    BROKER_SCHEMES,
    STORE_SCHEMES,
    Url,
    broker_url,
    check_url,
    redact_url,
    store_url,
)
from .codecs import PayloadCodec, codec_from_setting
from .errors import ConfigurationError
from .hooks import Hook
from .payloads import DEFAULT_MAX_PAYLOAD, DEFAULT_REDACT_HEADERS
from .step import Retry

__all__ = [
    "BROKER_SCHEMES",
    "DEFAULT_STORE",
    "STORE_SCHEMES",
    "FlowOptions",
    "Url",
    "broker_url",
    "check_services",
    "parse_services",
    "resolve_options",
    "service_url_problem",
    "store_url",
]

DEFAULT_STORE = "sqlite:///microsaga.db"

_DEFAULT_STORE_URL = Url(DEFAULT_STORE, "store")
_DEFAULT_COMPENSATION_RETRY = Retry(
    max_attempts=10, initial_interval=0.1, multiplier=2.0, max_interval=30.0
)


@dataclass(frozen=True, slots=True)
class FlowOptions:
    """The resolved settings of a :class:`~microsaga.Flow` (upstream ``Options``)."""

    store: Any = _DEFAULT_STORE_URL  # a Url or a Store object
    services: Mapping[str, str] = field(default_factory=dict)
    client: Any = None
    broker: Any = None  # a Url or a Broker object
    concurrency: int = 64
    worker: bool = True
    lease_ttl: float = 10.0
    heartbeat_interval: float = 10.0 / 3
    poll_interval: float = 0.25
    max_executions: int = 64  # executions held at once (default: the concurrency)
    max_recovery_attempts: int = 5  # takeovers in a row before running steps are given up
    claim: bool = True  # with worker: take executions from the store, not only its own
    worker_id: str | None = None
    compensation_retry: Retry = _DEFAULT_COMPENSATION_RETRY
    store_retry_for: float = 60.0
    retention: float | None = None  # seconds a finished execution is kept (None: always)
    clock: Callable[[], float] = time.time
    random: Callable[[], float] = random.random
    hooks: tuple[Hook, ...] = ()
    max_payload: int = DEFAULT_MAX_PAYLOAD  # bytes of a request or a step's response
    codec: Any = None  # a PayloadCodec: bodies and headers encoded at rest
    # headers whose values are never logged nor shown (lower case)
    redact_headers: tuple[str, ...] = DEFAULT_REDACT_HEADERS

    def __call__(self) -> FlowOptions:
        """``flow.options()`` works too, as upstream's ``Options()``."""
        return self


# every MICROSAGA_* variable microsaga reads (serve's token, the fault points and the
# CLI's tracebacks besides the flow's settings)
VARIABLES = (
    "MICROSAGA_STORE", "MICROSAGA_SERVICES", "MICROSAGA_BROKER", "MICROSAGA_CONCURRENCY",
    "MICROSAGA_LEASE_TTL", "MICROSAGA_HEARTBEAT", "MICROSAGA_POLL_INTERVAL",
    "MICROSAGA_MAX_EXECUTIONS", "MICROSAGA_WORKER_ID", "MICROSAGA_MAX_RECOVERY_ATTEMPTS",
    "MICROSAGA_MAX_PAYLOAD", "MICROSAGA_CODEC_KEYS", "MICROSAGA_API_TOKEN",
    "MICROSAGA_FAULTS", "MICROSAGA_DEBUG",
)  # fmt: skip


def check_variable_names(env: Mapping[str, str]) -> None:
    """Refuse a ``MICROSAGA_*`` variable that is surely a misspelt setting's name
    (``MICROSAGA_STORE_URL``, ``MICROSAGA_WORKERID``): ignored, it would leave the
    setting at its default (a local SQLite file instead of the PostgreSQL store meant).
    A name merely like a setting's (``MICROSAGA_STAGE``, maybe the user's own) gets a
    warning; other names pass.

    Raises:
        ConfigurationError: naming the variable and the setting it resembles.
    """
    for name in sorted(env):
        if not name.startswith("MICROSAGA_") or name in VARIABLES:
            continue
        found = _meant(name)
        if found is None:
            continue
        meant, sure = found
        if sure:
            raise ConfigurationError(
                name, f"not a microsaga setting: did you mean {meant}? (rename or unset it)"
            )
        logging.getLogger("microsaga.settings").warning(
            "%s is not a microsaga setting and is ignored (did you mean %s?)", name, meant
        )


def _meant(name: str) -> tuple[str, bool] | None:
    """The setting ``name`` resembles, and whether it is surely a misspelling of it: a
    setting's name with a part added or left out (``MICROSAGA_STORE_URL``,
    ``MICROSAGA_TOKEN``) or a letter or two off; None when it resembles none."""
    given = name.removeprefix("MICROSAGA_")
    for variable in VARIABLES:
        real = variable.removeprefix("MICROSAGA_")
        if (
            given.startswith(real + "_")
            or real.startswith(given + "_")
            or real.endswith("_" + given)
        ):
            return variable, True
    close = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=0.8)
    if not close:
        return None
    return close[0], difflib.SequenceMatcher(None, name, close[0]).ratio() >= 0.92


def parse_services(text: str, setting: str = "MICROSAGA_SERVICES") -> dict[str, str]:
    """Read ``{"name": "url"}`` JSON or ``name=url,name=url``."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):

        def distinct(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            names = [name for name, _ in pairs]
            twice = next((name for name in names if names.count(name) > 1), None)
            if twice is not None:
                raise ConfigurationError(setting, f"service {twice!r} is given twice")
            return dict(pairs)

        try:
            value = json.loads(text, object_pairs_hook=distinct)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(setting, f"not valid JSON: {exc}") from None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigurationError(setting, "must map service names to URLs")
        return value
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ConfigurationError(setting, f"expected name=url, got {item!r}")
        if name.strip() in out:  # the last one would win without a word
            raise ConfigurationError(setting, f"service {name.strip()!r} is given twice")
        out[name.strip()] = url.strip()
    return out


def service_url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be a service's base URL, or None when it can: an http:// or
    https:// URL with a host, and a port from 1 to 65535 when it gives one (httpx
    would fail every call to it, or, for a port out of range, say nothing readable)."""
    shown = redact_url(url) if isinstance(url, str) else url
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        return f"must be an http:// or https:// URL, not {shown!r}"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or not host.isprintable() or any(c.isspace() for c in host):
        return f"must name a host (http://HOST:PORT), not {shown!r}"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return f"must have a port from 1 to 65535, not {shown!r}"
    for found in re.finditer(r"\{([^{}]*)\}", url):  # a URL template (transports/http.py)
        if found.group(1) not in _PLACEHOLDERS:
            return (
                "must use {name}, {method}, {endpoint} or {service} as placeholders, "
                f"not {found.group(0)} (in {shown!r})"
            )
    return None


_PLACEHOLDERS = ("name", "method", "endpoint", "service")


def check_services(services: Mapping[str, str], setting: str = "services") -> dict[str, str]:
    """``services`` as a dict; a bad URL raises naming ``setting`` and the service."""
    out = {}
    for name, url in services.items():
        problem = service_url_problem(url)
        if problem is not None:
            raise ConfigurationError(setting, f"service {name!r} {problem}")
        out[name] = url
    return out


def _url_setting(
    values: dict[str, Any], name: str, env_name: str, schemes: tuple[str, ...]
) -> None:
    """The ``name`` setting (``store`` or ``broker``): an explicit Url, object or
    string, else the environment's, as a Url naming where it came from."""
    given = values.get(name)
    if isinstance(given, str):
        values[name] = check_url(given, name, schemes)
    elif (
        given is not None
        and not isinstance(given, Url)
        and not hasattr(given, "open" if name == "store" else "connect")
    ):
        raise ConfigurationError(name, f"must be a URL or a {name} object, not {given!r}")
    elif given is None and os.environ.get(env_name, "").strip():
        values[name] = check_url(os.environ[env_name].strip(), env_name, schemes)


def _env_number(name: str, kind: type[float] | type[int]) -> float | int | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigurationError(name, f"must be {what}, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(name, f"must be positive, not {raw!r}")
    return value


_SIZE = re.compile(r"([0-9]+) ?([A-Za-z]*)")
_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def _env_size(name: str) -> int | None:
    """A number of bytes, alone or with a unit: ``65536``, ``64MiB``, ``512 KiB``."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    found = _SIZE.fullmatch(raw.strip())
    unit = _UNITS.get(found[2].lower()) if found else None
    if found is None or unit is None:
        raise ConfigurationError(
            name,
            f"must be a whole number of bytes, alone or with a unit (B, KiB, MiB, GiB: "
            f"64MiB, 512 KiB), not {raw!r}",
        )
    if int(found[1]) <= 0:
        raise ConfigurationError(name, f"must be positive, not {raw!r}")
    return int(found[1]) * unit


def _check_number(value: Any, name: str, kind: type[float] | type[int]) -> float | int:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int if kind is int else int | float)
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        what = "a positive whole number" if kind is int else "a positive number"
        raise ConfigurationError(name, f"must be {what}, not {value!r}")
    return int(value) if kind is int else float(value)


def _check_text(text: str, name: str) -> str:
    """``text`` if it is UTF-8 text: bytes that are not come from the environment or
    the command line as lone surrogates, which no store can keep."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(name, f"not valid UTF-8 text: {text!r}") from None
    return text


def _distinct_key_ids(text: str, setting: str = "MICROSAGA_CODEC_KEYS") -> str:
    """``text`` when no key id is given twice: the last key of an id would replace the
    first, and what the first encrypted could no longer be read."""
    items = [item.partition("=") for item in text.split(",") if item.strip()]
    # an item with no key is refused by codec_from_setting, without naming its "id",
    # which may be a key written without its id
    ids = [kid.strip() for kid, _, key in items if key.strip().rstrip("=")]
    twice = next((kid for kid in ids if kid and ids.count(kid) > 1), None)
    if twice is not None:
        raise ConfigurationError(setting, f"key id {twice!r} is given twice")
    return text


def resolve_options(explicit: Mapping[str, Any]) -> FlowOptions:
    """Options from explicit values (None means unset), then the environment.

    A wrong value raises :class:`ConfigurationError` naming where it came from: the
    argument (``store``, ``broker``...) or the variable (``MICROSAGA_STORE``...).
    """
    unknown = set(explicit) - set(FlowOptions.__dataclass_fields__)
    if unknown:
        raise ConfigurationError(", ".join(sorted(unknown)), "unknown Flow option")
    values: dict[str, Any] = {k: v for k, v in explicit.items() if v is not None}
    env = os.environ

    _url_setting(values, "store", "MICROSAGA_STORE", STORE_SCHEMES)

    services = check_services(
        parse_services(env.get("MICROSAGA_SERVICES", "")), "MICROSAGA_SERVICES"
    )
    given = values.get("services") or {}
    if not isinstance(given, Mapping):
        raise ConfigurationError("services", f"must map service names to URLs, not {given!r}")
    services.update(check_services(given, "services"))
    values["services"] = services

    _url_setting(values, "broker", "MICROSAGA_BROKER", BROKER_SCHEMES)

    for flag in ("worker", "claim"):
        if flag in values and not isinstance(values[flag], bool):
            raise ConfigurationError(flag, f"must be True or False, not {values[flag]!r}")
    if "retention" in values:  # finished executions older than this are pruned by workers
        values["retention"] = _check_number(values["retention"], "retention", float)
    if "store_retry_for" in values:  # how long commits are retried while the store is away
        values["store_retry_for"] = _check_number(
            values["store_retry_for"], "store_retry_for", float
        )

    source: dict[str, str] = {}  # where each number came from, for error messages
    for name, var, kind in (
        ("concurrency", "MICROSAGA_CONCURRENCY", int),
        ("lease_ttl", "MICROSAGA_LEASE_TTL", float),
        ("heartbeat_interval", "MICROSAGA_HEARTBEAT", float),
        ("poll_interval", "MICROSAGA_POLL_INTERVAL", float),
        ("max_executions", "MICROSAGA_MAX_EXECUTIONS", int),
        ("max_payload", "MICROSAGA_MAX_PAYLOAD", int),
        ("max_recovery_attempts", "MICROSAGA_MAX_RECOVERY_ATTEMPTS", int),
    ):
        if name in values:
            values[name] = _check_number(values[name], name, kind)
            source[name] = name
        else:
            from_env = _env_size(var) if name == "max_payload" else _env_number(var, kind)
            if from_env is not None:
                values[name] = from_env
                source[name] = var
    lease_ttl = values.get("lease_ttl", 10.0)
    if "max_executions" not in values:
        values["max_executions"] = values.get("concurrency", 64)  # the default concurrency
    if "heartbeat_interval" not in values:
        values["heartbeat_interval"] = lease_ttl / 3
    elif values["heartbeat_interval"] >= lease_ttl:
        lease = f"{source['lease_ttl']}={lease_ttl}" if "lease_ttl" in source else "10 s"
        raise ConfigurationError(
            source["heartbeat_interval"], f"must be shorter than the lease ({lease})"
        )

    if "worker_id" in values:
        wid = values["worker_id"]
        if not isinstance(wid, str) or not wid.strip():
            raise ConfigurationError("worker_id", f"must be a non-empty string, not {wid!r}")
        _check_text(wid, "worker_id")
    elif env.get("MICROSAGA_WORKER_ID", "").strip():
        values["worker_id"] = _check_text(env["MICROSAGA_WORKER_ID"].strip(), "MICROSAGA_WORKER_ID")
    if "codec" in values:
        if not isinstance(values["codec"], PayloadCodec):
            raise ConfigurationError(
                "codec", f"must have encode and decode methods, not {values['codec']!r}"
            )
    elif env.get("MICROSAGA_CODEC_KEYS", "").strip():
        values["codec"] = codec_from_setting(_distinct_key_ids(env["MICROSAGA_CODEC_KEYS"]))
    if "redact_headers" in values:
        names = values["redact_headers"]
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise ConfigurationError(
                "redact_headers", f"must be a list of header names, not {names!r}"
            )
        values["redact_headers"] = tuple(n.lower() for n in names)
    retry = values.get("compensation_retry")
    if retry is not None and not isinstance(retry, Retry):
        raise ConfigurationError("compensation_retry", f"must be a Retry, not {retry!r}")
    if "hooks" in values:
        hooks = values["hooks"]
        if isinstance(hooks, Hook) or not all(isinstance(h, Hook) for h in hooks):
            raise ConfigurationError("hooks", f"must be a list of microsaga.Hook, not {hooks!r}")
        values["hooks"] = tuple(hooks)
    return FlowOptions(**values)
