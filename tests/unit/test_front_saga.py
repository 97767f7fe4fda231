"""Sagas written with ``@saga.step``: declaring, binding, running, saving, loading."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from microsaga import (
    CallStep,
    CycleError,
    DefinitionError,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    Retry,
    Saga,
    Status,
    StepNotExistsError,
)
from microsaga.testing import MockClient
from tests.unit import front_saga as shop


@pytest.fixture(autouse=True)
def calls() -> Iterator[list[str]]:
    shop.CALLS.clear()
    yield shop.CALLS
    shop.CALLS.clear()


def test_decorated_functions_are_the_saga_steps_in_order() -> None:
    assert [s.id for s in shop.saga.steps] == ["reserve", "charge", "ship"]
    assert all(isinstance(s, FunctionStep) for s in shop.saga.steps)
    reserve, charge, ship = shop.saga.steps
    assert charge.requires == ["reserve"]
    assert ship.requires == ["reserve", "charge"]
    assert reserve.options.retry == Retry(max_attempts=3, initial_interval=0.01)
    # a decorated function used as a compensation is that only
    assert charge.options.compensate is not None
    assert charge.options.compensate.id == "refund"
    assert reserve.options.compensate is not None
    assert reserve.options.compensate.id == "release"


async def test_a_decorated_function_is_returned_unchanged() -> None:
    assert inspect.iscoroutinefunction(shop.reserve)
    assert shop.reserve.__name__ == "reserve"
    found = await shop.reserve(shop.Order(order_id=5, customer="ada"))
    assert found == shop.Reservation(5, "R-5")
    assert shop.saga.step_of(shop.reserve).id == "reserve"


async def test_workflow_add_binds_a_saga_and_runs_it(flow: Flow, calls: list[str]) -> None:
    wf = await flow.workflow_add(shop.saga)
    assert wf is shop.saga.workflow
    assert wf.id == "front-order"
    assert [[s.id for s in level] for level in wf.steps()] == [["reserve"], ["charge"], ["ship"]]
    eid = await wf.execute(shop.Order(order_id=7, customer="ada"))
    info = await flow.execution(eid)
    assert info.status is Status.SUCCESS
    assert info.response is not None
    assert info.response.json() == {"tracking": "T-7", "payment": "P-7"}
    assert info.steps["reserve"].response is not None
    assert info.steps["reserve"].response.json() == {"order_id": 7, "reservation": "R-7"}
    assert calls == ["reserve 7", "charge 7 attempt 1", "ship R-7 P-7 as ship"]


async def test_a_failing_saga_runs_the_compensations_in_reverse(
    flow: Flow, calls: list[str]
) -> None:
    wf = await flow.workflow_add(shop.saga)
    with pytest.raises(ExecutionFailedError) as err:
        await wf.execute({"order_id": -1, "customer": "bob"})
    assert err.value.step_id == "ship"
    assert err.value.compensated
    assert calls[:2] == ["reserve -1", "charge -1 attempt 1"]
    assert calls[2].startswith("refund P--1 in microsaga-step")  # a sync function, in a thread
    assert calls[3:] == ["release -1 R--1"]
    info = await flow.execution(err.value.execution_id or "")
    assert info.steps["reserve"].status is Status.COMPENSATED
    assert info.steps["charge"].status is Status.COMPENSATED


async def test_a_saga_saves_and_loads_like_any_workflow(flow: Flow, calls: list[str]) -> None:
    definition = shop.saga.to_dict()
    assert definition["steps"][0] == {
        "function": "tests.unit.front_saga:reserve",
        "retry": {"max_attempts": 3, "initial_interval": 0.01},
        "compensate": {"function": "tests.unit.front_saga:release"},
    }
    version = await flow.workflow_save(await flow.workflow_add(shop.saga))
    loaded = await flow.workflow_load("front-order")
    assert loaded.version == version
    assert loaded is not shop.saga.workflow
    assert loaded.to_dict() == definition
    eid = await loaded.execute({"order_id": 3, "customer": "cy"})  # typed again once loaded
    assert (await flow.execution(eid)).status is Status.SUCCESS
    assert calls[-1] == "ship R-3 P-3 as ship"


def test_requires_takes_functions_steps_and_ids() -> None:
    saga = Saga("mixed")
    payments = CallStep("payments", "Payments", "Charge")
    saga.add(payments)

    @saga.step
    def first(msg: Message) -> None:
        return None

    @saga.step(requires=[first, payments, "payments.Payments.Charge"], id="second")
    def second(msg: Message) -> None:
        return None

    @saga.step(requires=second)
    def third(msg: Message) -> None:
        return None

    assert [s.id for s in saga.steps] == [
        "payments.Payments.Charge",
        "test_requires_takes_functions_steps_and_ids.<locals>.first",
        "second",
        "test_requires_takes_functions_steps_and_ids.<locals>.third",
    ]
    assert saga.step_of(second).requires == [
        "test_requires_takes_functions_steps_and_ids.<locals>.first",
        "payments.Payments.Charge",
    ]
    assert saga.step_of(third).requires == ["second"]


def test_a_step_made_outside_the_saga_is_told_to_name_a_function_by_its_id() -> None:
    saga = Saga("order")

    @saga.step
    def reserve(msg: Message) -> None:
        return None

    # only the saga knows a decorated function's step: a Step made apart names its id
    name = "test_a_step_made_outside_the_saga_is_told_to_name_a_function_by_its_id.<locals>"
    with pytest.raises(DefinitionError) as refused:
        CallStep("payments", "Payments", "Charge", requires=[reserve])
    assert str(refused.value).startswith(
        f"requires: must name steps (Steps or ids), not the function {name}.reserve: "
        f"name its step by its id (requires=['{name}.reserve']"
    )
    saga.add(CallStep("payments", "Payments", "Charge", requires=[saga.step_of(reserve)]))


async def test_a_saga_mixes_calls_to_services_with_functions() -> None:
    client = MockClient(lambda service, endpoint, msg: {"paid": msg.json()["total"]})
    saga = Saga("with-services")
    charge = CallStep("payments", "Payments", "Charge")
    saga.add(charge)

    @saga.step(requires=charge)
    async def receipt(payment: dict[str, float]) -> str:
        return f"paid {payment['paid']}"

    async with Flow("memory://", client=client) as with_client:
        wf = await with_client.workflow_add(saga)
        eid = await wf.execute({"total": 12.5})
        info = await with_client.execution(eid)
    assert info.response is not None
    assert info.response.json() == "paid 12.5"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"requires": [print]}, "is not a step of saga 'bad'"),
        ({"requires": [42]}, "requires: must name steps"),
        ({"compensate": 42}, "compensate: must be a function or a Step, not 42"),
        ({"fallback": "x"}, "fallback: must be a function or a Step"),
        ({"retry": 3}, "retry: must be a Retry, not 3"),
        ({"timeout": -1}, "timeout: must be at least 0.0"),
        ({"id": ""}, "id: must be a non-empty string"),
        ({"compensate_input": "all"}, "compensate_input: must be one of request, response, both"),
        ({"when": 5}, "when: must be a JMESPath expression (a non-empty string), not 5"),
        ({"input": ""}, "input: must be a JMESPath expression"),
    ],
)
def test_bad_options_are_definition_errors_naming_them(
    options: dict[str, Any], expected: str
) -> None:
    saga = Saga("bad")
    with pytest.raises(DefinitionError, match=expected.replace("(", r"\(").replace(")", r"\)")):

        @saga.step(**options)
        def fn(msg: Message) -> None:
            return None


def test_bad_sagas_are_definition_errors() -> None:
    with pytest.raises(DefinitionError, match="on_failure: must be one of compensate, suspend"):
        Saga("x", on_failure="retry")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="saga id must be a non-empty string"):
        Saga("")
    saga = Saga("dup")

    def fn(msg: Message) -> None:
        return None

    saga.step(fn)
    with pytest.raises(DefinitionError, match="is a step of saga 'dup' already"):
        saga.step(fn)
    with pytest.raises(DefinitionError, match="duplicate step id in saga 'dup'"):
        saga.step(id=saga.steps[0].id)(lambda msg: None)
    with pytest.raises(DefinitionError, match="decorates a function, not 3"):
        saga.step(3)  # type: ignore[call-overload]


def test_an_unknown_requirement_or_a_cycle_is_found_when_the_workflow_is_made() -> None:
    saga = Saga("graph")

    @saga.step(requires="nowhere")
    def lost(msg: Message) -> None:
        return None

    with pytest.raises(StepNotExistsError, match="step not exists: nowhere"):
        _ = saga.workflow

    looped = Saga("loop")

    @looped.step(id="a", requires="b")
    def a(msg: Message) -> None:
        return None

    @looped.step(id="b", requires=a)
    def b(msg: Message) -> None:
        return None

    with pytest.raises(CycleError, match="cycle between steps"):
        _ = looped.workflow


def test_a_required_step_cannot_become_a_compensation() -> None:
    saga = Saga("comp")

    @saga.step
    def first(msg: Message) -> None:
        return None

    @saga.step(requires=first)
    def second(msg: Message) -> None:
        return None

    with pytest.raises(DefinitionError, match=r"cannot be a compensate: step .*second requires it"):

        @saga.step(compensate=first)
        def third(msg: Message) -> None:
            return None


def test_a_compensation_step_gets_the_options_it_was_declared_with() -> None:
    saga = Saga("comp")

    @saga.step(retry=Retry(max_attempts=7), timeout=3.0, id="undo")
    async def undo(msg: Message) -> None:
        return None

    @saga.step(compensate=undo, compensate_input="response")
    async def do(msg: Message) -> None:
        return None

    assert [s.id for s in saga.steps] == [saga.step_of(do).id]
    comp = saga.step_of(do).options.compensate
    assert comp is not None
    assert (comp.id, comp.options.retry, comp.options.timeout) == ("undo", Retry(7), 3.0)
    assert saga.step_of(do).options.compensate_input == "response"


def test_a_compensation_decorated_after_it_is_named_is_refused_not_run_forward() -> None:
    """Decorated after being named in compensate=, it became a forward step as well:
    the undo ran on every execution."""
    saga = Saga("comp")

    def release(msg: Message) -> None:
        return None

    @saga.step(compensate=release)
    def reserve(msg: Message) -> None:
        return None

    with pytest.raises(DefinitionError, match=r"release is the compensation of step .*reserve"):
        saga.step(retry=Retry(max_attempts=3))(release)
    assert [s.id for s in saga.steps] == [saga.step_of(reserve).id]

    def plan_b(msg: Message) -> None:
        return None

    @saga.step(fallback=plan_b)
    def plan_a(msg: Message) -> None:
        return None

    with pytest.raises(DefinitionError, match="plan_b is the fallback of step"):
        saga.step(plan_b)


def test_requiring_a_compensation_says_what_it_is() -> None:
    saga = Saga("comp")

    @saga.step(retry=Retry(max_attempts=3))
    def undo(msg: Message) -> None:
        return None

    @saga.step(compensate=undo)
    def do(msg: Message) -> None:
        return None

    # not "decorate it with @saga.step first": it was
    with pytest.raises(
        DefinitionError, match=r"undo is the compensation of step .*do of saga 'comp', not"
    ):

        @saga.step(requires=[undo])
        def after(msg: Message) -> None:
            return None


def test_a_workflow_is_made_once_until_a_step_is_added() -> None:
    saga = Saga("cache")

    @saga.step
    def one(msg: Message) -> None:
        return None

    first = saga.workflow
    assert saga.workflow is first

    @saga.step(requires=one)
    def two(msg: Message) -> None:
        return None

    assert saga.workflow is not first
    assert len(saga.workflow.step_list) == 2


def test_the_failure_policy_goes_to_the_workflow() -> None:
    assert Saga("x").on_failure == "compensate"
    saga = Saga("x", on_failure="suspend")

    @saga.step
    def one(msg: Message) -> None:
        return None

    assert saga.workflow.on_failure == "suspend"


def test_expressions_go_into_the_step_options() -> None:
    saga = Saga("x")

    @saga.step(when="request.physical", input="{order: request}")
    def ship(msg: Message) -> None:
        return None

    options = saga.step_of(ship).options
    assert (options.when, options.input) == ("request.physical", "{order: request}")


async def test_a_false_when_skips_the_step(flow: Flow) -> None:
    saga = Saga("when")

    @saga.step(when="request.physical")
    async def ship(order: dict[str, bool]) -> str:
        return "shipped"

    wf = await flow.workflow_add(saga)
    eid = await wf.execute({"physical": False})
    assert (await flow.execution(eid)).steps[saga.step_of(ship).id].status.name == "SKIPPED"
