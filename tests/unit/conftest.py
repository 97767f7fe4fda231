from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microsaga import Flow


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'flow.db'}"


@pytest.fixture
async def flow(store_url: str) -> AsyncIterator[Flow]:
    async with Flow(store_url, poll_interval=0.05, lease_ttl=5.0) as f:
        yield f
