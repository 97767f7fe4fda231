"""How a :class:`~microsaga.FunctionStep` calls its function, read once from its signature.

Two conventions:

- **Messages** (no parameter typed with anything but ``Message``, ``Any`` or
  ``object``): ``fn(msg)``, or ``fn(msg, ctx)`` for a function of two positional
  parameters (or ``*args``), as before typed steps existed.
- **Typed**: each parameter gets what its annotation asks for: ``Message`` the
  request, ``StepContext`` the step's context, any other type the step's input decoded
  from JSON into that type with msgspec (a ``msgspec.Struct``, dataclass,
  ``TypedDict``, or anything else msgspec decodes; a pydantic model validates its own).
  With one such data parameter it gets the whole input; with several, each gets the
  field of the input named like it (the input of a step with several requirements is
  ``{required step id: response}``). An input that does not fit fails the step at once,
  not retried, with a :class:`~microsaga.StepError` of code ``invalid_input`` naming the
  field (``... - at `$.order_id```).

The result is a ``Message`` as it is, ``None`` an empty body, anything else encoded as
JSON (Structs, dataclasses, pydantic models included). Decoders are made once per
function and kept with it.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect

from .errors import DefinitionError, StepError
from .message import Message, check_finite, frozen_message, json_message
from .step import StepContext

__all__ = ["INVALID_INPUT", "FunctionCall", "function_call", "result_message"]

INVALID_INPUT = "invalid_input"
"""The code of the error a step fails with when its input does not fit its parameters."""

_EMPTY = inspect.Parameter.empty
_NAMED = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)
_LOOSE = (Any, object)  # annotations that ask for nothing in particular


def _pydantic_model(tp: Any) -> bool:
    """Whether ``tp`` is a pydantic model class; pydantic is never imported here (a
    model's module imported it already)."""
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _enc_hook(value: Any) -> Any:
    if _pydantic_model(type(value)):
        return value.model_dump(mode="json")
    raise NotImplementedError(f"Encoding objects of type {type(value).__name__} is unsupported")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def result_message(value: Any) -> Message:
    """A step function's return value as a Message.

    Raises:
        ConfigurationError: the value holds NaN or infinity (not retryable: the same
            value would fail again).
        StepError: the value is of a type JSON cannot hold (not retryable either).
    """
    if type(value) is dict:
        return json_message(value)
    if isinstance(value, Message):
        return value
    if value is None or isinstance(value, bytes | bytearray | memoryview):
        return Message(value)  # raw bytes are the body itself, not a JSON string
    try:
        body = _encoder.encode(value)
    except (TypeError, NotImplementedError, msgspec.EncodeError) as exc:  # _enc_hook's too
        raise StepError(
            f"the result cannot be encoded as JSON: {exc} (return a dict, a list, a "
            "msgspec.Struct, a dataclass, a TypedDict, bytes or a Message)",
            retryable=False,
        ) from None
    check_finite(value, body, _enc_hook)
    return frozen_message(body, ())


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """How to call one function.

    Attributes:
        is_async: the function returns an awaitable to await.
        invoke: ``invoke(request, ctx)`` calls the function and returns what it returns.
        direct: for an async function that needs no context, ``direct(request)``
            awaits it and returns its result (what the engine may await in place of
            ``execute``); None otherwise.
        threaded: for a sync function that needs no context, ``threaded(request)``
            calls it and returns its result as a Message, or the awaitable it returned
            (what the engine may run on the flow's step threads in place of
            ``execute``); None otherwise.
        typed: whether the function takes typed parameters (else messages).
        needs: the fields of a JSON object input that its data parameters require,
            when they are known (None: any input may fit).
    """

    is_async: bool
    invoke: Callable[[Message, StepContext], Any]
    direct: Callable[[Message], Awaitable[Any]] | None
    typed: bool
    needs: Mapping[str, frozenset[str]] | None = None  # {"parameter x": fields}
    threaded: Callable[[Message], Any] | None = None

    def missing(self, keys: Collection[str]) -> str | None:
        """What an input object of exactly ``keys`` lacks for the function's
        parameters (``field order_id, for parameter order``), or None."""
        for what, fields in (self.needs or {}).items():
            lacking = sorted(fields.difference(keys))
            if lacking:
                plural = "s" if len(lacking) > 1 else ""
                return f"field{plural} {', '.join(lacking)}, for {what}"
        return None


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects
    )


