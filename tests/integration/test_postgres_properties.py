"""The property tests of control requests (tests/unit/test_run_control_properties.py),
of takeover (test_takeover_properties.py) and of maps and sub-workflows
(tests/unit/test_run_map_properties.py) on PostgreSQL, whose store has its own write
paths: a transition written on the condition that the execution is as expected, or
decided on a fresh read; abort fencing; park, wake, signal and claim. Fewer examples
than on SQLite: each costs a few round trips more."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

if not os.environ.get("CI"):  # under CI a missing driver fails the imports below
    pytest.importorskip("asyncpg", reason="needs asyncpg (pip install 'microsaga[postgres]')")

from microsaga import Flow
from tests.helpers import FLOW_EXAMPLES
from tests.integration.pg import fresh_database, fresh_schema
from tests.integration.test_takeover_properties import (
    SETTINGS,
    dying_before_a_failure,
    dying_during_the_rollback,
    dying_mid_run,
)
from tests.unit import test_run_map_properties as maps
from tests.unit.test_run_control_properties import (
    Scenario,
    monotonic_flow,
    run_scenario,
    scenarios,
)
from tests.unit.test_run_scheduling_properties import Case, cases

pytestmark = pytest.mark.postgres

TAKEOVER = settings(SETTINGS, max_examples=40)


@pytest.fixture
async def pg_flow() -> AsyncIterator[Flow]:
    """A flow on a new database, shared by the examples of a test."""
    async with fresh_database() as url, monotonic_flow(url) as flow:
        yield flow


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A new database, shared by the examples of a test: each has a schema of its own."""
    async with fresh_database() as url:
        yield url


@settings(FLOW_EXAMPLES, max_examples=300)
@given(scenarios())
async def test_requests_stop_resume_and_roll_back_as_documented(
    pg_flow: Flow, sc: Scenario
) -> None:
    await run_scenario(pg_flow, sc)


@TAKEOVER
@given(cases(), st.data())
async def test_a_worker_dying_mid_run_is_taken_over_as_if_nothing_happened(
    pg_url: str, case: Case, data: st.DataObject
) -> None:
    async with fresh_schema(pg_url) as url:
        await dying_mid_run(url, case, data)


@TAKEOVER
@given(cases(failures=True), st.data())
async def test_a_worker_dying_before_a_failure_is_taken_over_and_rolls_back(
    pg_url: str, case: Case, data: st.DataObject
) -> None:
    async with fresh_schema(pg_url) as url:
        await dying_before_a_failure(url, case, data)


@TAKEOVER
@given(cases(failures=True), st.data())
async def test_a_worker_dying_during_the_rollback_is_taken_over(
    pg_url: str, case: Case, data: st.DataObject
) -> None:
    async with fresh_schema(pg_url) as url:
        await dying_during_the_rollback(url, case, data)


@pytest.fixture
async def map_flows(pg_url: str, tmp_path: Path) -> AsyncIterator[dict[int, Flow]]:
    async with AsyncExitStack() as stack:
        yield await maps.kid_flows(stack, pg_url, tmp_path)


@settings(maps.settings_, max_examples=30)
@given(maps.cases())
async def test_maps_children_and_timeouts_at_once_succeed_by_the_rules(
    map_flows: dict[int, Flow], case: maps.Case
) -> None:
    flow = map_flows[case.slots]
    await maps.check_all(flow, case, await maps.run(flow, case))


@settings(maps.settings_, max_examples=40)
@given(maps.cases(failures=True))
async def test_maps_children_and_timeouts_at_once_fail_and_roll_back_by_the_rules(
    map_flows: dict[int, Flow], case: maps.Case
) -> None:
    flow = map_flows[case.slots]
    await maps.check_all(flow, case, await maps.run(flow, case))


@settings(maps.settings_, max_examples=15)
@given(maps.cases(failures=True, suspend=True), st.booleans())
async def test_under_the_suspend_policy_a_failure_waits_until_fixed_and_resumed(
    map_flows: dict[int, Flow], case: maps.Case, redrive: bool
) -> None:
    await maps.fails_then_resumed(map_flows[case.slots], case, redrive)
