"""Data where a step needs it (input, when), the failure policy, redrive and pruning,
on memory and SQLite."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    ConfigurationError,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    InvalidTransitionError,
    MapStep,
    Message,
    Retry,
    Status,
    StepContext,
    StepError,
    WaitStep,
    load_definition,
)
from tests.helpers import eventually


class Shop:
    """Steps that log what they get; ``charge`` fails while ``declines`` > 0."""

    def __init__(self, declines: int = 0) -> None:
        self.log: list[tuple[str, Any]] = []
        self.declines = declines

    def steps(self, **charge_options: Any) -> list[FunctionStep]:
        async def reserve(msg: Message) -> dict[str, Any]:
            self.log.append(("reserve", msg.json()))
            return {"reservation": "R1"}

        async def release(msg: Message) -> None:
            self.log.append(("release", msg.json()))

        async def charge(msg: Message) -> dict[str, Any]:
            self.log.append(("charge", msg.json()))
            if self.declines:
                self.declines -= 1
                raise StepError("card declined")
            return {"payment": "P1"}

        async def ship(msg: Message) -> dict[str, Any]:
            self.log.append(("ship", msg.json()))
            return {"tracking": "T1"}

        r = FunctionStep(reserve, id="reserve", compensate=FunctionStep(release))
        c = FunctionStep(charge, id="charge", requires=[r], **charge_options)
        s = FunctionStep(ship, id="ship", requires=[c])
        return [r, c, s]

    def calls(self, step: str) -> list[Any]:
        return [got for name, got in self.log if name == step]


async def test_input_builds_a_request_from_the_context_document(flow: Flow) -> None:
    shop = Shop()
    steps = shop.steps(input="{order: request, reservation: steps.reserve.reservation}")
    wf = await flow.workflow_create("order", *steps)
    await wf.execute({"order_id": 7})
    assert shop.calls("charge") == [{"order": {"order_id": 7}, "reservation": "R1"}]
    assert shop.calls("ship") == [{"payment": "P1"}]  # without input: as before


async def test_a_false_when_skips_a_step_and_its_dependents_go_on(flow: Flow) -> None:
    shop = Shop()

    async def gift(msg: Message) -> dict[str, str]:
        shop.log.append(("gift", msg.json()))
        return {"gift": "wrapped"}

    async def wrap_note(msg: Message) -> None:
        shop.log.append(("note", msg.json()))

    async def done(msg: Message) -> Any:
        shop.log.append(("done", msg.json()))
        return msg.json()

    reserve, charge, ship = shop.steps()
    g = FunctionStep(gift, id="gift", requires=[reserve], when="request.gift")
    note = FunctionStep(wrap_note, id="note", requires=[g])  # only requires a skipped step
    end = FunctionStep(done, id="done", requires=[ship, g])
    wf = await flow.workflow_create("order", reserve, charge, ship, g, note, end)
    eid = await wf.execute({"gift": False})
    info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    assert info.steps["gift"].status is Status.SKIPPED
    assert info.steps["note"].status is Status.SKIPPED  # all its requirements skipped
    # a skipped requirement is left out of the default input: done gets ship's alone
    assert shop.calls("done") == [{"tracking": "T1"}]
    assert shop.calls("gift") == []
    await wf.execute({"gift": True})
    assert shop.calls("gift") == [{"reservation": "R1"}]


async def test_a_skipped_step_is_never_compensated(flow: Flow) -> None:
    undone: list[str] = []

    async def hold(msg: Message) -> None:
        return None

    async def release(msg: Message) -> None:
        undone.append("released")

    async def fail(msg: Message) -> None:
        raise StepError("broke", retryable=False)

    held = FunctionStep(hold, id="hold", when="request.hold", compensate=FunctionStep(release))
    kept = FunctionStep(hold, id="kept", compensate=FunctionStep(release))
    broke = FunctionStep(fail, id="broke", requires=[held, kept])
    wf = await flow.workflow_create("w", held, kept, broke)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute({"hold": False})
    info = await flow.execution(err.value.execution_id)
    assert info.steps["hold"].status is Status.SKIPPED  # skipped: nothing to undo
    assert info.steps["kept"].status is Status.COMPENSATED
    assert undone == ["released"]


async def test_a_when_that_cannot_be_evaluated_fails_the_step_naming_it(flow: Flow) -> None:
    shop = Shop()
    reserve, charge, ship = shop.steps(when="length(request.amount) > `0`")
    wf = await flow.workflow_create("order", reserve, charge, ship)
    with pytest.raises(ExecutionFailedError, match=r"when length\(request.amount\)") as err:
        await wf.execute({"amount": 5})  # length() of a number: an error
    info = await flow.execution(err.value.execution_id)
    assert info.steps["charge"].status is Status.FAILURE
    assert info.steps["reserve"].status is Status.COMPENSATED
    assert shop.calls("charge") == []


async def test_a_step_sees_the_execution_request_in_its_context(flow: Flow) -> None:
    seen: list[Any] = []

    async def first(msg: Message) -> dict[str, int]:
        return {"n": 1}

    async def second(msg: Message, ctx: StepContext) -> None:
        seen.append(ctx.request.json())

    a = FunctionStep(first, id="a")
    wf = await flow.workflow_create("w", a, FunctionStep(second, id="b", requires=[a]))
    await wf.execute({"order_id": 3})
    assert seen == [{"order_id": 3}]


async def test_the_suspend_policy_waits_for_an_operator_and_resume_retries(flow: Flow) -> None:
    shop = Shop(declines=3)
    wf = await flow.workflow_create(
        "order", *shop.steps(retry=Retry(max_attempts=2, initial_interval=0)), on_failure="suspend"
    )
    eid = await wf.execute({"order_id": 1})  # returns: the execution waits, not failed
    info = await flow.execution(eid)
    assert info.status is Status.SUSPEND
    assert info.steps["charge"].status is Status.FAILURE
    assert info.steps["charge"].attempts == 2
    assert info.steps["reserve"].status is Status.SUCCESS  # nothing compensated
    assert "card declined" in (info.error or "")
    assert shop.calls("release") == []
    await flow.resume(eid)  # a fresh budget of 2 attempts: the third decline, then success
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.SUCCESS
    assert info.steps["charge"].attempts == 2
    assert len(shop.calls("charge")) == 4
    assert len(shop.calls("reserve")) == 1  # finished steps are not run again


@pytest.mark.parametrize("again", ["resume", "redrive the map"])
async def test_a_failed_map_run_tried_again_has_a_fresh_retry_budget(
    flow: Flow, again: str
) -> None:
    declines = {"x": 3}
    tried: list[str] = []

    async def take(msg: Message) -> str:
        item = msg.json()
        tried.append(item)
        if declines.get(item, 0) > 0:
            declines[item] -= 1
            raise StepError(f"{item} declined")
        return str(item)

    step = FunctionStep(take, id="take", retry=Retry(max_attempts=2, initial_interval=0))
    wf = await flow.workflow_create(
        "pick", MapStep(step, over="request", id="each"), on_failure="suspend"
    )
    eid = await wf.execute(["a", "x"])
    info = await flow.execution(eid)
    assert info.status is Status.SUSPEND
    assert (info.steps["each[1]"].status, info.steps["each[1]"].attempts) == (Status.FAILURE, 2)
    if again == "resume":
        await flow.resume(eid)
    else:
        await flow.redrive(eid, step="each")
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.SUCCESS  # two more attempts: a third decline, then taken
    assert info.response is not None
    assert info.response.json() == ["a", "x"]
    assert info.steps["each[1]"].attempts == 2
    assert tried.count("x") == 4
    assert tried.count("a") == 1  # a run that succeeded is not run again


async def test_a_map_run_is_redriven_with_its_map_not_alone(flow: Flow) -> None:
    async def take(msg: Message) -> None:
        raise StepError("declined")

    wf = await flow.workflow_create(
        "pick",
        MapStep(FunctionStep(take, id="take"), over="request", id="each"),
        on_failure="suspend",
    )
    eid = await wf.execute(["x"])
    with pytest.raises(InvalidTransitionError, match=r"each\[0\] .* is a run of map step each"):
        await flow.redrive(eid, step="each[0]")
    assert (await flow.execution(eid)).status is Status.SUSPEND


async def test_a_map_redriven_with_an_input_keeps_its_runs_that_succeeded(flow: Flow) -> None:
    """A map's input is its list: a redrive's list of another length, or changing an
    element whose run succeeded (and is not run again), is refused before anything
    changes, rather than leaving the map's list, runs and response disagreeing."""
    tried: list[Any] = []

    async def take(msg: Message) -> Any:
        tried.append(msg.json())
        if msg.json() == "bad":
            raise StepError("bad line", retryable=False)
        return {"took": msg.json()}

    wf = await flow.workflow_create(
        "pick",
        MapStep(FunctionStep(take, id="take"), over="request", id="each", concurrency=1),
        on_failure="suspend",
    )
    eid = await wf.execute(["x", "bad", "z"])
    refused = {
        "list of 3 elements (runs each[0] to each[2]), not 1": ["x"],
        "list of 3 elements (runs each[0] to each[2]), not 4": ["x", "ok", "z", "w"],
        "must be a list of 3 elements, not an object": {"lines": ["x", "ok", "z"]},
        "element 0 of the input of map step each must stay 'x': run each[0] succeeded": [
            "y",
            "ok",
            "z",
        ],
    }
    for why, given in refused.items():
        with pytest.raises(ConfigurationError, match=re.escape(why)) as err:
            await flow.redrive(eid, step="each", input=given)
        assert str(err.value).startswith("input: ")
        with pytest.raises(ConfigurationError, match=re.escape(why)):
            await flow.redrive(eid, input=given)  # every failed step: the map among them
    with pytest.raises(ConfigurationError, match=r"^input: the body is not JSON"):
        await flow.redrive(eid, step="each", input=b"[not json")
    info = await flow.execution(eid)
    assert info.status is Status.SUSPEND
    assert info.steps["each[1]"].status is Status.FAILURE
    await flow.redrive(eid, step="each", input=["x", "ok", "zz"])
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.SUCCESS, info.error
    assert info.steps["each"].request is not None
    assert info.steps["each"].request.json() == ["x", "ok", "zz"]
    assert body_of(info.response) == [{"took": "x"}, {"took": "ok"}, {"took": "zz"}]
    assert [body_of(info.steps[f"each[{i}]"].request) for i in range(3)] == ["x", "ok", "zz"]
    assert tried == ["x", "bad", "ok", "zz"]


