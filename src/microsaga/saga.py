"""A :class:`Saga`: a workflow written as decorated Python functions.

::

    saga = Saga("order")

    @saga.step(retry=Retry(max_attempts=5), compensate=release)
    async def reserve(order: Order) -> Reservation: ...

    @saga.step(requires=[reserve])
    def charge(reservation: Reservation) -> Payment: ...

    wf = await flow.workflow_add(saga)

Each decorated function becomes a :class:`~microsaga.FunctionStep` of the saga and is
returned unchanged, so tests call it directly with its own signature.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeAlias, TypeVar, overload

from .errors import DefinitionError
from .step import CompensateInput, Retry, Step, StepOptions
from .steps import FunctionStep
from .workflow import Workflow

__all__ = ["OnFailure", "Saga"]

OnFailure = Literal["compensate", "suspend"]
_ON_FAILURE = ("compensate", "suspend")

F = TypeVar("F", bound=Callable[..., Any])

StepRef: TypeAlias = "Callable[..., Any] | Step | str"
"""A step named in ``requires``: a function decorated in the same saga, a Step, an id."""


def _expression(value: Any, option: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DefinitionError(
            f"must be a JMESPath expression (a non-empty string), not {value!r}", path=option
        )
    return value


class Saga:
    """A workflow whose steps are decorated functions.

    Args:
        id: the workflow id.
        on_failure: ``"compensate"`` (default): a step failing for good rolls the saga
            back; ``"suspend"``: the execution waits for an operator (``resume`` or
            ``abort``).
        services: ``{service: base URL}`` for the :class:`~microsaga.CallStep` steps
            added with :meth:`add`.
        description: saved with the definition.

    Bind it to a flow with ``await flow.workflow_add(saga)``, which returns its
    :class:`~microsaga.Workflow`.
    """

    def __init__(
        self,
        id: str,
        *,
        on_failure: OnFailure = "compensate",
        services: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> None:
        if not isinstance(id, str) or not id.strip():
            raise DefinitionError(f"saga id must be a non-empty string, not {id!r}", path="id")
        if on_failure not in _ON_FAILURE:
            raise DefinitionError(
                f"must be one of {', '.join(_ON_FAILURE)}, not {on_failure!r}",
                path="on_failure",
            )
        self._id = id
        self._on_failure: OnFailure = on_failure
        self._services = dict(services or {})
        self._description = description
        self._steps: dict[str, Step] = {}  # forward steps by id, in the order added
        self._functions: dict[Callable[..., Any], Step] = {}  # decorated function -> its step
        # functions that became a compensation or fallback -> (role, the step it serves)
        self._nested_in: dict[Callable[..., Any], tuple[str, str]] = {}
        self._workflow: Workflow | None = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def on_failure(self) -> OnFailure:
        return self._on_failure

    @property
    def steps(self) -> list[Step]:
        """The saga's steps in the order they were declared."""
        return list(self._steps.values())

    def __repr__(self) -> str:
        return f"<Saga {self._id!r} steps={len(self._steps)}>"

    def step_of(self, fn: Callable[..., Any]) -> Step:
        """The step made of a function decorated in this saga.

        Raises:
            DefinitionError: ``fn`` was not decorated with this saga's ``step``.
        """
        try:
            return self._functions[fn]
        except (KeyError, TypeError):
            name = getattr(fn, "__qualname__", None) or repr(fn)
            nested = self._nested_role(fn)
            if nested is not None:
                role, owner = nested
                raise DefinitionError(
                    f"{name} is the {role} of step {owner} of saga {self._id!r}, not a step "
                    "of its own: no step can require it"
                ) from None
            raise DefinitionError(
                f"{name} is not a step of saga {self._id!r} (decorate it with @saga.step first)"
            ) from None

    # declaring steps ----------------------------------------------------------------

    @overload
    def step(self, fn: F) -> F: ...

    @overload
    def step(
        self,
        *,
        requires: Iterable[StepRef] | StepRef | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        compensate: Callable[..., Any] | Step | None = None,
        compensate_input: CompensateInput = "both",
        fallback: Callable[..., Any] | Step | None = None,
        when: str | None = None,
        input: str | None = None,
        id: str | None = None,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        requires: Iterable[StepRef] | StepRef | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        compensate: Callable[..., Any] | Step | None = None,
        compensate_input: CompensateInput = "both",
        fallback: Callable[..., Any] | Step | None = None,
        when: str | None = None,
        input: str | None = None,
        id: str | None = None,
    ) -> Any:
        """Make the decorated function (async or sync) a step of this saga.

        ``@saga.step`` alone takes the defaults. The function is returned unchanged.

        Args:
            requires: steps that must succeed first: functions decorated in this saga,
                Steps, or step ids.
            retry: how failed attempts are retried (one attempt by default).
            timeout: seconds per attempt.
            compensate: what undoes the step: a function (its input is
                ``{"request": ..., "response": ...}`` by default, see
                ``compensate_input``), or a Step. A function decorated in this saga
                becomes the compensation only, with the options it was declared with.
            fallback: runs in the step's place when its attempts fail: a function or a
                Step.
            when: a JMESPath expression; the step is skipped when it is falsy.
            input: a JMESPath expression giving the step's request body.
            id: the step id (default: the function's ``__qualname__``).

        Raises:
            DefinitionError: a bad option, naming it.
        """
        requirement_ids = self._requirement_ids(requires)
        options: dict[str, Any] = {
            "id": id,
            "requires": requirement_ids,
            "retry": retry,
            "timeout": timeout,
            "fallback": self._nested(fallback, "fallback"),
            "compensate": self._nested(compensate, "compensate"),
            "compensate_input": compensate_input,
        }
        for name, value in (("when", when), ("input", input)):
            expression = _expression(value, name)
            if expression is not None:
                options[name] = expression

        nested = [
            (target, role)
            for target, role in ((compensate, "compensation"), (fallback, "fallback"))
            if target is not None and not isinstance(target, Step)
        ]

        def decorate(fn: F) -> F:
            if not callable(fn):
                raise DefinitionError(f"@saga.step decorates a function, not {fn!r}")
            if fn in self._functions:
                raise DefinitionError(f"{fn.__qualname__} is a step of saga {self._id!r} already")
            served = self._nested_role(fn)
            if served is not None:  # it would run forward too, on every execution
                role, owner = served
                raise DefinitionError(
                    f"{fn.__qualname__} is the {role} of step {owner} of saga {self._id!r} "
                    f"already: decorate it with @saga.step before naming it as the {role}, "
                    "and its options apply to it there"
                )
            step = FunctionStep(fn, options=StepOptions(**options))
            self._declare(step)
            self._functions[fn] = step
            for target, role in nested:
                with contextlib.suppress(TypeError):  # an unhashable callable
                    self._nested_in.setdefault(target, (role, step.id))
            return fn

        if fn is not None:
            return decorate(fn)
        return decorate

    def add(self, *steps: Step) -> None:
        """Add steps that are not functions (``CallStep``, ``PublishStep``...); the
        decorated functions may require them by object or id."""
        for step in steps:
            if not isinstance(step, Step):
                raise DefinitionError(f"Saga.add takes Steps, not {step!r}")
            self._declare(step)

    def _declare(self, step: Step) -> None:
        taken = self._steps.get(step.id)
        if taken is not None:  # two functions of one name, in two modules or classes
            first = f", the id of {taken.endpoint}" if isinstance(taken, FunctionStep) else ""
            raise DefinitionError(
                f"duplicate step id in saga {self._id!r}: {step.id}{first} (give this "
                "step another with id=)"
            )
        self._steps[step.id] = step
        self._workflow = None

    def _requirement_ids(self, requires: Iterable[StepRef] | StepRef | None) -> tuple[str, ...]:
        if requires is None:
            return ()
        items: Iterable[StepRef] = (
            [requires] if isinstance(requires, Step | str) or callable(requires) else requires
        )
        out: list[str] = []
        for item in items:
            if isinstance(item, str) and item:
                out.append(item)
            elif isinstance(item, Step):
                out.append(item.id)
            elif callable(item):
                out.append(self.step_of(item).id)
            else:
                raise DefinitionError(
                    f"must name steps (decorated functions, Steps or ids), not {item!r}",
                    path="requires",
                )
        return tuple(dict.fromkeys(out))

    def _nested_role(self, fn: Callable[..., Any]) -> tuple[str, str] | None:
        try:
            return self._nested_in.get(fn)
        except TypeError:  # an unhashable callable
            return None

    def _nested(self, target: Callable[..., Any] | Step | None, role: str) -> Step | None:
        """A compensation or fallback: a Step as it is; a function decorated in this
        saga leaves the forward steps to become it; any other function a FunctionStep."""
        if target is None or isinstance(target, Step):
            return target
        if not callable(target):
            raise DefinitionError(f"must be a function or a Step, not {target!r}", path=role)
        step = self._functions.get(target)
        if step is None:
            return FunctionStep(target)
        for other in self._steps.values():
            if step.id in other.options.requires:
                raise DefinitionError(
                    f"{step.id} cannot be a {role}: step {other.id} requires it", path=role
                )
        del self._steps[step.id]
        del self._functions[target]
        self._workflow = None
        return step

    # the workflow ----------------------------------------------------------------------

    @property
    def workflow(self) -> Workflow:
        """The saga as a :class:`~microsaga.Workflow` (validated: unknown requirements
        and cycles are DefinitionErrors); the same object until a step is added."""
        if self._workflow is None:
            self._workflow = Workflow(
                self._id,
                self._steps.values(),
                services=self._services,
                description=self._description,
                on_failure=self._on_failure,
            )
        return self._workflow

    def to_dict(self) -> dict[str, Any]:
        """The saga as a definition (functions by ``module:qualname``), as
        ``Workflow.to_dict``."""
        return self.workflow.to_dict()
