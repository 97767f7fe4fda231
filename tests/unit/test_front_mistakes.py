"""Mistakes a new user makes with the decorators and typed steps, and what they are told."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from microsaga import (
    DefinitionError,
    ExecutionFailedError,
    ExecutionNotFoundError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    Saga,
    Status,
    Step,
    StepContext,
    StepError,
    load_definition,
    register_step,
)
from microsaga.step import step_kinds


@dataclass
class Order:
    order_id: int


def test_a_method_decorated_in_its_class_body_is_refused_saying_why() -> None:
    saga = Saga("methods")
    with pytest.raises(DefinitionError, match=r"is a method .*module-level function") as err:

        class Orders:
            @saga.step
            def reserve(self, order: Order) -> Order:
                return order

    assert "annotate" not in str(err.value)  # annotating self is no way out
    with pytest.raises(DefinitionError, match="is a method"):

        class Messages:  # untyped: it would get the request as self, the context as msg
            @saga.step
            def reserve(self, msg):  # type: ignore[no-untyped-def]
                return msg

    assert saga.steps == []


class Inventory:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def reserve(self, order: Order) -> dict[str, str]:
        return {"reservation": f"{self.prefix}-{order.order_id}"}

    def __call__(self, order: Order) -> dict[str, str]:
        return {"called": self.prefix}


@pytest.mark.parametrize("kind", ["bound method", "callable object"])
async def test_a_bound_method_runs_here_but_is_not_saved_as_its_class_function(
    flow: Flow, kind: str
) -> None:
    """Saved, ``tests.unit.test_front_mistakes:Inventory.reserve`` would load as the
    function without its object, and a worker would call it without ``self``."""
    inventory = Inventory("R")
    fn = inventory.reserve if kind == "bound method" else inventory
    saga = Saga("bound")
    saga.step(id="reserve")(fn)
    wf = await flow.workflow_add(saga)
    eid = await wf.execute(Order(7))
    info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    with pytest.raises(DefinitionError, match="step reserve cannot be saved: importing"):
        await flow.workflow_save(saga)
    function = FunctionStep(reserve_order).to_config()
    assert function == {"function": "tests.unit.test_front_mistakes:reserve_order"}


def reserve_order(order: Order) -> Order:
    return order


async def test_a_saga_added_to_two_open_flows_runs_on_each(tmp_path: Path) -> None:
    saga = Saga("two-flows")
    saga.step(reserve_order)
    first_url, second_url = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    async with Flow(first_url) as first, Flow(second_url) as second:
        on_first = await first.workflow_add(saga)
        on_second = await second.workflow_add(saga)
        assert await second.workflow_save(saga) == 1
        assert on_first.flow is first
        assert on_second.flow is second
        first_eid = await on_first.execute(Order(1))
        second_eid = await on_second.execute(Order(2))
        assert (await first.execution(first_eid)).status is Status.SUCCESS
        assert (await second.execution(second_eid)).status is Status.SUCCESS
        with pytest.raises(ExecutionNotFoundError):
            await second.execution(first_eid)
        assert on_first.version is None  # saved in the second flow's store only
    async with Flow(second_url) as third:  # the others are closed: bound as it is
        assert await third.workflow_add(saga) is saga.workflow


def release_order(order: Order) -> None:
    return None


def release_both(order: Order, reservation: dict[str, str]) -> None:
    return None


def release_any(both: dict[str, Any]) -> None:
    return None


def test_a_compensation_that_cannot_take_request_and_response_is_refused_when_declared() -> None:
    """It would fail only when a rollback needed it: the input of a compensation is
    ``{"request": ..., "response": ...}`` unless ``compensate_input`` says otherwise."""
    saga = Saga("undo")
    with pytest.raises(DefinitionError) as err:
        saga.step(compensate=release_order)(reserve_order)
    assert str(err.value) == (
        "compensate: compensation release_order cannot take its input: with "
        'compensate_input="both" (the default) it gets {"request": ..., "response": ...}, '
        "which has no field order_id, for parameter order: name its parameters request "
        'and response, or set compensate_input="request" or "response"'
    )
    with pytest.raises(DefinitionError, match="no fields order, reservation, for parameters"):
        FunctionStep(reserve_order, compensate=FunctionStep(release_both))
    assert saga.steps == []
    FunctionStep(reserve_order, compensate=FunctionStep(release_any))  # a dict takes it


async def test_a_compensation_of_the_forward_type_runs_with_compensate_input_request(
    flow: Flow,
) -> None:
    released: list[Order] = []

    def release(order: Order) -> None:
        released.append(order)

    def decline(order: Order) -> None:
        raise StepError("declined", retryable=False)

    saga = Saga("undo")
    saga.step(compensate=release, compensate_input="request")(reserve_order)
    saga.step(requires=[reserve_order])(decline)
    wf = await flow.workflow_add(saga)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute(Order(3))
    assert err.value.compensated
    assert released == [Order(3)]


class Echo(Step):
    kind = "h4_echo"

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        return req


class OtherEcho(Echo):
    pass


def test_a_kind_name_is_registered_once_and_never_over_a_built_in_kind() -> None:
    """A second class under a kind would read every saved step of the first as the
    second; ``function`` taken would make every function step of definitions an Echo."""
    assert register_step(Echo) is Echo
    assert register_step(Echo) is Echo  # the same class again: its module reloaded
    with pytest.raises(
        DefinitionError, match=re.escape("kind 'h4_echo' is tests.unit.test_front_mistakes:Echo's")
    ):
        register_step(OtherEcho)
    with pytest.raises(
        DefinitionError, match=re.escape("kind 'function' is microsaga.steps:FunctionStep's")
    ):
        register_step(Echo, kind="function")
    with pytest.raises(DefinitionError, match="'requires' is a step option"):
        register_step(Echo, kind="requires")
    assert step_kinds()["h4_echo"] is Echo
    assert step_kinds()["function"] is FunctionStep
    assert "requires" not in step_kinds()


@pytest.mark.parametrize("entry", ["declined", StepError])
async def test_one_non_retryable_code_or_class_is_taken_as_one_entry(
    flow: Flow, entry: str | type[BaseException]
) -> None:
    """``"declined"`` was taken as its letters, and matched no error: the step was
    retried; one class was a TypeError about iterables."""
    attempts: list[int] = []

    def charge(order: Order) -> None:
        attempts.append(1)
        raise StepError("card declined", code="declined")

    retry = Retry(max_attempts=3, initial_interval=0.0, non_retryable=entry)  # type: ignore[arg-type]
    assert retry.non_retryable == (entry,)
    wf = await flow.workflow_create("charge", FunctionStep(charge, retry=retry))
    with pytest.raises(ExecutionFailedError, match="card declined"):
        await wf.execute(Order(1))
    assert attempts == [1]
    with pytest.raises(DefinitionError, match=r"retry\.non_retryable: must be exception classes"):
        Retry(non_retryable=404)  # type: ignore[arg-type]


def test_two_functions_of_one_name_are_told_to_take_an_id() -> None:
    """A ``reserve`` in two modules (or two lambdas) have one default id."""
    saga = Saga("names")
    saga.step(lambda msg: msg)
    with pytest.raises(DefinitionError) as err:
        saga.step(lambda msg: msg)
    assert str(err.value) == (
        "duplicate step id in saga 'names': "
        "test_two_functions_of_one_name_are_told_to_take_an_id.<locals>.<lambda>, the id of "
        "tests.unit.test_front_mistakes:test_two_functions_of_one_name_are_told_to_take_an_id"
        ".<locals>.<lambda> (give this step another with id=)"
    )
    saga.step(id="another")(lambda msg: msg)
    assert [step.id for step in saga.steps][1:] == ["another"]


async def test_an_optional_typed_parameter_beside_the_input_is_told_what_it_does(
    flow: Flow,
) -> None:
    """Adding ``dry_run: bool = False`` makes ``order`` the input's field ``order``,
    not the whole input: the error says so, as a user cannot guess it."""

    def reserve(order: Order, dry_run: bool = False) -> Order:
        return order

    wf = await flow.workflow_create("optional", FunctionStep(reserve, id="reserve"))
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute(Order(1))
    assert err.value.error.endswith(
        "Object missing required field `order` (several typed parameters each get the "
        "input's field of their name; one typed parameter gets the whole input)"
    )
    eid = await wf.execute({"order": {"order_id": 2}, "dry_run": True})
    assert (await flow.execution(eid)).status is Status.SUCCESS


DECLINES: list[int] = []  # an attempt of decline, below, each


def decline(msg: Message) -> None:
    DECLINES.append(1)
    raise StepError("card declined", code="declined")


@pytest.mark.parametrize("entry", ["declined", "microsaga:StepError"])
async def test_one_non_retryable_code_or_class_in_a_definition_file_is_one_entry(
    flow: Flow, tmp_path: Path, entry: str
) -> None:
    """``non_retryable: declined`` (no list) was refused in a definition file, while
    ``Retry(non_retryable="declined")`` takes it as one entry."""
    source = tmp_path / "charge.yaml"
    source.write_text(
        "id: charge\n"
        "steps:\n"
        f"  - function: {__name__}:decline\n"
        f"    retry: {{max_attempts: 3, initial_interval: 0, non_retryable: {entry}}}\n"
    )
    wf = await flow.workflow_add(load_definition(str(source)))
    DECLINES.clear()
    with pytest.raises(ExecutionFailedError, match="card declined"):
        await wf.execute({})
    assert DECLINES == [1]  # failed at once: not retried
    source.write_text(source.read_text().replace(entry, "404"))
    with pytest.raises(DefinitionError) as err:
        load_definition(str(source))
    assert str(err.value) == (
        "steps[0].retry.non_retryable: must be an error code or a list of error codes"
    )