def body_of(message: Message | None) -> Any:
    assert message is not None
    return message.json()


async def test_abort_of_a_suspended_failure_rolls_back(flow: Flow) -> None:
    shop = Shop(declines=1)
    wf = await flow.workflow_create("order", *shop.steps(), on_failure="suspend")
    eid = await wf.execute({})
    await flow.abort(eid)
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.ABORTED
    assert info.steps["reserve"].status is Status.COMPENSATED


async def test_redrive_of_a_suspended_failure_with_an_edited_input(flow: Flow) -> None:
    shop = Shop(declines=1)
    wf = await flow.workflow_create("order", *shop.steps(), on_failure="suspend")
    eid = await wf.execute({"card": "expired"})
    assert "charge" in ((await flow.execution(eid)).error or "")  # SUSPEND, saying why
    assert (await flow.redrive(eid, step="charge", input={"card": "new"})) == eid
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.SUCCESS
    assert info.error is None  # the failure it was suspended on is mended
    assert shop.calls("charge") == [{"reservation": "R1"}, {"card": "new"}]
    assert info.steps["charge"].request is not None
    assert info.steps["charge"].request.json() == {"card": "new"}
    assert info.steps["charge"].request.header["Idempotency-Key"] == f"{eid}:charge"
    assert len(shop.calls("reserve")) == 1
    with pytest.raises(InvalidTransitionError, match="SUCCESS"):
        await flow.redrive(eid)


