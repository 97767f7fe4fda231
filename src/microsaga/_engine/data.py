"""What each step receives and what an execution returns (SPEC section 4)."""

from __future__ import annotations

from ..message import Message, Metadata, decode_json_body, encode_json
from .plan import Node, RunGraph
from .records import StepRecord

__all__ = [
    "EXECUTION_HEADER",
    "IDEMPOTENCY_HEADER",
    "STEP_HEADER",
    "WORKFLOW_HEADER",
    "base_header",
    "compensation_input",
    "execution_response",
    "step_input",
]

WORKFLOW_HEADER = "Micro-Flow-Workflow"
EXECUTION_HEADER = "Micro-Flow-Execution"
STEP_HEADER = "Micro-Flow-Step"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def base_header(request: Message, workflow_id: str, execution_id: str) -> Metadata:
    """The execution request's header plus the workflow and execution ids."""
    header = request.header.copy()
    header.set(WORKFLOW_HEADER, workflow_id)
    header.set(EXECUTION_HEADER, execution_id)
    return header


_STEP_KEY, _IDEMPOTENCY_KEY = STEP_HEADER.lower(), IDEMPOTENCY_HEADER.lower()


def _header(base: Metadata, execution_id: str, step_id: str, suffix: str = "") -> Metadata:
    return base.with_entries(
        (
            (_STEP_KEY, STEP_HEADER, (step_id,)),
            (_IDEMPOTENCY_KEY, IDEMPOTENCY_HEADER, (f"{execution_id}:{step_id}{suffix}",)),
        )
    )


def _combine(responses: dict[str, Message | None]) -> bytes:
    return encode_json(
        {sid: decode_json_body(m.body) if m is not None else None for sid, m in responses.items()}
    )


def step_input(
    graph: RunGraph,
    steps: dict[str, StepRecord],
    step_id: str,
    request: Message,
    base: Metadata,
    execution_id: str,
) -> Message:
    """The request of ``step_id``: the execution request for a step with no inputs,
    the response of its one input, or a JSON object of its inputs' responses."""
    parents = graph.inputs[step_id]
    if not parents:
        body = request.body
    elif len(parents) == 1:
        parent = steps[parents[0]].response
        body = parent.body if parent is not None else b""
    else:
        body = _combine({p: steps[p].response for p in parents})
    return Message(body, _header(base, execution_id, step_id))


def compensation_input(
    node: Node, forward: StepRecord, base: Metadata, execution_id: str
) -> Message:
    """The request of ``node``'s compensation, per its ``compensate_input``."""
    req = forward.request.body if forward.request is not None else b""
    resp = forward.response.body if forward.response is not None else b""
    if node.compensate_input == "request":
        body = req
    elif node.compensate_input == "response":
        body = resp
    else:
        body = encode_json({"request": decode_json_body(req), "response": decode_json_body(resp)})
    return Message(body, _header(base, execution_id, node.id, ":compensate"))


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
    return Message(_combine({leaf: steps[leaf].response for leaf in graph.leaves}))
