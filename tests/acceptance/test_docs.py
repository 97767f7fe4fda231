"""The commands of README.md and docs/*.md run as written, and so do the Python examples
that need servers or other processes (tests/unit/test_docs_index.py lists which test
runs each Python example).

Each ``sh`` block runs as a shell session in a folder laid out like a fresh clone
(tests/acceptance/docshell.py says how, and what is checked rather than run). A block
naming a broker or database URL needs that server on 127.0.0.1: it is skipped saying
so when the server is absent, and fails when ``CI`` is set. A block using NATS gets the
stream the docs say to make, made the way they say (docs/transports.md), and left on
the server as a reader's would be.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from microsaga import CallStep, Flow, Message, PublishStep, Saga, Status, StepError
from microsaga.testing import FAULT_POINTS, MemoryBroker, MockClient
from tests.acceptance import docshell
from tests.docblocks import ROOT, Block, all_blocks, find
from tests.helpers import free_port
from tests.integration.conftest import require_server

SH_BLOCKS = [b for b in all_blocks("sh") if b.illustrative is None]
PYTHON = sys.executable


@pytest.fixture
def ports() -> dict[int, int]:
    """A free port for each port the docs name, all different."""
    found: dict[int, int] = {}
    while len(set(found.values())) < len(docshell.DOC_PORTS):
        found = {port: free_port() for port in docshell.DOC_PORTS}
    return found


def run_program(code: str, cwd: Path, timeout: float = 120) -> str:
    """Run a Python example as a program of its own; its output."""
    program = cwd / "example.py"
    program.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [PYTHON, str(program)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=docshell.environment(cwd, activates=False),
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def make_the_nats_stream(tmp_path: Path) -> None:
    """What docs/transports.md says to do before publishing on NATS, its way."""
    require_server("NATS", "127.0.0.1", 4222)
    folder = tmp_path / "stream"
    folder.mkdir(exist_ok=True)
    run_program(find("docs/transports.md", "add_stream(").text, folder)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", SH_BLOCKS, ids=[b.name for b in SH_BLOCKS])
def test_the_commands_run_as_written(block: Block, tmp_path: Path, ports: dict[int, int]) -> None:
    plan = docshell.plan(block, ports)
    for tool in sorted(plan.tools):
        if shutil.which(tool) is None:
            pytest.skip(f"{block.name} runs {tool}, which is not installed here")
    for name, port in sorted(plan.servers):
        require_server(name, "127.0.0.1", port)
    if ("NATS", 4222) in plan.servers:
        make_the_nats_stream(tmp_path)
    work = docshell.workspace(tmp_path / "clone", ports)

    print("\n".join(plan.checked))  # what is checked rather than run (pytest -rP shows it)
    status, output = docshell.run(block, plan.script, work)

    assert status == 0, f"{block.name} failed (exit status {status}):\n{output[-6000:]}"


@pytest.mark.timeout(120)
def test_the_stream_example_makes_a_stream_that_takes_the_readme_subject(
    tmp_path: Path,
) -> None:
    make_the_nats_stream(tmp_path)
    check = """
import asyncio
import nats

async def main():
    nc = await nats.connect("nats://127.0.0.1:4222")
    print(await nc.jetstream().find_stream_name_by_subject("shipping.requested"))
    await nc.close()

