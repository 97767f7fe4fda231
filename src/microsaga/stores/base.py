"""The :class:`Store` interface: everything microsaga keeps, behind one narrow door.

A store keeps workflow definitions (versioned), executions and their step runs,
leases and control requests. Writes of running executions arrive as batches of
:class:`NewExecution` and :class:`Transition` units which the store applies in one
transaction (group commit); nothing is acted on before that commit returns.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import msgspec

from .._engine.records import Abort, StepRecord
from ..codecs import PayloadCodec
from ..execution import Execution, StepRun, notable, run_of
from ..message import Message
from ..status import Status

__all__ = [
    "COMP_UNDOING",
    "UNDOING",
    "Abort",
    "Claim",
    "ControlAction",
    "MapBrief",
    "NewExecution",
    "StepRecord",
    "Store",
    "StoredDefinition",
    "StoredExecution",
    "StoredWorkflow",
    "Transition",
    "TransitionResult",
    "map_briefs",
    "migrated_since",
]

# "compensate": roll back a finished SUCCESS execution (a sub-workflow's child, when
# its parent rolls back)
ControlAction = str  # "suspend" | "resume" | "retry" | "redrive" | "abort" | ...
CONTROL_ACTIONS = (
    "suspend",
    "resume",
    "retry",
    "redrive",
    "abort",
    "abort_nocomp",
    "compensate",
)

RUNNABLE = (Status.PENDING, Status.RUNNING, Status.COMPENSATING)


def migrated_since(store: str, current: int, known: int) -> str:
    """What :meth:`Store.check_schema` says: ``store`` ("SQLite store PATH") has schema
    version ``current``, newer than the ``known`` one of this code."""
    return (
        f"{store} has schema version {current}, newer than the {known} this microsaga "
        "knows: a newer microsaga migrated it while this process ran; upgrade microsaga "
        "in this process and start it again"
    )


class NewExecution(msgspec.Struct, gc=False):
    """A new execution, and the steps it starts with when it is created owned."""

    id: str
    workflow_id: str
    version: int | None
    definition_hash: str
    definition: bytes | None  # stored once per hash; None when the store already has it
    step_ids: list[str]
    request: Message
    status: Status  # RUNNING when created by its owner, PENDING for any worker to claim
    owner: str | None
    lease_until: float
    created_at: float
    start_step: str | None = None
    reverse: bool = False
    step_timeout: float | None = None
    deadline_at: float | None = None
    starts: list[StepRecord] = []  # a struct copies a mutable default for each instance
    parent_id: str | None = None  # a sub-workflow's child: its parent execution
    redrive_of: str | None = None  # a redrive: the execution it redrives


class Transition(msgspec.Struct, gc=False):
    """Writes of one execution by its owner, fenced by the lease token.

    ``records`` are always written. ``status`` is set, ``starts`` written and the lease
    released only when the stored status is ``expect`` and the stored abort request is
    no later than ``abort`` (``applied``); starts also need the resulting status to be
    RUNNING or COMPENSATING. ``error``, when applied: None leaves the stored one, ``""``
    clears it (an execution that succeeded after a failure was retried or redriven).
    """

    execution_id: str
    token: int
    expect: Status
    status: Status | None = None
    records: list[StepRecord] = []
    starts: list[StepRecord] = []
    response: Message | None = None
    error: str | None = None
    release: bool = False
    at: float = 0.0
    # the abort request its writer knows of: one stored since (an abort without
    # compensation leaves the status as it is) must not be overwritten by a decision
    # made without it, such as SUCCESS, or steps started after the abort returned
    abort: Abort = Abort.NONE


class TransitionResult(msgspec.Struct, frozen=True, gc=False):
    """What a transition found (never changed once made: stores may share them)."""

    owned: bool  # False: the lease was taken over; nothing was written
    status: Status  # the stored status after the transition
    abort: Abort
    applied: bool


@dataclass(slots=True)
class Claim:
    execution_id: str
    token: int
    # takeovers in a row of an execution whose worker died (or let its lease expire)
    # while running it, counting this one; a commit sets it back to 0
    recovery_attempts: int = 0


@dataclass(slots=True)
class StoredDefinition:
    hash: str
    workflow_id: str
    body: bytes | None
    step_ids: list[str]


@dataclass(frozen=True, slots=True)
class MapBrief:
    """A map step's runs in brief (:meth:`Store.get_execution_in_brief`)."""

    runs: int  # how many started
    statuses: dict[Status, int]  # the runs by status, in the order of their first run
    compensations: dict[Status, int]  # the runs with a compensation, by its status
    notable: int  # the runs failed or undoing (execution.notable)
    listed: list[str]  # the first of those, in element order


