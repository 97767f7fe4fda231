"""The contract every store keeps, run over memory, SQLite and PostgreSQL.

The first part drives the :class:`~microsaga.stores.base.Store` interface directly,
with made-up times (the engine passes its clock's ``now``); the second runs whole
sagas through :class:`microsaga.Flow` on each store.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from microsaga import (
    ExecutionFailedError,
    ExecutionNotFoundError,
    Flow,
    FunctionStep,
    InvalidTransitionError,
    Message,
    Status,
    StepError,
)
from microsaga._engine.records import Abort, Phase
from microsaga.execution import Execution
from microsaga.stores import open_store
from microsaga.stores.base import (
    NewExecution,
    StepRecord,
    Store,
    Transition,
    TransitionResult,
    map_briefs,
)
from tests.helpers import eventually
from tests.integration.pg import empty_store

STORES = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
]

# every execution id these tests create: renew extends those the owner holds
EVERY = ("e1", "e2", "e3", "owned", "pending-1", "pending-2")


@pytest.fixture(params=STORES)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty store; every Flow or store opened on it shares its data."""
    async with empty_store(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _kind(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["store_url"])


# building blocks ---------------------------------------------------------------------

REQUEST = Message(b'{"order": 7}', {"Trace": ["t1", "t2"], "X-Other": "o"})


def new(
    eid: str,
    *,
    owner: str | None = None,
    now: float = 100.0,
    ttl: float = 10.0,
    workflow: str = "order",
    steps: tuple[str, ...] = ("a", "b", "c"),
    starts: tuple[str, ...] = (),
    definition: bytes | None = b'{"id": "order"}',
    digest: str = "hash-1",
    request: Message = REQUEST,
) -> NewExecution:
    return NewExecution(
        id=eid,
        workflow_id=workflow,
        version=None,
        definition_hash=digest,
        definition=definition,
        step_ids=list(steps),
        request=request,
        status=Status.RUNNING if owner else Status.PENDING,
        owner=owner,
        lease_until=now + ttl if owner else 0.0,
        created_at=now,
        starts=[running(s, at=now) for s in starts],
    )


def running(
    step: str, *, at: float = 100.0, phase: Phase = Phase.FORWARD, attempt: int = 1
) -> StepRecord:
    return StepRecord(
        step, phase, Status.RUNNING, attempt, Message(b'{"in": 1}', {"K": "v"}), None, None, at
    )


def succeeded(step: str, *, at: float = 101.0, phase: Phase = Phase.FORWARD) -> StepRecord:
    return StepRecord(
        step,
        phase,
        Status.SUCCESS,
        1,
        Message(b'{"in": 1}', {"K": "v"}),
        Message(b'{"out": "' + step.encode() + b'"}', {"R": "r"}),
        None,
        100.0,
        at,
    )


def transition(eid: str, token: int = 1, expect: Status = Status.RUNNING, **kw: Any) -> Transition:
    return Transition(eid, token, expect, **kw)


async def commit_one(store: Store, unit: NewExecution | Transition) -> bool | TransitionResult:
    (result,) = await store.commit([unit])
    return result


async def steps_of(store: Store, eid: str) -> dict[tuple[str, int], StepRecord]:
    stored = await store.load(eid)
    assert stored is not None
    return {(r.step_id, r.phase): r for r in stored.records}


# creating executions ---------------------------------------------------------------------


async def test_create_pending_and_load(store: Store) -> None:
    assert await store.commit([new("e1")]) == [True]
    stored = await store.load("e1")
    assert stored is not None
    assert (stored.id, stored.workflow_id, stored.version) == ("e1", "order", None)
    assert stored.status is Status.PENDING
    assert stored.abort == Abort.NONE
    assert stored.token == 0
    assert stored.records == []
    assert stored.request.body == REQUEST.body
    assert stored.request.header.getall("trace") == ["t1", "t2"]
    assert stored.request.header["X-Other"] == "o"
    assert stored.definition.hash == "hash-1"
    assert stored.definition.body == b'{"id": "order"}'
    assert stored.definition.step_ids == ["a", "b", "c"]
    assert (stored.start_step, stored.reverse, stored.step_timeout, stored.deadline_at) == (
        None,
        False,
        None,
        None,
    )


async def test_create_owned_with_its_first_steps(store: Store) -> None:
    unit = new("e1", owner="w1", starts=("a", "b"))
    unit.start_step, unit.reverse, unit.step_timeout, unit.deadline_at = "a", True, 2.5, 160.0
    assert await commit_one(store, unit) is True
    stored = await store.load("e1")
    assert stored is not None
    assert stored.status is Status.RUNNING
    assert stored.token == 1
    assert (stored.start_step, stored.reverse, stored.step_timeout, stored.deadline_at) == (
        "a",
        True,
        2.5,
        160.0,
    )
    records = {(r.step_id, r.phase): r for r in stored.records}
    assert set(records) == {("a", Phase.FORWARD), ("b", Phase.FORWARD)}
    a = records["a", Phase.FORWARD]
    assert (a.status, a.attempts, a.started_at, a.finished_at) == (Status.RUNNING, 1, 100.0, None)
    assert a.request is not None
    assert a.request.body == b'{"in": 1}'
    assert a.request.header["k"] == "v"
    assert a.response is None


async def test_execution_ids_are_idempotent(store: Store) -> None:
    assert await commit_one(store, new("e1")) is True
    other = new("e1", owner="w2", request=Message(b'{"order": 8}'))
    assert await commit_one(store, other) is False
    # the same id twice in one batch: the first one is created
    assert await store.commit([new("e2"), new("e2", request=Message(b"{}"))]) == [True, False]
    stored = await store.load("e1")
    assert stored is not None
    assert stored.request.body == REQUEST.body
    assert stored.status is Status.PENDING
    assert [e.id for e in await store.list_executions()] == ["e2", "e1"]


async def test_definition_is_stored_once_per_hash(store: Store) -> None:
    await store.commit([new("e1"), new("e2", definition=None)])
    await store.commit([new("e3", definition=None, digest="unknown", steps=("x",))])
    e2, e3 = await store.load("e2"), await store.load("e3")
    assert e2 is not None
    assert e3 is not None
    assert e2.definition.body == b'{"id": "order"}'
    # a hash the store never saw a body for still gets its row, without a body
    assert (e3.definition.hash, e3.definition.body, e3.definition.step_ids) == (
        "unknown",
        None,
        ["x"],
    )


async def test_never_started_steps_show_as_pending(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",))])
    info = await store.get_execution("e1")
    assert info is not None
    assert list(info.steps) == ["a", "b", "c"]
    assert info.steps["a"].status is Status.RUNNING
    assert info.steps["a"].attempts == 1
    for sid in ("b", "c"):
        run = info.steps[sid]
        assert (run.status, run.request, run.response, run.attempts) == (
            Status.PENDING,
            None,
            None,
            0,
        )
        assert run.compensation is None
    assert info.status is Status.RUNNING
    assert info.request.body == REQUEST.body
    assert info.response is None
    assert info.created_at.timestamp() == 100.0


# transitions ------------------------------------------------------------------------------


async def test_transition_applies_when_expected(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",))])
    result = await commit_one(
        store,
        transition(
            "e1",
            status=Status.SUCCESS,
            records=[succeeded("a")],
            response=Message(b'{"done": true}', {"H": "1"}),
            release=True,
            at=105.0,
        ),
    )
    assert result == TransitionResult(True, Status.SUCCESS, Abort.NONE, True)
    info = await store.get_execution("e1")
    assert info is not None
    assert info.status is Status.SUCCESS
    assert info.response is not None
    assert info.response.body == b'{"done": true}'
    assert info.response.header["h"] == "1"
    assert info.updated_at.timestamp() == 105.0
    a = info.steps["a"]
    assert a.status is Status.SUCCESS
    assert a.response is not None
    assert a.response.body == b'{"out": "a"}'
    assert a.finished_at is not None
    assert a.finished_at.timestamp() == 101.0
    # released: the owner no longer holds it, and a finished execution is never claimed
    assert await store.renew("w1", EVERY, 106.0, 10.0) == set()
    assert await store.claim("w2", 1000.0, 10.0, 10) == []


async def test_transition_error_is_kept(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    failed = StepRecord("a", Phase.FORWARD, Status.FAILURE, 3, None, None, "boom", 100.0, 101.0)
    result = await commit_one(
        store,
        transition("e1", status=Status.FAILURE, records=[failed], error="a: boom", release=True),
    )
    assert isinstance(result, TransitionResult)
    assert result.applied
    info = await store.get_execution("e1")
    assert info is not None
    assert (info.status, info.error, info.response) == (Status.FAILURE, "a: boom", None)
    assert (info.steps["a"].status, info.steps["a"].error, info.steps["a"].attempts) == (
        Status.FAILURE,
        "boom",
        3,
    )


@pytest.mark.parametrize("batched", [False, True], ids=["one by one", "in one batch"])
async def test_an_empty_error_clears_the_stored_one(store: Store, batched: bool) -> None:
    # a suspended execution's error says which step failed; once a resume or a
    # redrive mended it, the execution succeeds and says nothing of that failure
    await store.commit([new("e1", owner="w1")])
    suspend = transition("e1", status=Status.SUSPEND, error="a: boom")
    succeed = transition("e1", expect=Status.SUSPEND, status=Status.SUCCESS, error="", release=True)
    if batched:  # two units of one execution: the store decides them on a read
        assert [r.applied for r in await store.commit([suspend, succeed])] == [True, True]  # type: ignore[union-attr]
    else:
        await commit_one(store, suspend)
        info = await store.get_execution("e1")
        assert info is not None
        assert (info.status, info.error) == (Status.SUSPEND, "a: boom")
        await commit_one(store, succeed)
    info = await store.get_execution("e1")
    assert info is not None
    assert (info.status, info.error) == (Status.SUCCESS, None)


async def test_records_are_written_even_when_not_applied(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",))])
    assert await store.request("e1", "suspend", 101.0) is Status.SUSPEND
    result = await commit_one(
        store,
        transition(
            "e1",
            expect=Status.RUNNING,
            status=Status.SUCCESS,
            records=[succeeded("a")],
            starts=[running("b")],
            response=Message(b"{}"),
            release=True,
            at=102.0,
        ),
    )
    assert result == TransitionResult(True, Status.SUSPEND, Abort.NONE, False)
    records = await steps_of(store, "e1")
    assert records["a", Phase.FORWARD].status is Status.SUCCESS  # the result of a step is kept
    assert ("b", Phase.FORWARD) not in records  # nothing starts
    info = await store.get_execution("e1")
    assert info is not None
    assert (info.status, info.response) == (Status.SUSPEND, None)
    assert await store.renew("w1", EVERY, 103.0, 10.0) == {"e1"}  # not released


@pytest.mark.parametrize("release", [False, True])
async def test_not_applied_when_expect_differs_even_if_status_matches(
    store: Store, release: bool
) -> None:
    """``applied`` means "the stored status was ``expect``", as in MemoryStore.

    The stored status is SUSPEND (another process suspended it); the owner still
    believes RUNNING and asks to go to SUSPEND itself: that transition is not applied,
    so nothing is released and its starts are not written.
    """
    await store.commit([new("e1", owner="w1")])
    await store.request("e1", "suspend", 101.0)
    result = await commit_one(
        store,
        transition("e1", expect=Status.RUNNING, status=Status.SUSPEND, release=release, at=102.0),
    )
    assert result == TransitionResult(True, Status.SUSPEND, Abort.NONE, False)


async def test_starts_need_a_running_status(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",))])
    # applied, no status change: the starts are written
    result = await commit_one(
        store, transition("e1", records=[succeeded("a")], starts=[running("b", at=102.0)])
    )
    assert result == TransitionResult(True, Status.RUNNING, Abort.NONE, True)
    # applied, but the new status does not run steps: starts are dropped
    result = await commit_one(
        store, transition("e1", status=Status.SUSPEND, starts=[running("c")], release=True)
    )
    assert result == TransitionResult(True, Status.SUSPEND, Abort.NONE, True)
    records = await steps_of(store, "e1")
    assert set(records) == {("a", Phase.FORWARD), ("b", Phase.FORWARD)}
    assert records["b", Phase.FORWARD].started_at == 102.0


async def test_a_transition_alone_stores_every_step_run_it_carries(store: Store) -> None:
    """One execution's transition with no step run, one, two (a step ended, the next
    started) and a fan-out of four: all of them stored, none invented (the PostgreSQL
    store passes up to two as values, more as arrays)."""
    await store.commit([new("e1", owner="w1", steps=("a", "b", "c", "d", "e", "f"))])
    assert await commit_one(store, transition("e1", at=101.0)) == TransitionResult(
        True, Status.RUNNING, Abort.NONE, True
    )
    assert await steps_of(store, "e1") == {}
    await commit_one(store, transition("e1", starts=[running("a", at=101.0)]))
    assert set(await steps_of(store, "e1")) == {("a", Phase.FORWARD)}
    await commit_one(
        store, transition("e1", records=[succeeded("a")], starts=[running("b", at=102.0)])
    )
    fan_out = [running(s, at=103.0) for s in ("c", "d", "e", "f")]
    result = await commit_one(store, transition("e1", records=[succeeded("b")], starts=fan_out))
    assert result == TransitionResult(True, Status.RUNNING, Abort.NONE, True)
    records = await steps_of(store, "e1")
    assert set(records) == {(s, Phase.FORWARD) for s in "abcdef"}
    assert [records[s, Phase.FORWARD].status for s in "abcdef"] == [Status.SUCCESS] * 2 + [
        Status.RUNNING
    ] * 4
    assert records["b", Phase.FORWARD].response == Message(b'{"out": "b"}', {"R": "r"})
    assert records["f", Phase.FORWARD].started_at == 103.0


async def test_compensation_records(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",))])
    await store.commit([transition("e1", records=[succeeded("a")])])
    result = await commit_one(
        store,
        transition("e1", status=Status.COMPENSATING, starts=[running("a", phase=Phase.COMPENSATE)]),
    )
    assert isinstance(result, TransitionResult)
    assert result.applied
    comp = succeeded("a", phase=Phase.COMPENSATE, at=103.0)
    forward = replace(succeeded("a"), status=Status.COMPENSATED)
    await store.commit(
        [
            transition(
                "e1",
                expect=Status.COMPENSATING,
                status=Status.FAILURE,
                records=[comp, forward],
                error="b failed",
                release=True,
            )
        ]
    )
    info = await store.get_execution("e1")
    assert info is not None
    a = info.steps["a"]
    assert a.status is Status.COMPENSATED
    assert a.compensation is not None
    assert a.compensation.status is Status.SUCCESS
    assert a.compensation.finished_at is not None
    assert a.compensation.finished_at.timestamp() == 103.0
    assert info.compensated


async def test_transition_is_fenced_after_a_takeover(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",), ttl=10.0)])
    # w1 stops renewing; once the lease expired another worker takes over
    assert await store.claim("w2", 105.0, 10.0, 10) == []
    (claim,) = await store.claim("w2", 111.0, 10.0, 10)
    assert (claim.execution_id, claim.token) == ("e1", 2)
    stale = await commit_one(
        store,
        transition("e1", token=1, status=Status.SUCCESS, records=[succeeded("a")], release=True),
    )
    assert isinstance(stale, TransitionResult)
    assert (stale.owned, stale.applied) == (False, False)
    records = await steps_of(store, "e1")
    assert records["a", Phase.FORWARD].status is Status.RUNNING  # nothing of w1's was written
    assert await store.get_status("e1") == (Status.RUNNING, Abort.NONE)
    assert await store.renew("w1", EVERY, 112.0, 10.0) == set()
    fresh = await commit_one(store, transition("e1", token=2, records=[succeeded("a")]))
    assert fresh == TransitionResult(True, Status.RUNNING, Abort.NONE, True)


async def test_no_writes_after_release(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    await store.commit([transition("e1", status=Status.SUSPEND, release=True)])
    late = await commit_one(
        store, transition("e1", expect=Status.SUSPEND, records=[succeeded("a")])
    )
    assert isinstance(late, TransitionResult)
    assert not late.owned
    assert await steps_of(store, "e1") == {}


async def test_unknown_execution_transition_is_not_owned(store: Store) -> None:
    result = await commit_one(store, transition("nope", records=[succeeded("a")]))
    assert isinstance(result, TransitionResult)
    assert (result.owned, result.applied) == (False, False)


async def test_one_batch_applies_units_in_order(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",)), new("e2", owner="w1")])
    again = succeeded("a", at=150.0)
    results = await store.commit(
        [
            new("e3", owner="w1", starts=("a",)),
            transition("e1", records=[succeeded("a")], status=Status.SUSPEND),
            # sees the SUSPEND of the unit before it: not applied, its start is dropped
            transition("e1", records=[again], starts=[running("b")]),
            transition("e2", status=Status.SUCCESS, release=True),
            transition("e2", token=1, records=[succeeded("c")]),  # released just before
            new("e1"),
        ]
    )
    late = results.pop(4)  # released just before: not owned (its status means nothing)
    assert isinstance(late, TransitionResult)
    assert (late.owned, late.applied) == (False, False)
    assert results == [
        True,
        TransitionResult(True, Status.SUSPEND, Abort.NONE, True),
        TransitionResult(True, Status.SUSPEND, Abort.NONE, False),
        TransitionResult(True, Status.SUCCESS, Abort.NONE, True),
        False,
    ]
    e1 = await steps_of(store, "e1")
    assert set(e1) == {("a", Phase.FORWARD)}
    assert e1["a", Phase.FORWARD].finished_at == 150.0  # the later record of the batch wins
    assert await steps_of(store, "e2") == {}
    assert set(await steps_of(store, "e3")) == {("a", Phase.FORWARD)}


async def test_abort_request_reaches_the_owner_through_its_transition(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",))])
    assert await store.request("e1", "abort", 101.0) is Status.COMPENSATING
    result = await commit_one(
        store, transition("e1", expect=Status.RUNNING, records=[succeeded("a")])
    )
    assert result == TransitionResult(True, Status.COMPENSATING, Abort.COMPENSATE, False)
    done = transition("e1", expect=Status.COMPENSATING, status=Status.ABORTED, release=True)
    result = await commit_one(store, done)  # decided without knowing of the abort
    assert result == TransitionResult(True, Status.COMPENSATING, Abort.COMPENSATE, False)
    done.abort = Abort.COMPENSATE
    result = await commit_one(store, done)
    assert result == TransitionResult(True, Status.ABORTED, Abort.COMPENSATE, True)


async def test_an_abort_without_compensation_stops_transitions_decided_without_it(
    store: Store,
) -> None:
    """The status stays RUNNING: the abort the owner knows of tells its decisions made
    before the abort (a step started, SUCCESS) from those made after."""
    await store.commit([new("e1", owner="w1", starts=("a",))])
    assert await store.request("e1", "abort_nocomp", 101.0) is Status.RUNNING
    unaware = transition(
        "e1", records=[succeeded("a")], starts=[running("b")], status=Status.SUCCESS
    )
    result = await commit_one(store, unaware)
    assert result == TransitionResult(True, Status.RUNNING, Abort.NO_COMPENSATION, False)
    steps = await steps_of(store, "e1")
    assert steps["a", Phase.FORWARD].status is Status.SUCCESS  # records are written
    assert ("b", Phase.FORWARD) not in steps
    aware = transition("e1", status=Status.ABORTED, release=True, abort=Abort.NO_COMPENSATION)
    result = await commit_one(store, aware)
    assert result == TransitionResult(True, Status.ABORTED, Abort.NO_COMPENSATION, True)


# leases -------------------------------------------------------------------------------------


async def test_claim_takes_runnable_executions_whose_lease_is_free_or_expired(
    store: Store,
) -> None:
    await store.commit(
        [
            new("pending-1"),
            new("owned", owner="w1", ttl=10.0),
            new("pending-2"),
            new("done", owner="w1"),
            new("suspended"),
        ]
    )
    await store.commit([transition("done", status=Status.SUCCESS, release=True)])
    await store.request("suspended", "suspend", 100.0)
    claims = await store.claim("w2", 105.0, 10.0, 10)
    assert sorted((c.execution_id, c.token) for c in claims) == [("pending-1", 1), ("pending-2", 1)]
    for eid in ("pending-1", "pending-2"):
        assert await store.get_status(eid) == (Status.RUNNING, Abort.NONE)
    assert await store.claim("w3", 105.0, 10.0, 10) == []
    # at 200 every lease has expired; finished and suspended ones stay where they are
    claims = await store.claim("w3", 200.0, 10.0, 10)
    assert sorted((c.execution_id, c.token) for c in claims) == [
        ("owned", 2),
        ("pending-1", 2),
        ("pending-2", 2),
    ]
    assert await store.renew("w3", EVERY, 201.0, 10.0) == {"owned", "pending-1", "pending-2"}
    assert await store.renew("w2", EVERY, 201.0, 10.0) == set()


async def test_claim_limit_takes_the_oldest_first(store: Store) -> None:
    await store.commit([new(f"e{i}") for i in range(5)])
    first = await store.claim("w1", 100.0, 10.0, 2)
    second = await store.claim("w2", 100.0, 10.0, 2)
    third = await store.claim("w3", 100.0, 10.0, 2)
    assert sorted(c.execution_id for c in first) == ["e0", "e1"]
    assert sorted(c.execution_id for c in second) == ["e2", "e3"]
    assert [c.execution_id for c in third] == ["e4"]


async def test_claim_takes_over_a_compensating_execution(store: Store) -> None:
    await store.commit([new("e1", owner="w1", ttl=5.0)])
    await store.commit([transition("e1", status=Status.COMPENSATING)])
    (claim,) = await store.claim("w2", 106.0, 10.0, 10)
    assert claim.token == 2
    assert await store.get_status("e1") == (Status.COMPENSATING, Abort.NONE)


async def test_a_claim_never_takes_back_the_claimers_own_executions(store: Store) -> None:
    """A live worker whose leases ran out (a stall, the store away past the TTL) still
    runs its executions: its claim leaves them to it, its heartbeat extends them, and
    its runs keep writing with their tokens."""
    await store.commit([new("e1", owner="w1", ttl=10.0), new("e2", owner="w2", ttl=10.0)])
    claims = await store.claim("w1", 120.0, 10.0, 10)
    assert [(c.execution_id, c.token) for c in claims] == [("e2", 2)]  # w2's, not its own
    assert await store.renew("w1", ["e1", "e2"], 120.0, 10.0) == {"e1", "e2"}
    result = await commit_one(store, transition("e1", token=1, records=[succeeded("a")]))
    assert result == TransitionResult(True, Status.RUNNING, Abort.NONE, True)
    assert (await steps_of(store, "e1"))["a", Phase.FORWARD].status is Status.SUCCESS
    # renewed until 130: nobody takes them before; then anyone else may
    assert await store.claim("w3", 125.0, 10.0, 10) == []
    assert await store.claim("w1", 131.0, 10.0, 10) == []
    claims = await store.claim("w3", 131.0, 10.0, 10)
    assert sorted((c.execution_id, c.token) for c in claims) == [("e1", 2), ("e2", 3)]


async def test_a_claim_of_some_executions_takes_those_only(store: Store) -> None:
    await store.commit([new("e1"), new("e2"), new("e3", owner="w1", ttl=10.0)])
    assert await store.claim("w2", 101.0, 10.0, 10, only=["e9"]) == []
    (claim,) = await store.claim("w2", 101.0, 10.0, 10, only=["e2", "e3"])  # e3 is held
    assert (claim.execution_id, claim.token) == ("e2", 1)
    assert [c.execution_id for c in await store.claim("w3", 101.0, 10.0, 10)] == ["e1"]


async def test_release_all_frees_every_lease_of_an_owner(store: Store) -> None:
    await store.commit([new("e1", owner="w1"), new("e2", owner="w2"), new("e3", owner="w1")])
    await store.commit([transition("e1", status=Status.SUCCESS, release=True)])
    assert await store.claim("w1", 101.0, 10.0, 10) == []  # leases still run
    assert await store.release_all("w1") == 1  # e1 was released when it finished
    (claim,) = await store.claim("w1", 101.0, 10.0, 10)
    # w1's runnable one, with a new token: the previous life of w1 is fenced off
    assert (claim.execution_id, claim.token) == ("e3", 2)
    assert await store.release_all("w3") == 0


async def test_lease_owners_are_those_holding_a_lease_expired_or_not(store: Store) -> None:
    await store.commit(
        [new("e1", owner="w1"), new("e2", owner="w1"), new("e3", owner="w2"), new("e4")]
    )
    await store.commit([new("e5", owner="w3")])
    await store.commit([transition("e5", status=Status.SUCCESS, release=True)])
    assert await store.lease_owners() == {"w1", "w2"}  # e4 nobody's, e5 released
    (claim,) = await store.claim("w4", 200.0, 10.0, 1)  # every lease has expired by 200
    assert claim.execution_id == "e1"
    assert await store.lease_owners() == {"w1", "w2", "w4"}
    assert await store.release_all("w1") == 1
    assert await store.lease_owners() == {"w2", "w4"}


async def test_what_an_owner_holds_and_what_came_due(store: Store) -> None:
    """What workers read of each other's leases: the latest expiry and the executions
    an owner holds (a stable id's namesake), and whether anything came due in a span
    (a timer parked by a dead worker). A store of one process has none to tell of."""
    from microsaga.stores.memory import MemoryStore

    if isinstance(store, MemoryStore):
        assert await store.lease_expiry("w1") is None
        assert await store.held_by("w1") == {}
        assert await store.due_between(0.0, 1e12) is False
        return
    await store.commit(
        [new("e1", owner="w1"), new("e2", owner="w1", ttl=20.0), new("e3", owner="w2"), new("e4")]
    )
    assert await store.lease_expiry("w1") == 120.0
    assert await store.lease_expiry("w9") is None
    assert await store.held_by("w1") == {"e1": (1, 110.0), "e2": (1, 120.0)}
    assert await store.renew("w1", ["e1"], 115.0, 10.0) == {"e1"}
    assert await store.lease_expiry("w1") == 125.0  # renewed: later than before
    await store.release("e3", 1, 150.0)  # nobody's until 150, as a parked timer
    assert await store.due_between(130.0, 149.0) is False
    assert await store.due_between(130.0, 150.0) is True  # e3
    assert await store.due_between(121.0, 125.0) is True  # e1's lease runs out
    assert await store.due_between(150.0, 1e12) is False  # e4 was due before: claimed then
    await store.commit([transition("e1", status=Status.SUCCESS, release=True)])
    assert await store.held_by("w1") == {"e2": (1, 120.0)}


async def test_released_and_parked_leases_leave_their_owner(store: Store) -> None:
    await store.commit([new("e1", owner="w1"), new("e2", owner="w2"), new("e3", owner="w2")])
    await store.release("e1", 1, 0.0)
    assert await store.lease_owners() == {"w2"}
    assert await store.park("e2", 1, 1e12, ["paid"], [], "waits for paid")
    assert await store.lease_owners() == {"w2"}  # e3 still
    # its lease expired, nothing ran: the abort ends it at once, and frees it
    assert await store.request("e3", "abort", 200.0) is Status.ABORTED
    assert await store.lease_owners() == set()
    (claim,) = await store.claim("w5", 200.0, 10.0, 5)  # e2 is parked till its time
    assert claim.execution_id == "e1"
    assert await store.lease_owners() == {"w5"}


async def test_load_many_reads_what_a_worker_needs(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",)), new("e2", owner="w1")])
    loaded = await store.load_many(["e1", "e2", "missing"])
    assert sorted(loaded) == ["e1", "e2"]
    one = loaded["e1"]
    assert (one.workflow_id, one.token, one.status) == ("order", 1, Status.RUNNING)
    assert one.request == REQUEST
    assert one.definition.step_ids == ["a", "b", "c"]
    assert [(r.step_id, r.status) for r in one.records] == [("a", Status.RUNNING)]
    assert loaded["e2"].records == []
    again = await store.load("e1")
    assert again is not None
    assert again.records == one.records


async def test_renew_extends_only_the_owners_leases(store: Store) -> None:
    await store.commit([new("e1", owner="w1"), new("e2", owner="w1"), new("e3", owner="w2")])
    assert await store.renew("w1", EVERY, 108.0, 10.0) == {"e1", "e2"}
    # w2 did not renew: only its execution is claimable after 110
    claims = await store.claim("w3", 111.0, 10.0, 10)
    assert [c.execution_id for c in claims] == ["e3"]
    assert {c.execution_id for c in await store.claim("w3", 118.1, 10.0, 10)} == {"e1", "e2"}


async def test_renew_extends_only_the_leases_of_executions_it_runs(store: Store) -> None:
    await store.commit([new("e1", owner="w1"), new("e2", owner="w1")])
    assert await store.renew("w1", ["e1"], 108.0, 10.0) == {"e1"}
    # e2 is not run by w1 any more (its run gave up): its lease ran out at 110
    claims = await store.claim("w2", 111.0, 10.0, 10)
    assert [c.execution_id for c in claims] == ["e2"]


async def test_release_frees_the_lease_from_a_time_on(store: Store) -> None:
    await store.commit([new("e1", owner="w1"), new("e2", owner="w1")])
    await store.release("e1", 1, 150.0)
    await store.release("e2", 7, 0.0)  # a wrong token changes nothing
    assert await store.renew("w1", EVERY, 101.0, 10.0) == {"e2"}
    assert await store.claim("w2", 110.0, 10.0, 10) == []
    claims = await store.claim("w2", 150.5, 10.0, 10)
    assert sorted((c.execution_id, c.token) for c in claims) == [("e1", 2), ("e2", 2)]


async def test_load_and_queries_of_an_unknown_execution(store: Store) -> None:
    assert await store.load("nope") is None
    assert await store.get_execution("nope") is None
    assert await store.get_status("nope") is None


async def test_load_has_every_record(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a", "b"))])
    retried = StepRecord(
        "b", Phase.FORWARD, Status.RUNNING, 2, Message(b"[]"), None, "flaky", 100.0
    )
    comp = running("a", phase=Phase.COMPENSATE, at=104.0)
    await store.commit([transition("e1", records=[succeeded("a")], starts=[retried])])
    await store.commit([transition("e1", status=Status.COMPENSATING, starts=[comp])])
    stored = await store.load("e1")
    assert stored is not None
    assert stored.status is Status.COMPENSATING
    assert stored.token == 1
    records = {(r.step_id, r.phase): r for r in stored.records}
    assert set(records) == {("a", Phase.FORWARD), ("b", Phase.FORWARD), ("a", Phase.COMPENSATE)}
    b = records["b", Phase.FORWARD]
    assert (b.status, b.attempts, b.error, b.started_at) == (Status.RUNNING, 2, "flaky", 100.0)
    assert b.request is not None
    assert b.request.body == b"[]"
    a = records["a", Phase.FORWARD]
    assert a.response is not None
    assert a.response.body == b'{"out": "a"}'
    assert records["a", Phase.COMPENSATE].started_at == 104.0


async def test_every_field_of_an_execution_and_its_records_comes_back(store: Store) -> None:
    forward = StepRecord(
        "a",
        Phase.FORWARD,
        Status.FAILURE,
        3,
        Message(b'{"in": 1}', {"Trace": ["t1", "t2"], "K": "v"}),
        Message(b'{"out": 2}', {"R": "r"}),
        "declined",
        100.5,
        101.25,
    )
    compensation = StepRecord(
        "a", Phase.COMPENSATE, Status.SUCCESS, 1, Message(b"[]"), Message(b"{}"), None, 102.0, 103.0
    )
    unit = NewExecution(
        id="e1",
        workflow_id="order",
        version=4,
        definition_hash="hash-1",
        definition=b'{"id": "order"}',
        step_ids=["a", "b"],
        request=REQUEST,
        status=Status.RUNNING,
        owner="w1",
        lease_until=110.0,
        created_at=100.0,
        start_step="a",
        reverse=True,
        step_timeout=2.5,
        deadline_at=500.0,
        starts=[forward, compensation],
    )
    assert await store.commit([unit]) == [True]
    stored = await store.load("e1")
    assert stored is not None
    assert (stored.id, stored.workflow_id, stored.version, stored.status, stored.abort) == (
        "e1",
        "order",
        4,
        Status.RUNNING,
        Abort.NONE,
    )
    assert (stored.request, stored.start_step, stored.reverse) == (REQUEST, "a", True)
    assert (stored.step_timeout, stored.deadline_at, stored.token) == (2.5, 500.0, 1)
    definition = stored.definition
    assert (definition.hash, definition.workflow_id) == ("hash-1", "order")
    assert (definition.body, definition.step_ids) == (b'{"id": "order"}', ["a", "b"])
    assert sorted(stored.records, key=lambda r: r.phase) == [forward, compensation]
    response = Message(b'{"done": true}', {"D": "d"})
    done = transition("e1", status=Status.SUCCESS, response=response, error="late", at=104.0)
    await store.commit([done])
    shown = await store.get_execution("e1")
    assert shown is not None
    assert (shown.id, shown.workflow_id, shown.version, shown.status) == (
        "e1",
        "order",
        4,
        Status.SUCCESS,
    )
    assert (shown.request, shown.response, shown.error) == (REQUEST, response, "late")
    assert [t.timestamp() for t in (shown.created_at, shown.updated_at)] == [100.0, 104.0]
    assert shown.deadline_at is not None
    assert shown.deadline_at.timestamp() == 500.0
    a = shown.steps["a"]
    assert (a.status, a.attempts, a.error) == (Status.FAILURE, 3, "declined")
    assert (a.request, a.response) == (forward.request, forward.response)
    assert [t and t.timestamp() for t in (a.started_at, a.finished_at)] == [100.5, 101.25]
    assert a.compensation is not None
    assert (a.compensation.status, a.compensation.response) == (Status.SUCCESS, Message(b"{}"))
    assert shown.steps["b"].status is Status.PENDING
    assert [e.id for e in await store.list_executions()] == ["e1"]


async def test_load_after_a_claim_sees_what_came_after_it(store: Store) -> None:
    await store.commit([new("e1"), new("e2")])
    claims = await store.claim("w1", 100.0, 10.0, 10)
    assert len(claims) == 2
    stored = await store.load("e1")
    assert stored is not None
    assert (stored.status, stored.token) == (Status.RUNNING, 1)
    # written after the claim, before the load: the load has it
    await store.commit([transition("e2", records=[succeeded("a")])])
    stored = await store.load("e2")
    assert stored is not None
    assert [(r.step_id, r.status) for r in stored.records] == [("a", Status.SUCCESS)]
    (claim,) = await store.claim("w2", 200.0, 10.0, 1)
    await store.request(claim.execution_id, "suspend", 201.0)
    stored = await store.load(claim.execution_id)
    assert stored is not None
    assert (stored.status, stored.token) == (Status.SUSPEND, 2)


# control requests ---------------------------------------------------------------------------


async def test_suspend_and_resume_a_pending_execution(store: Store) -> None:
    await store.commit([new("e1")])
    assert await store.request("e1", "suspend", 101.0) is Status.SUSPEND
    assert await store.request("e1", "suspend", 101.5) is Status.SUSPEND  # again: no error
    assert await store.claim("w1", 102.0, 10.0, 10) == []
    assert await store.request("e1", "resume", 103.0) is Status.RUNNING
    (claim,) = await store.claim("w1", 103.0, 10.0, 10)
    assert claim.execution_id == "e1"
    info = await store.get_execution("e1")
    assert info is not None
    assert info.updated_at.timestamp() == 103.0


async def test_resume_keeps_a_live_owner(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    await store.request("e1", "suspend", 101.0)
    assert await store.request("e1", "resume", 102.0) is Status.RUNNING
    assert await store.claim("w2", 103.0, 10.0, 10) == []  # w1 still holds it
    assert await store.renew("w1", EVERY, 103.0, 10.0) == {"e1"}


async def test_resume_after_the_owner_released_frees_it(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    await store.request("e1", "suspend", 101.0)
    await store.commit([transition("e1", expect=Status.SUSPEND, release=True)])
    assert await store.request("e1", "resume", 102.0) is Status.RUNNING
    (claim,) = await store.claim("w2", 102.0, 10.0, 10)
    assert claim.token == 2


async def test_abort_of_an_execution_with_nothing_done_ends_it_at_once(store: Store) -> None:
    await store.commit([new("queued"), new("suspended"), new("held", owner="w1")])
    # queued, no step ever ran: nothing to roll back, no worker needed
    assert await store.request("queued", "abort", 101.0) is Status.ABORTED
    assert await store.get_status("queued") == (Status.ABORTED, Abort.COMPENSATE)
    await store.request("suspended", "suspend", 101.0)
    assert await store.request("suspended", "abort", 102.0) is Status.ABORTED
    assert await store.claim("w2", 102.0, 10.0, 10) == []
    # a live owner decides for itself, even with nothing done
    assert await store.request("held", "abort", 102.0) is Status.COMPENSATING


async def test_abort_of_a_suspended_execution_rolls_back(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",), ttl=1.0)])
    await store.commit([transition("e1", records=[succeeded("a")])])
    await store.request("e1", "suspend", 101.0)
    assert await store.request("e1", "abort", 102.0) is Status.COMPENSATING
    assert await store.get_status("e1") == (Status.COMPENSATING, Abort.COMPENSATE)
    with pytest.raises(InvalidTransitionError, match="suspend"):
        await store.request("e1", "suspend", 103.0)
    (claim,) = await store.claim("w2", 103.0, 10.0, 10)
    assert claim.execution_id == "e1"
    assert await store.get_status("e1") == (Status.COMPENSATING, Abort.COMPENSATE)


async def test_invalid_requests(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    with pytest.raises(InvalidTransitionError, match="resume"):
        await store.request("e1", "resume", 101.0)
    await store.commit([transition("e1", status=Status.SUCCESS, release=True)])
    for action in ("suspend", "abort", "abort_nocomp", "resume"):
        with pytest.raises(InvalidTransitionError):
            await store.request("e1", action, 102.0)
    with pytest.raises(ExecutionNotFoundError):
        await store.request("nope", "suspend", 102.0)
    # a refused request changes nothing and wakes nobody
    assert await store.get_status("e1") == (Status.SUCCESS, Abort.NONE)
    _, last = await store.controls(2**62)
    assert await store.controls(last) == ([], last)


async def test_abort_of_a_held_execution_is_left_to_its_owner(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    assert await store.request("e1", "abort", 101.0, reason="deadline exceeded") is (
        Status.COMPENSATING
    )
    assert await store.get_status("e1") == (Status.COMPENSATING, Abort.COMPENSATE)
    assert await store.renew("w1", EVERY, 102.0, 10.0) == {"e1"}
    info = await store.get_execution("e1")
    assert info is not None
    assert info.error == "deadline exceeded"


async def test_abort_of_an_execution_nobody_holds_frees_it(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",), ttl=5.0)])
    await store.commit([transition("e1", records=[succeeded("a")])])
    # the lease expired at 105: any worker may take the rollback now
    assert await store.request("e1", "abort", 106.0) is Status.COMPENSATING
    (claim,) = await store.claim("w2", 106.0, 10.0, 10)
    assert claim.token == 2


async def test_abort_without_compensation(store: Store) -> None:
    await store.commit([new("idle"), new("busy", owner="w1", starts=("a",), ttl=5.0)])
    # nobody holds it and no step runs: it ends at once
    assert await store.request("idle", "abort_nocomp", 101.0) is Status.ABORTED
    assert await store.get_status("idle") == (Status.ABORTED, Abort.NO_COMPENSATION)
    assert await store.claim("w2", 101.0, 10.0, 10) == []
    # a step is still running: a worker must record how it ends
    assert await store.request("busy", "abort_nocomp", 106.0) is Status.RUNNING
    assert await store.get_status("busy") == (Status.RUNNING, Abort.NO_COMPENSATION)
    (claim,) = await store.claim("w2", 106.0, 10.0, 10)
    assert claim.execution_id == "busy"


async def test_resume_retries_failed_compensations(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a",))])
    await store.commit([transition("e1", records=[succeeded("a")], status=Status.COMPENSATING)])
    failed = StepRecord("a", Phase.COMPENSATE, Status.FAILURE, 10, None, None, "down", 101.0, 102.0)
    await store.commit(
        [
            transition(
                "e1",
                expect=Status.COMPENSATING,
                status=Status.FAILURE,
                records=[failed],
                error="compensation of a failed",
                release=True,
            )
        ]
    )
    assert await store.request("e1", "resume", 110.0) is Status.COMPENSATING
    records = await steps_of(store, "e1")
    assert records["a", Phase.COMPENSATE].status is Status.PENDING
    assert records["a", Phase.FORWARD].status is Status.SUCCESS
    (claim,) = await store.claim("w2", 110.0, 10.0, 10)
    assert claim.token == 2
    # a failure without a failed compensation cannot be resumed
    await store.commit([new("e2", owner="w1")])
    await store.commit([transition("e2", status=Status.FAILURE, error="x", release=True)])
    with pytest.raises(InvalidTransitionError):
        await store.request("e2", "resume", 111.0)


async def test_controls_list_requests_after_a_sequence_number(store: Store) -> None:
    await store.commit([new("e1"), new("e2"), new("e3")])
    none, start = await store.controls(2**62)
    assert none == []
    await store.request("e1", "suspend", 100.0)
    await store.request("e2", "abort", 101.0)
    ids, last = await store.controls(start)
    assert ids == ["e1", "e2"]
    assert last > start
    assert await store.controls(last) == ([], last)
    await store.request("e1", "resume", 200.0)
    ids, newer = await store.controls(last)
    assert (ids, newer > last) == (["e1"], True)
    # a worker starting now sees nothing of the past
    assert (await store.controls(2**62))[1] == newer
    await store.prune_controls(150.0)
    assert (await store.controls(start))[0] == ["e1"]


# queries ---------------------------------------------------------------------------------


async def test_list_executions_newest_first_with_filters_and_pages(store: Store) -> None:
    units = [new(f"e{i}", workflow="order" if i % 2 else "refund") for i in range(7)]
    units[3] = new("e3", workflow="order", owner="w1", starts=("a",))
    for unit in units:  # one commit each: creation order is the listing order
        await store.commit([unit])
    await store.commit([transition("e3", status=Status.SUCCESS, records=[succeeded("a")])])
    listed = await store.list_executions()
    assert [e.id for e in listed] == ["e6", "e5", "e4", "e3", "e2", "e1", "e0"]
    assert listed[3].steps["a"].status is Status.SUCCESS
    assert listed[3].steps["b"].status is Status.PENDING
    assert [e.id for e in await store.list_executions(workflow_id="order")] == ["e5", "e3", "e1"]
    assert [e.id for e in await store.list_executions(status=Status.SUCCESS)] == ["e3"]
    pending_orders = await store.list_executions("order", Status.PENDING)
    assert [e.id for e in pending_orders] == ["e5", "e1"]
    assert await store.list_executions("nope") == []
    # keyset pages
    pages, before = [], None
    while True:
        page = await store.list_executions(limit=3, before=before)
        if not page:
            break
        pages.append([e.id for e in page])
        before = page[-1].id
    assert pages == [["e6", "e5", "e4"], ["e3", "e2", "e1"], ["e0"]]
    assert [e.id for e in await store.list_executions("order", limit=1, before="e5")] == ["e3"]
    with pytest.raises(ExecutionNotFoundError):
        await store.list_executions(before="nope")


async def test_list_executions_without_their_steps(store: Store) -> None:
    """What a list shows, without reading the step runs (a map's 10,000 of them)."""
    await store.commit([new("e1", workflow="refund")])
    await store.commit([replace(new("e2", owner="w1", starts=("a",)), redrive_of="e1")])
    await store.commit([transition("e2", status=Status.FAILURE, error="boom")])
    for filters in ({}, {"status": Status.FAILURE}, {"redrive_of": "e1"}):
        full = await store.list_executions(**filters)  # type: ignore[arg-type]
        bare = await store.list_executions(steps=False, **filters)  # type: ignore[arg-type]
        assert [e.id for e in bare] == [e.id for e in full]
        assert all(e.steps == {} for e in bare)
        fields = ("workflow_id", "status", "error", "request", "created_at", "redrive_of")
        for a, b in zip(full, bare, strict=True):
            assert [getattr(b, f) for f in fields] == [getattr(a, f) for f in fields]
    assert (await store.list_executions())[0].steps["a"].status is Status.RUNNING


async def test_list_executions_of_the_redrives_of_one(store: Store) -> None:
    await store.commit([new("e1")])
    await store.commit([new("e2")])
    redrives = [
        replace(new("r1"), redrive_of="e1"),
        replace(new("r2", workflow="refund"), redrive_of="e2"),
        replace(new("r3"), redrive_of="e1"),
        replace(new("r4", owner="w1", starts=("a",)), redrive_of="e1"),
    ]
    for unit in redrives:
        await store.commit([unit])

    async def ids(**filters: Any) -> list[str]:
        return [e.id for e in await store.list_executions(**filters)]

    assert await ids(redrive_of="e1") == ["r4", "r3", "r1"]
    assert [e.redrive_of for e in await store.list_executions(redrive_of="e2")] == ["e2"]
    assert await ids(redrive_of="r1") == []  # no redrive of its own
    assert await ids(redrive_of="nope") == []
    # with the other filters and pages
    assert await ids(redrive_of="e1", status=Status.PENDING) == ["r3", "r1"]
    assert await ids(redrive_of="e1", workflow_id="refund") == []
    assert await ids(redrive_of="e2", workflow_id="refund", status=Status.PENDING) == ["r2"]
    assert await ids(redrive_of="e1", limit=1, before="r4") == ["r3"]
    assert await ids(redrive_of="e1", before="r3") == ["r1"]
    # without it, every execution
    assert len(await store.list_executions()) == 6


async def test_get_status(store: Store) -> None:
    await store.commit([new("e1", owner="w1")])
    assert await store.get_status("e1") == (Status.RUNNING, Abort.NONE)
    await store.request("e1", "abort", 101.0)
    assert await store.get_status("e1") == (Status.COMPENSATING, Abort.COMPENSATE)


def _shown(info: Execution) -> list[tuple[Any, ...]]:
    """What a reader sees of each step, in order."""
    out = []
    for sid, run in info.steps.items():
        comp = run.compensation
        request = None if run.request is None else run.request.body
        out.append((sid, run.status, run.attempts, request, comp and comp.status))
    return out


async def test_maps_in_brief_are_counted_as_from_every_run(store: Store) -> None:
    """``get_execution_in_brief`` gives what counting every run of ``get_execution``
    gives (:func:`map_briefs`), for any limit: the SQL stores count in the database.
    Runs are ``<map>[<digits>]`` of a step of the definition, in element order, not
    in the order of their ids; ids only like them (``m[1]x``, ``m[]``, ``shard[0]``, a
    step of its own) are no runs."""
    steps = ("m", "s", "shard", "shard[0]", "x]")
    await store.commit([new("e1", owner="w1", steps=steps)])
    forward = [
        Status.SUCCESS, Status.SUCCESS, Status.FAILURE, Status.COMPENSATED, Status.SUCCESS,
        Status.COMPENSATING, Status.SUCCESS, Status.FAILURE, Status.SUCCESS, Status.SUCCESS,
        Status.RUNNING, Status.SUCCESS,
    ]  # fmt: skip
    undo = {3: Status.SUCCESS, 4: Status.FAILURE, 5: Status.RUNNING, 9: Status.SUCCESS}
    records = [replace(succeeded(f"m[{i}]"), status=st) for i, st in enumerate(forward)]
    records += [replace(succeeded(f"m[{i}]", phase=Phase.COMPENSATE), status=st)
                for i, st in undo.items()]  # fmt: skip
    records += [succeeded(sid) for sid in ("m", "s[0]", "s[1]", "shard", "shard[0]", "x][2]")]
    records += [succeeded(sid) for sid in ("m[1]x", "m[]", "m[1]]", "m[-1]", "m[2][3]")]
    await store.commit([transition("e1", records=records)])
    whole = await store.get_execution("e1")
    assert whole is not None
    for limit in range(14):
        found = await store.get_execution_in_brief("e1", limit)
        assert found is not None, limit
        info, maps = found
        expected, hidden = map_briefs(whole, limit, steps)
        assert maps == expected, limit
        for map_id, brief in maps.items():
            assert list(brief.statuses) == list(expected[map_id].statuses), limit
            assert list(brief.compensations) == list(expected[map_id].compensations), limit
        shown = {sid: run for sid, run in whole.steps.items() if sid not in hidden}
        assert _shown(info) == _shown(dataclasses.replace(whole, steps=shown)), limit
    found = await store.get_execution_in_brief("e1", 2)
    assert found is not None
    assert list(found[1]) == ["m"]  # s, x] of 2 runs and 1: whole
    brief = found[1]["m"]
    assert brief.runs == 12
    assert list(brief.statuses) == [
        Status.SUCCESS,
        Status.FAILURE,
        Status.COMPENSATED,
        Status.COMPENSATING,
        Status.RUNNING,
    ]  # by their first run, m[10] the last: in element order
    assert brief.notable == 4  # m[2], m[7] failed, m[4], m[5] undoing
    assert brief.listed == ["m[2]", "m[4]"]
    assert await store.get_execution_in_brief("nope", 2) is None


# workflow definitions --------------------------------------------------------------------


async def test_workflow_versions(store: Store) -> None:
    assert await store.save_workflow("order", "h1", b'{"v": 1}', 10.0) == 1
    assert await store.save_workflow("order", "h1", b'{"v": 1}', 11.0) == 1  # unchanged
    assert await store.save_workflow("order", "h2", b'{"v": 2}', 12.0) == 2
    assert await store.save_workflow("order", "h1", b'{"v": 1}', 13.0) == 3  # changed back
    assert await store.save_workflow("refund", "r1", b'{"r": 1}', 14.0) == 1
    latest = await store.load_workflow("order")
    assert latest is not None
    assert (latest.id, latest.version, latest.hash, latest.body, latest.created_at) == (
        "order",
        3,
        "h1",
        b'{"v": 1}',
        13.0,
    )
    second = await store.load_workflow("order", 2)
    assert second is not None
    assert (second.version, second.body) == (2, b'{"v": 2}')
    assert await store.load_workflow("order", 9) is None
    assert await store.load_workflow("nope") is None
    listed = await store.list_workflows()
    assert [(w.id, w.version) for w in listed] == [("order", 3), ("refund", 1)]
    assert await store.remove_workflow("order") is True
    assert await store.remove_workflow("order") is False
    assert await store.load_workflow("order") is None
    assert [w.id for w in await store.list_workflows()] == ["refund"]


# whole sagas through Flow ---------------------------------------------------------------

COMPENSATED: list[object] = []
GATE: dict[str, asyncio.Event] = {}


async def reserve(msg: Message) -> object:
    return {"reserved": msg.json()["order"]}


async def release(msg: Message) -> None:
    COMPENSATED.append(msg.json())


async def charge(msg: Message) -> object:
    raise StepError("card declined", retryable=False)


async def slow(msg: Message) -> object:
    await GATE["slow"].wait()
    return {"slow": True}


async def after(msg: Message) -> object:
    return {"after": msg.json()}


async def test_saga_rolls_back_through_the_store(store_url: str) -> None:
    COMPENSATED.clear()
    async with Flow(store_url) as flow:
        wf = await flow.workflow_create(
            "order",
            FunctionStep(reserve, compensate=FunctionStep(release)),
            FunctionStep(charge, requires=["reserve"]),
        )
        with pytest.raises(ExecutionFailedError) as failed:
            await wf.execute({"order": 7}, execution_id="order-7")
        assert (failed.value.step_id, failed.value.compensated) == ("charge", True)
        # the same id again starts nothing and reports the same outcome
        with pytest.raises(ExecutionFailedError):
            await wf.execute({"order": 8}, execution_id="order-7")
        assert len(await flow.executions()) == 1
    assert COMPENSATED == [{"request": {"order": 7}, "response": {"reserved": 7}}]
    async with Flow(store_url, worker=False) as reader:
        info = await reader.execution("order-7")
    assert info.status is Status.FAILURE
    assert info.steps["reserve"].status is Status.COMPENSATED
    comp = info.steps["reserve"].compensation
    assert comp is not None
    assert comp.status is Status.SUCCESS
    assert info.steps["charge"].status is Status.FAILURE
    assert "card declined" in (info.steps["charge"].error or "")


async def test_saga_succeeds_and_suspends_from_another_flow(store_url: str) -> None:
    GATE["slow"] = asyncio.Event()
    async with Flow(store_url) as runner, Flow(store_url, worker=False) as other:
        wf = await runner.workflow_create(
            "slow", FunctionStep(slow), FunctionStep(after, requires=["slow"])
        )
        eid = await wf.execute({"n": 1}, async_=True)

        async def slow_running() -> bool:
            info = await other.execution(eid)
            return info.steps["slow"].status is Status.RUNNING

        await eventually(slow_running)
        await other.suspend(eid)
        assert (await other.execution(eid)).status is Status.SUSPEND
        # the runner learns of it within a second
        await eventually(lambda: wf.status is Status.SUSPEND, timeout=1.0)
        GATE["slow"].set()
        stopped = await other.wait(eid, timeout=10)
        assert stopped.status is Status.SUSPEND

        async def slow_recorded() -> bool:
            info = await other.execution(eid)
            return info.steps["slow"].status is Status.SUCCESS

        await eventually(slow_recorded)  # the running step finished and was recorded
        info = await other.execution(eid)
        assert info.steps["after"].status is Status.PENDING  # nothing new started
        await other.resume(eid)
        assert (await other.execution(eid)).status in (Status.RUNNING, Status.SUCCESS)
        done = await other.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert done.steps["after"].response is not None
    assert done.steps["after"].response.json() == {"after": {"slow": True}}


async def test_a_redrive_sets_failed_steps_pending_with_a_new_request(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a", "b"))])
    failed = StepRecord("a", Phase.FORWARD, Status.FAILURE, 3, None, None, "boom", 100.0, 101.0)
    other = StepRecord("b", Phase.FORWARD, Status.FAILURE, 1, None, None, "bust", 100.0, 101.0)
    await store.commit([transition("e1", status=Status.SUSPEND, records=[failed, other])])
    status = await store.request("e1", "redrive", 102.0, steps=["a"], body=b'{"new": 1}')
    assert status is Status.RUNNING
    records = await steps_of(store, "e1")
    a = records["a", Phase.FORWARD]
    assert (a.status, a.attempts) == (Status.PENDING, 0)  # a fresh retry budget
    assert a.request is not None
    assert a.request.body == b'{"new": 1}'
    assert records["b", Phase.FORWARD].status is Status.FAILURE  # not named: left as it is
    with pytest.raises(InvalidTransitionError):
        await store.request("e1", "retry", 103.0)  # not suspended any more


async def test_retry_sets_every_failed_step_pending(store: Store) -> None:
    await store.commit([new("e1", owner="w1", starts=("a", "b"))])
    failed = StepRecord("a", Phase.FORWARD, Status.FAILURE, 3, None, None, "boom", 100.0, 101.0)
    await store.commit([transition("e1", status=Status.SUSPEND, records=[failed, succeeded("b")])])
    assert await store.request("e1", "retry", 102.0) is Status.RUNNING
    records = await steps_of(store, "e1")
    assert records["a", Phase.FORWARD].status is Status.PENDING
    assert records["a", Phase.FORWARD].request is None  # its input is made again
    assert records["b", Phase.FORWARD].status is Status.SUCCESS


async def test_prune_deletes_finished_executions_older_than_a_time(store: Store) -> None:
    await store.commit([new(f"e{i}", owner="w1", starts=("a",)) for i in range(5)])
    for i, status in enumerate((Status.SUCCESS, Status.FAILURE, Status.SUCCESS)):
        await store.commit(
            [transition(f"e{i}", status=status, records=[succeeded("a")], at=100.0 + i * 10)]
        )
    assert await store.park("e4", 1, 1e12, ["approved"], [], "waits for approved")
    # e3 is still running, e4 waits (parked); e2 finished at 120
    assert await store.prune(115.0, [Status.FAILURE], 10) == 1  # e1 alone
    assert await store.prune(115.0, [Status.SUCCESS, Status.FAILURE], 10) == 1  # e0
    assert await store.load("e0") is None
    assert await store.load("e1") is None
    assert await store.get_status("e2") is not None
    assert await store.get_status("e3") is not None
    assert await store.prune(1e9, [Status.SUCCESS, Status.FAILURE, Status.ABORTED], 10) == 1
    assert await store.get_status("e3") is not None  # running: never pruned
    assert await store.get_status("e4") is not None  # waiting: never pruned


async def test_a_lease_is_free_at_its_end_time(store: Store) -> None:
    # a parked execution's timer is due at its time: claimable then, not a moment later
    # (a test clock stopped on the time would never see it otherwise)
    await store.commit([new("e1", owner="w1"), new("e2", owner="w1", ttl=10.0)])
    assert await store.park("e1", 1, 150.0, [], [], "sleeps till 150")
    assert await store.claim("w2", 109.9, 10.0, 10) == []
    assert [c.execution_id for c in await store.claim("w2", 110.0, 10.0, 10)] == ["e2"]
    # held until its end, not at it: an abort just before is left to the owner
    assert await store.request("e2", "abort", 119.9) is Status.COMPENSATING
    assert [c.execution_id for c in await store.claim("w2", 150.0, 10.0, 10)] == ["e1"]
    # at the end nobody holds it and nothing ran: the abort ends it at once
    assert await store.request("e1", "abort", 160.0) is Status.ABORTED
