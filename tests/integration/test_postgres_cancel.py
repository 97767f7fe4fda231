"""PostgreSQL store calls cancelled at any point of their life leave the store usable:
no transaction left open on a connection, no connection lost to the pool, nothing half
written.

Cancelling a store call is an everyday event: the HTTP API cancels the handler of a
request whose client went away, ``flow.wait(timeout=)`` and ``asyncio.wait_for`` cancel
reads, a worker that stops cancels its runs mid-commit.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import pytest

if not os.environ.get("CI"):  # under CI a missing driver fails the imports below
    pytest.importorskip("asyncpg", reason="needs asyncpg (pip install 'microsaga[postgres]')")

from microsaga import Message, Status
from microsaga.payloads import INLINE_LIMIT
from microsaga.stores.base import NewExecution, StepRecord, Transition
from microsaga.stores.postgres import PostgresStore
from tests.helpers import eventually
from tests.integration.pg import connect, fresh_database
from tests.integration.test_postgres import pending

pytestmark = pytest.mark.postgres

BIG = b'"' + b"x" * (INLINE_LIMIT + 1) + b'"'  # stored by reference, with its payload
DONE = StepRecord("a", 0, Status.SUCCESS, 1, Message(b"{}"), Message(b"[]"), None, 1, 2)


def new(eid: str, body: bytes = b"{}") -> NewExecution:
    return msgspec.structs.replace(pending(eid), request=Message(body))


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_database() as found:
        first = PostgresStore(found)
        await first.open()
        try:
            await first.commit([new("e1"), new("e2")])
        finally:
            await first.close()
        yield found


async def _claimed(store: PostgresStore, eid: str) -> Transition:
    """A new execution ``eid``, claimed: the transition that finishes it."""
    await store.commit([new(eid)])
    (claim,) = await store.claim("w1", 100.0, 1000.0, 1, only=[eid])
    return Transition(eid, claim.token, Status.RUNNING, Status.SUCCESS, [DONE], release=True)


CALLS = [
    "get_execution",
    "list_executions",
    "get_status",
    "claim",
    "commit",
    "commit-large",
    "request",
    "save_workflow",
]


def _calls(store: PostgresStore, n: int) -> dict[str, Callable[[], Awaitable[Any]]]:
    """The store calls cancelled, by name; ``n`` tells apart what each one writes."""
    return {
        "get_execution": lambda: store.get_execution("e1"),  # snapshot
        "list_executions": lambda: store.list_executions(),  # snapshot
        "get_status": lambda: store.get_status("e1"),  # retrying, no transaction
        "claim": lambda: store.claim("w2", 100.0 + n, 0.001, 2),
        "commit": lambda: store.commit([new(f"small-{n}")]),
        "commit-large": lambda: store.commit([new(f"large-{n}", BIG), new(f"with-{n}")]),
        "request": lambda: store.request("e2", "suspend", 100.0 + n),  # a transaction
        "save_workflow": lambda: store.save_workflow("wf", "h", b"{}", 1.0),
    }


async def _busy_sessions(admin: Any) -> list[Any]:
    """The store's sessions of the database that are not idle (idle in transaction)."""
    return list(
        await admin.fetch(
            "SELECT pid, state, query FROM pg_stat_activity WHERE datname = "
            "current_database() AND application_name = 'microsaga' AND state <> 'idle'"
        )
    )


async def _check_usable(store: PostgresStore, admin: Any) -> None:
    """Later calls work, no session is left in a transaction, nothing is half written."""
    assert await store.get_execution("e1") is not None
    await store.list_executions(limit=5)
    await store.save_workflow("wf", "h", b"{}", 1.0)
    # every connection back where it belongs: the server sees no transaction open
    await eventually(lambda: _none(_busy_sessions(admin)))
    assert not [c for c in store._db._held if c.is_in_transaction()]
    ids = [r[0] for r in await admin.fetch("SELECT id FROM microsaga_executions")]
    found = await store.load_many(ids)
    for eid, stored in found.items():
        if eid.startswith("large-"):  # a reference is never stored without its payload
            assert stored.request.body == BIG
            assert f"with-{eid.removeprefix('large-')}" in found
        if eid.startswith("t-") and stored.status is Status.SUCCESS:
            assert [r.step_id for r in stored.records] == ["a"]


