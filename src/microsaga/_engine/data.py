"""What each step receives and what an execution returns (docs/semantics.md)."""

from __future__ import annotations

from typing import Any

from ..message import (
    Frozen,
    Message,
    Metadata,
    decode_json_body,
    encode_json,
    frozen_message,
    raw_message,
)
from ..protocol import EXECUTION_HEADER, IDEMPOTENCY_HEADER, STEP_HEADER, WORKFLOW_HEADER
from ..status import Status
from .plan import Node, Plan, RunGraph
from .records import StepRecord

__all__ = [
    "Headers",
    "compensation_body",
    "compensation_input",
    "context_document",
    "execution_response",
    "step_input",
]


_WORKFLOW_KEY, _EXECUTION_KEY = WORKFLOW_HEADER.lower(), EXECUTION_HEADER.lower()
_STEP_KEY, _IDEMPOTENCY_KEY = STEP_HEADER.lower(), IDEMPOTENCY_HEADER.lower()
Entry = tuple[str, str, tuple[str, ...]]  # one header entry in the frozen form


class Headers:
    """The headers of one execution's step requests: the execution request's header
    plus the workflow and execution ids, and for each step its id and idempotency key.

    The entries every execution of a plan shares (each step's id) are made once per
    plan: a store keeps every request's header, and these then are not new tuples for
    each request (which the garbage collector would count, and walk)."""

    __slots__ = ("_base", "_execution", "_frozen", "_prefix", "_steps", "_workflow")

    def __init__(self, request: Message, workflow_id: str, execution_id: str, plan: Plan) -> None:
        self._prefix = execution_id + ":"
        self._workflow: Entry = (_WORKFLOW_KEY, WORKFLOW_HEADER, (workflow_id,))
        self._execution: Entry = (_EXECUTION_KEY, EXECUTION_HEADER, (execution_id,))
        if not plan.step_headers:
            plan.step_headers.update({sid: _step_entry(sid) for sid in plan.nodes})
        self._steps = plan.step_headers
        self._base: Metadata | None = None
        self._frozen: Frozen | None = None
        if request.header.frozen():  # not the usual request, which has no header
            self._base = base = request.header.with_entries((self._workflow, self._execution))
            # unless the request brings a step's own keys, a step's header is the
            # base's frozen form with two entries after it
            if _STEP_KEY not in base and _IDEMPOTENCY_KEY not in base:
                self._frozen = base.frozen()

    def request(self, body: bytes, step_id: str, suffix: str = "") -> Message:
        """A request of ``step_id`` with ``body`` (``suffix`` ends its key)."""
        step = self._steps.get(step_id) or _step_entry(step_id)  # a map's run: its own
        key = (_IDEMPOTENCY_KEY, IDEMPOTENCY_HEADER, (self._prefix + step_id + suffix,))
        base = self._base
        if base is None:
            return frozen_message(body, (self._workflow, self._execution, step, key))
        if self._frozen is None:
            return raw_message(body, base.with_entries((step, key)))
        return frozen_message(body, (*self._frozen, step, key))


def _step_entry(step_id: str) -> Entry:
    return (_STEP_KEY, STEP_HEADER, (step_id,))


# The helpers below take ``steps`` as an argument: a comprehension in step_input or
# execution_response reading it would make it a cell, made at every call of theirs.


def _combine(steps: dict[str, StepRecord], ids: tuple[str, ...]) -> bytes:
    """A JSON object of the responses of ``ids``, by step id."""
    out: dict[str, Any] = {}
    for sid in ids:
        found = steps[sid].response
        out[sid] = decode_json_body(found.body) if found is not None else None
    return encode_json(out)


def _not_skipped(steps: dict[str, StepRecord], ids: tuple[str, ...]) -> tuple[str, ...]:
    """``ids`` less the steps skipped."""
    if any(steps[sid].status is Status.SKIPPED for sid in ids):
        return tuple(sid for sid in ids if steps[sid].status is not Status.SKIPPED)
    return ids


def step_input(
    graph: RunGraph,
    steps: dict[str, StepRecord],
    step_id: str,
    request: Message,
    headers: Headers,
) -> Message:
    """The request of ``step_id``: the execution request for a step with no inputs,
    the response of its one input, or a JSON object of its inputs' responses."""
    parents = graph.inputs[step_id]
    if graph.skips:  # a skipped step is left out, as a step outside a ``start`` run
        parents = _not_skipped(steps, parents)
    if not parents:
        body = request.body
    elif len(parents) == 1:
        parent = steps[parents[0]].response
        body = parent.body if parent is not None else b""
    else:
        body = _combine(steps, parents)
    return headers.request(body, step_id)


def compensation_input(node: Node, forward: StepRecord, headers: Headers) -> Message:
    """The request of ``node``'s compensation, per its ``compensate_input``."""
    body = compensation_body(node.compensate_input, forward)
    return headers.request(body, node.id, ":compensate")


def compensation_body(what: str, forward: StepRecord) -> bytes:
    """The body of a compensation's request: the forward run's ``"request"``, its
    ``"response"``, or ``"both"`` as ``{"request": ..., "response": ...}``."""
    req = forward.request.body if forward.request is not None else b""
    resp = forward.response.body if forward.response is not None else b""
    if what == "request":
        return req
    if what == "response":
        return resp
    return encode_json({"request": decode_json_body(req), "response": decode_json_body(resp)})


def fallback_header(request: Message, execution_id: str, step_id: str) -> Message:
    """The request for a step's fallback: the step's request with its own key."""
    header = request.header.copy()
    header.set(IDEMPOTENCY_HEADER, f"{execution_id}:{step_id}:fallback")
    return Message(request.body, header)


def execution_response(graph: RunGraph, steps: dict[str, StepRecord]) -> Message:
    """The response of the single leaf, or a JSON object of every leaf's response."""
    if len(graph.leaves) == 1:
        found = steps[graph.leaves[0]].response
        return found if found is not None else Message()
    return Message(_combine(steps, _not_skipped(steps, graph.leaves)))


def context_document(
    node: Node, steps: dict[str, StepRecord], request: Message, decoded: dict[str, Any]
) -> dict[str, Any]:
    """The context document of ``node``: the execution's request and the responses of
    the steps it requires, directly or not, that succeeded, decoded (``decoded``
    caches the decoded bodies of one run: ``"request"`` and step ids)."""
    if "" not in decoded:
        decoded[""] = decode_json_body(request.body)
    out: dict[str, Any] = {}
    for sid in node.ancestors:
        rec = steps.get(sid)
        if rec is None or rec.status is not Status.SUCCESS:
            continue
        if sid not in decoded:
            decoded[sid] = decode_json_body(rec.response.body) if rec.response else None
        out[sid] = decoded[sid]
    return {"request": decoded[""], "steps": out}
