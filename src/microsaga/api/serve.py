"""``microsaga serve``: the API and the dashboard under uvicorn, with a worker.

Without a token the server listens on loopback addresses only: anyone who can reach an
API without a token can steer every execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .._urls import redact_url
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..flow import Flow

__all__ = ["is_loopback", "parse_size", "read_token", "serve", "shown_store"]

TOKEN_ENV = "MICROSAGA_API_TOKEN"
# powers of 1024 under either spelling: MICROSAGA_MAX_PAYLOAD's (KiB) works here too
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}  # fmt: skip


def shown_store(url: str) -> str:
    """A store's URL for a banner: its password hidden, and a relative SQLite path
    resolved, since another folder means another store."""
    shown = redact_url(url)
    head = "sqlite:///"
    if url.startswith(head) and not url.startswith(head + "/"):
        path = url[len(head) :].partition("?")[0]
        shown += f" ({os.path.abspath(path)})"
    return shown


def parse_size(text: str, setting: str = "--max-body") -> int:
    """``10MB``, ``10MiB``, ``512kB``, ``1048576``: bytes (units are powers of 1024)."""
    found = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _UNITS or int(found.group(1)) <= 0:
        raise ConfigurationError(
            setting,
            f"expected a positive size such as 10MB, 10MiB, 512kB or 1048576, not {text!r}",
        )
    return int(found.group(1)) * _UNITS[unit]


def read_token(token_file: str | None) -> str | None:
    """The API token: the file's content (whitespace around it stripped), else
    ``MICROSAGA_API_TOKEN``, else None (the variable unset). An empty file or an empty
    variable is refused: whoever set it believes the API is protected. Never echoed in
    an error."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ConfigurationError(
                "--token-file", f"cannot read {token_file}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigurationError("--token-file", f"{token_file} is not UTF-8 text") from None
        if not token:
            raise ConfigurationError(
                "--token-file",
                f"{token_file} is empty: put the token in it, or leave --token-file out "
                f"(and {TOKEN_ENV} unset) to serve without a token, on a loopback address",
            )
        setting = "--token-file"
    else:
        given = os.environ.get(TOKEN_ENV)
        if given is None:
            return None
        token = given.strip()
        if not token:  # set on purpose, maybe from an unset variable: never no token
            raise ConfigurationError(
                TOKEN_ENV,
                f"is set but empty: set it to the token, or unset it (unset {TOKEN_ENV}) "
                "to serve without a token, on a loopback address",
            )
        setting = TOKEN_ENV
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigurationError(setting, "the token must be one word of printable characters")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ConfigurationError("--host", f"cannot listen on {host}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            "--port", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    sock.setblocking(False)
    return sock


async def serve(
    make_flow: Callable[[], Flow],
    *,
    host: str,
    port: int,
    token_file: str | None,
    max_body: str,
    announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> int:
    """Serve until SIGINT or SIGTERM; the exit status."""
    token = read_token(token_file)
    if token is not None:
        from ..observability.logs import add_secret

        add_secret(token)  # never in a log line, whatever logs it
    limit = parse_size(max_body)
    if not host.strip():  # an unset variable, say (`--host "$HOST"`)
        raise ConfigurationError("--host", "must not be empty (0.0.0.0 is every address)")
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            "--host",
            f"refusing to serve on {host} without a token (anyone reaching it could steer "
            f"every execution): set {TOKEN_ENV} or --token-file, or serve on 127.0.0.1",
        )
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ConfigurationError(
            "serve", f"needs the api extra: pip install 'microsaga[api]' ({exc})"
        ) from None

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # SIGINT and SIGTERM are handled below: the flow closes before exit

    sock = _listen(host, port)
    try:
        async with make_flow() as flow:
            app = create_app(flow, token=token, max_body=limit)
            server = Server(
                uvicorn.Config(
                    app,
                    log_config=None,  # the CLI's logging: access lines with -v
                    lifespan="on",
                    server_header=False,
                    timeout_graceful_shutdown=10,
                )
            )
            loop = asyncio.get_running_loop()
            closing: list[asyncio.Task[None]] = []

            def stop() -> None:
                if not server.should_exit:  # said once, however many signals
                    announce(
                        "serve stopping: event streams end"
                        + (
                            ", unfinished executions go to other workers"
                            if flow.options.worker
                            else ""
                        )
                    )
                server.should_exit = True
                closing.append(loop.create_task(app.state.feed.close()))  # streams end now

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            bound = sock.getsockname()
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            announce(
                f"serving http://{shown}:{bound[1]}/ on {shown_store(flow.store.url)} "
                f"(worker {'on' if flow.options.worker else 'off'}, "
                f"token {'required' if token else 'none: loopback only'})"
            )
            # its worker stopping on its own (the store migrated by a newer release)
            # stops the server: raised below, as opening the store would
            halted = loop.create_task(flow.join())
            halted.add_done_callback(lambda _: setattr(server, "should_exit", True))
            try:
                await server.serve(sockets=[sock])
            finally:
                halted.cancel()
            if halted.done() and not halted.cancelled():
                halted.result()
    finally:
        sock.close()
    return 0
