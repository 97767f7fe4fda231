"""A checker over the history of a chaos run, in the spirit of Jepsen's checkers.

A run leaves four records behind, each kept by a different party:

- the harness: the executions it submitted, the faults it injected (with times), and
  what it saw of the executions' statuses while the run went on (observations);
- the store, read at the end through the public API (final snapshots);
- the participants: every request they received (invocations, with the
  ``Idempotency-Key`` and whether the answer was a replay) and every effect their
  handlers applied, each in a database of their own;
- the broker: the messages that the publish step left on its topic.

:func:`check` turns them into :class:`Counters`. Every counter but ``repeated_keys``
(and ``repeated_invocations``) must be 0; a repeated invocation is allowed for a step
that was running when a fault hit (a killed worker, a restarted server, a reset
connection), so the repeats are reported, and those that no fault explains are counted
apart (``unexplained_repeats``).

The checker is pure: it reads plain data, so its own tests feed it histories with each
anomaly in turn (``test_checker.py``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

__all__ = [
    "FINISHED",
    "Counters",
    "Effect",
    "Fault",
    "Final",
    "FinalStep",
    "History",
    "Invocation",
    "Observation",
    "Saga",
    "check",
]

FINISHED = frozenset({"SUCCESS", "FAILURE", "ABORTED"})
SUCCEEDED = frozenset({"SUCCESS", "COMPENSATED"})  # a step that ran to success
COMPENSATE = ":compensate"
# a fault explains a repeated invocation when it falls between the first invocation and
# the repeat, give or take this much (clocks of processes on one machine, scheduling)
SLACK = 0.5


@dataclass(frozen=True)
class Saga:
    """The shape of the workflow the run executed.

    Attributes:
        requires: each step id and the step ids it requires.
        compensable: the steps that have a compensation.
        publishes: the publish steps (their messages must be on the broker).
    """

    requires: Mapping[str, tuple[str, ...]]
    compensable: frozenset[str]
    publishes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Invocation:
    """A request a participant received (``t``: when; ``replayed``: answered from its
    dedupe store without running the handler)."""

    t: float
    key: str
    endpoint: str
    replayed: bool = False


@dataclass(frozen=True)
class Effect:
    """A handler ran and applied its effect (``t``: when it was applied)."""

    t: float
    key: str
    endpoint: str


@dataclass(frozen=True)
class Observation:
    """The harness saw execution ``eid`` with ``status`` last written at ``updated``."""

    t: float
    eid: str
    status: str
    updated: float


@dataclass(frozen=True)
class FinalStep:
    """A step as stored at the end: its status and attempts, and its compensation's."""

    status: str
    compensation: str | None = None
    attempts: int = 1
    compensation_attempts: int = 0


@dataclass(frozen=True)
class Final:
    """An execution as the store has it at the end of the run."""

    eid: str
    status: str
    updated: float
    steps: Mapping[str, FinalStep] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    """A fault the harness injected: ``kind`` (kill, restart, disk_full, reset ...) at
    ``t``; ``key`` when it hit one request (the proxy's faults)."""

    t: float
    kind: str
    detail: str = ""
    key: str | None = None
    until: float | None = None  # when it was over (a server back up), None: at once


@dataclass
class History:
    saga: Saga
    submitted: list[str]
    finals: dict[str, Final] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    invocations: list[Invocation] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    published: Counter[str] = field(default_factory=Counter)  # idempotency keys on the topic
    faults: list[Fault] = field(default_factory=list)
    # how long after a fault was over its consequences may still show: a worker whose
    # lease lapsed while the store was away is taken over up to a lease later
    lag: float = 0.0