asyncio.run(main())
"""
    assert run_program(check, tmp_path) == "SHIPPING\n"


@pytest.mark.timeout(120)
def test_the_subscribe_example_gets_its_reply(tmp_path: Path) -> None:
    make_the_nats_stream(tmp_path)
    block = find("docs/transports.md", "shipping.subscribe(")
    assert run_program(block.text, tmp_path) == "{'tracking': 'T-42'}\n"


@contextmanager
def shop_services(work: Path, env: dict[str, str]) -> Iterator[None]:
    """The example services of examples/shop (`python -m shop`), listening, in ``work``;
    stopped with Ctrl-C afterwards, which they take as a clean exit."""
    with subprocess.Popen(
        [PYTHON, "-m", "shop"],
        cwd=work / "examples",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as services:
        try:
            assert services.stdout is not None
            ready = services.stdout.readline()  # after both listen
            assert "payments on" in ready, ready
            yield
        finally:
            services.send_signal(signal.SIGINT)
            assert services.wait(30) == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_steps_example_runs_against_the_example_services_and_nats(
    tmp_path: Path, ports: dict[int, int]
) -> None:
    """The README's example of Step objects, for real: the services of examples/shop
    over HTTP, the publish on NATS (tests/unit/test_core_readme.py runs it in-process)."""
    make_the_nats_stream(tmp_path)
    block = find("README.md", "CallStep(")
    work = docshell.workspace(tmp_path / "clone", ports)
    with shop_services(work, docshell.environment(work, activates=False)):
        output = run_program(docshell.map_ports(block.text, ports), work)
    assert output == "{'sent_to': 'ada@example.com'}\n"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_quick_starts_declined_order_compensates_what_the_readme_says(
    tmp_path: Path, ports: dict[int, int]
) -> None:
    """The README's quick start says which steps a declined order compensates."""
    block = find("README.md", "microsaga run order.yaml", "sh")
    declined = next(c for c in docshell.commands(block) if "5000" in c.text)
    assert "so Reserve is compensated" in declined.comment
    work = docshell.workspace(tmp_path / "clone", ports)
    env = {**docshell.environment(work, activates=False), "MICROSAGA_BROKER": "memory://"}
    with shop_services(work, env):
        run = subprocess.run(
            declined.text, shell=True, cwd=work / "examples", env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert run.returncode == 1, run.stderr
    shown = subprocess.run(
        ["microsaga", "show", run.stdout.strip()], cwd=work / "examples", env=env,
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    statuses = dict(line.split()[:2] for line in shown.splitlines()[7:] if line.strip())
    assert statuses["inventory.Inventory.Reserve"] == "COMPENSATED"
    assert statuses["payments.Payments.Charge"] == "FAILURE"  # declined: nothing to refund


async def test_the_python_pages_failure_policy_when_and_input_work_as_it_says() -> None:
    """docs/python.md: `on_failure="suspend"`, `when=` and `input=` of `@saga.step`."""
    page = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    assert 'Saga(..., on_failure="suspend")` leaves the execution SUSPEND' in page
    assert "a falsy `when` skips the step" in page
    saga = Saga("policies", on_failure="suspend")

    @saga.step(input="request.card", id="charge")
    async def charge(card: str) -> str:
        if card == "declined":
            raise StepError("card declined", retryable=False)
        return card

    @saga.step(when="request.gift", id="wrap")
    async def wrap(order: dict[str, Any]) -> str:
        return "wrapped"

    async with Flow("memory://") as flow:
        wf = await flow.workflow_add(saga)
        paid = await flow.execution(await wf.execute({"card": "visa", "gift": False}))
        assert paid.status is Status.SUCCESS
        assert paid.steps["charge"].request.json() == "visa"
        assert paid.steps["wrap"].status is Status.SKIPPED
        declined = await flow.execution(await wf.execute({"card": "declined"}))
        assert declined.status is Status.SUSPEND
        assert declined.steps["charge"].status is Status.FAILURE


async def test_the_readmes_testing_section_names_what_to_pass_to_the_flow() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'Flow("memory://", client=MockClient(handler), broker=MemoryBroker())' in readme
    assert '`handler(service, endpoint, message)`\n(`"inventory"`, `"Inventory.Reserve"`' in readme

    def handler(service: str, endpoint: str, message: Message) -> dict[str, Any]:
        return {"reservation": f"{service} {endpoint} {message.json()['order_id']}"}

    client, broker = MockClient(handler), MemoryBroker()
    async with Flow("memory://", client=client, broker=broker) as flow:
        reserve = CallStep("inventory", "Inventory", "Reserve")
        ship = PublishStep("shipping.requested", requires=[reserve])
        wf = await flow.workflow_create("order", reserve, ship)
        await wf.execute({"order_id": 42})
    assert [(service, endpoint) for service, endpoint, _ in client.calls] == [
        ("inventory", "Inventory.Reserve")
    ]
    [(topic, message)] = broker.published
    assert (topic, message.json()) == (
        "shipping.requested",
        {"reservation": "inventory Inventory.Reserve 42"},
    )
    assert "step_recorded" in FAULT_POINTS


@pytest.mark.timeout(60)
def test_the_example_services_started_twice_say_so_in_one_line(
    tmp_path: Path, ports: dict[int, int]
) -> None:
    work = docshell.workspace(tmp_path / "clone", ports)
    with socket.socket() as taken:  # the quick start's services, left running
        taken.bind(("127.0.0.1", ports[8001]))
        taken.listen()
        again = subprocess.run(
            [PYTHON, "-m", "shop"], cwd=work / "examples", capture_output=True, text=True,
            env=docshell.environment(work, activates=False), timeout=30, check=False,
        )  # fmt: skip
    assert again.returncode == 1
    assert again.stderr == (
        f"error[configuration]: participant: cannot serve on 127.0.0.1:{ports[8001]}: "
        "Address already in use (is `python -m shop` running already?)\n"
    )