def _describe(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "__main__"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{qualname}"


_cache: weakref.WeakKeyDictionary[Callable[..., Any], FunctionCall] = weakref.WeakKeyDictionary()


def function_call(fn: Callable[..., Any]) -> FunctionCall:
    """How to call ``fn`` (made once per function).

    Raises:
        DefinitionError: a parameter's annotation cannot be resolved or decoded into,
            or a parameter's role cannot be told.
    """
    try:
        return _cache[fn]
    except (KeyError, TypeError):  # not seen yet, or not weakly referable
        pass
    found = _analyse(fn)
    try:
        _cache[fn] = found
    except TypeError:
        pass
    return found


# roles of a parameter
_MESSAGE, _CONTEXT, _DATA, _UNTYPED, _LOOSELY = "message", "context", "data", "untyped", "any"


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    kind: inspect._ParameterKind
    role: str
    type: Any
    default: Any


def _resolve(fn: Callable[..., Any], raw: inspect.Signature) -> inspect.Signature:
    """The signature with string annotations (``from __future__ import annotations``)
    evaluated; one that names nothing known is a DefinitionError naming it, but for
    ``Message`` and ``StepContext`` imported only for type checkers."""
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # a name imported under TYPE_CHECKING, say: one by one below
        pass
    target = inspect.unwrap(fn) if inspect.isroutine(fn) else type(fn).__call__
    namespace = dict(getattr(target, "__globals__", None) or vars(sys.modules[fn.__module__]))
    params = []
    for p in raw.parameters.values():
        annotation = p.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # what typing.get_type_hints does
            except Exception:
                last = annotation.rsplit(".", 1)[-1].strip("'\" ")
                known = {"Message": Message, "StepContext": StepContext}
                if last not in known:
                    raise DefinitionError(
                        f"{_describe(fn)}: cannot resolve the annotation {p.annotation!r} of "
                        f"parameter {p.name} (import it at module level, not only for type "
                        "checkers)"
                    ) from None
                annotation = known[last]
        params.append(p.replace(annotation=annotation))
    return raw.replace(parameters=params)


def _role(annotation: Any) -> str:
    if annotation is _EMPTY:
        return _UNTYPED
    if annotation is Message:
        return _MESSAGE
    if annotation is StepContext:
        return _CONTEXT
    if any(annotation is loose for loose in _LOOSE):
        return _LOOSELY
    return _DATA


_ALLOWED = (
    "a step function takes (msg) or (msg, ctx), or typed parameters (a Message, a "
    "StepContext, data decoded from the input; docs/python.md)"
)


def _analyse(fn: Callable[..., Any]) -> FunctionCall:
    if inspect.isclass(fn):  # called, it makes an instance: rarely JSON
        raise DefinitionError(f"{_describe(fn)} is a class: {_ALLOWED}")
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise DefinitionError(f"{_describe(fn)} yields: a step returns its result; {_ALLOWED}")
    is_async = _is_async(fn)
    try:
        raw = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: called as ever
        return _message_call(fn, is_async, with_ctx=False)
    _refuse_unbound_method(fn, raw)
    signature = _resolve(fn, raw)
    named = [p for p in signature.parameters.values() if p.kind in _NAMED]
    params = [_Param(p.name, p.kind, _role(p.annotation), p.annotation, p.default) for p in named]
    roles = {p.role for p in params}
    if _DATA not in roles and _CONTEXT not in roles:
        with_ctx = _wants_context(raw)
        try:  # what the call will pass: the request, and the context if it wants one
            raw.bind(*(("msg", "ctx") if with_ctx else ("msg",)))
        except TypeError:
            shown = [p.replace(annotation=_EMPTY) for p in raw.parameters.values()]
            form = raw.replace(parameters=shown, return_annotation=_EMPTY)
            raise DefinitionError(f"{_describe(fn)}{form} cannot be a step: {_ALLOWED}") from None
        return _message_call(fn, is_async, with_ctx=with_ctx)
    return _typed_call(fn, is_async, params)


def _refuse_unbound_method(fn: Callable[..., Any], signature: inspect.Signature) -> None:
    """A function defined in a class body whose first parameter is ``self`` (or
    ``cls``), unannotated, is a method that was decorated before it had an object: it
    would get the request as ``self``."""
    first = next(iter(signature.parameters.values()), None)
    if (
        inspect.isfunction(fn)
        and first is not None
        and first.name in ("self", "cls")
        and first.annotation is _EMPTY
        and fn.__qualname__.split(".")[-2:-1] not in ([], ["<locals>"])  # in a class body
    ):
        raise DefinitionError(
            f"{_describe(fn)} is a method (its first parameter is {first.name}), taken "
            "from its class without an object: make the step a module-level function "
            "(or a @staticmethod) that a worker can import"
        )


def _wants_context(signature: inspect.Signature) -> bool:
    params = signature.parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _message_call(fn: Callable[..., Any], is_async: bool, *, with_ctx: bool) -> FunctionCall:
    if with_ctx:
        return FunctionCall(is_async, fn, None, typed=False)

    def invoke(request: Message, ctx: StepContext) -> Any:
        return fn(request)

    if is_async:
        return FunctionCall(is_async, invoke, fn, typed=False)
    return FunctionCall(is_async, invoke, None, typed=False, threaded=_threaded(fn))


def _threaded(call: Callable[[Message], Any]) -> Callable[[Message], Any]:
    """``call`` of the request with its result made a Message where it ran (a step
    thread); an awaitable it returns is left for the event loop to await."""

    def threaded(request: Message) -> Any:
        value = call(request)
        return value if inspect.isawaitable(value) else result_message(value)

    return threaded


# typed parameters ---------------------------------------------------------------------


def _input_error(fn: Callable[..., Any], what: str, detail: str) -> StepError:
    return StepError(
        f"the input does not fit {what} of {_describe(fn)}: {detail}",
        code=INVALID_INPUT,
        retryable=False,
    )


def _pydantic_detail(exc: Any, prefix: str = "$") -> str:
    """A pydantic ValidationError's first error in msgspec's words (``... - at `$.x```)."""
    first = exc.errors()[0]
    where = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    more = exc.error_count() - 1
    tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{first['msg']} - at `{where}`{tail}"


def _unknown_types(node: Any, seen: set[int]) -> Iterator[type]:
    """The classes msgspec would take as custom types (decodable only with a hook)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, msgspec.inspect.CustomType):
        yield node.cls
    elif isinstance(node, msgspec.inspect.Type | msgspec.inspect.Field):
        for name in node.__struct_fields__:
            yield from _unknown_types(getattr(node, name), seen)
    elif isinstance(node, tuple):
        for item in node:
            yield from _unknown_types(item, seen)


def _pydantic_adapter(fn: Callable[..., Any], tp: Any, what: str) -> Any | None:
    """pydantic's TypeAdapter for a type holding pydantic models (they validate their
    own), None for a type msgspec decodes alone."""
    try:
        unknown = list(_unknown_types(msgspec.inspect.type_info(tp), set()))
    except (TypeError, ValueError) as exc:
        raise DefinitionError(f"{_describe(fn)}: {what} cannot be decoded: {exc}") from None
    if not unknown:
        return None
    for cls in unknown:
        if not _pydantic_model(cls):
            raise DefinitionError(
                f"{_describe(fn)}: {what} cannot be decoded from JSON: no way to decode "
                f"{cls.__qualname__} (use a msgspec.Struct, a dataclass, a TypedDict or a "
                "pydantic model)"
            )
    return sys.modules["pydantic"].TypeAdapter(tp)


def _decoder_for(fn: Callable[..., Any], p: _Param) -> Callable[[bytes], Any]:
    """Decodes a body into parameter ``p``'s type; a StepError when it does not fit."""
    what = f"parameter {p.name}"
    tp = Any if p.role == _LOOSELY else p.type
    adapter = _pydantic_adapter(fn, tp, what)
    if adapter is not None:
        invalid = sys.modules["pydantic"].ValidationError
        validate = adapter.validate_json

        def decode_model(body: bytes) -> Any:
            try:
                return validate(body)
            except invalid as exc:
                raise _input_error(fn, what, _pydantic_detail(exc)) from None

        return decode_model
    decode = msgspec.json.Decoder(tp).decode

    def decode_typed(body: bytes) -> Any:
        try:
            return decode(body)
        except msgspec.DecodeError as exc:  # ValidationError too
            raise _input_error(fn, what, str(exc)) from None

    return decode_typed


