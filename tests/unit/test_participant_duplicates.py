"""Requests with the same Idempotency-Key at once in one participant: the duplicates
wait for the first, and are marked replayed only when they get a kept answer."""

from __future__ import annotations

import asyncio

from microsaga import Message
from microsaga.participant import Participant


async def test_a_duplicate_that_waited_on_a_failed_request_is_not_called_a_replay() -> None:
    shop = Participant(tracing=False)
    started = asyncio.Event()
    release = asyncio.Event()

    @shop.handler("Shop.Flaky")
    async def flaky(msg: Message) -> None:
        started.set()
        await release.wait()
        raise RuntimeError("database down")  # a 500: not kept, the next attempt runs

    key = Message({}, {"Idempotency-Key": "e:s"})
    first = asyncio.create_task(shop.handle("Shop.Flaky", key))
    await started.wait()
    second = asyncio.create_task(shop.handle("Shop.Flaky", key))
    await asyncio.sleep(0)
    release.set()
    (one, one_replayed), (two, two_replayed) = await first, await second
    assert (one.status, two.status) == (500, 500)
    assert (one_replayed, two_replayed) == (False, False)