@pytest.mark.parametrize("redrive", [False, True])
async def test_a_failed_step_is_tried_again_when_resumed_while_another_still_runs(
    flow: Flow, redrive: bool
) -> None:
    """The execution is SUSPEND while a step beside the failed one still runs (its run
    holds it): resume or redrive tries the failed step again rather than suspending
    the execution again, the failed step left PENDING."""
    gate = asyncio.Event()
    fixed: list[Any] = []
    calls: list[Any] = []

    async def charge(msg: Message) -> dict[str, Any]:
        calls.append(msg.json())
        if not fixed:
            raise StepError("card declined", retryable=False)
        return {"charged": msg.json()}

    async def pack(msg: Message) -> dict[str, Any]:
        await gate.wait()
        return {"packed": True}

    wf = await flow.workflow_create(
        "order",
        FunctionStep(charge, id="charge"),
        FunctionStep(pack, id="pack"),
        on_failure="suspend",
    )
    eid = await wf.execute({"card": "expired"}, async_=True)
    info = await flow.wait(eid, timeout=10)
    assert info.status is Status.SUSPEND
    assert info.steps["pack"].status is Status.RUNNING
    fixed.append(True)
    if redrive:
        await flow.redrive(eid, input={"card": "new"})
    else:
        await flow.resume(eid)
    gate.set()
    done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS, done.error
    assert done.error is None
    assert done.steps["charge"].status is Status.SUCCESS
    assert done.steps["pack"].status is Status.SUCCESS
    assert calls == [{"card": "expired"}, {"card": "new" if redrive else "expired"}]


