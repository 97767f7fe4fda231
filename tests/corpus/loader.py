"""The bad-input corpus: cases kept as data, one JSON object a line, one file per edge.

=====================  ===============================================================
file                   a case
=====================  ===============================================================
definitions.jsonl      ``text`` (YAML or JSON text) or ``data`` (a mapping) for
                       ``load_definition``; ``code``: the error code, or ``"ok"``
cli.jsonl              ``args`` of ``microsaga`` (``{tmp}`` is a scratch folder,
                       ``{order}`` a valid definition file), ``env``, ``files``
                       (``{name: text}`` written in ``{tmp}``), ``exit`` and ``code``
python_api.jsonl       ``target`` (a public name, or ``execute``), ``args``,
                       ``kwargs``; ``code``: an error code, a builtin exception's name
                       (``TypeError``) or ``"ok"``
participant.jsonl      an HTTP request to a participant (``method``, ``path``,
                       ``headers``, ``body``); ``status`` and ``code`` of the answer
http_api/              HTTP API bodies, for when the API exists (empty today)
=====================  ===============================================================

Every case has an ``id``; ``xfail`` (a reason) marks a defect found and not fixed yet:
the case stays and runs as ``xfail(strict=True)``, so fixing the defect makes it fail
until the mark is removed.

Values that JSON cannot hold are tagged: ``{"$float": "nan"}``, ``{"$bytes": BASE64}``,
``{"$repeat": [TEXT, N]}`` (TEXT N times), ``{"$nested": [DEPTH, LEAF]}`` (JSON text of
DEPTH nested lists around LEAF), ``{"$text": [JSON VALUE]}`` (the value as JSON text,
tags inside resolved first), ``{"$chars": [CODE, ...]}`` (a string of those code points,
lone surrogates included).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["FOLDER", "Case", "cases", "materialize", "params"]

FOLDER = Path(__file__).resolve().parent
KINDS = ("definitions", "cli", "python_api", "participant", "http_api")


@dataclass(frozen=True)
class Case:
    kind: str
    id: str
    spec: dict[str, Any]

    @property
    def xfail(self) -> str | None:
        reason = self.spec.get("xfail")
        return str(reason) if reason else None

    def get(self, name: str, default: Any = None) -> Any:
        return materialize(self.spec.get(name, default))


def materialize(value: Any) -> Any:
    """``value`` with its tags resolved (see the module docstring)."""
    if isinstance(value, list):
        return [materialize(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, arg),) = value.items()
        if tag == "$float":
            return float(arg)
        if tag == "$bytes":
            return base64.b64decode(arg)
        if tag == "$repeat":
            return materialize(arg[0]) * int(arg[1])
        if tag == "$nested":
            depth, leaf = int(arg[0]), json.dumps(arg[1])
            return "[" * depth + leaf + "]" * depth
        if tag == "$text":
            return json.dumps(materialize(arg[0]), allow_nan=True)
        if tag == "$chars":
            return "".join(chr(c) for c in arg)
    return {k: materialize(v) for k, v in value.items()}


def cases(kind: str) -> list[Case]:
    """Every case of ``kind`` (``definitions``, ``cli`` ...), in file order."""
    if kind not in KINDS:
        raise ValueError(f"unknown corpus {kind!r}")
    paths = (
        sorted((FOLDER / kind).glob("*.jsonl"))
        if kind == "http_api"
        else [FOLDER / f"{kind}.jsonl"]
    )
    out = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("//"):
                continue
            spec = json.loads(line)
            if "id" not in spec:
                raise ValueError(f"{path.name}:{n}: a case needs an id")
            out.append(Case(kind, spec["id"], spec))
    ids = [c.id for c in out]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"{kind}: ids appear twice: {sorted(duplicates)}")
    return out


def params(kind: str) -> list[Any]:
    """``pytest.param`` per case, ``xfail(strict=True)`` where the case says so."""
    out = []
    for case in cases(kind):
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out