@dataclass
class Counters:
    """What :func:`check` counted; ``problems`` says which executions and keys."""

    executions: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    finished_twice: int = 0
    duplicate_effects: int = 0
    publishes_lost: int = 0
    compensations_missing: int = 0
    compensations_unwarranted: int = 0
    compensations_out_of_order: int = 0
    writes_after_terminal: int = 0
    repeated_keys: int = 0
    repeated_invocations: int = 0
    retried_repeats: int = 0
    unexplained_repeats: int = 0
    faults: int = 0
    problems: list[str] = field(default_factory=list)

    MUST_BE_ZERO = (
        "lost",
        "finished_twice",
        "duplicate_effects",
        "publishes_lost",
        "compensations_missing",
        "compensations_unwarranted",
        "compensations_out_of_order",
        "writes_after_terminal",
    )

    @property
    def ok(self) -> bool:
        return all(getattr(self, name) == 0 for name in self.MUST_BE_ZERO)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "problems"}

    def line(self, scenario: str) -> str:
        """``scenario: executions N, lost 0, duplicate effects 0, ...``"""
        parts = [
            f"executions {self.executions}",
            f"succeeded {self.succeeded}",
            f"failed {self.failed}",
            f"lost {self.lost}",
            f"finished twice {self.finished_twice}",
            f"duplicate effects {self.duplicate_effects}",
            f"publishes lost {self.publishes_lost}",
            f"compensations missing {self.compensations_missing}",
            f"compensations unwarranted {self.compensations_unwarranted}",
            f"compensations out of order {self.compensations_out_of_order}",
            f"writes after terminal {self.writes_after_terminal}",
            f"repeated invocations {self.repeated_invocations} "
            f"({self.repeated_keys} keys: {self.retried_repeats} retried by the engine, "
            f"{self.unexplained_repeats} not explained by a fault or a retry)",
            f"faults {self.faults}",
        ]
        return f"{scenario}: {', '.join(parts)}"


def _split(key: str) -> tuple[str, str, bool]:
    """``eid:step[:compensate]`` -> (eid, step, compensation?). Step ids may hold dots
    but not colons; execution ids hold neither."""
    compensation = key.endswith(COMPENSATE)
    if compensation:
        key = key[: -len(COMPENSATE)]
    eid, _, step = key.partition(":")
    return eid, step, compensation


def _ancestors(saga: Saga, step: str) -> set[str]:
    """The steps ``step`` requires, directly or through others."""
    found: set[str] = set()
    todo = list(saga.requires.get(step, ()))
    while todo:
        item = todo.pop()
        if item not in found:
            found.add(item)
            todo += saga.requires.get(item, ())
    return found