# the statuses of a run, and of its compensation, that make it worth listing, read off
# the rule (execution.notable) for the SQL stores, which count and list runs by them
UNDOING = frozenset(s for s in Status if notable(StepRun("", s)))
COMP_UNDOING = frozenset(
    s for s in Status if notable(StepRun("", Status.SUCCESS, compensation=StepRun("", s)))
)


def map_briefs(
    info: Execution, limit: int, step_ids: Collection[str]
) -> tuple[dict[str, MapBrief], set[str]]:
    """The maps of ``info`` with more than ``limit`` runs in brief, counted here, and
    the ids of the runs that their brief leaves out. A map's runs are the steps
    ``<map id>[<i>]``; ``step_ids``, the definition's, tell them from steps named like
    them (``x[0]`` beside a step ``x``)."""
    runs: dict[str, list[tuple[int, str]]] = {}
    for sid in info.steps:
        of = run_of(sid, step_ids)
        if of is not None:
            runs.setdefault(of[0], []).append((of[1], sid))
    maps: dict[str, MapBrief] = {}
    hidden: set[str] = set()
    for map_id, found in runs.items():
        if len(found) <= limit:
            continue
        found.sort()
        statuses: Counter[Status] = Counter()
        comps: Counter[Status] = Counter()
        listed: list[str] = []
        for _, rid in found:
            run = info.steps[rid]
            statuses[run.status] += 1
            if run.compensation is not None:
                comps[run.compensation.status] += 1
            if notable(run):
                listed.append(rid)
        maps[map_id] = MapBrief(
            runs=len(found),
            statuses=dict(statuses),
            compensations=dict(comps),
            notable=len(listed),
            listed=listed[:limit],
        )
        hidden.update(rid for _, rid in found)
        hidden.difference_update(listed[:limit])
    return maps, hidden


@dataclass(slots=True)
class StoredWorkflow:
    id: str
    version: int
    hash: str
    body: bytes
    created_at: float


@dataclass(slots=True)
class StoredExecution:
    """An execution as a worker needs it to take over."""

    id: str
    workflow_id: str
    version: int | None
    definition: StoredDefinition
    status: Status
    abort: Abort
    request: Message
    start_step: str | None
    reverse: bool
    step_timeout: float | None
    deadline_at: float | None
    token: int
    records: list[StepRecord]
    created_at: float = 0.0
    parent_id: str | None = None  # a sub-workflow's child: its parent execution


