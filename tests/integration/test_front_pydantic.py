"""Pydantic models as step parameters and results, when pydantic is installed.

pydantic is no dependency of microsaga: these tests install it (when the package
index has it) into a folder of the virtualenv of their own and run in a subprocess
that has it on its path, so the rest of the suite runs without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(sys.prefix) / "pydantic-for-tests"


@pytest.fixture(scope="module")
def pydantic_path() -> str:
    """A PYTHONPATH entry under which pydantic imports ("" when the venv has it)."""
    probe = subprocess.run([sys.executable, "-c", "import pydantic"], capture_output=True)
    if probe.returncode == 0:
        return ""
    if not (TARGET / "pydantic").is_dir():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(TARGET),
             "pydantic>=2"],
            capture_output=True,
            text=True,
            timeout=170,
        )  # fmt: skip
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            pytest.skip(f"pydantic could not be installed: {lines[-1]}")
    return str(TARGET)


def run_script(source: str, pydantic_path: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pydantic_path) if p)
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


PYDANTIC_SAGA = """
import asyncio
import pydantic
from microsaga import ExecutionFailedError, Flow, Retry, Saga

class Order(pydantic.BaseModel):
    order_id: int
    total: float = pydantic.Field(gt=0)

class Payment(pydantic.BaseModel):
    payment: str
    amount: float

saga = Saga("pydantic-order")

@saga.step(retry=Retry(max_attempts=4, initial_interval=0.01))
async def charge(order: Order) -> Payment:
    return Payment(payment=f"P-{order.order_id}", amount=order.total)

@saga.step(requires=[charge])
def receipt(payment: Payment) -> list[Payment]:
    return [payment]

@saga.step(requires=[charge, receipt])
async def both(charge: Payment, receipt: list[Payment]) -> str:
    return f"{charge.payment} {len(receipt)}"

async def main():
    async with Flow("memory://") as flow:
        wf = await flow.workflow_add(saga)
        eid = await wf.execute({"order_id": 7, "total": 12.5})
        info = await flow.execution(eid)
        print(info.steps["charge"].response.json())
        print(info.steps["receipt"].response.json())
        print(info.response.json())
        try:
            await wf.execute({"order_id": 8, "total": -1})
        except ExecutionFailedError as err:
            print(err.step_id, err.error)
            print("attempts", (await flow.execution(err.execution_id)).steps["charge"].attempts)

asyncio.run(main())
"""


def test_pydantic_models_are_validated_and_encoded(pydantic_path: str) -> None:
    lines = run_script(PYDANTIC_SAGA, pydantic_path).splitlines()
    assert lines[0] == "{'payment': 'P-7', 'amount': 12.5}"
    assert lines[1] == "[{'payment': 'P-7', 'amount': 12.5}]"
    assert lines[2] == "P-7 1"
    assert lines[3].startswith("charge step charge failed: the input does not fit parameter order")
    assert "Input should be greater than 0 - at `$.total`" in lines[3]
    assert lines[4] == "attempts 1"  # a validation error is not retried


BY_NAME = """
import asyncio
import pydantic
from microsaga import ExecutionFailedError, Flow, FunctionStep, Message

class Payment(pydantic.BaseModel):
    amount: float

async def reserve(msg: Message) -> dict:
    return {"sku": "s"}

async def charge(msg: Message) -> dict:
    return {"amount": "lots"}

async def ship(reserve: dict, charge: Payment) -> None:
    return None

async def main():
    async with Flow("memory://") as flow:
        r, c = FunctionStep(reserve, id="reserve"), FunctionStep(charge, id="charge")
        wf = await flow.workflow_create("x", r, c, FunctionStep(ship, requires=[r, c]))
        try:
            await wf.execute()
        except ExecutionFailedError as err:
            print(err.error)

asyncio.run(main())
"""


def test_a_pydantic_parameter_by_name_names_its_field(pydantic_path: str) -> None:
    out = run_script(BY_NAME, pydantic_path)
    assert "parameter charge" in out
    assert "- at `$.charge.amount`" in out


NOT_IMPORTED = """
import asyncio, sys
from tests.typing import order_saga
asyncio.run(order_saga.main())
print("pydantic" in sys.modules)
"""


def test_typed_steps_never_import_pydantic(pydantic_path: str) -> None:
    assert run_script(NOT_IMPORTED, pydantic_path).strip() == "False"
