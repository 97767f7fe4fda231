"""Workflows as data: JSON or YAML definitions, validated at the edge.

Every error is a :class:`~microsaga.errors.DefinitionError` naming the path of the
bad field, 0-based (``steps[1].retry.max_attempts: must be at least 1, not 0``)::

    id: order
    services: {inventory: "http://127.0.0.1:8001"}
    steps:
      - call: inventory.Inventory.Reserve
        retry: {max_attempts: 5, initial_interval: 0.2}
        timeout: 2
        compensate: {call: inventory.Inventory.Release}
      - function: shop.notify:send_email
        requires: [inventory.Inventory.Reserve]

A step entry names its kind as a key (``call``, ``publish``, ``function``, or a kind
registered with ``register_step``). The other keys are the common options (``id``,
``requires``, ``retry``, ``timeout``, ``fallback``, ``compensate``; ``input`` inside
``compensate``) and the kind's own fields.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import DefinitionError, DuplicateStepError, StepNotExistsError
from .settings import service_url_problem
from .step import Retry, Step, StepOptions, kind_of, step_kinds
from .steps import import_function, imports_deferred, unimported_class
from .workflow import Workflow

__all__ = ["load_definition", "step_from_dict", "step_to_dict", "workflow_from_dict"]

_COMMON = ("id", "requires", "retry", "timeout", "fallback", "compensate", "input", "when")
_TOP = ("id", "services", "steps", "description", "on_failure")
_RETRY_FIELDS = Retry.__dataclass_fields__


def _join(path: str, key: str | int | None) -> str:
    """``steps[0]`` + ``retry`` is ``steps[0].retry``; no key (None or "") is ``path``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key:
        return path
    return f"{path}.{key}" if path else key


def _shown(key: Any) -> str:
    """A key as it may stand in an error's path: itself when short and printable,
    else quoted and cut (a key may hold a newline, or be a megabyte long)."""
    text = str(key)
    if text.isprintable() and len(text) <= 100:
        return text
    return repr(text[:100]) + ("..." if len(text) > 100 else "")


