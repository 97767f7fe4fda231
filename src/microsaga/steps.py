"""The built-in step kinds: :class:`CallStep`, :class:`PublishStep`, :class:`FunctionStep`."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

from ._signature import function_call, result_message
from ._validate import name_problem, shown
from .errors import DefinitionError, one_line
from .message import Message
from .observability.propagation import outgoing
from .step import Step, StepContext, register_step

if TYPE_CHECKING:
    from .flow import Flow

__all__ = [
    "CallStep",
    "FunctionStep",
    "PublishStep",
    "UnimportedClass",
    "deferred_imports",
    "import_deferred",
    "import_function",
    "unimported_class",
]

_CALL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")


class CallStep(Step):
    """An RPC call of ``Name.Method`` on ``service`` through the flow's client.

    ``id`` is ``"service.Name.Method"``, ``endpoint`` is ``"Name.Method"``.
    """

    kind = "call"
    config_fields = frozenset({"call"})

    def __init__(self, service: str, name: str, method: str, **options: Any) -> None:
        for label, value in (("service", service), ("name", name), ("method", method)):
            if not isinstance(value, str) or not _CALL_NAME.fullmatch(value):
                raise DefinitionError(
                    f"CallStep {label} must be letters, digits, '_' or '-' (it names a "
                    f"service or goes into the HTTP path), not {shown(value)}"
                )
        self.service, self.name, self.method = service, name, method
        super().__init__(**options)

    @property
    def endpoint(self) -> str:
        return f"{self.name}.{self.method}"

    def default_id(self) -> str:
        return f"{self.service}.{self.name}.{self.method}"

    def check(self, flow: Flow) -> None:
        flow.client_for(self.service)

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        client = ctx.flow.client_for(self.service)
        req = outgoing(req)  # the attempt's trace context, when traced
        return await client.call(self.service, self.endpoint, req, timeout=ctx.timeout)

    def to_config(self) -> dict[str, Any]:
        return {"call": self.default_id()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        target = config["call"]
        parts = target.split(".") if isinstance(target, str) else []
        if len(parts) != 3 or not all(parts):
            raise DefinitionError(f"must be 'service.Name.Method', not {target!r}", path="call")
        return cls(*parts)


class PublishStep(Step):
    """Publishes the request on ``topic`` through the flow's broker, confirmed.

    With ``reply=True`` it waits for one reply (bounded by the step timeout) and uses
    it as the response. ``id`` and ``endpoint`` are the topic.
    """

    kind = "publish"
    config_fields = frozenset({"publish", "reply"})

    def __init__(self, topic: str, *, reply: bool = False, **options: Any) -> None:
        problem = name_problem(topic, colon=True, limit=None)  # brokers have their own
        if problem is not None:
            raise DefinitionError(f"PublishStep topic {problem}")
        if not isinstance(reply, bool):
            raise DefinitionError(f"must be true or false, not {reply!r}", path="reply")
        self.topic, self.reply = topic, reply
        super().__init__(**options)

    @property
    def endpoint(self) -> str:
        return self.topic

    def check(self, flow: Flow) -> None:
        problem = flow.require_broker().topic_error(self.topic)
        if problem is not None:
            raise DefinitionError(f"step {self.id}: {problem}")

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        broker = ctx.flow.require_broker()
        req = outgoing(req)  # the attempt's trace context, when traced
        if self.reply:
            return await broker.request(self.topic, req, timeout=ctx.timeout)
        await broker.publish(self.topic, req)
        return Message()

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"publish": self.topic}
        if self.reply:
            out["reply"] = True
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        topic = config["publish"]
        problem = name_problem(topic, colon=True, limit=None)
        if problem is not None:  # said here, where the definition's field is known
            raise DefinitionError(problem, path="publish")
        reply = config.get("reply")  # null: not given, as every optional field
        return cls(topic, reply=False if reply is None else reply)


_DEFERRED: ContextVar[bool] = ContextVar("microsaga_deferred_imports", default=False)


@contextlib.contextmanager
def deferred_imports() -> Iterator[None]:
    """Definitions read within it import nothing: a ``function:`` step keeps its path
    and imports its function when it first runs (see :class:`FunctionStep`), and a
    ``non_retryable`` ``module:Class`` stays a name. A flow that runs no steps
    (``Flow(worker=False)``, ``microsaga serve --no-worker``) reads definitions so:
    it starts, shows and lists executions of workflows whose code only the workers
    can import."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def imports_deferred() -> bool:
    """Whether definitions read now import nothing (:func:`deferred_imports`)."""
    return _DEFERRED.get()