async def _none(found: Awaitable[list[Any]]) -> bool:
    return not await found


class _Tap(asyncio.Protocol):
    """Stands between a connection's transport and asyncpg's protocol: calls
    ``arrived()`` right after each chunk of server data reached asyncpg, in the same
    step of the event loop (before the task awaiting the reply resumes)."""

    def __init__(self, inner: Any, arrived: Callable[[], None]) -> None:
        self.inner, self.arrived = inner, arrived

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)
        self.arrived()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def _cancelled_at_reply(
    store: PostgresStore, make: Callable[[], Awaitable[Any]], count: int
) -> bool:
    """Run ``make()`` on the store's one connection, cancelled as the ``count``-th chunk
    of the server's replies reaches the driver (0: once sent, before any reply).
    Returns whether it finished first."""
    async with store._db.connection() as conn:  # kept out of the pool, for the call
        transport = conn._transport
    task = asyncio.ensure_future(make())
    arrived = 0

    def one_more() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == count:
            task.cancel()

    tap = _Tap(transport.get_protocol(), one_more)
    transport.set_protocol(tap)
    try:
        if count == 0:
            await asyncio.sleep(0)  # the request is sent, no reply yet
            task.cancel()
        await task
    except asyncio.CancelledError:
        return False
    finally:
        transport.set_protocol(tap.inner)
    return True


async def test_a_call_cancelled_as_each_reply_arrives_leaves_the_store_usable(
    url: str,
) -> None:
    """Each call is cancelled before any reply (0), then as its first, second, ... reply
    from the server arrives, until it finishes first. Each time on a new connection, on
    which the driver still has to prepare the call's statements: cancelled as the reply
    to the preparation arrives, a call used to leave the server in the implicit
    transaction asyncpg opens to prepare, and the next snapshot read on the connection
    failed (ActiveSQLTransactionError)."""
    admin = await connect(url)
    try:
        for call in CALLS:
            replies = 0
            finished = False
            while not finished:
                store = PostgresStore(f"{url}?pool_size=1")
                await store.open()
                try:
                    make = _calls(store, replies)[call]
                    if call == "commit" and replies % 2:  # a worker's transition
                        unit = await _claimed(store, f"t-{replies}")
                        make = functools.partial(store.commit, [unit])
                    finished = await _cancelled_at_reply(store, make, replies)
                    await _check_usable(store, admin)
                except BaseException as exc:
                    exc.add_note(f"{call} cancelled at reply {replies}")
                    raise
                finally:
                    await store.close()
                replies += 1
            assert replies > 2, call  # cancelled at least once as a reply arrived
    finally:
        await admin.close()


async def test_calls_cancelled_at_random_points_leave_the_store_usable(url: str) -> None:
    """Several tasks call the store at once and are cancelled after a few turns of the
    event loop, a tiny delay or a timeout, some twice (as an outer timeout would)."""
    store = PostgresStore(f"{url}?pool_size=4")
    await store.open()
    admin = await connect(url)
    try:

        async def caller(seed: int) -> None:
            rnd = random.Random(seed)
            for n in range(seed * 1000, seed * 1000 + 150):
                make = rnd.choice(list(_calls(store, n).values()))
                how = rnd.random()
                try:
                    if how < 0.3:
                        await asyncio.wait_for(make(), timeout=rnd.random() * 0.004)
                        continue
                    task = asyncio.ensure_future(make())
                    if how < 0.65:
                        for _ in range(rnd.randrange(60)):
                            await asyncio.sleep(0)
                    else:
                        await asyncio.sleep(rnd.random() * 0.004)
                    task.cancel()
                    if rnd.random() < 0.2:
                        await asyncio.sleep(0)
                        task.cancel()
                    await task
                except (asyncio.CancelledError, TimeoutError):
                    pass

        await asyncio.gather(*(caller(seed) for seed in range(1, 7)))
        await eventually(lambda: _none(_busy_sessions(admin)))
        # every connection of the pool can be had at once (none was lost), and starts
        # the transaction of a snapshot read
        async with asyncio.timeout(10), AsyncExitStack() as stack:
            for _ in range(store.pool_size):
                conn = await stack.enter_async_context(store._db.connection())
                assert not conn.is_in_transaction()
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    assert await conn.fetchval("SELECT 1") == 1
        await _check_usable(store, admin)
    finally:
        await admin.close()
        await store.close()