def check(history: History) -> Counters:
    """Count every anomaly in ``history`` (see the module docstring)."""
    out = Counters(executions=len(history.submitted), faults=len(history.faults))
    saga = history.saga
    submitted = set(history.submitted)

    def problem(text: str) -> None:
        if len(out.problems) < 200:  # enough to debug, not a flood
            out.problems.append(text)

    # lost: never finished (or never stored)
    for eid in history.submitted:
        final = history.finals.get(eid)
        if final is None or final.status not in FINISHED:
            out.lost += 1
            problem(f"lost: {eid} is {final.status if final else 'not in the store'}")
        elif final.status == "SUCCESS":
            out.succeeded += 1
        else:
            out.failed += 1

    # finished twice / writes after a terminal status, as the store showed them
    seen: dict[str, list[Observation]] = defaultdict(list)
    for obs in sorted(history.observations, key=lambda o: o.t):
        seen[obs.eid].append(obs)
    for eid, final in history.finals.items():
        seen[eid].append(Observation(float("inf"), eid, final.status, final.updated))
    for eid, observed in seen.items():
        first = next((o for o in observed if o.status in FINISHED), None)
        if first is None:
            continue
        later = observed[observed.index(first) + 1 :]
        if any(o.status != first.status for o in later):
            out.finished_twice += 1
            statuses = " -> ".join(dict.fromkeys(o.status for o in [first, *later]))
            problem(f"finished twice: {eid} {statuses}")
        elif any(o.updated != first.updated for o in later):
            out.writes_after_terminal += 1
            problem(f"write after terminal: {eid} changed after it was {first.status}")

    effects: dict[str, list[Effect]] = defaultdict(list)
    for effect in history.effects:
        effects[effect.key].append(effect)
    invocations: dict[str, list[Invocation]] = defaultdict(list)
    for inv in sorted(history.invocations, key=lambda i: i.t):
        invocations[inv.key].append(inv)

    # effects applied twice, and effects applied after the execution was finished
    for key, applied in effects.items():
        if len(applied) > 1:
            out.duplicate_effects += len(applied) - 1
            problem(f"effect applied {len(applied)} times: {key}")
        eid = _split(key)[0]
        final = history.finals.get(eid)
        if final is not None and final.status in FINISHED:
            late = [e for e in applied if e.t > final.updated]
            if late:
                out.writes_after_terminal += len(late)
                problem(f"effect after terminal: {key} at {late[0].t:.3f} > {final.updated:.3f}")
        if eid not in submitted:
            problem(f"effect of an execution never submitted: {key}")

    # publishes lost: the store says the publish step succeeded, the topic lacks it
    for eid in history.submitted:
        final = history.finals.get(eid)
        if final is None:
            continue
        for step in saga.publishes:
            run = final.steps.get(step)
            if (
                run is not None
                and run.status in SUCCEEDED
                and not history.published[f"{eid}:{step}"]
            ):
                out.publishes_lost += 1
                problem(f"publish lost: {eid}:{step}")

    # compensations: every applied effect of a rolled-back execution undone, in
    # reverse dependency order; nothing undone in an execution that succeeded
    for eid in history.submitted:
        final = history.finals.get(eid)
        if final is None or final.status not in FINISHED:
            continue
        for step in saga.compensable:
            done = bool(effects.get(f"{eid}:{step}"))
            undone = bool(effects.get(f"{eid}:{step}{COMPENSATE}"))
            if final.status == "SUCCESS":
                if undone:
                    out.compensations_unwarranted += 1
                    problem(f"compensated in a successful execution: {eid}:{step}")
            elif done and not undone:
                out.compensations_missing += 1
                problem(f"compensation missing: {eid}:{step} applied, never undone")
            elif undone and not done:
                out.compensations_unwarranted += 1
                problem(f"compensation of an effect never applied: {eid}:{step}")
        if final.status == "SUCCESS":
            continue
        for step in saga.compensable:
            undos = effects.get(f"{eid}:{step}{COMPENSATE}")
            if not undos:
                continue
            for earlier in _ancestors(saga, step):  # undone only after ``step`` was
                calls = invocations.get(f"{eid}:{earlier}{COMPENSATE}")
                if calls and calls[0].t < min(e.t for e in undos):
                    out.compensations_out_of_order += 1
                    problem(f"out of order: {eid}: {earlier} undone before {step}")

    # repeated invocations: reported; explained by a fault between the first call and
    # the repeat (or a fault on that very request), or by a retry the store recorded
    # (an attempt that timed out, say: the participant may have answered too late)
    faults = sorted(history.faults, key=lambda f: f.t)
    faulted_keys = {f.key for f in faults if f.key}
    for key, calls in invocations.items():
        if len(calls) < 2:
            continue
        out.repeated_keys += 1
        out.repeated_invocations += len(calls) - 1
        if key in faulted_keys:
            continue
        since, until = calls[0].t - SLACK, calls[-1].t + SLACK
        lag = history.lag + SLACK
        if any(
            f.t <= until and (f.until if f.until is not None else f.t) + lag >= since
            for f in faults
            if f.key is None
        ):
            continue
        eid, step, compensation = _split(key)
        final = history.finals.get(eid)
        run = final.steps.get(step) if final is not None else None
        attempts = 0 if run is None else run.compensation_attempts if compensation else run.attempts
        if attempts > 1:
            out.retried_repeats += 1
        else:
            out.unexplained_repeats += 1
            problem(f"repeated without a fault or a retry: {key} x{len(calls)}")
    return out


def merge(items: Iterable[Counters]) -> Counters:
    """The counters of several runs added up (``problems`` concatenated)."""
    total = Counters()
    for item in items:
        for name, value in item.as_dict().items():
            setattr(total, name, getattr(total, name) + value)
        total.problems += item.problems
    return total