def _fields_decoder(fn: Callable[..., Any], data: list[_Param]) -> Callable[[bytes], list[Any]]:
    """Decodes a JSON object into one value per data parameter, by name."""
    adapters: dict[str, Any] = {}  # those that pydantic validates, after msgspec
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for p in data:
        tp = Any if p.role == _LOOSELY else p.type
        adapter = _pydantic_adapter(fn, tp, f"parameter {p.name}")
        if adapter is not None:
            adapters[p.name], tp = adapter, Any
        fields.append((p.name, tp) if p.default is _EMPTY else (p.name, tp, p.default))
    names = [p.name for p in data]
    what = "the parameters " + ", ".join(names)
    name = getattr(fn, "__name__", "function") + "_inputs"
    try:
        decoder = msgspec.json.Decoder(msgspec.defstruct(name, fields, kw_only=True))
    except (TypeError, ValueError) as exc:
        raise DefinitionError(f"{_describe(fn)}: {what} cannot be decoded: {exc}") from None
    invalid: Any = sys.modules["pydantic"].ValidationError if adapters else None

    def decode_fields(body: bytes) -> list[Any]:
        try:
            found = decoder.decode(body)
        except msgspec.DecodeError as exc:
            detail = str(exc)
            if any(detail == f"Object missing required field `{n}`" for n in names):
                # (order: Order, dry_run: bool = False) meant order to get the whole input
                detail += (
                    " (several typed parameters each get the input's field of their name; "
                    "one typed parameter gets the whole input)"
                )
            raise _input_error(fn, what, detail) from None
        values = [getattr(found, n) for n in names]
        for i, n in enumerate(names):
            adapter = adapters.get(n)
            if adapter is not None:
                try:
                    values[i] = adapter.validate_python(values[i])
                except invalid as exc:
                    detail = _pydantic_detail(exc, f"$.{n}")
                    raise _input_error(fn, f"parameter {n}", detail) from None
        return values

    return decode_fields


