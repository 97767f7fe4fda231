"""The checker catches each anomaly it counts: a history built clean, then spoiled one
way at a time. A checker that passes everything is worse than none."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.chaos.checker import (
    Effect,
    Fault,
    Final,
    FinalStep,
    History,
    Invocation,
    Observation,
    Saga,
    check,
)

SAGA = Saga(
    requires={"a": (), "b": ("a",), "c": ("b",), "p": ("a",)},
    compensable=frozenset({"a", "b"}),
    publishes=frozenset({"p"}),
)


def clean() -> History:
    """e1 succeeded; e2 failed at c and rolled back b, then a."""
    h = History(saga=SAGA, submitted=["e1", "e2"])
    t = 100.0
    for eid, fail in (("e1", False), ("e2", True)):
        for step in ("a", "b", "p", "c"):
            t += 1
            h.invocations.append(Invocation(t, f"{eid}:{step}", step))
            if step == "p":
                h.published[f"{eid}:p"] += 1
            elif not (fail and step == "c"):
                h.effects.append(Effect(t, f"{eid}:{step}", step))
        if fail:
            for step in ("b", "a"):
                t += 1
                h.invocations.append(Invocation(t, f"{eid}:{step}:compensate", step))
                h.effects.append(Effect(t, f"{eid}:{step}:compensate", step))
        t += 1
        status = "FAILURE" if fail else "SUCCESS"
        done = "COMPENSATED" if fail else "SUCCESS"
        steps = {
            "a": FinalStep(done, "SUCCESS" if fail else None, 1, 1 if fail else 0),
            "b": FinalStep(done, "SUCCESS" if fail else None, 1, 1 if fail else 0),
            "p": FinalStep("SUCCESS"),
            "c": FinalStep("FAILURE" if fail else "SUCCESS"),
        }
        h.finals[eid] = Final(eid, status, t, steps)
        h.observations.append(Observation(t + 0.5, eid, status, t))
    return h


def test_a_clean_history_passes() -> None:
    counters = check(clean())
    assert counters.ok, counters.problems
    assert (counters.executions, counters.succeeded, counters.failed) == (2, 1, 1)
    assert counters.repeated_invocations == 0
    line = counters.line("clean")
    assert line.startswith("clean: executions 2, succeeded 1, failed 1, lost 0, ")
    assert "duplicate effects 0" in line


def test_lost_execution() -> None:
    h = clean()
    h.submitted.append("e3")  # never stored
    h.finals["e1"] = Final("e1", "RUNNING", 0.0)
    counters = check(h)
    assert counters.lost == 2
    assert not counters.ok


def test_finished_twice() -> None:
    h = clean()
    h.observations.insert(0, Observation(50.0, "e2", "SUCCESS", 49.0))
    assert check(h).finished_twice == 1


def test_write_after_terminal_in_the_store() -> None:
    h = clean()
    final = h.finals["e1"]
    h.observations.insert(0, Observation(50.0, "e1", "SUCCESS", final.updated - 5))
    assert check(h).writes_after_terminal == 1


def test_effect_after_terminal() -> None:
    h = clean()
    h.effects.append(Effect(h.finals["e2"].updated + 1, "e2:zzz", "zzz"))
    assert check(h).writes_after_terminal == 1


def test_duplicate_effect() -> None:
    h = clean()
    h.effects.append(Effect(101.5, "e1:a", "a"))
    assert check(h).duplicate_effects == 1


def test_publish_lost() -> None:
    h = clean()
    h.published = Counter({"e1:p": 1})
    assert check(h).publishes_lost == 1


def test_compensation_missing() -> None:
    h = clean()
    h.effects = [e for e in h.effects if e.key != "e2:a:compensate"]
    assert check(h).compensations_missing == 1


def test_compensation_in_a_successful_execution() -> None:
    h = clean()
    h.effects.append(Effect(200.0, "e1:b:compensate", "b"))
    assert check(h).compensations_unwarranted == 1


def test_compensations_out_of_order() -> None:
    h = clean()
    by_key = {i.key: i for i in h.invocations}
    first = by_key["e2:b:compensate"].t
    # a undone before b although b requires a
    h.invocations = [
        Invocation(first - 0.5, i.key, i.endpoint) if i.key == "e2:a:compensate" else i
        for i in h.invocations
    ]
    assert check(h).compensations_out_of_order == 1


@pytest.mark.parametrize(
    ("fault", "attempts", "unexplained"),
    [
        (None, 1, 1),  # repeated for no reason: counted apart
        (None, 2, 0),  # the store recorded a retry
        (Fault(101.2, "kill"), 1, 0),  # a worker died between the calls
        (Fault(90.0, "restart", until=99.0), 1, 0),  # within the lag after the outage
        (Fault(10.0, "restart", until=20.0), 1, 1),  # long over
        (Fault(300.0, "reset", key="e1:a"), 1, 0),  # the proxy hit that request
    ],
)
def test_repeated_invocations_are_reported_and_explained(
    fault: Fault | None, attempts: int, unexplained: int
) -> None:
    h = clean()
    h.lag = 4.0
    h.invocations.append(Invocation(101.8, "e1:a", "a", replayed=True))
    h.finals["e1"].steps["a"] = FinalStep("SUCCESS", attempts=attempts)  # type: ignore[index]
    if fault is not None:
        h.faults.append(fault)
    counters = check(h)
    assert (counters.repeated_keys, counters.repeated_invocations) == (1, 1)
    assert counters.unexplained_repeats == unexplained
    assert counters.ok  # reported, not a failure
