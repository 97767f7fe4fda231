"""A user's file written with the decorators passes ``mypy --strict``, and the decorated
functions keep their signatures (a wrong direct call is a type error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.docblocks import find
from tests.typing import order_saga

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "typing" / "order_saga.py"


def mypy(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=ROOT,  # the project's configuration, cache and import roots
        timeout=170,
    )


@pytest.mark.timeout(180)
def test_mypy_strict_passes_on_a_saga_written_with_the_decorators() -> None:
    done = mypy(EXAMPLE)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(180)
def test_a_wrong_direct_call_of_a_decorated_function_is_a_type_error(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_call.py"
    wrong.write_text(
        "from tests.typing.order_saga import Order, reserve\n"
        "async def wrong() -> None:\n"
        "    await reserve('not an order')\n"
        "    await reserve(Order(1, 2.0), 'extra')\n"
    )
    done = mypy(wrong)
    assert done.returncode == 1
    assert 'Argument 1 to "reserve" has incompatible type "str"; expected "Order"' in done.stdout
    assert 'Too many arguments for "reserve"' in done.stdout


async def test_the_example_runs() -> None:
    assert await order_saga.main() == "R-1 P-1-1"
    assert order_saga.main_sync() == "R-2 P-2-1"


@pytest.mark.timeout(180)
def test_the_typed_example_of_the_python_page_passes_mypy_strict(tmp_path: Path) -> None:
    """What a user copies from docs/python.md into a project checked with
    ``mypy --strict`` type-checks there as it is written."""
    example = tmp_path / "fulfil.py"
    example.write_text(find("docs/python.md", 'saga = Saga("fulfil")').text)
    done = mypy(example)
    assert done.returncode == 0, done.stdout + done.stderr
