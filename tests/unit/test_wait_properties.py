"""Property tests of waiting in the pure engine (hypothesis): random DAGs with waiting
steps, signals arriving before or after their step starts, timers firing, and steps
failing, in random order. The engine parks only when nothing else can happen, never
starts a step before its requirements, gives up waiting steps on rollback, and ends
as a saga must."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from microsaga import FunctionStep, Message, SleepStep, Status, WaitStep
from microsaga._engine.records import Abort, ExecState, Phase, StepRecord
from microsaga._engine.saga import decide
from microsaga.step import Step
from microsaga.workflow import build_plan


@st.composite
def waiting_sagas(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, str], str | None]:
    n = draw(st.integers(min_value=1, max_value=8))
    graph: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for i in range(n):
        reqs = draw(st.lists(st.integers(min_value=0, max_value=i - 1), max_size=3)) if i else []
        graph[f"s{i}"] = sorted({f"s{r}" for r in reqs})
        kinds[f"s{i}"] = draw(st.sampled_from(["call", "call", "wait", "sleep"]))
    failing = draw(st.none() | st.sampled_from(sorted(graph)))
    return graph, kinds, failing


async def _noop(msg: Message) -> None:
    return None


def _step(sid: str, kind: str, requires: list[str]) -> Step:
    undo = FunctionStep(_noop, id=f"undo-{sid}")
    if kind == "wait":
        return WaitStep(f"event-{sid}", id=sid, requires=requires)
    if kind == "sleep":
        return SleepStep(60, id=sid, requires=requires)
    return FunctionStep(_noop, id=sid, requires=requires, compensate=undo)


@settings(max_examples=300, deadline=None)
@given(waiting_sagas(), st.randoms(use_true_random=False))
def test_waiting_steps_follow_the_saga_rules(
    case: tuple[dict[str, list[str]], dict[str, str], str | None], rnd: random.Random
) -> None:
    graph, kinds, failing = case
    plan = build_plan("p", [_step(sid, kinds[sid], reqs) for sid, reqs in graph.items()])
    run = plan.graph()
    state = ExecState(Status.RUNNING, steps=run.fresh_steps(), comps={})
    signals: set[str] = set()  # events delivered so far, maybe before their step started
    fired: set[str] = set()  # sleeps whose time came
    started: list[str] = []
    undone: list[str] = []
    parks = 0

    def status(sid: str) -> Status:
        return state.steps[sid].status

    def put(sid: str, new: Status, phase: Phase = Phase.FORWARD) -> None:
        (state.steps if phase is Phase.FORWARD else state.comps)[sid] = StepRecord(
            sid, phase, new, 1
        )

    for _ in range(200):
        # what the shell does before deciding: resolve waits whose event or time came
        for sid in graph:
            if status(sid) is Status.WAITING:
                if sid == failing:  # its timeout passed
                    put(sid, Status.FAILURE)
                elif (kinds[sid] == "wait" and f"event-{sid}" in signals) or sid in fired:
                    put(sid, Status.SUCCESS)
        decision = decide(plan, run, state)
        for sid in decision.cancel:
            assert status(sid) is Status.WAITING
            put(sid, Status.PENDING)
        if decision.done:
            break
        if decision.status is not None:
            state.status = decision.status
        if decision.park:
            parks += 1
            assert state.status is Status.RUNNING
            assert not decision.start
            assert not decision.compensate
            waiting = [s for s in graph if status(s) is Status.WAITING]
            assert waiting
            assert not any(status(s) is Status.RUNNING for s in graph)
            # parked: nothing happens until a signal or a timer
            sid = rnd.choice(waiting)
            (signals.add(f"event-{sid}") if kinds[sid] == "wait" else fired.add(sid))
            continue
        for sid in decision.start:
            assert all(status(r) is Status.SUCCESS for r in graph[sid]), (sid, state)
            assert state.status is Status.RUNNING
            started.append(sid)
            put(sid, Status.WAITING if kinds[sid] != "call" else Status.RUNNING)
        for sid in decision.compensate:
            assert state.status is Status.COMPENSATING
            put(sid, Status.RUNNING, Phase.COMPENSATE)
        # one thing happens: a running step or compensation ends, a signal arrives
        # (perhaps for a step not started yet), or a timer fires
        events: list[tuple[str, Any]] = [("end", s) for s in graph if status(s) is Status.RUNNING]
        events += [("undone", s) for s, r in state.comps.items() if r.status is Status.RUNNING]
        events += [("signal", s) for s in graph if kinds[s] == "wait"]
        events += [("timer", s) for s in graph if kinds[s] == "sleep"]
        kind, sid = rnd.choice(events)
        if kind == "end":
            put(sid, Status.FAILURE if sid == failing else Status.SUCCESS)
        elif kind == "undone":
            put(sid, Status.SUCCESS, Phase.COMPENSATE)
            put(sid, Status.COMPENSATED)
            undone.append(sid)
        elif kind == "signal":
            signals.add(f"event-{sid}")
        else:
            fired.add(sid)
    else:
        raise AssertionError(f"no end after 200 decisions: {state}")

    assert not any(status(s) is Status.WAITING for s in graph)
    if failing is None or failing not in started:
        assert decision.status is Status.SUCCESS
        assert all(status(s) is Status.SUCCESS for s in graph)
        assert not undone
    else:
        assert decision.status is Status.FAILURE
        assert state.abort is Abort.NONE
        # every call step that succeeded was undone, dependents first
        calls = [s for s in started if kinds[s] == "call" and s != failing]
        assert set(undone) <= set(calls)  # waits and sleeps have nothing to undo
        assert all(status(s) is not Status.SUCCESS for s in calls)
        for sid in undone:
            for later in undone:
                if sid in graph[later]:
                    assert undone.index(later) < undone.index(sid)