def _typed_call(fn: Callable[..., Any], is_async: bool, params: list[_Param]) -> FunctionCall:
    has_data = any(p.role == _DATA for p in params)
    passed: list[_Param] = []
    for p in params:
        role = p.role
        if role == _UNTYPED:
            if p.default is not _EMPTY:
                continue  # left to its default
            if has_data or any(q.role == _MESSAGE for q in passed):
                raise DefinitionError(
                    f"{_describe(fn)}: parameter {p.name} has no annotation: annotate it "
                    "(StepContext, Message, or the type its input is decoded into)"
                )
            role = _MESSAGE  # fn(msg, ctx: StepContext), as before typed steps
        elif role == _LOOSELY and not has_data:
            role = _MESSAGE
        passed.append(_Param(p.name, p.kind, role, p.type, p.default))
    data = [p for p in passed if p.role in (_DATA, _LOOSELY)]
    decode_one = _decoder_for(fn, data[0]) if len(data) == 1 else None
    decode_all = _fields_decoder(fn, data) if len(data) > 1 else None
    needs_ctx = any(p.role == _CONTEXT for p in passed)
    keywords = [p.name for p in passed if p.kind is inspect.Parameter.KEYWORD_ONLY]
    roles = [p.role for p in passed]

    def arguments(request: Message, ctx: StepContext | None) -> list[Any]:
        body = request.body or b"null"  # an empty body is JSON's null (None)
        values = iter(decode_all(body) if decode_all is not None else ())
        out: list[Any] = []
        for role in roles:
            if role == _MESSAGE:
                out.append(request)
            elif role == _CONTEXT:
                out.append(ctx)
            elif decode_one is not None:
                out.append(decode_one(body))
            else:
                out.append(next(values))
        return out

    if keywords:
        positional = len(passed) - len(keywords)

        def invoke(request: Message, ctx: StepContext | None) -> Any:
            args = arguments(request, ctx)
            return fn(*args[:positional], **dict(zip(keywords, args[positional:], strict=True)))

    else:

        def invoke(request: Message, ctx: StepContext | None) -> Any:
            return fn(*arguments(request, ctx))

    direct: Callable[[Message], Awaitable[Any]] | None = None
    if is_async and not needs_ctx:
        if roles == [_DATA] and decode_one is not None and not keywords:
            one = decode_one  # the usual typed step: one parameter, the whole input

            async def direct_one(request: Message) -> Message:
                return result_message(await fn(one(request.body or b"null")))

            direct = direct_one
        else:

            async def direct_any(request: Message) -> Message:
                return result_message(await invoke(request, None))

            direct = direct_any
    threaded = None
    if not is_async and not needs_ctx:
        threaded = _threaded(lambda request: invoke(request, None))
    needs: dict[str, frozenset[str]] = {}
    if decode_all is not None:  # several: each its field of the input
        needs["parameters " + ", ".join(p.name for p in data)] = frozenset(
            p.name for p in data if p.default is _EMPTY
        )
    elif len(data) == 1:  # one: the whole input, an object when its type has fields
        fields = _required_fields(data[0].type) if data[0].role == _DATA else None
        if fields is not None:
            needs[f"parameter {data[0].name}"] = fields
    return FunctionCall(is_async, invoke, direct, typed=True, needs=needs, threaded=threaded)


def _required_fields(tp: Any) -> frozenset[str] | None:
    """The fields an object decoded into ``tp`` must have (None: not an object type
    with named fields, such as a dict)."""
    if _pydantic_model(tp):
        return frozenset(
            field.alias or name for name, field in tp.model_fields.items() if field.is_required()
        )
    try:
        info = msgspec.inspect.type_info(tp)
    except (TypeError, ValueError):
        return None
    kinds = (
        msgspec.inspect.StructType,
        msgspec.inspect.DataclassType,
        msgspec.inspect.TypedDictType,
    )
    if not isinstance(info, kinds):
        return None
    return frozenset(field.encode_name for field in info.fields if field.required)