class Store(abc.ABC):
    """Durable state of microsaga. Implementations: memory, SQLite, PostgreSQL."""

    url: str = ""
    batching = True  # whether commits of many units in one call pay off
    # batches the store takes at once: 1 for a single writer (SQLite); a server with row
    # locks (PostgreSQL) commits the next batch while one is in flight. Units of one
    # execution are never in two batches at once: its run waits for each commit. With
    # 1, a batch waits a turn of the event loop for more units (see Committer._drain).
    commit_concurrency = 1
    # with commit_concurrency > 1: a queue longer than this many units is shared among
    # batches committed side by side, each of at least this many (None: never)
    batch_split: int | None = None

    def use_codec(self, codec: PayloadCodec | None) -> None:  # noqa: B027 - optional
        """Encode bodies and headers with ``codec`` at rest (before :meth:`open`).

        The memory store keeps nothing at rest and ignores it; it keeps a body passed
        from step to step as the one bytes object it is.
        """

    def commit_now(self, unit: NewExecution | Transition) -> bool | TransitionResult | None:
        """Commit one unit right away, on the caller's thread, if this store can do so
        cheaply; None when it cannot (then :meth:`commit` is used).

        The memory store always can; the SQLite store can when its writer is free (the
        committer asks only when the worker is quiet, so that busy times still batch).
        """
        return None

    # lifecycle -------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema.

        Raises:
            StoreError: naming the URL when the store cannot be opened.
            SchemaVersionError: the schema is newer than this code.
        """

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def check_schema(self) -> None:
        """Look again at the schema version (one cheap read; a worker does at each
        heartbeat): a process of a newer microsaga may have migrated the store since
        this one opened it. A store without a schema (memory) has nothing to check.

        Raises:
            SchemaVersionError: the schema is now newer than this code.
        """
        return

    # workflow definitions -------------------------------------------------------

    @abc.abstractmethod
    async def save_workflow(self, workflow_id: str, hash: str, body: bytes, now: float) -> int:
        """Save a definition; a new version only when ``hash`` differs from the latest."""

    @abc.abstractmethod
    async def load_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> StoredWorkflow | None: ...

    @abc.abstractmethod
    async def list_workflows(self) -> list[StoredWorkflow]:
        """The latest version of every saved workflow, by id."""

    @abc.abstractmethod
    async def remove_workflow(self, workflow_id: str) -> bool: ...

    # running executions ---------------------------------------------------------

    @abc.abstractmethod
    async def commit(
        self, units: Sequence[NewExecution | Transition]
    ) -> list[bool | TransitionResult]:
        """Apply the units, each atomically, sharing transactions or round trips
        (SQLite: one transaction for the batch; PostgreSQL: a few set-based ones).

        Returns, per unit, ``True``/``False`` for a NewExecution (created, or an
        execution with that id exists) and a :class:`TransitionResult` for a Transition.
        A store keeps what a unit holds (its records and messages), never the unit or
        its lists: a run fills the same unit anew for its next transition.
        """

    @abc.abstractmethod
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
        """Take up to ``limit`` runnable executions whose lease is free or expired
        (its ``lease_until`` at or before ``now``: a parked execution is due at its
        time, as its timer is), bumping their fencing tokens; with ``only``, among
        those executions only (a flow that does not claim takes the rollback of its
        own child); never those of ``skip`` (a worker passes it only when not empty:
        the executions it left lately because it cannot run them, which any other
        worker may take at once).

        Never those ``owner`` holds itself, even expired: a live worker whose lease ran
        out (an event-loop stall, the store away longer than the TTL) still runs them,
        and its heartbeat renews them; claiming them again would fence its own runs
        off. A worker frees what it holds but does not run (:meth:`release`,
        :meth:`release_all`) to make it claimable.

        Taking an execution whose lease expired while a worker held it counts a
        recovery attempt (``Claim.recovery_attempts``), as :meth:`release_all` does for
        each execution it frees; a committed transition sets the count back to 0.
        Except from the workers in ``alive``, known to run still (their process, on
        the claimer's machine): one stalled past its lease did not die.
        """

    @abc.abstractmethod
    async def renew(
        self, owner: str, execution_ids: Collection[str], now: float, ttl: float
    ) -> set[str]:
        """Extend ``owner``'s leases of ``execution_ids`` (the executions it runs);
        returns those it still holds. Leases of executions it no longer runs are not
        renewed, so they expire and any worker can take them over."""

    @abc.abstractmethod
    async def release(
        self, execution_id: str, token: int, until: float, note: str | None = None
    ) -> None:
        """Give up a lease; nobody claims the execution before ``until``. ``note``
        says why it waits for another worker (``Execution.note``); a claim clears it."""

    @abc.abstractmethod
    async def release_all(self, owner: str) -> int:
        """Free every lease ``owner`` holds, at once; the count.

        A worker restarted under a stable id calls it before it runs anything: what its
        previous life left is claimable now rather than when those leases expire.
        """

    @abc.abstractmethod
    async def lease_owners(self) -> set[str]:
        """The distinct owners of the leases held now (expired or not).

        Workers look for dead workers of their own machine among them, to free their
        leases (:meth:`release_all`) rather than wait for them to expire.
        """

    async def held_by(self, owner: str) -> dict[str, tuple[int, float]]:
        """The runnable executions whose lease ``owner`` holds, expired or not: their
        lease token and expiry, by id.

        A worker under a stable id looks at them at every heartbeat: one it does not run
        is another worker's under the same id. A store of one process (memory) has no
        other worker to tell of: none.
        """
        return {}

    async def due_between(self, since: float, now: float) -> bool:
        """Whether an execution became claimable after ``since``, at or before ``now``
        (a parked execution's timer, a release until a time, a lease run out).

        A worker with a poll interval over a second asks it every second: a timer
        parked by a worker that died meanwhile fires within a second of its time (SPEC
        section 8). A store of one process (memory) answers False: the worker that
        parked an execution looks for it at its time itself.
        """
        return False

    async def lease_expiry(self, owner: str) -> float | None:
        """When the latest of the leases ``owner`` holds expires (None: it holds none).

        A worker starting under a stable id reads it twice, a heartbeat apart: a value
        that grew means another live worker renews leases under that id. A store of
        one process (memory) has no other worker to tell of: None.
        """
        return None

    @abc.abstractmethod
    async def load(self, execution_id: str) -> StoredExecution | None:
        """Everything a worker needs to run an execution it claimed."""

    async def definition_of(self, execution_id: str) -> tuple[Status, StoredDefinition] | None:
        """An execution's status and definition, without its step runs or bodies: what
        a signal is checked against (an execution with a map of 10,000 runs has 10,000
        step runs). Stores override this default, which loads everything."""
        found = await self.load(execution_id)
        return None if found is None else (found.status, found.definition)

    async def load_many(self, execution_ids: Sequence[str]) -> dict[str, StoredExecution]:
        """:meth:`load` for many executions; stores override it to read them at once."""
        out = {}
        for eid in execution_ids:
            found = await self.load(eid)
            if found is not None:
                out[eid] = found
        return out

    # control ------------------------------------------------------------------

    @abc.abstractmethod
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
        """Suspend, resume or abort, from any process; returns the new status.

        ``retry`` and ``redrive`` set the execution's failed steps (``steps`` of them,
        or all) back to PENDING with a fresh retry budget; ``body`` becomes their
        request (``redrive`` with an input).

        Raises:
            ExecutionNotFoundError: unknown id.
            InvalidTransitionError: the execution cannot do that from its status.
        """

    @abc.abstractmethod
    async def controls(self, after: int) -> tuple[list[str], int]:
        """Executions with control requests after sequence ``after``, and the last one."""

    # queries ------------------------------------------------------------------

    @abc.abstractmethod
    async def get_execution(self, execution_id: str) -> Execution | None: ...

    async def get_execution_in_brief(
        self, execution_id: str, map_runs: int
    ) -> tuple[Execution, dict[str, MapBrief]] | None:
        """The execution with its maps of more than ``map_runs`` runs in brief: those
        maps' counts, and the execution without their runs but the first ``map_runs``
        failed or undoing ones (``execution.notable``) of each. The SQL stores count in
        the database and read only the runs they give; this default reads every run."""
        found = await self.definition_of(execution_id)
        info = await self.get_execution(execution_id)
        if found is None or info is None:
            return None
        maps, hidden = map_briefs(info, map_runs, found[1].step_ids)
        if not hidden:
            return info, maps
        return replace(info, steps={s: r for s, r in info.steps.items() if s not in hidden}), maps

    @abc.abstractmethod
    async def get_status(self, execution_id: str) -> tuple[Status, Abort] | None:
        """The status and abort request of one execution, cheaply."""

    @abc.abstractmethod
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
        """Newest first; ``before`` is an execution id (keyset pagination);
        ``redrive_of``: only the redrives of that execution; ``steps=False``: without
        their step runs (``steps`` empty), not read, for a list that does not show
        them (an execution with a map of 10,000 runs has 10,000)."""

    @abc.abstractmethod
    async def prune(self, before: float, statuses: Collection[Status], limit: int) -> int:
        """Delete up to ``limit`` finished executions of ``statuses`` last changed before
        ``before`` (oldest first), with their step runs and signals; how many."""

    # waiting -------------------------------------------------------------------

    @abc.abstractmethod
    async def signal(self, execution_id: str, event: str, payload: Message, now: float) -> None:
        """Keep ``event`` for the execution (a second one of the same event is
        ignored) and wake it: claimable now when parked, its owner told otherwise
        (a control row). Committed when this returns.

        Raises:
            ExecutionNotFoundError: unknown id.
            InvalidTransitionError: the execution is finished.
        """

    @abc.abstractmethod
    async def signals(self, execution_id: str) -> dict[str, Message]:
        """The signals kept for an execution, by event."""

    @abc.abstractmethod
    async def park(
        self,
        execution_id: str,
        token: int,
        until: float,
        events: Collection[str],
        children: Collection[str],
        note: str,
    ) -> bool:
        """Give up the lease of an execution that only waits, until ``until`` (its
        earliest timer), atomically with a look at what it waits for: False, keeping
        the lease, when a signal of ``events`` is there or an execution of
        ``children`` finished (the run resolves it instead), or when the execution is
        no longer RUNNING (a suspend or an abort came first: the run acts on it)."""

    @abc.abstractmethod
    async def wake(self, execution_id: str, now: float) -> None:
        """Something an execution waits for happened (its child finished): claimable
        now when parked, its owner told otherwise."""

    async def count_waiting(self) -> int | None:
        """How many steps of RUNNING executions are WAITING (for a signal, a timer or a
        child execution), parked or not; None when the store cannot tell (the
        ``microsaga_steps_waiting`` gauge then stays as it was). Read every few seconds
        by each worker: found through the executions by status, never by scanning step
        rows."""
        return None

    async def give_up_unread_steps(  # noqa: B027 - optional
        self, execution_id: str, error: str, at: float
    ) -> None:
        """Once an execution that no worker could read (a codec key lost for good) ended
        ABORTED without compensation: its step runs left RUNNING or WAITING become
        PENDING with ``error`` (they run no more), their bodies kept as they are. Only
        an execution in that state is touched. A store without a codec holds nothing a
        worker cannot read, and needs not implement it."""

    async def prune_controls(self, before: float) -> None:  # noqa: B027 - optional
        """Forget control requests older than ``before``."""

    async def watch(self, wake: Callable[[], None]) -> None:  # noqa: B027 - optional
        """Call ``wake()`` when another process creates, resumes or aborts an execution
        (PostgreSQL: LISTEN/NOTIFY). Optional: workers also poll."""


PRUNE_BATCH = 1000  # executions deleted per statement
PRUNE_REST = 1.0  # rest after a batch, as a multiple of the time the batch took


async def prune_paced(store: Store, before: float, statuses: Collection[Status]) -> int:
    """Delete what :meth:`Store.prune` finds, a batch at a time, resting after each
    batch ``PRUNE_REST`` times as long as it took, so that the executions running
    meanwhile keep most of the store's time (docs/semantics.md). How many."""
    pruned = 0
    while True:
        started = time.monotonic()
        count = await store.prune(before, statuses, PRUNE_BATCH)
        pruned += count
        if count < PRUNE_BATCH:
            return pruned
        await asyncio.sleep(PRUNE_REST * (time.monotonic() - started))
