"""The README's saga runs as written, with its services and broker in-process."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import microsaga
from microsaga import Message
from microsaga.testing import MemoryBroker, MockClient

README = Path(__file__).resolve().parents[2] / "README.md"


def first_python_block() -> str:
    found = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert found, "README.md has no python block"
    return found.group(1)


def services(service: str, endpoint: str, msg: Message) -> dict[str, Any]:
    """As the README says: each service answers with the order plus what it did."""
    order = msg.json()
    return {**order, endpoint: f"{endpoint} of order {order['order_id']}"}


def test_the_readme_saga_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = first_python_block()
    assert len([line for line in code.splitlines() if line.strip()]) <= 20
    client, memory_broker = MockClient(services), MemoryBroker()
    real_flow = microsaga.Flow

    def in_process_flow(store: str, *, services: Any, broker: Any, **options: Any) -> Any:
        assert set(services) == {"inventory", "payments"}  # what the README configures
        assert broker.startswith("nats://")
        return real_flow(store, client=client, broker=memory_broker, **options)

    monkeypatch.setattr(microsaga, "Flow", in_process_flow)
    monkeypatch.chdir(tmp_path)  # the README's sqlite:///orders.db lands here

    exec(compile(code, str(README), "exec"), {"__name__": "readme"})

    assert capsys.readouterr().out == "{'sent_to': 'ada@example.com'}\n"
    assert [(s, e) for s, e, _ in client.calls] == [
        ("inventory", "Inventory.Reserve"),
        ("payments", "Payments.Charge"),
    ]
    assert [topic for topic, _ in memory_broker.published] == ["shipping.requested"]
    assert (tmp_path / "orders.db").exists()
