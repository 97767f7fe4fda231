"""The PostgreSQL database under the store: URL, connections, errors, schema, LISTEN.

:class:`Database` owns the asyncpg pool and everything that is about talking to the
server rather than about executions: reading the URL (checked up front, so a typo is a
configuration error and not a crash at the first connection), wrapping driver errors
into :class:`~microsaga.errors.StoreError` (retryable when the server is away),
retrying idempotent reads across a restart, creating or migrating the schema under an
advisory lock, and keeping a connection that ``LISTEN``\\s. The statements about
executions are run by :mod:`microsaga.stores.postgres`; all of them are in
``sql/postgres/queries.sql``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .._urls import redact_url
from ..errors import ConfigurationError, SchemaVersionError, StoreError, one_line
from ._sql import load_queries, migrations

__all__ = ["CHANNEL", "SCHEMA_VERSION", "Database", "Q", "parse_url", "retryable"]

log = logging.getLogger("microsaga.store")

T = TypeVar("T")
Q = load_queries("postgres")
_MIGRATIONS = migrations("postgres")
SCHEMA_VERSION = _MIGRATIONS[-1][0]
_SCHEMA = (resources.files(__package__) / "sql" / "postgres" / "schema.sql").read_text()
CHANNEL = "microsaga"
_CONNECT_TIMEOUT = 10.0
# a statement that long means the server is wedged, not busy: the server cancels it
# (statement_timeout); a connection in use for twice that long gets no answer, and the
# watchdog closes it (Database._watch_busy)
_COMMAND_TIMEOUT = 60.0
_WATCHDOG_EVERY = 5.0
_READ_RETRY_FOR = 5.0
_PING_TIMEOUT = 2.0  # a connection handed back after a failure: see _release_after_failure
_LISTEN_PING = 10.0
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
# SQLSTATE classes after which the same statement may well succeed: 08 connection,
# 57 operator intervention (shutdown, starting up), 53 resources, 40 rollback.
_RETRYABLE_PG = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)
# what the server answers at connection time to a setting of the URL it does not take
_BAD_SETTING = (
    asyncpg.exceptions.UndefinedObjectError,  # 42704 unrecognized configuration parameter
    asyncpg.exceptions.InvalidParameterValueError,  # 22023 invalid value for parameter
    asyncpg.exceptions.CantChangeRuntimeParamError,  # 55P02 cannot be changed now
    asyncpg.exceptions.InsufficientPrivilegeError,  # 42501 permission denied to set it
)
# the server says the URL's role, password or database is wrong: no retry mends that
_BAD_LOGIN = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # 28000 no such role
    asyncpg.exceptions.InvalidPasswordError,  # 28P01 password authentication failed
    asyncpg.exceptions.InvalidCatalogNameError,  # 3D000 database does not exist
)
# what the driver raises on a URL it cannot read (when it reads it: at connection)
_BAD_URL = (asyncpg.exceptions.ClientConfigurationError, ValueError, OverflowError, TypeError)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_POOL_SIZE = 10
# connections kept out of the pool between uses: asyncpg's acquire and release cost
# about 45 us (a task per release), a tenth of a transition's commit
_HELD = 2


def retryable(exc: BaseException) -> bool:
    """Whether a driver error may go away when the same thing is tried again."""
    if isinstance(exc, asyncpg.PostgresError):
        return isinstance(exc, _RETRYABLE_PG)
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "connection" in text and "closed" in text
    return isinstance(exc, OSError)  # refused, reset, unreachable, timed out


def parse_url(url: str, *, setting: str = "store") -> tuple[str, int]:
    """The DSN asyncpg gets (without ``pool_size``) and the pool size.

    Checks what the driver would otherwise trip on only when it first connects, with
    an exception that names nothing (a port that is not a number or out of range, an
    unclosed ``[``, an unknown ``sslmode``, a malformed query).

    Raises:
        ConfigurationError: of ``setting``, naming the URL, its password hidden.
    """
    shown = redact_url(url)

    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(setting, f"{shown}: {why}")

    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, strict_parsing=True) if parts.query else {}
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc})") from None
    # asyncpg takes several hosts, host1:port1,host2:port2, and ports in the query
    hosts = parts.netloc.rpartition("@")[2]
    ports = [_port_of(host, bad) for host in hosts.split(",") if host]
    ports += [p for value in query.get("port", ()) for p in value.split(",")]
    for port in ports:
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise bad(f"port {port!r} is not a number from 1 to 65535")
    for mode in query.get("sslmode", ()):
        if mode not in _SSLMODES:
            raise bad(f"sslmode {mode!r} is not one of {', '.join(_SSLMODES)}")
    size = _POOL_SIZE
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "pool_size":
            kept.append((key, value))
            continue
        size = int(value) if value.isdigit() else 0
        if size < 1:
            raise bad("pool_size must be a positive integer")
    return urlunsplit(parts._replace(query=urlencode(kept))), size


def _port_of(host: str, bad: Callable[[str], ConfigurationError]) -> str:
    if host.startswith("["):  # [::1]:5432
        _, closed, rest = host[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise bad(f"malformed IPv6 host {host!r}")
        return rest[1:]
    if "]" in host:
        raise bad(f"malformed IPv6 host {host!r}")
    return host.rpartition(":")[2] if ":" in host else ""


async def _keep_session(conn: Any) -> None:
    """The pool's reset hook: nothing to reset (see ``Database.open``)."""


async def _release(pool: Any, conn: Any, url: str) -> None:
    try:
        await pool.release(conn)
    except Exception as exc:
        # resetting a broken connection fails; the pool drops it and connects anew, and
        # what was done on it stands (it must not turn into an error)
        log.debug("store %s: dropping a broken connection: %s", url, exc)


async def _release_after_failure(pool: Any, conn: Any, url: str) -> None:
    """Hand back a connection whose use raised or was cancelled, after ending the
    transaction the server may have open on it that asyncpg does not know of.

    asyncpg prepares a statement (Parse, Describe) without the Sync that ends the
    implicit transaction the server opens for it: the Sync comes with the execution.
    Cancelled in between (or its arguments refused by the driver), the call leaves that
    transaction open, with a snapshot taken; the pool's reset rolls back only the
    transactions asyncpg knows of, and the next ``BEGIN ISOLATION LEVEL`` on the
    connection fails with ActiveSQLTransactionError. A simple query ends it, changing
    nothing. Shielded: cancelled again, the caller must not leave it half done."""

    async def end_and_release() -> None:
        if not _is_lost(conn):
            try:
                await conn.execute(Q["ping"], timeout=_PING_TIMEOUT)
            except Exception as exc:  # broken: the release drops it
                log.debug("store %s: a failed connection does not answer: %s", url, exc)
        await _release(pool, conn, url)

    await asyncio.shield(end_and_release())


def _is_lost(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # terminated, so already handed back to the pool
        return True


class _Use:
    """One use of a pooled connection: ``async with database.connection() as conn``.
    A class rather than an ``asynccontextmanager``, whose generator (made, registered
    with the event loop, then dropped) cost 3 % of the client's instructions per
    order saga."""

    __slots__ = ("conn", "db", "pool")

    def __init__(self, db: Database) -> None:
        self.db = db

    async def __aenter__(self) -> Any:
        self.pool, self.conn = await self.db._take()
        return self.conn

    async def __aexit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> None:
        await self.db._give_back(self.pool, self.conn, exc)


class Database:
    """The pool of one store, the errors it raises, its schema and its LISTEN.

    ``setting`` names where the URL came from in configuration errors (``--store``).
    """

    def __init__(self, url: str, *, setting: str = "store") -> None:
        self.dsn, self.pool_size = parse_url(url, setting=setting)
        self.url = redact_url(url)
        self.setting = setting
        self._pool: Any = None
        self._held: list[Any] = []  # pooled connections taken and kept, last used last
        self._wakers: list[Callable[[], None]] = []
        self._watcher: asyncio.Task[None] | None = None
        # pooled connections in use, with the time (monotonic) their use began
        self._busy: dict[Any, float] = {}
        self._watchdog: asyncio.Task[None] | None = None

    # errors and connections ---------------------------------------------------------

    def error(self, exc: BaseException, *, lost: bool = False) -> StoreError:
        return StoreError(
            f"PostgreSQL store {self.url}: {one_line(exc)}", retryable=lost or retryable(exc)
        )

    def connection(self) -> _Use:
        """``async with`` it: a pooled connection; driver errors become
        :class:`StoreError`.

        A connection that served without error is kept (up to ``_HELD``) for the next
        use rather than handed back to the pool; one that raised or was cancelled goes
        back with no transaction open, and the pool replaces it if it is broken."""
        return _Use(self)

    async def _take(self) -> tuple[Any, Any]:
        """The pool and a connection of it, for a use (:class:`_Use`)."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"PostgreSQL store {self.url} is closed", retryable=False)
        held = self._held
        conn = None
        while held and conn is None:
            conn = held.pop()
            if _is_lost(conn):
                # closed while kept (the server ended its session: a restart, an
                # operator's pg_terminate_backend): no use failing on it, take another
                await _release(pool, conn, self.url)
                conn = None
        if conn is None:
            try:
                conn = await pool.acquire()
            except _DRIVER_ERRORS as exc:
                raise self.error(exc) from exc
        self._busy[conn] = time.monotonic()
        return pool, conn

    async def _give_back(self, pool: Any, conn: Any, exc: BaseException | None) -> None:
        """The end of a use; ``exc`` what it raised, which goes on (as a
        :class:`StoreError` if the driver raised it)."""
        self._busy.pop(conn, None)
        if exc is None:
            if len(self._held) < _HELD and self._pool is pool and not conn.is_in_transaction():
                self._held.append(conn)
            else:
                await _release(pool, conn, self.url)
            return
        # a connection that died mid-COMMIT can surface as an internal error of the
        # driver: whatever it says, the server went away (asked before the release,
        # after which the connection is the pool's)
        lost = _is_lost(conn)
        await _release_after_failure(pool, conn, self.url)
        if isinstance(exc, (*_DRIVER_ERRORS, asyncpg.exceptions.InternalClientError)):
            raise self.error(exc, lost=lost) from exc

    async def retrying(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run an idempotent ``op(connection)``, again for a few seconds while the
        server is away (a restart takes one or two)."""
        deadline = time.monotonic() + _READ_RETRY_FOR
        delay = 0.05
        while True:
            try:
                async with self.connection() as conn:
                    return await op(conn)
            except StoreError as exc:
                if not exc.retryable or self._pool is None:
                    raise
                if time.monotonic() + delay > deadline:
                    raise
                log.debug("%s; retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def tx(self, op: Callable[[Any], Awaitable[T]], *, retry: bool = False) -> T:
        """Run ``op(connection)`` in one transaction."""

        async def in_tx(conn: Any) -> T:
            async with conn.transaction():
                return await op(conn)

        if retry:
            return await self.retrying(in_tx)
        async with self.connection() as conn:
            return await in_tx(conn)

    async def snapshot(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run a read-only ``op(connection)`` on one consistent snapshot, retrying."""

        async def in_tx(conn: Any) -> T:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await op(conn)

        return await self.retrying(in_tx)

    # lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=0,  # no background reconnect attempts (and tracebacks) in an outage
                max_size=self.pool_size,
                timeout=_CONNECT_TIMEOUT,
                server_settings=self.server_settings(),
                # pooled connections keep no session state (locks are transaction-scoped,
                # LISTEN has its own connection): the default reset would cost a round
                # trip on every release
                reset=_keep_session,
            )
        except (*_DRIVER_ERRORS, *_BAD_URL) as exc:
            raise self._cannot_open(exc) from exc
        try:
            try:
                conn = await pool.acquire()  # the first connection: the URL is read here
            except (*_DRIVER_ERRORS, *_BAD_URL) as exc:
                raise self._cannot_open(exc) from exc
            try:
                async with asyncio.timeout(2 * _COMMAND_TIMEOUT):  # no watchdog runs yet
                    await self._migrate(conn)
            except _DRIVER_ERRORS as exc:  # TimeoutError is an OSError
                raise self._cannot_open(exc, connected=True) from exc
            finally:
                await _release(pool, conn, self.url)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool
        self._watchdog = asyncio.get_running_loop().create_task(
            self._watch_busy(), name="microsaga-watchdog"
        )

    async def _watch_busy(self) -> None:
        """Close the connections in use for twice ``_COMMAND_TIMEOUT``: the server,
        which cancels a statement after that long, is not answering (wedged, or a
        network that drops everything). The statement waiting then fails as on a
        lost connection, a retryable error. One task for the pool: a client timeout
        per statement (asyncpg's ``command_timeout``) starts and cancels a timer on
        every statement: 7 % of the client's instructions per order saga."""
        while True:
            await asyncio.sleep(_WATCHDOG_EVERY)
            stuck = time.monotonic() - 2 * _COMMAND_TIMEOUT
            for conn, since in list(self._busy.items()):
                if since < stuck and not _is_lost(conn):
                    log.warning(
                        "store %s: no answer from the server for %.0fs; closing the connection",
                        self.url,
                        2 * _COMMAND_TIMEOUT,
                    )
                    conn.terminate()

    def _cannot_open(self, exc: BaseException, *, connected: bool = False) -> Exception:
        if isinstance(exc, asyncpg.exceptions.InvalidSchemaNameError):  # 3F000
            return ConfigurationError(
                self.setting,
                f"{self.url}: {one_line(exc)} (create the schema its search_path names)",
            )
        if isinstance(exc, asyncpg.PostgresError):
            wrong = isinstance(exc, _BAD_LOGIN) or (not connected and isinstance(exc, _BAD_SETTING))
        else:
            wrong = isinstance(exc, _BAD_URL)
        if wrong:
            return ConfigurationError(self.setting, f"{self.url}: {one_line(exc)}")
        return StoreError(
            f"cannot open PostgreSQL store {self.url}: {one_line(exc)}", retryable=retryable(exc)
        )

    def server_settings(self) -> dict[str, str]:
        query = dict(parse_qsl(urlsplit(self.dsn).query))
        # the statements are prepared once per connection and their plans do not depend
        # on the values (ids, arrays): planning them anew on every execution, as the
        # server first does, costs more server time than running them. Nor are they
        # compiled (JIT): a plan whose cost estimate is high (a prune batch's) took
        # 177 ms to compile, each time, for 1 ms of work
        defaults = {
            "application_name": "microsaga",
            "plan_cache_mode": "force_generic_plan",
            "jit": "off",
            # the server cancels a statement after _COMMAND_TIMEOUT (here in ms)
            "statement_timeout": str(round(_COMMAND_TIMEOUT * 1000)),
        }
        return {k: v for k, v in defaults.items() if k not in query}

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            await conn.execute(Q["migration_lock"])
            if not await conn.fetchval(Q["has_version_table"]):
                await conn.execute(Q["version_table"])
            current = await conn.fetchval(Q["schema_version"])
            if current > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"PostgreSQL store {self.url} has schema version {current}, newer than "
                    f"the {SCHEMA_VERSION} this microsaga knows: upgrade microsaga"
                )
            if current == 0:
                # an empty database gets the latest schema in one go
                await conn.execute(_SCHEMA)
                await conn.execute(Q["stamp_version"], SCHEMA_VERSION)
                return
            for version, sql in _MIGRATIONS:
                if version > current:
                    await conn.execute(sql)
                    await conn.execute(Q["stamp_version"], version)

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        watchdog, self._watchdog = self._watchdog, None
        self._wakers = []
        for task in (watcher, watchdog):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is None:
            return
        held, self._held = self._held, []
        for conn in held:
            await _release(pool, conn, self.url)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await pool.close()
        except (TimeoutError, *_DRIVER_ERRORS):
            pool.terminate()

    # wake-ups ----------------------------------------------------------------------------

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` on every notification of the ``microsaga`` channel, and after
        each reconnection of the listening connection (notifications sent while it was
        down are lost, so the worker should look for itself)."""
        self._wakers.append(wake)
        if self._watcher is not None:
            return
        listening = asyncio.Event()
        self._watcher = asyncio.get_running_loop().create_task(
            self._listen(listening), name="microsaga-listen"
        )
        # start listening before the worker's first look, so nothing falls in between;
        # if the server is away the listener keeps trying and polling covers the gap
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await listening.wait()
        except TimeoutError:
            log.warning("store %s: LISTEN not established yet; polling meanwhile", self.url)

    def _wake_all(self, *_: Any) -> None:
        for wake in list(self._wakers):
            wake()

    async def _listen(self, listening: asyncio.Event) -> None:
        delay = 0.1
        failing = False
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=_CONNECT_TIMEOUT, server_settings=self.server_settings()
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._wake_all)
                if failing:
                    log.warning("store %s: LISTEN connection restored", self.url)
                failing, delay = False, 0.1
                listening.set()
                self._wake_all()
                while not conn.is_closed():
                    try:
                        async with asyncio.timeout(_LISTEN_PING):
                            await lost.wait()
                    except TimeoutError:
                        # a connection can die without a word (a cable, a firewall)
                        await conn.execute(Q["ping"], timeout=_CONNECT_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except (*_DRIVER_ERRORS, ValueError) as exc:
                if not failing:
                    log.warning("store %s: LISTEN connection lost: %s", self.url, one_line(exc))
                failing = True
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            if not failing:
                log.warning("store %s: LISTEN connection closed; reconnecting", self.url)
                failing = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
