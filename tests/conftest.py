"""Shared test set-up: every test starts with a clean environment and no armed faults."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from microsaga import testing


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's MICROSAGA_* settings."""
    for name in list(os.environ):
        if name.startswith("MICROSAGA_"):
            monkeypatch.delenv(name)
    yield
    testing.disarm_faults()