async def test_redrive_names_only_a_failed_step(flow: Flow) -> None:
    shop = Shop(declines=1)
    wf = await flow.workflow_create("order", *shop.steps(), on_failure="suspend")
    eid = await wf.execute({})
    with pytest.raises(InvalidTransitionError, match=r"reserve.*did not fail"):
        await flow.redrive(eid, step="reserve")
    with pytest.raises(InvalidTransitionError, match=r"step chrage .*: its workflow has no"):
        await flow.redrive(eid, step="chrage")


async def test_redrive_of_a_finished_failure_starts_a_new_execution(flow: Flow) -> None:
    shop = Shop(declines=1)
    wf = await flow.workflow_create("order", *shop.steps())
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute({"order_id": 9})
    old = err.value.execution_id
    new = await flow.redrive(old, input={"order_id": 10})
    assert new != old
    info = await flow.wait(new, timeout=10)
    assert info.status is Status.SUCCESS
    assert info.redrive_of == old
    assert info.request.json() == {"order_id": 10}
    assert (await flow.execution(old)).status is Status.FAILURE  # untouched
    again = await flow.redrive(old)  # the same request as the old one
    assert (await flow.wait(again, timeout=10)).request.json() == {"order_id": 9}


async def test_prune_deletes_what_finished_long_enough_ago(store_url: str) -> None:
    now = [1_000_000.0]
    shop = Shop()
    async with Flow(store_url, clock=lambda: now[0], lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("order", *shop.steps())
        old = await wf.execute({})
        shop.declines = 1
        with pytest.raises(ExecutionFailedError) as err:
            await wf.execute({})
        failed = err.value.execution_id
        # as old, but unfinished: it waits for a signal nobody sends
        approval = await flow.workflow_create("approval", WaitStep("approved"))
        waiting = await approval.execute({}, async_=True)
        now[0] += 3600
        recent = await wf.execute({})
        assert await flow.prune(600, status="FAILURE") == 1
        assert {e.id for e in await flow.executions()} == {old, recent, waiting}
        assert await flow.prune(600) == 1  # old; recent is too recent, waiting unfinished
        assert {e.id for e in await flow.executions()} == {recent, waiting}
        with pytest.raises(Exception, match="not found"):
            await flow.execution(failed)
        with pytest.raises(Exception, match="finished"):
            await flow.prune(0, status="RUNNING")


async def test_prune_takes_a_status_as_its_number_and_refuses_what_is_none(
    store_url: str,
) -> None:
    """Status is an IntEnum: ``status=3`` is SUCCESS, as ``Status(3)``; anything that
    is no finished status is a ConfigurationError, not a TypeError."""
    now = [1_000_000.0]
    shop = Shop()
    async with Flow(store_url, clock=lambda: now[0], lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("order", *shop.steps())
        await wf.execute({})
        now[0] += 3600
        for wrong in (1, 42, object(), True):
            with pytest.raises(ConfigurationError, match=r"^status: must be SUCCESS"):
                await flow.prune(600, status=wrong)
        assert await flow.prune(600, status=int(Status.FAILURE)) == 0
        assert await flow.prune(600, status=3) == 1
        assert await flow.executions() == []


async def test_retention_prunes_by_itself(store_url: str) -> None:
    now = [1_000_000.0]
    async with Flow(store_url, clock=lambda: now[0], lease_ttl=10**6, retention=60) as flow:

        async def ok(msg: Message) -> None:
            return None

        wf = await flow.workflow_create("w", FunctionStep(ok, id="ok"))
        eid = await wf.execute({})
        now[0] += 120  # past the retention, and past the worker's minute between prunes
        await eventually(lambda: _gone(flow, eid), timeout=10)


async def _gone(flow: Flow, eid: str) -> bool:
    return not any(e.id == eid for e in await flow.executions())


def test_expressions_and_the_policy_in_definitions() -> None:
    wf = load_definition(
        """
id: order
on_failure: suspend
steps:
  - function: tests.unit.steps_for_tests:reserve
    id: reserve
  - function: tests.unit.steps_for_tests:reserve
    id: charge
    requires: [reserve]
    input: "{order: request, r: steps.reserve}"
    when: "request.pay"
    compensate: {function: "tests.unit.steps_for_tests:reserve", input: response}
"""
    )
    assert wf.on_failure == "suspend"
    charge = wf.step("charge")
    assert (charge.options.input, charge.options.when) == (
        "{order: request, r: steps.reserve}",
        "request.pay",
    )
    assert charge.options.compensate_input == "response"
    assert load_definition(wf.to_dict()).to_dict() == wf.to_dict()


async def test_a_fallbacks_retries_are_recorded_and_a_suspend_interrupts_them(
    flow: Flow,
) -> None:
    tries: list[int] = []

    async def primary(msg: Message) -> None:
        raise StepError("primary down", retryable=False)

    async def backup(msg: Message) -> None:
        tries.append(1)
        raise ConnectionError("backup down too")

    step = FunctionStep(
        primary,
        id="pay",
        fallback=FunctionStep(backup, retry=Retry(max_attempts=50, initial_interval=0.2)),
    )
    wf = await flow.workflow_create("w", step)
    eid = await wf.execute({}, async_=True)

    async def recorded() -> bool:
        run = (await flow.execution(eid)).steps["pay"]
        return "backup attempt 1: ConnectionError" in (run.error or "")

    await eventually(recorded)
    await flow.suspend(eid)
    await flow.settle(eid)
    info = await flow.execution(eid)
    assert info.status is Status.SUSPEND
    assert info.steps["pay"].status is Status.PENDING  # starts again on resume
    count = len(tries)
    await asyncio.sleep(0.5)
    assert len(tries) == count  # no more tries while suspended


def side_steps() -> tuple[Callable[[Message], Awaitable[None]], ...]:
    """Step functions for the skip tests: ``noop``; ``wait_side``, which waits (5 s at
    most, then fails) for ``side`` to have run, so that a ``side`` started only once
    the branch of ``wait_side`` has ended fails the execution; and ``side``."""
    side_ran = asyncio.Event()

    async def noop(msg: Message) -> None:
        return None

    async def wait_side(msg: Message) -> None:
        await asyncio.wait_for(side_ran.wait(), 5)

    async def side(msg: Message) -> None:
        side_ran.set()

    return noop, wait_side, side


async def test_a_step_made_ready_by_a_skipped_sibling_runs_beside_the_other_branch(
    flow: Flow,
) -> None:
    # root -> (left, gift); gift's when is false; side requires root and gift, so the
    # skip of gift makes it ready while left runs: it must start then, beside left's
    # dependent, not once that branch has ended (wait_side waits for side)
    noop, wait_side, side = side_steps()

    root = FunctionStep(noop, id="root")
    left = FunctionStep(noop, id="left", requires=[root])
    gift = FunctionStep(noop, id="gift", requires=[root], when="request.gift")
    after_left = FunctionStep(wait_side, id="after_left", requires=[left])
    then = FunctionStep(noop, id="then", requires=[after_left])
    by_side = FunctionStep(side, id="side", requires=[root, gift])
    wf = await flow.workflow_create("w", root, left, gift, after_left, then, by_side)
    eid = await wf.execute({"gift": False})
    info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    assert info.steps["gift"].status is Status.SKIPPED
    assert info.steps["side"].status is Status.SUCCESS


async def test_a_step_made_ready_by_a_skip_starts_beside_the_one_started_with_it(
    flow: Flow,
) -> None:
    # root -> (left, gift); gift's when is false; side requires root and gift: the skip
    # makes it ready as left starts, alone, and it must start then, not once left has
    # run to its end (left waits for side)
    noop, wait_side, side = side_steps()

    root = FunctionStep(noop, id="root")
    left = FunctionStep(wait_side, id="left", requires=[root])
    gift = FunctionStep(noop, id="gift", requires=[root], when="request.gift")
    by_side = FunctionStep(side, id="side", requires=[root, gift])
    wf = await flow.workflow_create("w", root, left, gift, by_side)
    info = await flow.execution(await wf.execute({"gift": False}))
    assert info.status is Status.SUCCESS
    assert info.steps["gift"].status is Status.SKIPPED
    assert info.steps["left"].status is Status.SUCCESS


async def test_a_step_made_ready_by_a_skipped_root_starts_beside_its_siblings(
    flow: Flow,
) -> None:
    # roots gift (when false) and root; wrap requires gift alone (skipped too); side
    # requires wrap and root, next root alone: once root ends, side and next are both
    # ready and start together (next waits for side)
    noop, wait_side, side = side_steps()

    gift = FunctionStep(noop, id="gift", when="request.gift")
    root = FunctionStep(noop, id="root")
    wrap = FunctionStep(noop, id="wrap", requires=[gift])
    by_side = FunctionStep(side, id="side", requires=[wrap, root])
    after = FunctionStep(wait_side, id="next", requires=[root])
    wf = await flow.workflow_create("w", gift, root, wrap, by_side, after)
    info = await flow.execution(await wf.execute({"gift": False}))
    assert info.status is Status.SUCCESS
    assert info.steps["wrap"].status is Status.SKIPPED
    assert info.steps["next"].status is Status.SUCCESS


async def test_a_step_waiting_to_retry_lets_a_queued_step_run(store_url: str) -> None:
    """With one slot, ``b`` waits in the run's queue while ``a`` runs; ``a`` fails and
    waits to retry, holding no slot: ``b`` runs meanwhile instead of after ``a``'s next
    attempt (the queue counted a step waiting to retry as one that runs)."""
    log: list[str] = []

    async def a(msg: Message) -> None:
        log.append("a")
        if log.count("a") == 1:
            raise StepError("busy")

    async def b(msg: Message) -> None:
        log.append("b")

    retry = Retry(max_attempts=2, initial_interval=0.5, jitter=False)
    async with Flow(store_url, concurrency=1, poll_interval=0.05, lease_ttl=5.0) as flow:
        wf = await flow.workflow_create(
            "retry-beside", FunctionStep(a, id="a", retry=retry), FunctionStep(b, id="b")
        )
        eid = await wf.execute({})
        info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    assert info.steps["a"].attempts == 2
    assert log == ["a", "b", "a"]


async def test_a_retry_recorded_while_the_rollback_begins_is_made(tmp_path: Path) -> None:
    """``f`` fails for good while ``r`` runs; ``r`` fails and records its retry while
    the run commits the execution COMPENSATING: the retry is made (running steps
    finish before the rollback) instead of being dropped, ``r`` left PENDING."""
    calls: list[str] = []

    async def f(msg: Message) -> None:
        raise StepError("broken", retryable=False)

    async def r(msg: Message) -> None:
        calls.append("r")
        for _ in range(2):
            await asyncio.sleep(0)  # the run folds f's failure and commits meanwhile
        if len(calls) == 1:
            raise StepError("busy")

    retry = Retry(max_attempts=2, initial_interval=0.0, jitter=False)
    # commits through the writer thread: the run's commit is in flight while r fails
    url = f"sqlite:///{tmp_path / 'flow.db'}?inline_commit=0"
    async with Flow(url, poll_interval=0.05, lease_ttl=5.0) as flow:
        wf = await flow.workflow_create(
            "retry-in-rollback", FunctionStep(f, id="f"), FunctionStep(r, id="r", retry=retry)
        )
        with pytest.raises(ExecutionFailedError) as err:
            await wf.execute({})
        info = await flow.execution(err.value.execution_id)
    assert info.steps["f"].status is Status.FAILURE
    assert calls == ["r", "r"]
    assert info.steps["r"].status is Status.SUCCESS
    assert info.steps["r"].attempts == 2
