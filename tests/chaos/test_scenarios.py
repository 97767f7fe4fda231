"""The short version of every chaos scenario (``make chaos`` runs them with a summary;
``python -m tests.chaos --long`` the long ones, see docs/reliability.md).

The seed comes from ``CHAOS_SEED`` or is drawn, and is printed either way. A scenario
whose server or privilege is missing is skipped with the reason, and fails when ``CI``
is set.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.chaos.scenarios import SCENARIOS
from tests.chaos.servers import Unavailable

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SEED = os.environ.get("CHAOS_SEED") or str(random.SystemRandom().randrange(10**6))


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario_loses_and_duplicates_nothing(name: str) -> None:
    print(f"chaos seed {SEED} (CHAOS_SEED={SEED} replays its choices)")
    try:
        report = await SCENARIOS[name].run(SEED)
    except Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {name} cannot run: {exc}")
        pytest.skip(f"{name}: {exc}")
    print(report.line())
    counters = report.counters
    assert counters.faults >= report.params.min_faults, "the faults were injected"
    assert counters.executions >= report.params.executions
    assert counters.ok, "\n".join([report.line(), *counters.problems[:30], str(report.folder)])