def load_definition(source: str | os.PathLike[str] | Mapping[str, Any]) -> Workflow:
    """A validated workflow, not bound to a flow, from a file path, JSON or YAML text,
    or a dict. A string is text when it holds a newline or starts with ``{``.

    Raises:
        DefinitionError: naming the file, the line or the path of the bad field.
    """
    if isinstance(source, Mapping):
        return workflow_from_dict(source)
    where = "definition"
    if isinstance(source, str) and ("\n" in source or source.lstrip().startswith("{")):
        text = source
    else:
        path = Path(source)
        where = str(path)
        if len(where) > 200:  # text without a newline taken for a path: quote a little
            where = f"{where[:100]}...({len(where)} characters)"
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM, as Windows editors save
        except OSError as exc:
            raise DefinitionError(f"cannot read definition file {where}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise DefinitionError(f"definition file {path} is not UTF-8 text") from None
    data = _parse(text, where)
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{where}: must be a mapping with id and steps")
    return workflow_from_dict(data)


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # json.loads would keep the last one without a word
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _yaml_mapping(loader: _YamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base` merges are meant to be overridden
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: the constructor below says so
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
    return loader.construct_mapping(node)


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _yaml_mapping)
# YAML 1.2 floats without a dot (1e308, 2E-3), which PyYAML's 1.1 rules read as strings
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
# a time stays the text it is (``until: 2026-12-24T09:00:00Z`` unquoted): PyYAML would
# make it a datetime, which no field takes, and JSON has no such type
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _YamlLoader.yaml_implicit_resolvers.items()
}


class _NotJson(ValueError):
    pass


def _not_json(token: str) -> Any:
    raise _NotJson(f"{token} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"{text} is out of range")
    return value


def _parse(text: str, where: str) -> Any:
    """JSON or YAML. A ``.json`` file is JSON; other text that starts with ``{`` is
    read as JSON first, then as YAML (flow-style YAML such as ``{id: x, steps: []}``
    is not JSON); anything else is YAML."""
    json_file = where.endswith(".json")
    yaml_file = where.endswith((".yaml", ".yml"))
    json_error: str | None = None
    if json_file or text.lstrip().startswith("{"):
        try:
            return json.loads(
                text,
                object_pairs_hook=_json_object,
                parse_constant=_not_json,
                parse_float=_finite_float,
            )
        except _DuplicateKey as exc:
            raise DefinitionError(
                f"{where}: key {exc.args[0]!r} appears twice in one object"
            ) from None
        except _NotJson as exc:  # JSON, and no YAML either: NaN and 1e400 are numbers there
            raise DefinitionError(f"{where}: invalid JSON: {exc}") from None
        except json.JSONDecodeError as exc:
            json_error = f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        except RecursionError:
            raise DefinitionError(f"{where}: nested too deeply") from None
        if json_file:
            raise DefinitionError(json_error) from None
    try:
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: no Python objects
    except RecursionError:
        raise DefinitionError(f"{where}: nested too deeply") from None
    except ValueError as exc:  # a value the constructor cannot make (a 5,000-digit int)
        raise DefinitionError(f"{where}: invalid YAML: {exc}") from None
    except yaml.YAMLError as exc:
        if json_error is not None and not yaml_file:
            raise DefinitionError(json_error) from None  # it looked like JSON
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise DefinitionError(f"{where}: invalid YAML{at}: {problem}") from None


def workflow_from_dict(data: Mapping[str, Any]) -> Workflow:
    """A validated, unbound workflow from a definition mapping."""
    if not isinstance(data, Mapping):
        raise DefinitionError(f"must be a mapping, not {type(data).__name__}")
    for key in data:
        if key not in _TOP:
            raise DefinitionError(
                f"unknown field (expected one of {', '.join(_TOP)})", path=_shown(key)
            )
    wf_id = data.get("id")
    if not isinstance(wf_id, str) or not wf_id.strip():
        raise DefinitionError(f"must be a non-empty string, not {wf_id!r}", path="id")
    _check_id(wf_id, "id")
    services = data.get("services") or {}
    if not isinstance(services, Mapping):
        raise DefinitionError("must map service names to URLs", path="services")
    for name, url in services.items():
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"service names are strings, not {name!r}", path="services")
        try:
            problem = service_url_problem(url)
        except ValueError as exc:  # urlsplit: an unclosed [ in the host
            problem = f"not a valid URL ({exc})"
        if problem is not None:
            raise DefinitionError(problem, path=_join("services", _shown(name)))
    services = dict(services)
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        given = f", not a {type(steps).__name__}" if isinstance(steps, Mapping) else ""
        raise DefinitionError(
            f"must be a non-empty list of steps (in YAML each begins with '- '){given}",
            path="steps",
        )
    built = [step_from_dict(entry, _join("steps", i)) for i, entry in enumerate(steps)]
    _check_ids(built)
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise DefinitionError(f"must be a string, not {description!r}", path="description")
    on_failure = data.get("on_failure", "compensate")
    return Workflow(wf_id, built, services=services, description=description, on_failure=on_failure)


MAX_ID = 200


def _check_id(value: str, path: str) -> None:
    """An id fit for headers, keys and log lines: at most MAX_ID characters, no
    control characters (a newline in a header or a log line splits it)."""
    if len(value) > MAX_ID:
        raise DefinitionError(f"at most {MAX_ID} characters, not {len(value)}", path=path)
    if not value.isprintable():
        raise DefinitionError(f"no control characters, not {value!r}", path=path)


def _check_ids(steps: list[Step]) -> None:
    """Duplicate ids and unknown requirements, named by their field (the Workflow
    checks them too, without knowing where they came from)."""
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.id in index:
            raise DuplicateStepError(step.id, path=_join("steps", i))
        index[step.id] = i
    for i, step in enumerate(steps):
        for req in step.options.requires:
            if req not in index:
                detail = f"required by {step.id}"
                parts = [part.strip() for part in req.split(",")]
                if len(parts) > 1 and all(part in index for part in parts):
                    detail += f"; several are a list: [{', '.join(parts)}]"
                raise StepNotExistsError(req, detail=detail, path=f"steps[{i}].requires")


def step_from_dict(entry: Any, path: str, *, nested: str | None = None) -> Step:
    """One step from its definition entry; ``path`` prefixes error messages."""
    kinds = step_kinds()
    if not isinstance(entry, Mapping):  # `- call inv.A.B`: the colon forgotten
        words = entry.split(maxsplit=1) if isinstance(entry, str) else []
        hint = ""
        if len(words) == 2 and words[0] in kinds:
            hint = f" (a kind is followed by a colon: {words[0]}: {_shown(words[1])})"
        raise DefinitionError(f"must be a mapping, not {type(entry).__name__}{hint}", path=path)
    for key in ("kind", "type"):  # `kind: wait`, as other tools write a step's kind
        if key in entry and key not in kinds:
            value = _shown(entry[key]) if isinstance(entry[key], str) else "..."
            raise DefinitionError(
                f"a step's kind is its key ({value}: ...), not a {key} field; "
                f"one of: {', '.join(sorted(kinds))}",
                path=_join(path, key),
            )
    named = [k for k in entry if k in kinds]
    if not named:
        other = [str(k) for k in entry if k not in _COMMON]
        hint = ""
        if other:
            close = difflib.get_close_matches(other[0], sorted(kinds), n=1)
            mean = f" (did you mean {close[0]}?)" if close else ""
            hint = f"unknown step kind {other[0]!r}{mean}; "
        raise DefinitionError(f"{hint}a step needs one of: {', '.join(sorted(kinds))}", path=path)
    if len(named) > 1:
        raise DefinitionError(f"a step has one kind, not {', '.join(named)}", path=path)
    cls = kinds[named[0]]
    if cls.needs_id and "id" not in entry:
        raise DefinitionError(
            f"a {named[0]} step needs an id in a definition (its position would be its "
            "id, and change when steps are added)",
            path=path,
        )
    own = {k: v for k, v in entry.items() if k not in _COMMON}
    allowed = getattr(cls, "config_fields", None)
    fields = [*_COMMON, *(allowed if allowed is not None else [named[0]])]
    for key in own:
        if key not in fields:
            raise DefinitionError(_unknown_field(key, fields), path=_join(path, _shown(key)))
    if allowed is not None:  # a built-in kind: its fields beside the common options
        config: Any = own
    else:  # a kind of register_step: its to_config() nested under the kind
        config = entry[named[0]]
        if not isinstance(config, Mapping):
            raise DefinitionError(
                f"must be a mapping (the step's own fields), not {type(config).__name__}",
                path=_join(path, named[0]),
            )
    try:
        step = cls.from_config(config)
    except DefinitionError as exc:
        raise DefinitionError(_strip_path(exc), path=_join(path, exc.path)) from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a value of a wrong type
        raise DefinitionError(f"invalid {named[0]} step: {exc}", path=path) from None
    if nested == "fallback":
        for key in ("input", "when"):
            if key in entry:
                raise DefinitionError(
                    f"a fallback step takes no {key} (it gets its step's request)",
                    path=_join(path, key),
                )
    if nested == "compensate" and "when" in entry:
        raise DefinitionError(
            "a compensate step takes no when (it runs when its step succeeded)",
            path=_join(path, "when"),
        )
    if nested is not None:  # the engine would ignore these: say so rather than drop them
        for key in ("requires", "fallback", "compensate"):
            if key in entry:
                when = "in its step's place" if nested == "fallback" else "to undo its step"
                raise DefinitionError(
                    f"a {nested} step takes no {key} (it runs {when})", path=_join(path, key)
                )
    step.options = _options(entry, path, nested)
    return step


def _unknown_field(key: Any, fields: list[str]) -> str:
    """ "unknown field", and the field meant when a close one exists."""
    if key == "compensate_input":
        return "unknown field: a definition gives it as compensate: {..., input: ...}"
    close = difflib.get_close_matches(str(key), fields, n=1) if isinstance(key, str) else []
    return f"unknown field; did you mean {close[0]}?" if close else "unknown field"


def _strip_path(exc: DefinitionError) -> str:
    text = str(exc)
    if exc.path and text.startswith(exc.path + ": "):
        return text[len(exc.path) + 2 :]
    return text


def _options(entry: Mapping[str, Any], path: str, nested: str | None = None) -> StepOptions:
    kw: dict[str, Any] = {}
    if "id" in entry:
        kw["id"] = entry["id"]
        if isinstance(kw["id"], str):
            _check_id(kw["id"], _join(path, "id"))
    # a field given as null (YAML's empty ``requires:``) is a field not given, as for
    # timeout, input, when, fallback and compensate
    if entry.get("requires") is not None:
        req = entry["requires"]
        if isinstance(req, str):
            req = [req]
        if not isinstance(req, list) or not all(isinstance(r, str) and r for r in req):
            raise DefinitionError("must be a list of step ids", path=_join(path, "requires"))
        for n, item in enumerate(req):  # no step has such an id: say why, in one line
            _check_id(item, f"{_join(path, 'requires')}[{n}]")
        kw["requires"] = tuple(dict.fromkeys(req))
    if entry.get("retry") is not None:
        kw["retry"] = _retry(entry["retry"], _join(path, "retry"))
    if "timeout" in entry:
        kw["timeout"] = entry["timeout"]
    for key in ("input", "when"):  # JMESPath (a compensate step's input is not: below)
        if key in entry and not (key == "input" and nested == "compensate"):
            kw[key] = entry[key]
    if entry.get("fallback") is not None:
        kw["fallback"] = step_from_dict(
            entry["fallback"], _join(path, "fallback"), nested="fallback"
        )
    comp = entry.get("compensate")
    input_path = _join(path, "compensate.input")
    if comp is not None:
        kw["compensate"] = step_from_dict(comp, _join(path, "compensate"), nested="compensate")
        if isinstance(comp, Mapping) and "input" in comp:
            kw["compensate_input"] = comp["input"]
    try:
        return StepOptions(**kw)
    except DefinitionError as exc:
        where = input_path if exc.path == "compensate_input" else _join(path, exc.path)
        raise DefinitionError(_strip_path(exc), path=where) from None


def _retry(value: Any, path: str) -> Retry:
    if not isinstance(value, Mapping):
        raise DefinitionError("must be a mapping", path=path)
    kw = {}
    for key, item in value.items():
        if key not in _RETRY_FIELDS:
            raise DefinitionError(
                f"unknown field (expected one of {', '.join(_RETRY_FIELDS)})",
                path=_join(path, _shown(key)),
            )
        kw[key] = item
    if "non_retryable" in kw:
        codes = kw["non_retryable"]
        if isinstance(codes, str):  # one code alone is one entry, as Retry takes it
            codes = [codes]
        if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
            raise DefinitionError(
                "must be an error code or a list of error codes",
                path=_join(path, "non_retryable"),
            )
        kw["non_retryable"] = tuple(_error_class(c, path) for c in codes)
    for key in ("initial_interval", "multiplier", "max_interval"):
        value = kw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**53:
            kw[key] = float(value)
    if "jitter" in kw and not isinstance(kw["jitter"], bool):
        raise DefinitionError("must be true or false", path=_join(path, "jitter"))
    try:
        return Retry(**kw)
    except DefinitionError as exc:
        field = (exc.path or "").removeprefix("retry.")
        raise DefinitionError(_strip_path(exc), path=_join(path, field)) from None


def _error_class(code: str, path: str) -> str | type[BaseException]:
    """``module:Class`` imports an exception class; anything else is an error code."""
    if ":" not in code:
        return code
    try:
        if imports_deferred():  # a flow that runs no steps: imported where they run
            return unimported_class(code)
        found = import_function(code)
    except DefinitionError as exc:
        raise DefinitionError(_strip_path(exc), path=_join(path, "non_retryable")) from None
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise DefinitionError(f"{code} is not an exception class", path=path)
    return found


def step_to_dict(step: Step, *, nested: bool = False) -> dict[str, Any]:
    """A step as a definition entry: its kind's fields and its common options.

    A ``nested`` step (a fallback or a compensation) keeps only what the engine uses
    of it (id, retry, timeout), so the entry loads again. A built-in kind writes its
    fields beside the common options (``{"call": ...}``); a kind registered with
    :func:`register_step` has its ``to_config()`` nested under the kind."""
    if getattr(type(step), "config_fields", None) is not None:
        out = dict(step.to_config())
    else:
        out = {kind_of(step): dict(step.to_config())}
    opts = step.options
    # an id that is the kind's default is left out: the same definition written with
    # or without it (as GET /api/workflows/{id} writes every id) is one definition,
    # with one hash; a kind that needs an id in definitions keeps it
    if opts.id is not None and (opts.id != step.default_id() or type(step).needs_id):
        out["id"] = opts.id
    if opts.requires and not nested:
        out["requires"] = list(opts.requires)
    if opts.retry is not None:
        out["retry"] = opts.retry.to_config()
    if opts.timeout is not None:
        out["timeout"] = opts.timeout
    if nested:
        return out
    if opts.input is not None:
        out["input"] = opts.input
    if opts.when is not None:
        out["when"] = opts.when
    if opts.fallback is not None:
        out["fallback"] = step_to_dict(opts.fallback, nested=True)
    if opts.compensate is not None:
        comp = step_to_dict(opts.compensate, nested=True)
        if opts.compensate_input != "both":
            comp["input"] = opts.compensate_input
        out["compensate"] = comp
    return out


def workflow_to_dict(wf: Workflow) -> dict[str, Any]:
    out: dict[str, Any] = {"id": wf.id}
    if wf.description is not None:
        out["description"] = wf.description
    if wf.on_failure != "compensate":
        out["on_failure"] = wf.on_failure
    if wf.services:
        out["services"] = dict(sorted(wf.services.items()))
    out["steps"] = [step_to_dict(s) for s in wf.step_list]
    return out
