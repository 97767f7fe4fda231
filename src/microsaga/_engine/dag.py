"""Graph algorithms on ``{step id: ids it requires}``: validation, levels, reach."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..errors import CycleError, StepNotExistsError

__all__ = ["ancestors", "check_graph", "dependents_of", "descendants", "levels", "topological"]

Graph = Mapping[str, Sequence[str]]


def check_graph(requires: Graph) -> None:
    """Raise if a requirement names an absent step or the requirements form a cycle.

    Raises:
        StepNotExistsError: naming the first unknown requirement.
        CycleError: naming the steps on one cycle, in order (``a -> b -> a``).
    """
    for step_id, reqs in requires.items():
        for req in reqs:
            if req not in requires:
                raise StepNotExistsError(req, detail=f"required by {step_id}")
    cycle = find_cycle(requires)
    if cycle:
        raise CycleError(cycle)


def find_cycle(requires: Graph) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(requires, white)
    for root in sorted(requires):
        if color[root] != white:
            continue
        path: list[str] = [root]
        iters = [iter(requires[root])]
        color[root] = grey
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                color[path.pop()] = black
                iters.pop()
                continue
            if color.get(nxt) == grey:
                return [*path[path.index(nxt) :], nxt]
            if color.get(nxt) == white:
                color[nxt] = grey
                path.append(nxt)
                iters.append(iter(requires[nxt]))
    return None


def topological(requires: Graph) -> list[str]:
    """Every step after the steps it requires; ties broken by id. Assumes no cycle."""
    pending = {s: len(set(r)) for s, r in requires.items()}
    deps = dependents_of(requires)
    ready = sorted(s for s, n in pending.items() if n == 0)
    out: list[str] = []
    while ready:
        step = ready.pop(0)
        out.append(step)
        released = []
        for dep in deps[step]:
            pending[dep] -= 1
            if pending[dep] == 0:
                released.append(dep)
        if released:
            ready = sorted(ready + released)
    return out


def levels(requires: Graph) -> list[list[str]]:
    """Steps grouped by their longest path from a root; ids sorted in each level."""
    depth: dict[str, int] = {}
    for step in topological(requires):
        depth[step] = 1 + max((depth[r] for r in requires[step]), default=-1)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for step, d in depth.items():
        out[d].append(step)
    return [sorted(level) for level in out]


def dependents_of(requires: Graph) -> dict[str, tuple[str, ...]]:
    """``{step: steps that require it}``, each tuple sorted."""
    out: dict[str, list[str]] = {s: [] for s in requires}
    for step, reqs in requires.items():
        for req in dict.fromkeys(reqs):
            out[req].append(step)
    return {s: tuple(sorted(d)) for s, d in out.items()}


def _reach(edges: Graph, start: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(edges[node])
    return seen


def descendants(requires: Graph, start: str) -> set[str]:
    """``start`` and every step that depends on it, directly or not."""
    return _reach(dependents_of(requires), [start])


def ancestors(requires: Graph, start: str) -> set[str]:
    """``start`` and every step it requires, directly or not."""
    return _reach(requires, [start])
