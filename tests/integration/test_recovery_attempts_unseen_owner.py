"""A takeover from a live worker of the same machine counts no recovery attempt, also
when the claimer last looked at the lease owners while that worker held nothing.

Found in the long postgres-restart chaos run (``.venv/bin/python -m tests.chaos --seed
1205 --long postgres-restart``): no worker died, yet 207 running steps and
compensations were given up with ``RecoveryLimitError``. Workers learned which owners
were alive once per heartbeat (:meth:`Store.lease_owners`); an owner that held no lease
at that moment (all taken from it in a stall), then took executions again, counted as
dead when they were taken from it. A claim now looks at the owners first."""

from __future__ import annotations

import time
from collections.abc import Collection

import pytest

from microsaga import Flow, Status
from microsaga.stores.base import Claim
from tests.helpers import eventually
from tests.integration import test_recovery_attempts as base
from tests.integration.test_recovery_attempts import HOUR, QUIET, Clock, Steps

store_url = base.store_url  # fixtures
steps = base.steps


async def test_a_takeover_from_a_live_worker_unseen_at_the_last_heartbeat_counts_nothing(
    store_url: str, steps: Steps, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(time.time())
    polling = {**QUIET, "poll_interval": 0.02}
    # the heir looks at the lease owners when it starts: nobody holds a lease yet
    async with Flow(store_url, max_recovery_attempts=1, clock=clock, **polling) as heir:
        claims: list[Claim] = []
        real = heir.store.claim

        async def claim(
            owner: str, now: float, ttl: float, limit: int, *, alive: Collection[str] = ()
        ) -> list[Claim]:
            taken = await real(owner, now, ttl, limit, alive=alive)
            claims.extend(taken)
            return taken

        monkeypatch.setattr(heir.store, "claim", claim)
        # a worker of this process (alive) takes an execution after that look
        async with Flow(store_url, claim=False, **QUIET) as flow:
            eid = await steps.start(flow)
            clock.now += HOUR  # its lease ran out: a stall, not a death
            await eventually(lambda: steps.calls["crash"] == 2)  # invoked again
            steps.gate.set()
            done = await heir.wait(eid, timeout=10)
    assert [(c.execution_id, c.recovery_attempts) for c in claims] == [(eid, 0)]
    assert done.status is Status.SUCCESS
