"""A participant written in another language may put a header value in Redis as a
string (``{"Micro-Flow-Correlation-Id": "c1"}``) rather than a list of strings: its
reply is the step's response, not a header dropped with a warning and the step timed
out with no word of why."""

from __future__ import annotations

import asyncio
import json
import uuid

import redis.asyncio as aioredis

from microsaga import Flow, PublishStep
from microsaga.protocol import CORRELATION_HEADER, REPLY_TO_HEADER


async def _answer_as_a_string(client: aioredis.Redis, topic: str) -> None:
    """Reply to the first request on ``topic``, the correlation id a string."""
    last = "0-0"
    while True:
        found = await client.xread({topic: last}, count=1, block=1000)
        for _, entries in found or ():
            for entry_id, fields in entries:
                last = entry_id
                header = json.loads(fields[b"header"])
                await client.xadd(
                    header[REPLY_TO_HEADER][0],
                    {
                        "body": b'{"tracking": "T-1"}',
                        "header": json.dumps({CORRELATION_HEADER: header[CORRELATION_HEADER][0]}),
                    },
                )
                return


async def test_a_reply_whose_header_values_are_strings_is_the_response(redis_url: str) -> None:
    topic = f"h2.foreign.{uuid.uuid4().hex}"
    client = aioredis.Redis.from_url(redis_url)
    participant = asyncio.create_task(_answer_as_a_string(client, topic))
    try:
        async with Flow("memory://", broker=redis_url) as flow:
            ship = PublishStep(topic, reply=True, timeout=10, id="ship")
            wf = await flow.workflow_create("foreign", ship)
            eid = await wf.execute({"order_id": 1})
            response = (await flow.execution(eid)).steps["ship"].response
        assert response is not None
        assert response.json() == {"tracking": "T-1"}
        assert response.header[CORRELATION_HEADER]
    finally:
        participant.cancel()
        await asyncio.gather(participant, return_exceptions=True)
        await client.delete(topic)
        await client.aclose()
