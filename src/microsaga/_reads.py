"""What a workflow's expressions (``input``, ``when``, a map's ``over``) read, checked
when the workflow is made, in code or from a definition: a name outside the step's
context document is null on every run, which an author never means. Also the step ids
that would share a record or an idempotency key with another run."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import DefinitionError
from .step import Step
from .waits import MapStep

__all__ = ["check_reads"]


def _path(index: int, key: str) -> str:
    """Where a step's field is in a definition: ``steps[1].when``."""
    return f"steps[{index}].{key}"


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a name JMESPath writes unquoted
# the context document an expression reads: {"request": ..., "steps": {<id>: ...}}
_DOCUMENT = ("request", "steps")
# nodes whose children all read the document an expression is given
_SAME_SCOPE = frozenset({
    "and_expression", "comparator", "function_expression", "key_val_pair",
    "multi_select_dict", "multi_select_list", "not_expression", "or_expression",
})  # fmt: skip
# nodes whose first child reads it, and the others what the first child selected
_LEFT_SCOPE = frozenset({
    "filter_projection", "flatten", "index_expression", "pipe", "projection",
    "subexpression", "value_projection",
})  # fmt: skip


def check_reads(steps: Sequence[Step]) -> None:
    """Refuse ``steps`` (a workflow's, in order) when an expression reads what its
    step's context document never holds (a typo, a step not required, an id with dots
    left unquoted, ``true`` without backticks), or a step id is another run's.

    Raises:
        DefinitionError: naming the step's field (``steps[1].when``) and what is wrong.
    """
    requires = {s.id: s.options.requires for s in steps}
    ids = set(requires)
    maps = [s.id for s in steps if isinstance(s, MapStep)]
    for i, step in enumerate(steps):
        problem = _key_clash(step.id, ids, maps)
        if problem is not None:
            raise DefinitionError(problem, path=_path(i, "id"))
        exprs = [(k, text) for k in ("input", "when") if (text := getattr(step.options, k))]
        if isinstance(step, MapStep) and step.over is not None:
            exprs.append(("map.over", str(step.over)))
        if not exprs:
            continue  # the ancestors of each step of a long chain: quadratic, unread
        ancestors = _ancestors(step.id, requires)
        for key, text in exprs:
            problem = _unread(str(text), step.id, ancestors, requires)
            if problem is not None:
                raise DefinitionError(problem, path=_path(i, key))


def _key_clash(sid: str, ids: set[str], maps: list[str]) -> str | None:
    """Why ``sid`` would share a record or an idempotency key with another run, or
    None: a map's runs are ``<map id>[<i>]``, and a compensation's and a fallback's
    keys end in ``:compensate`` and ``:fallback``."""

    def run_of_a_map(name: str) -> str | None:
        return next((m for m in maps if re.fullmatch(rf"{re.escape(m)}\[\d+\]", name)), None)

    found = run_of_a_map(sid)
    if found is not None:
        return f"{sid!r} is the id of a run of map {found} (its runs are {found}[0], ...)"
    for suffix in (":compensate", ":fallback"):
        base = sid.removesuffix(suffix)
        if base != sid and (base in ids or run_of_a_map(base) is not None):
            what = "compensation" if suffix == ":compensate" else "fallback"
            return (
                f"{sid!r} is the idempotency key of the {what} of {base} (<execution "
                f"id>:{sid}): a participant would take one call for the other"
            )
    return None


def _ancestors(sid: str, requires: Mapping[str, tuple[str, ...]]) -> set[str]:
    found: set[str] = set()
    todo = list(requires.get(sid, ()))
    while todo:
        rid = todo.pop()
        if rid not in found:
            found.add(rid)
            todo.extend(requires.get(rid, ()))
    return found


def _unread(
    text: str, sid: str, ancestors: set[str], requires: Mapping[str, tuple[str, ...]]
) -> str | None:
    """Why ``text`` reads a name that is never in ``sid``'s context document, or None."""
    import jmespath.parser

    try:
        tree = jmespath.parser.Parser().parse(text).parsed
    except Exception:  # compiled when the step was made: cannot happen
        return None
    for field, step_id, following in _document_reads(tree):
        if field not in _DOCUMENT:
            if field in ("true", "false", "null"):
                hint = f"the literal {field} is written `{field}` (in backticks)"
            elif field == "response":
                hint = (
                    "input: response is for a compensate step; a step reads the "
                    "responses of the steps it requires as steps.<id>"
                )
            else:
                hint = f"did you mean request.{_name(field)}?"
            return (
                f"{text!r} reads {_name(field)}, which is null on every run: the document "
                f"it reads holds only request and steps; {hint}"
            )
        if step_id is None or step_id in ancestors:
            continue
        dotted = f"{step_id}.{following}" if following else "\0"
        spelled = [a for a in sorted(ancestors) if a == dotted or a.startswith(dotted + ".")]
        if spelled:
            why = f'no step has id {step_id!r}; an id with dots is quoted: steps."{spelled[0]}"'
        elif step_id == sid:
            why = (
                f"it is the response of {sid} itself; an expression reads those of the "
                "steps its step requires"
            )
        elif step_id in requires:
            why = f"{sid} does not require {step_id} (directly or not): add it to requires"
        else:
            known = ", ".join(sorted(ancestors)) or "none"
            why = f"no step has id {step_id!r} (the steps {sid} requires: {known})"
        return f"{text!r} reads steps.{_name(step_id)}, which is null on every run: {why}"
    return None


def _name(name: str) -> str:
    """``name`` as an expression writes it: ``line``, ``"cool-off"``."""
    return name if _IDENTIFIER.fullmatch(name) else json.dumps(name)


def _document_reads(node: Any) -> list[tuple[str, str | None, str | None]]:
    """The names an expression reads from the document it is given: ``(field, step
    id, the field after it)`` where field is the first name (``request``, ``steps``),
    the step id the second when the first is ``steps``."""
    if not isinstance(node, Mapping):
        return []
    kind, children = node.get("type"), node.get("children") or []
    if kind == "field":
        return [(str(node.get("value")), None, None)]
    if kind in _SAME_SCOPE:
        return [read for child in children for read in _document_reads(child)]
    if kind not in _LEFT_SCOPE or not children:
        return []  # a literal, @, a slice...: reads no name of the document
    head = children[0]
    if kind == "subexpression" and head.get("type") == "field" and len(children) > 1:
        name = str(head.get("value"))
        if name != "steps":
            return [(name, None, None)]
        chain = [_head_field(child) for child in children[1:3]]
        return [("steps", chain[0], chain[1] if len(chain) > 1 else None)]
    return _document_reads(head)


def _head_field(node: Any) -> str | None:
    """The name a (sub)expression starts with: ``m`` of ``m[*].item``."""
    while isinstance(node, Mapping):
        if node.get("type") == "field":
            return str(node.get("value"))
        if node.get("type") not in _LEFT_SCOPE:
            return None
        node = (node.get("children") or [None])[0]
    return None
