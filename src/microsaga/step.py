"""The :class:`Step` base class, its options and the registry of step kinds."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from . import _views
from ._validate import name_problem
from .errors import DefinitionError, MicrosagaError, error_code, is_retryable
from .expressions import compile_expression
from .message import Message
from .status import Status

if TYPE_CHECKING:
    from .flow import Flow

__all__ = [
    "CompensateInput",
    "Retry",
    "Step",
    "StepContext",
    "StepOptions",
    "kind_of",
    "register_step",
    "step_kinds",
]

CompensateInput = Literal["request", "response", "both"]
_COMPENSATE_INPUTS = ("request", "response", "both")


@dataclass(frozen=True, slots=True)
class Retry:
    """How a failed step attempt is retried.

    The wait before attempt ``n + 1`` is ``initial_interval * multiplier ** (n - 1)``,
    capped at ``max_interval``; with ``jitter`` it is drawn from its upper half.

    Args:
        max_attempts: attempts in all, the first included (1 means no retry).
        non_retryable: exception classes (matched with ``isinstance``) or error codes
            that fail the step at once (a tuple, or one class or code).
    """

    max_attempts: int = 1
    initial_interval: float = 0.1
    multiplier: float = 2.0
    max_interval: float = 30.0
    jitter: bool = True
    non_retryable: tuple[type[BaseException] | str, ...] = ()

    def __post_init__(self) -> None:
        entries: Any = self.non_retryable
        if isinstance(entries, str | type):  # one code or class: not its characters
            entries = (entries,)
        elif not isinstance(entries, tuple):
            try:
                entries = tuple(entries)
            except TypeError:
                raise DefinitionError(
                    f"must be exception classes or error codes, not {entries!r}",
                    path="retry.non_retryable",
                ) from None
        object.__setattr__(self, "non_retryable", entries)
        _check_int(self.max_attempts, "retry.max_attempts", minimum=1)
        _check_number(self.initial_interval, "retry.initial_interval", minimum=0.0)
        _check_number(self.multiplier, "retry.multiplier", minimum=1.0)
        _check_number(self.max_interval, "retry.max_interval", minimum=0.0)
        for item in self.non_retryable:
            ok = isinstance(item, str) or (
                isinstance(item, type) and issubclass(item, BaseException)
            )
            if not ok:
                raise DefinitionError(
                    f"must be exception classes or error codes, not {item!r}",
                    path="retry.non_retryable",
                )

    def interval(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 1); ``rand`` in [0, 1)."""
        delay = min(self.initial_interval * self.multiplier ** (attempt - 1), self.max_interval)
        if self.jitter:
            delay = delay / 2 + delay / 2 * rand
        return delay

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt ``attempt`` that raised ``exc`` is followed by another one."""
        if attempt >= self.max_attempts or not is_retryable(exc):
            return False
        code = error_code(exc)
        for item in self.non_retryable:
            if isinstance(item, str):
                if item == code:
                    return False
            elif isinstance(exc, item):
                return False
        return True

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value
        if self.non_retryable:
            out["non_retryable"] = [
                item if isinstance(item, str) else f"{item.__module__}:{item.__qualname__}"
                for item in self.non_retryable
            ]
        return out


def _check_int(value: Any, path: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DefinitionError(f"must be an integer, not {value!r}", path=path)
    if value < minimum:
        raise DefinitionError(f"must be at least {minimum}, not {value}", path=path)


def _check_number(value: Any, path: str, *, minimum: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionError(f"must be a number, not {value!r}", path=path)
    if isinstance(value, float) and math.isnan(value):
        raise DefinitionError(f"must be a number, not {value!r}", path=path)
    if isinstance(value, int) and abs(value) > 2**53:
        raise DefinitionError(
            f"must be at most {2**53}, not a {len(str(value))}-digit number", path=path
        )
    if value < minimum:
        raise DefinitionError(f"must be at least {minimum}, not {value}", path=path)


@dataclass(frozen=True, slots=True)
class StepOptions:
    """The options every step kind takes (all keywords of the step constructors)."""

    id: str | None = None
    requires: tuple[str, ...] = ()
    retry: Retry | None = None
    timeout: float | None = None
    fallback: Step | None = None
    compensate: Step | None = None
    compensate_input: CompensateInput = "both"
    input: str | None = None  # a JMESPath expression: the step's request body
    when: str | None = None  # a JMESPath expression: falsy -> the step is SKIPPED

    def __post_init__(self) -> None:
        if self.id is not None:
            problem = name_problem(self.id, spaces=True, colon=True, limit=1000)
            if problem is not None:
                raise DefinitionError(problem, path="id")
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise DefinitionError(f"must be a Retry, not {self.retry!r}", path="retry")
        _check_number(self.timeout, "timeout", minimum=0.0, allow_none=True)
        if self.timeout is not None and self.timeout <= 0:
            raise DefinitionError(f"must be positive, not {self.timeout}", path="timeout")
        for name in ("fallback", "compensate"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Step):
                raise DefinitionError(f"must be a Step, not {value!r}", path=name)
            if value is not None:
                # it runs in place of (or after) its forward step, never on its own
                nested = value.options
                for field_name in ("requires", "fallback", "compensate"):
                    if getattr(nested, field_name):
                        raise DefinitionError(
                            f"a {name} step cannot have its own {field_name}",
                            path=f"{name}.{field_name}",
                        )
        compensation = self.compensate
        lacking = (
            compensation._input_lacks(("request", "response"))
            if compensation is not None and self.compensate_input == "both"
            else None
        )
        if compensation is not None and lacking is not None:  # it would fail in a rollback
            raise DefinitionError(
                f"compensation {compensation.id} cannot take its input: with "
                'compensate_input="both" (the default) it gets {"request": ..., '
                f'"response": ...}}, which has no {lacking}: name its parameters request '
                'and response, or set compensate_input="request" or "response"',
                path="compensate",
            )
        for name in ("input", "when"):
            if getattr(self, name) is not None:
                compile_expression(getattr(self, name), name)
        if self.compensate_input not in _COMPENSATE_INPUTS:
            raise DefinitionError(
                f"must be one of {', '.join(_COMPENSATE_INPUTS)}, not {self.compensate_input!r}",
                path="compensate_input",
            )


class StepContext:
    """What a step knows about the run it is part of.

    Attributes:
        flow: the Flow running the step.
        workflow_id, execution_id, step_id: where the step is.
        attempt: the attempt number, from 1.
        timeout: the attempt's timeout in seconds, or None.
        compensation: True when this is the step's compensation.
        request: the execution's request.
    """

    __slots__ = ("attempt", "compensation", "execution_id", "flow", "request", "step_id",
                 "timeout", "workflow_id")  # fmt: skip

    def __init__(
        self,
        flow: Flow,
        workflow_id: str,
        execution_id: str,
        step_id: str,
        attempt: int = 1,
        timeout: float | None = None,
        compensation: bool = False,
        request: Message | None = None,
    ) -> None:
        self.flow = flow
        self.request = request if request is not None else Message()
        self.workflow_id = workflow_id
        self.execution_id = execution_id
        self.step_id = step_id
        self.attempt = attempt
        self.timeout = timeout
        self.compensation = compensation

    @property
    def idempotency_key(self) -> str:
        key = f"{self.execution_id}:{self.step_id}"
        return key + ":compensate" if self.compensation else key

    def __repr__(self) -> str:
        return (
            f"StepContext(workflow_id={self.workflow_id!r}, execution_id={self.execution_id!r}, "
            f"step_id={self.step_id!r}, attempt={self.attempt})"
        )


def _requirement_ids(requires: Iterable[Step | str] | Step | str | None) -> tuple[str, ...]:
    if requires is None:
        return ()
    if isinstance(requires, Step | str):
        requires = [requires]
    if not isinstance(requires, Iterable):
        raise DefinitionError(f"must be steps or step ids, not {requires!r}", path="requires")
    out: list[str] = []
    for item in requires:
        if isinstance(item, Step):
            out.append(item.id)
        elif isinstance(item, str) and item:
            out.append(item)
        elif callable(item):  # a function of @saga.step: only its saga knows its step
            name = getattr(item, "__qualname__", None) or repr(item)
            raise DefinitionError(
                f"must name steps (Steps or ids), not the function {name}: name its step "
                f"by its id (requires=[{name!r}], unless @saga.step gave it another)",
                path="requires",
            )
        else:
            raise DefinitionError(f"must name steps, not {item!r}", path="requires")
    return tuple(dict.fromkeys(out))


class Step:
    """One step of a workflow.

    Subclasses implement :meth:`execute` and, to be saved in definitions,
    :meth:`to_config` and :meth:`from_config`; they are registered for definitions
    with :func:`register_step`. ``status``, ``request`` and ``response`` show the last
    run of this step seen by this process.
    """

    kind: ClassVar[str] = ""
    # whether a definition must give the step an id (its default id would depend on
    # where it stands in the workflow)
    needs_id: ClassVar[bool] = False
    # what the engine may await with the request alone, in place of execute(req, ctx),
    # when the step has no timeout: its result is taken as a FunctionStep's. Set by
    # steps whose execute would only call it (a FunctionStep of an async function).
    direct: Callable[[Message], Awaitable[Any]] | None = None
    # what the engine may run on the flow's step threads with the request alone, in
    # place of execute(req, ctx), when the step has no timeout: it returns the response
    # Message, or an awaitable whose result is taken as a FunctionStep's. Set by steps
    # whose execute would only run it there (a FunctionStep of a sync function).
    threaded: Callable[[Message], Any] | None = None

    def __init__(
        self,
        *,
        id: str | None = None,
        requires: Iterable[Step | str] | Step | str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        fallback: Step | None = None,
        compensate: Step | None = None,
        compensate_input: CompensateInput = "both",
        input: str | None = None,
        when: str | None = None,
        options: StepOptions | None = None,
    ) -> None:
        if options is None:
            options = StepOptions(
                id=id,
                requires=_requirement_ids(requires),
                retry=retry,
                timeout=timeout,
                fallback=fallback,
                compensate=compensate,
                compensate_input=compensate_input,
                input=input,
                when=when,
            )
        self.options = options

    # identity ---------------------------------------------------------------

    def default_id(self) -> str:
        """The id used when the ``id`` option is not set."""
        return self.endpoint

    @property
    def id(self) -> str:
        return self.options.id or self.default_id()

    @property
    def endpoint(self) -> str:
        """The RPC endpoint, topic or function path this step calls."""
        return type(self).__name__

    # what this process last saw of the step ---------------------------------------

    @property
    def status(self) -> Status:
        """The step's status in the latest execution run here of a workflow it is in
        (PENDING before any)."""
        found = _views.record_of(self)
        return found.status if found is not None else Status.PENDING

    @property
    def request(self) -> Message | None:
        """The step's request in that execution, once it started."""
        found = _views.record_of(self)
        return found.request if found is not None else None

    @property
    def response(self) -> Message | None:
        """The step's response in that execution, once it succeeded."""
        found = _views.record_of(self)
        return found.response if found is not None else None

    @property
    def requires(self) -> list[str]:
        return list(self.options.requires)

    def require(self, *steps: Step | str) -> None:
        """Add steps this step requires (``requires=`` sets the whole list)."""
        merged = self.options.requires + _requirement_ids(steps)
        self.options = dataclasses.replace(self.options, requires=tuple(dict.fromkeys(merged)))

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r}>"

    # behaviour --------------------------------------------------------------

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        """Run the step once and return its response; raise to fail the attempt."""
        raise NotImplementedError(f"{type(self).__name__}.execute is not implemented")

    def check(self, flow: Flow) -> None:
        """Raise :class:`MissingClientError` if ``flow`` lacks what this step needs.

        Called by ``execute`` before anything is stored.
        """

    def _input_lacks(self, keys: Collection[str]) -> str | None:
        """What an input object of exactly ``keys`` lacks for this step, when the
        step can tell before it runs (a typed function); None otherwise."""
        return None

    # definitions ------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """This step's own part of its definition entry: ``{kind: value, ...}``.

        The common options (id, requires, retry, timeout, fallback, compensate) are
        added by the definition writer; leave them out.
        """
        raise DefinitionError(
            f"step {self.id} of type {type(self).__name__} cannot be saved: "
            "implement to_config/from_config and register_step"
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Step:
        """Build a step from its definition entry, without the common options (the
        definition reader sets those on the step it returns)."""
        raise DefinitionError(f"step type {cls.__name__} cannot be loaded from a definition")


_KINDS: dict[str, type[Step]] = {}
_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(StepOptions))


def register_step(cls: type[Step], kind: str | None = None) -> type[Step]:
    """Register a step class under ``kind`` (default ``cls.kind``) for definitions.

    Usable as a decorator. A definition entry names its kind as a key
    (``{"call": ...}``, ``{"mykind": ...}``). Registering the class again (its module
    reloaded, say) replaces it.

    Raises:
        DefinitionError: ``kind`` is another class's (a built-in kind included) or the
            name of a step option, which would read every step as that kind.
    """
    if not (isinstance(cls, type) and issubclass(cls, Step)):
        raise TypeError(f"register_step needs a Step subclass, not {cls!r}")
    name = kind or cls.kind
    if not name:
        raise MicrosagaError(f"{cls.__name__} has no kind: set the class attribute or pass kind=")
    if name in _OPTION_NAMES:
        raise DefinitionError(
            f"register_step: {name!r} is a step option, not a kind name: pass another kind="
        )
    taken = _KINDS.get(name)
    if taken is not None and _path(taken) != _path(cls):
        raise DefinitionError(
            f"register_step: kind {name!r} is {_path(taken)}'s already, not "
            f"{_path(cls)}'s: pass another kind="
        )
    _KINDS[name] = cls
    return cls


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def step_kinds() -> Mapping[str, type[Step]]:
    """The registered step kinds."""
    return dict(_KINDS)


def kind_of(step: Step) -> str:
    """The kind ``step``'s class is registered under (the latest, if several).

    Raises:
        DefinitionError: the class is not registered.
    """
    found = [kind for kind, cls in _KINDS.items() if cls is type(step)]
    if not found:
        raise DefinitionError(
            f"step {step.id} of type {type(step).__name__} cannot be saved: "
            "register its class with register_step"
        )
    return found[-1]


def check_steps(steps: Sequence[Any]) -> list[Step]:
    out = []
    for index, step in enumerate(steps):
        if not isinstance(step, Step):
            raise DefinitionError(f"must be a Step, not {step!r}", path=f"steps[{index}]")
        out.append(step)
    return out
