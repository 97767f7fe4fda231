"""The built-in step kinds: :class:`CallStep`, :class:`PublishStep`, :class:`FunctionStep`."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._signature import function_call, result_message
from ._validate import name_problem, shown
from .errors import DefinitionError, one_line
from .message import Message
from .observability.propagation import outgoing
from .step import Step, StepContext, register_step

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["CallStep", "FunctionStep", "PublishStep", "import_function"]

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
        return cls(config["publish"], reply=config.get("reply", False))


def import_function(path: str) -> Callable[..., Any]:
    """Import ``"package.module:qualname"``."""
    if not isinstance(path, str):
        raise DefinitionError(f"must be 'module:function', not {path!r}", path="function")
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise DefinitionError(f"must be 'module:function', not {path!r}", path="function")
    if "<" in qualname:
        raise DefinitionError(f"{path} is not importable (a lambda or a local function)")
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


class FunctionStep(Step):
    """Runs a local Python function (a sync one in a worker thread).

    ``fn(message)`` or ``fn(message, ctx)`` returns a Message, a JSON-able value or
    None (an empty body). A function with typed parameters gets the step's input
    decoded into their types instead (a ``msgspec.Struct``, dataclass, ``TypedDict``,
    pydantic model...), and ``ctx: StepContext`` by annotation (docs/python.md).
    ``id`` defaults to ``fn.__qualname__``; ``endpoint`` is
    ``"module:qualname"``, which a saved definition imports again.
    """

    kind = "function"
    config_fields = frozenset({"function"})

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        if not callable(fn):
            raise DefinitionError(f"FunctionStep needs a callable, not {fn!r}")
        self.fn = fn
        self._call = function_call(fn)
        self._async = self._call.is_async
        super().__init__(**options)
        if self._call.direct is not None and type(self).execute is FunctionStep.execute:
            # the engine awaits it with the request alone: no context, no execute
            self.direct = self._call.direct

    @property
    def endpoint(self) -> str:
        module = getattr(self.fn, "__module__", None) or "__main__"
        qualname = getattr(self.fn, "__qualname__", None) or type(self.fn).__qualname__
        return f"{module}:{qualname}"

    def default_id(self) -> str:
        return getattr(self.fn, "__qualname__", None) or type(self.fn).__qualname__

    async def execute(self, req: Message, ctx: StepContext) -> Message:
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
        return {"function": path}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        return cls(import_function(config["function"]))


for _cls in (CallStep, PublishStep, FunctionStep):
    register_step(_cls)
