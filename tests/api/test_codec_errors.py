"""Stored data the server's keys cannot read is the server's problem, not the
client's: a 500 naming the codec's code, never a 400 the client could mend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from microsaga import ExecutionFailedError, Flow, load_definition
from microsaga.api import create_app

from .conftest import client_for

pytest.importorskip("cryptography", reason="the crypto extra")

from microsaga.codecs import AesGcmCodec

PAY = {"id": "pay", "steps": [{"function": "tests.api.steps:charge", "id": "charge"}]}


async def test_a_redrive_of_an_execution_under_a_key_the_server_lacks_is_a_500(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    async with Flow(url, codec=AesGcmCodec({"old": os.urandom(32)})) as flow:
        wf = await flow.workflow_add(load_definition(PAY))
        with pytest.raises(ExecutionFailedError) as failed:
            await wf.execute({"fail": True})
    eid = failed.value.execution_id
    async with (
        Flow(url, codec=AesGcmCodec({"new": os.urandom(32)})) as flow,
        client_for(create_app(flow)) as client,
    ):
        answer = await client.post(f"/api/executions/{eid}/redrive")
    assert answer.status_code == 500
    problem = answer.json()
    assert problem["code"] == "codec_key_unknown"
    assert "old" in problem["detail"]
