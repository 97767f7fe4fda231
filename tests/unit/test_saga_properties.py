"""Property tests of the saga rules on random DAGs (hypothesis; the seed is printed on
failure): whatever the shape and whichever step fails, what ran is undone in reverse
dependency order and nothing that depends on the failure ever starts."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microsaga import ExecutionFailedError, Flow, FunctionStep, Message, Status, StepError
from microsaga._engine.records import ExecState, Phase, StepRecord
from microsaga._engine.saga import after_success, after_successes, decide, first
from microsaga.workflow import build_plan


@st.composite
def sagas(draw: st.DrawFn) -> tuple[dict[str, list[str]], set[str], str | None]:
    n = draw(st.integers(min_value=1, max_value=8))
    graph: dict[str, list[str]] = {}
    for i in range(n):
        reqs = draw(st.lists(st.integers(min_value=0, max_value=i - 1), max_size=3)) if i else []
        graph[f"s{i}"] = sorted({f"s{r}" for r in reqs})
    undoable = set(draw(st.lists(st.sampled_from(sorted(graph)), unique=True)))
    failing = draw(st.none() | st.sampled_from(sorted(graph)))
    return graph, undoable, failing


def descendants(graph: dict[str, list[str]], root: str) -> set[str]:
    out, frontier = set(), [root]
    while frontier:
        node = frontier.pop()
        for sid, reqs in graph.items():
            if node in reqs and sid not in out:
                out.add(sid)
                frontier.append(sid)
    return out


async def run_saga(
    graph: dict[str, list[str]], undoable: set[str], failing: str | None, concurrency: int = 100
) -> tuple[Any, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []

    def forward(sid: str) -> FunctionStep:
        async def run(msg: Message) -> dict[str, str]:
            log.append(("start", sid))
            await asyncio.sleep(0)  # let other branches interleave
            if sid == failing:
                raise StepError("boom", retryable=False)
            log.append(("done", sid))
            return {"step": sid}

        async def undo(msg: Message) -> None:
            log.append(("undo", sid))
            await asyncio.sleep(0)
            log.append(("undone", sid))

        comp = FunctionStep(undo, id=f"undo-{sid}") if sid in undoable else None
        return FunctionStep(run, id=sid, requires=graph[sid], compensate=comp)

    # a small concurrency: a run queues the steps it started beyond the worker's slots
    async with Flow("memory://", concurrency=concurrency) as flow:
        wf = await flow.workflow_create("prop", *(forward(s) for s in graph))
        try:
            eid = await wf.execute({})
        except ExecutionFailedError as err:
            eid = err.execution_id
        return await flow.execution(eid), log


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sagas(), st.sampled_from([1, 2, 100]))
def test_rollback_follows_the_rules(
    case: tuple[dict[str, list[str]], set[str], str | None], concurrency: int
) -> None:
    graph, undoable, failing = case
    info, log = asyncio.run(run_saga(graph, undoable, failing, concurrency))
    started = {sid for ev, sid in log if ev == "start"}
    at = {(ev, sid): i for i, (ev, sid) in enumerate(log)}

    if failing is None:
        assert info.status is Status.SUCCESS
        assert all(r.status is Status.SUCCESS for r in info.steps.values())
        assert not any(ev == "undo" for ev, _ in log)
        return

    assert info.status is Status.FAILURE
    assert info.steps[failing].status is Status.FAILURE
    assert info.compensated
    # nothing that depends on the failed step ever started
    assert not started & descendants(graph, failing)
    for sid, run in info.steps.items():
        if sid == failing:
            continue
        if sid not in started:
            assert run.status is Status.PENDING
            assert run.compensation is None
        elif sid in undoable:
            assert run.status is Status.COMPENSATED
            assert ("done", sid) in at  # a running step finished before its undo
            assert at["done", sid] < at["undo", sid]
        else:
            assert run.status is Status.SUCCESS
    # reverse dependency order: an undo starts after every undo of what depends on it
    succeeded = {sid for ev, sid in log if ev == "done"}
    for sid in undoable & succeeded:
        for later in descendants(graph, sid) & undoable & succeeded:
            assert at["undone", later] < at["undo", sid]
    # rollback starts only when no forward step is still running
    first_undo = min((i for i, (ev, _) in enumerate(log) if ev == "undo"), default=None)
    if first_undo is not None:
        assert succeeded <= {sid for ev, sid in log[:first_undo] if ev == "done"}
        assert all(at["start", sid] < first_undo for sid in started)


@settings(max_examples=300, deadline=None)
@given(sagas(), st.randoms(use_true_random=False))
def test_the_shortcut_after_a_lone_step_decides_as_decide_does(
    case: tuple[dict[str, list[str]], set[str], str | None], rnd: Any
) -> None:
    # run the engine's decisions by hand, finishing running steps in a random order;
    # wherever the last decision started one step alone and it succeeds, the shortcut
    # answers as decide() does, or defers to it
    graph, _, _ = case

    async def noop(m: Message) -> None:
        return None

    plan = build_plan(
        "p", [FunctionStep(noop, id=sid, requires=reqs) for sid, reqs in graph.items()]
    )
    run = plan.graph()
    state = ExecState(Status.RUNNING, steps=run.fresh_steps())
    assert list(first(run).start) == list(decide(plan, run, state).start)
    running: list[str] = []
    lone: str | None = None
    shortcuts = 0
    while True:
        decision = decide(plan, run, state)
        if lone is not None:
            quick = after_success(run, state, lone)
            if quick is not None:
                shortcuts += 1
                assert list(quick.start) == list(decision.start)
                assert (quick.status, quick.done, quick.compensate) == (
                    decision.status,
                    decision.done,
                    (),
                )
        if decision.done:
            assert decision.status is Status.SUCCESS
            break
        for sid in decision.start:
            state.steps[sid] = StepRecord(sid, Phase.FORWARD, Status.RUNNING, 1)
            running.append(sid)
        lone = running[0] if len(decision.start) == 1 and len(running) == 1 else None
        finished = running.pop(rnd.randrange(len(running)))
        state.steps[finished] = StepRecord(finished, Phase.FORWARD, Status.SUCCESS, 1)
    assert all(state.steps[s].status is Status.SUCCESS for s in graph)
    if len(graph) > 1 and all(graph[f"s{i}"] == [f"s{i - 1}"] for i in range(1, len(graph))):
        assert shortcuts == len(graph)  # a chain takes the shortcut at every step, its end too


@settings(max_examples=300, deadline=None)
@given(sagas(), st.randoms(use_true_random=False))
def test_the_shortcut_after_steps_finish_decides_as_decide_does(
    case: tuple[dict[str, list[str]], set[str], str | None], rnd: Any
) -> None:
    # as above, finishing a random batch of the running steps each time: the shortcut
    # starts what decide() starts, waits when decide() starts nothing while steps run,
    # and defers to decide() only when nothing runs
    graph, _, _ = case

    async def noop(m: Message) -> None:
        return None

    plan = build_plan(
        "p", [FunctionStep(noop, id=sid, requires=reqs) for sid, reqs in graph.items()]
    )
    run = plan.graph()
    state = ExecState(Status.RUNNING, steps=run.fresh_steps())
    running: list[str] = []
    seen: dict[str, int] = {}
    finished: list[StepRecord] | None = None  # None: the first decision
    while True:
        decision = decide(plan, run, state)
        if finished is not None:
            quick = after_successes(run, state, finished, bool(running), seen)
            if quick is None:
                assert not running
            else:
                assert sorted(quick.start) == sorted(decision.start)
                assert (quick.status, quick.done, quick.compensate) == (None, False, ())
        if decision.done:
            assert decision.status is Status.SUCCESS
            break
        for sid in decision.start:
            state.steps[sid] = StepRecord(sid, Phase.FORWARD, Status.RUNNING, 1)
            running.append(sid)
        rnd.shuffle(running)
        count = rnd.randint(1, len(running))
        finished = []
        for sid in running[:count]:
            rec = StepRecord(sid, Phase.FORWARD, Status.SUCCESS, 1)
            state.steps[sid] = rec
            finished.append(rec)
        del running[:count]
    assert all(state.steps[s].status is Status.SUCCESS for s in graph)