def function_path(path: Any) -> str:
    """``path`` when it has the form ``"package.module:qualname"`` (nothing imported).

    Raises:
        DefinitionError: naming the ``function`` field.
    """
    if not isinstance(path, str):
        raise DefinitionError(f"must be 'module:function', not {path!r}", path="function")
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise DefinitionError(f"must be 'module:function', not {path!r}", path="function")
    if "<" in qualname:
        raise DefinitionError(f"{path} is not importable (a lambda or a local function)")
    return path


def _imports_as(path: str, fn: Callable[..., Any]) -> bool:
    """Whether importing ``path`` gives ``fn`` again (a bound method or a callable
    object does not: its path names its function or its class). A module not imported
    yet is not imported here, and taken on trust."""
    if inspect.ismethod(fn) and not isinstance(fn.__self__, type):
        return False  # bound to an instance, which no import gives
    module_name, _, qualname = path.partition(":")
    target: Any = sys.modules.get(module_name)
    if target is None:
        return True
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is None:
        return True  # a function made under a name it does not have: loading says so
    return bool(target == fn or inspect.unwrap(target) is inspect.unwrap(fn))


def import_function(path: str) -> Callable[..., Any]:
    """Import ``"package.module:qualname"``."""
    module_name, _, qualname = function_path(path).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise DefinitionError(f"cannot import {path}: {exc}", path="function") from None
    except Exception as exc:  # the module itself is broken: a SyntaxError, a raise at import
        raise DefinitionError(
            f"cannot import {path}: its module failed: {one_line(exc)}", path="function"
        ) from exc
    if not callable(target):
        raise DefinitionError(f"{path} is not callable", path="function")
    return target  # type: ignore[no-any-return]


class UnimportedClass(Exception):
    """Base of the stand-ins for ``non_retryable`` ``"module:Class"`` entries read within
    :func:`deferred_imports`: each has the module and qualname of the class it stands
    for (so it is written back as it was read) and matches no exception, until a flow
    that runs steps imports the class in its place."""

    path: ClassVar[str] = ""

    @classmethod
    def resolve(cls) -> type[BaseException]:
        """The class this one stands for.

        Raises:
            DefinitionError: it cannot be imported here, or is no exception class.
        """
        found = import_function(cls.path)
        if not (isinstance(found, type) and issubclass(found, BaseException)):
            raise DefinitionError(f"{cls.path} is not an exception class")
        return found


def unimported_class(path: str) -> type[UnimportedClass]:
    """The stand-in for the exception class ``"module:Class"`` (nothing imported).

    Raises:
        DefinitionError: ``path`` is not of that form.
    """
    module, _, qualname = function_path(path).partition(":")
    name = qualname.rpartition(".")[2]
    attrs = {"__module__": module, "__qualname__": qualname, "path": path}
    return type(name, (UnimportedClass,), attrs)


def _unimported(item: object) -> bool:
    return isinstance(item, type) and issubclass(item, UnimportedClass)


def import_deferred(step: Step) -> bool:
    """Import what ``step`` (not its fallback or compensation) was read without
    importing (:func:`deferred_imports`): its function, its ``non_retryable`` classes.
    Whether its options changed (a plan made of them before is stale).

    Raises:
        DefinitionError: naming the step and what it cannot import.
    """
    if isinstance(step, FunctionStep):
        step.resolve()
    retry = step.options.retry
    if retry is None or not any(_unimported(c) for c in retry.non_retryable):
        return False
    classes: list[type[BaseException] | str] = []
    for item in retry.non_retryable:
        try:
            if isinstance(item, type) and issubclass(item, UnimportedClass):
                item = item.resolve()
            classes.append(item)
        except DefinitionError as exc:
            text = str(exc).removeprefix(f"{exc.path}: ")
            raise DefinitionError(f"step {step.id}: retry.non_retryable: {text}") from exc.__cause__
    retry = dataclasses.replace(retry, non_retryable=tuple(classes))
    step.options = dataclasses.replace(step.options, retry=retry)
    return True


