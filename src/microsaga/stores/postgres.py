"""The shared store: PostgreSQL through asyncpg, for many workers on many machines.

``postgresql://user:password@host:5432/dbname`` (or ``postgres://``). Query
parameters are passed to the server as settings (``?application_name=orders``,
``?synchronous_commit=off``), except ``pool_size`` (connections per store, default
10). The schema is created or migrated when the store opens; a database whose schema
is newer than this code is refused with :class:`~microsaga.errors.SchemaVersionError`.

This module decides transitions and runs the statements of ``sql/postgres/queries.sql``;
connections, errors, the schema and ``LISTEN`` are the business of
:class:`~microsaga.stores._postgres_db.Database`. How the two keep the
:class:`~microsaga.stores.base.Store` promises with many processes: ``docs/stores.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..codecs import PayloadCodec
from ..errors import (
    ExecutionNotFoundError,
    InvalidTransitionError,
    SchemaVersionError,
    StoreError,
)
from ..execution import Execution
from ..message import Message
from ..payloads import INLINE_LIMIT, Bodies, Pending
from ..status import Status
from ._postgres_db import CHANNEL, SCHEMA_VERSION, Database, Q, retryable
from ._rows import (
    DEFINITION_COLUMNS,
    NEW_EXECUTION_COLUMNS,
    POSTGRES,
    STEP_COLUMNS,
    STEP_IDS,
    RowMapping,
    briefs_of_rows,
)
from ._sql import LISTINGS
from .base import (
    COMP_UNDOING,
    UNDOING,
    Abort,
    Claim,
    ControlAction,
    MapBrief,
    NewExecution,
    StepRecord,
    Store,
    StoredDefinition,
    StoredExecution,
    StoredWorkflow,
    Transition,
    TransitionResult,
    migrated_since,
)

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresStore", "retryable"]

_NO_BEFORE = 2**62
_UNDOING = sorted(UNDOING)  # what the map_runs query lists
_COMP_UNDOING = sorted(COMP_UNDOING)
_RUNNING = (Status.RUNNING, Status.COMPENSATING)
_WRITE_ROUNDS = 20  # a row changes under a commit only on a control request or takeover
# the width of a step_runs row: execution_id, then the step run's columns
_STEP_ROW = 1 + len(STEP_COLUMNS)
# the columns of write_transitions' executions (see queries.sql)
_WRITTEN = 12
# the columns of write_expected's executions
_EXPECTED = 10
# write_expected_one's place for a step run there is not
_NO_STEP = (None,) * _STEP_ROW


def _step_rows(
    rows: RowMapping, eid: str, records: Sequence[StepRecord], pending: Pending
) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    return {(eid, r.step_id, int(r.phase)): rows.step_row(eid, r, pending) for r in records}


def _large(unit: NewExecution | Transition) -> bool:
    """Whether a unit holds a body stored by reference (microsaga.payloads)."""

    def over(m: Message | None) -> bool:
        return m is not None and len(m.body) > INLINE_LIMIT

    if isinstance(unit, NewExecution):
        return over(unit.request) or any(over(r.request) for r in unit.starts)
    return over(unit.response) or any(
        over(r.request) or over(r.response)
        for records in (unit.records, unit.starts)
        for r in records
    )


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to one list per column, the ``unnest`` arrays of a set-based statement."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


@dataclass(slots=True)
class _Row:
    """An execution row as a commit read it, and what the batch does to it."""

    status: Status
    abort: int
    owner: str | None
    token: int
    dirty: bool = False
    has_response: bool = False
    response: Message | None = None
    error: str | None = None
    release: bool = False
    at: float = 0.0


class PostgresStore(Store):
    """Keeps everything in PostgreSQL; ``docs/stores.md`` says how, with many workers.

    Args:
        url: ``postgresql://...``, with the parameters of the module docstring.
        setting: the name of the setting the URL came from, for configuration errors
            (``--store``, ``MICROSAGA_STORE``).

    Raises:
        ConfigurationError: a URL the driver could not read (at once), or a setting or
            login the server refuses (at :meth:`open`).
    """

    commit_concurrency = 3
    # batches committed side by side keep the server's cores busy and share WAL flushes
    batch_split = 32

    def __init__(self, url: str, *, setting: str = "store") -> None:
        self._db = Database(url, setting=setting)
        self.url = self._db.url
        self.pool_size = self._db.pool_size
        # definitions never change once stored
        self._definitions: dict[str, StoredDefinition] = {}
        self._rows = POSTGRES.with_bodies(Bodies())

    def use_codec(self, codec: PayloadCodec | None) -> None:
        self._rows = POSTGRES.with_bodies(Bodies(codec))

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    # workflows ------------------------------------------------------------------------

    async def save_workflow(self, workflow_id: str, hash: str, body: bytes, now: float) -> int:
        async def save(conn: Any) -> int:
            await conn.execute(Q["lock_workflow"], workflow_id)
            latest = await conn.fetchrow(Q["save_workflow_latest"], workflow_id)
            if latest is not None and latest[1] == hash:
                return int(latest[0])
            version = latest[0] + 1 if latest is not None else 1
            await conn.execute(Q["insert_workflow"], workflow_id, version, hash, body, now)
            return int(version)

        # saving the same hash again is a no-op, so a retry after a lost reply is safe
        return await self._db.tx(save, retry=True)

    async def load_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> StoredWorkflow | None:
        async def load(conn: Any) -> StoredWorkflow | None:
            if version is None:
                row = await conn.fetchrow(Q["load_workflow_latest"], workflow_id)
            else:
                row = await conn.fetchrow(Q["load_workflow_version"], workflow_id, version)
            return None if row is None else self._rows.workflow(row)

        return await self._db.retrying(load)

    async def list_workflows(self) -> list[StoredWorkflow]:
        async def rows(conn: Any) -> list[StoredWorkflow]:
            return [self._rows.workflow(r) for r in await conn.fetch(Q["list_workflows"])]

        return await self._db.retrying(rows)

    async def remove_workflow(self, workflow_id: str) -> bool:
        async with self._db.connection() as conn:
            status = await conn.execute(Q["remove_workflow"], workflow_id)
        return int(status.rsplit(" ", 1)[-1]) > 0

    # running ------------------------------------------------------------------------------

    async def commit(
        self, units: Sequence[NewExecution | Transition]
    ) -> list[bool | TransitionResult]:
        if not units:
            return []
        results: list[bool | TransitionResult] = [False] * len(units)
        news: list[tuple[int, NewExecution]] = []
        transitions: list[tuple[int, Transition]] = []
        large = False
        for i, u in enumerate(units):
            if isinstance(u, NewExecution):
                news.append((i, u))
            else:
                transitions.append((i, u))
            large = large or _large(u)
        async with self._db.connection() as conn:
            if large:
                # one transaction with the payloads the rows refer to: a reference
                # is never stored without its payload
                async with conn.transaction():
                    return await self._commit_large(conn, units, news, transitions)
            if news:
                created = await self._create(conn, [u for _, u in news])
                for (i, _), ok in zip(news, created, strict=True):
                    results[i] = ok
            if transitions:
                for i, result in (await self._transition(conn, transitions)).items():
                    results[i] = result
        return results

    async def _commit_large(
        self,
        conn: Any,
        units: Sequence[NewExecution | Transition],
        news: list[tuple[int, NewExecution]],
        transitions: list[tuple[int, Transition]],
    ) -> list[bool | TransitionResult]:
        """A commit with large bodies, in one transaction with the payloads it needs."""
        results: list[bool | TransitionResult] = [False] * len(units)
        pending = Pending()
        if news:
            created = await self._create(conn, [u for _, u in news], pending)
            for (i, _), ok in zip(news, created, strict=True):
                results[i] = ok
        if transitions:
            for i, result in (await self._transition(conn, transitions, pending)).items():
                results[i] = result
        if pending:
            await self._put_payloads(conn, pending)
        return results

    async def _put_payloads(self, conn: Any, pending: Pending) -> None:
        stored = {r[0] for r in await conn.fetch(Q["existing_payloads"], list(pending.payloads))}
        payload_out = self._rows.bodies.payload_out
        held = {h for h, _ in pending.refs}
        new = [
            (h, payload_out(b))
            for h, b in pending.payloads.items()
            if h in held and h not in stored
        ]
        refs = sorted(pending.refs)
        await conn.execute(
            Q["insert_payloads"],
            [h for h, _ in new],
            [b for _, b in new],
            [eid for _, eid in refs],
            [h for h, _ in refs],
        )

    async def _payloads(self, conn: Any, *row_lists: Sequence[Any]) -> dict[str, bytes]:
        """The stored payloads that rows refer to, by hash."""
        refs = self._rows.bodies.refs(r for rows in row_lists for r in rows)
        if not refs:
            return {}
        return {r[0]: r[1] for r in await conn.fetch(Q["load_payloads"], list(refs))}

    async def _create(
        self, conn: Any, news: list[NewExecution], pending: Pending | None = None
    ) -> list[bool]:
        definitions: dict[str, NewExecution] = {}
        first: dict[str, NewExecution] = {}
        for new in news:
            known = definitions.get(new.definition_hash)
            if known is None or (known.definition is None and new.definition is not None):
                definitions[new.definition_hash] = new
            first.setdefault(new.id, new)
        # a definition the flow believes stored is inserted without a body if missing,
        # as the SQLite store does: the execution row needs it
        defs = [self._rows.definition_row(d) for d in definitions.values()]
        took = Pending()
        executions = []
        starts: list[tuple[Any, ...]] = []
        for new in first.values():
            executions.append(self._rows.new_execution_row(new, took))
            starts.extend(_step_rows(self._rows, new.id, new.starts, took).values())
        if len(executions) == 1 and len(defs) == 1 and len(starts) <= 1:
            start = starts[0] if starts else _NO_STEP
            found = await conn.fetch(
                Q["create_execution_one"], *defs[0], *executions[0], *start, CHANNEL
            )
        else:
            found = await conn.fetch(
                Q["create_executions"],
                *_columns(defs, len(DEFINITION_COLUMNS)),
                *_columns(executions, len(NEW_EXECUTION_COLUMNS)),
                *_columns(starts, _STEP_ROW),
                CHANNEL,
            )
        inserted = {r[0] for r in found}
        if pending is not None and took:
            # the references of executions that were created; their payloads
            pending.refs.update(ref for ref in took.refs if ref[1] in inserted)
            held = {h for h, _ in pending.refs}
            pending.payloads.update((h, b) for h, b in took.payloads.items() if h in held)
        return [new.id in inserted and first[new.id] is new for new in news]

    async def _transition(
        self, conn: Any, units: list[tuple[int, Transition]], pending: Pending | None = None
    ) -> dict[int, TransitionResult]:
        """Decide on a fresh read, write if nothing changed since; again for the
        executions that did change (a control request or a takeover came between).

        Transitions of distinct executions are first written without the read, on the
        condition that the execution is as its owner expects: one statement, one round
        trip, for the usual transition (``_write_expected``)."""
        results: dict[int, TransitionResult] = {}
        if len({t.execution_id for _, t in units}) == len(units):
            units = await self._write_expected(conn, units, results, pending)
            if not units:
                return results
        mapping = self._rows
        for _ in range(_WRITE_ROUNDS):
            took = Pending()
            ids = sorted({t.execution_id for _, t in units})
            rows = {
                r[0]: _Row(Status(r[1]), r[2], r[3], r[4])
                for r in await conn.fetch(Q["read_executions"], ids)
            }
            seen = {eid: (int(r.status), r.abort, r.owner, r.token) for eid, r in rows.items()}
            # one row per (execution, step, phase), the last write winning as if the
            # units were applied one after another: one INSERT cannot update a row twice
            steps: dict[tuple[str, str, int], tuple[Any, ...]] = {}
            # the rules of MemoryStore._transition, applied in order to the rows read
            for i, t in units:
                eid = t.execution_id
                row = rows.get(eid)
                if row is None or row.token != t.token or row.owner is None:
                    # never owned again: a claim takes a new token
                    status = row.status if row is not None else Status.PENDING
                    results[i] = TransitionResult(False, status, Abort.NONE, False)
                    continue
                steps.update(_step_rows(mapping, eid, t.records, took))
                applied = row.status is t.expect and row.abort <= t.abort
                if applied:
                    if t.status is not None:
                        row.status = t.status
                        if t.response is not None:
                            row.has_response, row.response = True, t.response
                        if t.error is not None:
                            row.error = t.error
                    if t.starts and row.status in _RUNNING:
                        steps.update(_step_rows(mapping, eid, t.starts, took))
                    if t.release:
                        row.owner, row.release = None, True
                row.dirty, row.at = True, t.at
                results[i] = TransitionResult(True, row.status, Abort(row.abort), applied)
            changed = [
                (
                    eid,
                    *seen[eid],
                    int(r.status),
                    r.has_response,
                    mapping.body_out(r.response.body, eid, took)
                    if r.response is not None
                    else None,
                    mapping.header_out(r.response.header) if r.response is not None else None,
                    r.error,
                    r.release,
                    r.at,
                )
                for eid, r in rows.items()
                if r.dirty
            ]
            if not changed:
                return results
            written = {
                r[0]
                for r in await conn.fetch(
                    Q["write_transitions"],
                    *_columns(changed, _WRITTEN),
                    *_columns(list(steps.values()), _STEP_ROW),
                )
            }
            if pending is not None:
                pending.refs.update(ref for ref in took.refs if ref[1] in written)
                pending.payloads.update(took.payloads)  # those of no ref are not stored
            missed = {eid for eid, r in rows.items() if r.dirty} - written
            units = [(i, t) for i, t in units if t.execution_id in missed]
            if not units:
                return results
        raise StoreError(
            f"PostgreSQL store {self.url}: executions kept changing during a commit",
            retryable=True,
        )

    async def _write_expected(
        self,
        conn: Any,
        units: list[tuple[int, Transition]],
        results: dict[int, TransitionResult],
        pending: Pending | None = None,
    ) -> list[tuple[int, Transition]]:
        """Write each transition as if its execution is as expected (still owned with
        its token, in the status it expects): the outcome is then known without reading.
        Returns the units whose execution was not, left for ``_transition`` to decide."""
        mapping = self._rows
        took = Pending()
        executions = []
        steps: dict[tuple[str, str, int], tuple[Any, ...]] = {}
        outcome: dict[str, Status] = {}
        aborts = [int(t.abort) for _, t in units]
        for _, t in units:
            eid, status = t.execution_id, t.status if t.status is not None else t.expect
            response = t.response if t.status is not None else None
            executions.append(
                (
                    eid,
                    t.token,
                    int(t.expect),
                    int(status),
                    response is not None,
                    mapping.body_out(response.body, eid, took) if response is not None else None,
                    mapping.header_out(response.header) if response is not None else None,
                    t.error if t.status is not None else None,
                    t.release,
                    t.at,
                )
            )
            steps.update(_step_rows(mapping, eid, t.records, took))
            if t.starts and status in _RUNNING:
                steps.update(_step_rows(mapping, eid, t.starts, took))
            outcome[eid] = status
        if len(executions) == 1 and len(steps) <= 2:
            two = [*steps.values(), _NO_STEP, _NO_STEP][:2]
            rows = await conn.fetch(
                Q["write_expected_one"], *executions[0], *two[0], *two[1], aborts[0]
            )
        else:
            rows = await conn.fetch(
                Q["write_expected"],
                *_columns(executions, _EXPECTED),
                *_columns(list(steps.values()), _STEP_ROW),
                aborts,
            )
        written = {r[0]: r[1] for r in rows}
        if pending is not None:
            pending.refs.update(ref for ref in took.refs if ref[1] in written)
            pending.payloads.update(took.payloads)  # those of no ref are not stored
        left = []
        for i, t in units:
            abort = written.get(t.execution_id)
            if abort is None:
                left.append((i, t))
            else:
                results[i] = TransitionResult(True, outcome[t.execution_id], Abort(abort), True)
        return left

    async def claim(
        self,
        owner: str,
        now: float,
        ttl: float,
        limit: int,
        *,
        alive: Collection[str] = (),
        only: Collection[str] | None = None,
        skip: Collection[str] = (),
    ) -> list[Claim]:
        ids = None if only is None else sorted(only)
        args = (owner, now + ttl, now, limit, sorted(alive), ids, sorted(skip))
        async with self._db.connection() as conn:
            rows = await conn.fetch(Q["claim"], *args)
        return [Claim(eid, token, attempts) for eid, token, attempts in rows]

    async def renew(
        self, owner: str, execution_ids: Collection[str], now: float, ttl: float
    ) -> set[str]:
        ids = sorted(execution_ids)

        async def renew(conn: Any) -> set[str]:
            return {r[0] for r in await conn.fetch(Q["renew"], owner, now + ttl, ids)}

        return await self._db.retrying(renew)

    async def release(
        self, execution_id: str, token: int, until: float, note: str | None = None
    ) -> None:
        async def release(conn: Any) -> None:
            await conn.execute(Q["release"], execution_id, token, until, CHANNEL, note)

        await self._db.retrying(release)

    async def give_up_unread_steps(self, execution_id: str, error: str, at: float) -> None:
        async def give_up(conn: Any) -> None:
            await conn.execute(Q["give_up_unread_steps"], execution_id, error, at)

        await self._db.retrying(give_up)

    async def release_all(self, owner: str) -> int:
        async def release_all(conn: Any) -> int:
            row = await conn.fetchrow(Q["release_all"], owner, CHANNEL)
            return int(row[0])

        return await self._db.retrying(release_all)

    async def lease_owners(self) -> set[str]:
        async def owners(conn: Any) -> set[str]:
            return {r[0] for r in await conn.fetch(Q["lease_owners"])}

        return await self._db.retrying(owners)

    async def held_by(self, owner: str) -> dict[str, tuple[int, float]]:
        async def held(conn: Any) -> dict[str, tuple[int, float]]:
            rows = await conn.fetch(Q["held_by"], owner)
            return {r[0]: (int(r[1]), float(r[2])) for r in rows}

        return await self._db.retrying(held)

    async def due_between(self, since: float, now: float) -> bool:
        async def due(conn: Any) -> bool:
            return await conn.fetchval(Q["due_between"], since, now) is not None

        return await self._db.retrying(due)

    async def check_schema(self) -> None:
        async def read(conn: Any) -> int:
            return int(await conn.fetchval(Q["schema_version"]))

        current = await self._db.retrying(read)
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                migrated_since(f"PostgreSQL store {self.url}", current, SCHEMA_VERSION)
            )

    async def lease_expiry(self, owner: str) -> float | None:
        async def latest(conn: Any) -> float | None:
            found = await conn.fetchval(Q["lease_expiry"], owner)
            return None if found is None else float(found)

        return await self._db.retrying(latest)

    async def load(self, execution_id: str) -> StoredExecution | None:
        return (await self.load_many([execution_id])).get(execution_id)

    async def load_many(self, execution_ids: Sequence[str]) -> dict[str, StoredExecution]:
        async def load(conn: Any) -> dict[str, StoredExecution]:
            return await self._load(conn, list(execution_ids))

        return await self._db.retrying(load)

    async def _load(self, conn: Any, ids: list[str]) -> dict[str, StoredExecution]:
        rows = await conn.fetch(Q["load_executions"], ids)
        missing = self._rows.definition_hashes(rows) - self._definitions.keys()
        if missing:
            for d in await conn.fetch(Q["load_definitions"], list(missing)):
                self._definitions[d[0]] = self._rows.definition(d)
        found = await self._payloads(conn, rows)
        return self._rows.stored_executions(rows, self._definitions, found)

    async def definition_of(self, execution_id: str) -> tuple[Status, StoredDefinition] | None:
        async def read(conn: Any) -> tuple[Status, StoredDefinition] | None:
            row = await conn.fetchrow(Q["definition_of"], execution_id)
            if row is None:
                return None
            status, hash = row
            if hash not in self._definitions:
                for d in await conn.fetch(Q["load_definitions"], [hash]):
                    self._definitions[d[0]] = self._rows.definition(d)
            found = self._definitions.get(hash)  # None: pruned meanwhile
            return None if found is None else (Status(status), found)

        return await self._db.retrying(read)

    # control ----------------------------------------------------------------------------

    async def request(
        self,
        execution_id: str,
        action: ControlAction,
        now: float,
        reason: str | None = None,
        *,
        steps: Sequence[str] | None = None,
        body: bytes | None = None,
    ) -> Status:

        async def request(conn: Any) -> Status:
            row = await conn.fetchrow(Q["control_row"], execution_id)
            if row is None:
                raise ExecutionNotFoundError(execution_id)
            change = self._rows.control_change(action, row, now)
            await conn.execute(
                Q["control_update"],
                execution_id,
                int(change.status),
                change.abort,
                now,
                reason,
                change.free_lease or change.final,
            )
            if change.retry_compensations:
                await conn.execute(Q["retry_compensations"], execution_id)
            if change.retry_steps:
                named = list(steps or ())
                pending = Pending()
                stored = None if body is None else self._rows.body_out(body, execution_id, pending)
                await conn.execute(Q["retry_steps"], execution_id, steps is None, named, stored)
                if pending:
                    await self._put_payloads(conn, pending)
            await conn.execute(Q["lock_controls"])
            await conn.execute(Q["insert_control"], execution_id, action, now)
            await conn.execute(Q["notify"], CHANNEL, "control")
            return change.status

        return await self._db.tx(request)

    async def controls(self, after: int) -> tuple[list[str], int]:
        async def controls(conn: Any) -> tuple[list[str], int]:
            if after >= _NO_BEFORE:
                return [], int(await conn.fetchval(Q["last_control"]))
            rows = await conn.fetch(Q["controls_after"], after)
            return [r[1] for r in rows], (rows[-1][0] if rows else after)

        return await self._db.retrying(controls)

    async def prune(self, before: float, statuses: Collection[Status], limit: int) -> int:
        async def prune(conn: Any) -> int:
            found = await conn.fetchval(
                Q["prune_executions"], [int(s) for s in statuses], before, limit
            )
            return int(found)

        return await self._db.retrying(prune)

    async def prune_controls(self, before: float) -> None:
        async def prune(conn: Any) -> None:
            await conn.execute(Q["prune_controls"], before)

        await self._db.retrying(prune)

    # waiting ------------------------------------------------------------------------------

    async def signal(self, execution_id: str, event: str, payload: Message, now: float) -> None:
        header = self._rows.header_out(payload.header)

        async def signal(conn: Any) -> None:
            row = await conn.fetchrow(Q["signal_row"], execution_id)
            if row is None:
                raise ExecutionNotFoundError(execution_id)
            if Status(row[0]).finished:
                raise InvalidTransitionError(
                    f"cannot signal an execution that is {Status(row[0]).name}"
                )
            body = self._rows.body_out(payload.body, execution_id, None)
            await conn.execute(Q["insert_signal"], execution_id, event, body, header, now)
            await self._wake(conn, execution_id, "signal", now)

        await self._db.tx(signal, retry=True)

    async def _wake(self, conn: Any, execution_id: str, action: str, now: float) -> None:
        await conn.execute(Q["wake"], execution_id)
        await conn.execute(Q["lock_controls"])
        await conn.execute(Q["insert_control"], execution_id, action, now)
        await conn.execute(Q["notify"], CHANNEL, action)

    async def signals(self, execution_id: str) -> dict[str, Message]:
        async def signals(conn: Any) -> dict[str, Message]:
            rows = await conn.fetch(Q["signals_of"], execution_id)
            return {r[0]: self._rows.message(r[1], r[2]) for r in rows}

        return await self._db.retrying(signals)

    async def park(
        self,
        execution_id: str,
        token: int,
        until: float,
        events: Collection[str],
        children: Collection[str],
        note: str,
    ) -> bool:
        async def park(conn: Any) -> bool:
            # the row lock orders this against a signal of the same execution
            await conn.execute(Q["lock_execution"], execution_id)
            if await conn.fetchval(Q["park_blocked"], execution_id, list(events), list(children)):
                return False
            return await conn.fetchval(Q["park"], execution_id, token, until, note) is not None

        return await self._db.tx(park, retry=True)

    async def wake(self, execution_id: str, now: float) -> None:
        async def wake(conn: Any) -> None:
            # locked first, as a signal does: a park in flight (which did not see what
            # wakes it) commits before the update below, which then finds it parked.
            # Unlocked, the update skips the row, which is not parked in its snapshot
            await conn.execute(Q["lock_execution"], execution_id)
            await self._wake(conn, execution_id, "wake", now)

        await self._db.tx(wake, retry=True)

    # queries ------------------------------------------------------------------------------

    async def get_status(self, execution_id: str) -> tuple[Status, Abort] | None:
        async def get(conn: Any) -> tuple[Status, Abort] | None:
            row = await conn.fetchrow(Q["get_status"], execution_id)
            return None if row is None else self._rows.status(row)

        return await self._db.retrying(get)

    async def count_waiting(self) -> int:
        async def count(conn: Any) -> int:
            return int(await conn.fetchval(Q["count_waiting"]))

        return await self._db.retrying(count)

    async def _executions(
        self, conn: Any, rows: list[Any], with_steps: bool = True
    ) -> list[Execution]:
        if not with_steps:
            found = await self._payloads(conn, rows, [])
            return [replace(e, steps={}) for e in self._rows.executions(rows, [], found)]
        steps = await conn.fetch(Q["step_rows_of_many"], [r[0] for r in rows]) if rows else []
        found = await self._payloads(conn, rows, steps)
        return self._rows.executions(rows, steps, found)

    async def get_execution(self, execution_id: str) -> Execution | None:
        async def get(conn: Any) -> Execution | None:
            row = await conn.fetchrow(Q["get_execution"], execution_id)
            return None if row is None else (await self._executions(conn, [row]))[0]

        return await self._db.snapshot(get)

    async def get_execution_in_brief(
        self, execution_id: str, map_runs: int
    ) -> tuple[Execution, dict[str, MapBrief]] | None:
        async def get(conn: Any) -> tuple[Execution, dict[str, MapBrief]] | None:
            row = await conn.fetchrow(Q["get_execution"], execution_id)
            if row is None:
                return None
            step_ids = row[STEP_IDS]
            counted = await conn.fetch(
                Q["map_runs"], execution_id, step_ids, map_runs, _UNDOING, _COMP_UNDOING
            )
            maps, runs = briefs_of_rows(counted, map_runs)
            steps = await conn.fetch(Q["step_rows_named"], execution_id, step_ids + runs)
            found = await self._payloads(conn, [row], steps)
            return self._rows.executions([row], steps, found)[0], maps

        return await self._db.snapshot(get)

    async def list_executions(
        self,
        workflow_id: str | None = None,
        status: Status | None = None,
        limit: int = 100,
        before: str | None = None,
        *,
        redrive_of: str | None = None,
        steps: bool = True,
    ) -> list[Execution]:
        async def listing(conn: Any) -> list[Execution]:
            bound = _NO_BEFORE
            if before is not None:
                found = await conn.fetchval(Q["seq_of"], before)
                if found is None:
                    raise ExecutionNotFoundError(before)
                bound = found
            if redrive_of is not None:
                status_code = None if status is None else int(status)
                rows = await conn.fetch(
                    Q["list_executions_by_redrive"],
                    bound,
                    limit,
                    redrive_of,
                    workflow_id,
                    status_code,
                )
                return await self._executions(conn, rows, steps)
            args: list[Any] = [bound, limit]
            if workflow_id is not None:
                args.append(workflow_id)
            if status is not None:
                args.append(int(status))
            name = LISTINGS[workflow_id is not None, status is not None]
            rows = await conn.fetch(Q[name], *args)
            return await self._executions(conn, rows, steps)

        return await self._db.snapshot(listing)

    # wake-ups ----------------------------------------------------------------------------

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` on every notification of the ``microsaga`` channel (see
        :meth:`Database.watch <microsaga.stores._postgres_db.Database.watch>`)."""
        await self._db.watch(wake)
