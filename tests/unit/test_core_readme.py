"""The README's examples run as written (the services and broker in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import microsaga
from microsaga import Message
from microsaga.testing import MemoryBroker, MockClient
from tests.docblocks import ROOT, find

README = ROOT / "README.md"


def services(service: str, endpoint: str, msg: Message) -> dict[str, Any]:
    """As the README says: each service answers with the order plus what it did."""
    order = msg.json()
    return {**order, endpoint: f"{endpoint} of order {order['order_id']}"}


def test_the_first_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, sync_example = (
        find("README.md", 'Saga("order")').text,
        find("README.md", "SyncFlow(").text,
    )
    # short enough to read at a glance
    assert len([line for line in first.splitlines() if line.strip()]) <= 40
    monkeypatch.chdir(tmp_path)  # the README's sqlite:///orders.db lands here
    namespace = {"__name__": "readme"}
    exec(compile(first, str(README), "exec", dont_inherit=True), namespace)
    assert capsys.readouterr().out == (
        "{'sent_to': 'ada@example.com'}\nreleased R-43\ncharge step charge failed: card declined\n"
    )
    exec(compile(sync_example, str(README), "exec", dont_inherit=True), namespace)
    assert capsys.readouterr().out == "StatusSuccess\n"
    assert (tmp_path / "orders.db").exists()


def test_the_steps_example_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = find("README.md", "CallStep(").text
    client, memory_broker = MockClient(services), MemoryBroker()
    real_flow = microsaga.Flow

    def in_process_flow(store: str, *, services: Any, broker: Any, **options: Any) -> Any:
        assert set(services) == {"inventory", "payments"}  # what the README configures
        assert broker.startswith("nats://")
        return real_flow(store, client=client, broker=memory_broker, **options)

    monkeypatch.setattr(microsaga, "Flow", in_process_flow)
    monkeypatch.chdir(tmp_path)  # the README's sqlite:///orders.db lands here

    exec(compile(code, str(README), "exec", dont_inherit=True), {"__name__": "readme"})

    assert capsys.readouterr().out == "{'sent_to': 'ada@example.com'}\n"
    assert [(s, e) for s, e, _ in client.calls] == [
        ("inventory", "Inventory.Reserve"),
        ("payments", "Payments.Charge"),
    ]
    assert [topic for topic, _ in memory_broker.published] == ["shipping.requested"]
    assert (tmp_path / "orders.db").exists()