class FunctionStep(Step):
    """Runs a local Python function (a sync one in a worker thread).

    ``fn(message)`` or ``fn(message, ctx)`` returns a Message, a JSON-able value or
    None (an empty body). A function with typed parameters gets the step's input
    decoded into their types instead (a ``msgspec.Struct``, dataclass, ``TypedDict``,
    pydantic model...), and ``ctx: StepContext`` by annotation (docs/python.md).
    ``id`` defaults to ``fn.__qualname__``; ``endpoint`` is
    ``"module:qualname"``, which a saved definition imports again.

    A step read from a definition keeps the path it was given as its ``endpoint`` (and
    the path's qualname as its default ``id``). Read within :func:`deferred_imports`,
    it imports its function only when it first runs, or when a flow that runs steps
    binds its workflow; until then ``fn`` imports it on access.
    """

    kind = "function"
    config_fields = frozenset({"function"})
    _path: str | None = None  # the path a definition gave
    _fn: Callable[..., Any] | None = None  # None: not imported yet

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        if not callable(fn):
            raise DefinitionError(f"FunctionStep needs a callable, not {fn!r}")
        self._bind(fn)
        super().__init__(**options)

    def _bind(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        self._call = function_call(fn)
        self._async = self._call.is_async
        if type(self).execute is FunctionStep.execute:
            # the engine calls these with the request alone: no context, no execute
            if self._call.direct is not None:
                self.direct = self._call.direct
            if self._call.threaded is not None:
                self.threaded = self._call.threaded

    @classmethod
    def _deferred(cls, path: str) -> FunctionStep:
        """The step of ``path`` whose function is imported when first needed."""
        step = cls.__new__(cls)
        step._path = function_path(path)
        Step.__init__(step)
        return step

    @property
    def fn(self) -> Callable[..., Any]:
        """The function (imported now, if the step was read without importing it).

        Raises:
            DefinitionError: it cannot be imported here.
        """
        return self.resolve()

    @fn.setter
    def fn(self, fn: Callable[..., Any]) -> None:
        self._path = None  # its identity is the new function's
        self._bind(fn)

    def resolve(self) -> Callable[..., Any]:
        """The function, imported first if the step was read without importing it.

        Raises:
            DefinitionError: naming the path, when it cannot be imported here.
        """
        if self._fn is None:
            assert self._path is not None
            try:
                self._bind(import_function(self._path))
            except DefinitionError as exc:
                text = str(exc).removeprefix(f"{exc.path}: ")
                raise DefinitionError(f"step {self.id}: {text}") from exc.__cause__
        assert self._fn is not None
        return self._fn

    @property
    def endpoint(self) -> str:
        if self._path is not None:
            return self._path
        fn = self.fn
        module = getattr(fn, "__module__", None) or "__main__"
        qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return f"{module}:{qualname}"

    def default_id(self) -> str:
        if self._path is not None:
            return self._path.partition(":")[2]
        fn = self.fn
        return getattr(fn, "__qualname__", None) or type(fn).__qualname__

    def check(self, flow: Flow) -> None:
        if flow.options.worker:  # a flow that runs steps imports what it runs
            self.resolve()

    def _input_lacks(self, keys: Collection[str]) -> str | None:
        if self._fn is None:  # read without importing: told when it is imported
            return None
        return self._call.missing(keys)

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        if self._fn is None:  # read without importing: imported where it runs
            self.resolve()
        invoke = self._call.invoke
        if self._async:
            result = await invoke(req, ctx)
        else:
            # the flow's own threads, as many as its concurrency: asyncio's default pool
            # has only a few per core and would cap how many sync steps run at once
            result = await ctx.flow.threads.run(invoke, req, ctx)
            if inspect.isawaitable(result):
                result = await result
        return result if type(result) is Message else result_message(result)

    def to_config(self) -> dict[str, Any]:
        path = self.endpoint
        if "<" in path:
            raise DefinitionError(
                f"step {self.id} cannot be saved: {path} is not importable "
                "(use a module-level function)"
            )
        if self._path is None and not _imports_as(path, self.fn):
            raise DefinitionError(
                f"step {self.id} cannot be saved: importing {path} gives another object "
                f"than its function {self.fn!r} (a bound method or a callable object: use "
                "a module-level function)"
            )
        return {"function": path}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        path = config["function"]
        if cls is FunctionStep and imports_deferred():
            return cls._deferred(path)
        try:
            step = cls(import_function(path))
        except DefinitionError as exc:  # not a function a step can call: the field's fault
            if exc.path:
                raise
            raise DefinitionError(str(exc), path="function") from None
        if isinstance(step, FunctionStep):
            step._path = path  # its identity is the path given, whatever fn calls itself
        return step


for _cls in (CallStep, PublishStep, FunctionStep):
    register_step(_cls)
