"""Large bodies stored once, max_payload, the AES-GCM codec and redacted headers."""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path

import pytest

from microsaga import (
    CodecError,
    ConfigurationError,
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    PayloadTooLargeError,
    Retry,
    Status,
    WaitStep,
)
from microsaga.codecs import AesGcmCodec
from microsaga.payloads import redacted
from microsaga.settings import resolve_options

BIG = {"blob": "x" * 200_000}  # over the 32 KiB stored by reference


async def echo(msg: Message) -> Message:
    return msg


def chain(n: int = 4) -> list[FunctionStep]:
    steps = [FunctionStep(echo, id="s0")]
    for i in range(1, n):
        steps.append(FunctionStep(echo, id=f"s{i}", requires=[steps[-1]]))
    return steps


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_a_large_body_passed_along_a_chain_is_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with Flow(f"sqlite:///{path}") as flow:
        wf = await flow.workflow_create("chain", *chain())
        eid = await wf.execute(BIG)
        info = await flow.execution(eid)
    assert info.response is not None
    assert info.response.json() == BIG
    for run in info.steps.values():
        assert run.request is not None
        assert run.request.json() == BIG
        assert run.response is not None
        assert run.response.json() == BIG
    size = len(Message(BIG).body)
    assert rows(path, "SELECT length(body) FROM payloads") == [(size,)]
    stored = rows(
        path,
        "SELECT sum(length(request_body) + length(response_body)) FROM step_runs",
    )[0][0]
    assert isinstance(stored, int)
    assert stored < 1000


async def test_the_memory_store_keeps_one_bytes_object() -> None:
    async with Flow("memory://") as flow:
        wf = await flow.workflow_create("chain", *chain())
        eid = await wf.execute(BIG)
        info = await flow.execution(eid)
    bodies = {id(run.response.body) for run in info.steps.values() if run.response}
    assert len(bodies) == 1


async def test_a_payload_outlives_the_execution_that_stored_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    now = [1_000_000.0]
    async with Flow(f"sqlite:///{path}", clock=lambda: now[0], lease_ttl=10**6) as flow:
        wf = await flow.workflow_create("chain", *chain(2))
        first = await wf.execute(BIG)
        now[0] += 3600
        second = await wf.execute(BIG)
        assert await flow.prune(600) == 1  # the first, which stored the payload
        info = await flow.execution(second)
        assert info.steps["s1"].response is not None
        assert info.steps["s1"].response.json() == BIG
        with pytest.raises(Exception, match="not found"):
            await flow.execution(first)
        assert len(rows(path, "SELECT hash FROM payloads")) == 1
        now[0] += 3600
        assert await flow.prune(600) == 1
    assert rows(path, "SELECT hash FROM payloads") == []
    assert rows(path, "SELECT * FROM payload_refs") == []


async def test_a_request_over_max_payload_is_refused(store_url: str) -> None:
    async with Flow(store_url, max_payload=1000) as flow:
        wf = await flow.workflow_create("chain", *chain(1))
        with pytest.raises(PayloadTooLargeError, match="over max_payload 1000") as err:
            await wf.execute({"x": "y" * 1000})
        assert err.value.code == "payload_too_large"
        assert await flow.executions() == []


async def test_a_signal_payload_over_max_payload_is_refused(store_url: str) -> None:
    # a signal's payload is the waiting step's response: the same limit holds
    async with Flow(store_url, max_payload=1000) as flow:
        wf = await flow.workflow_create("pay", WaitStep("paid"))
        eid = await wf.execute({}, async_=True)
        with pytest.raises(
            PayloadTooLargeError, match="payload is 1008 bytes, over max_payload 1000"
        ):
            await flow.signal(eid, "paid", {"x": "y" * 1000})
        await flow.signal(eid, "paid", {"x": "small"})
        done = await flow.wait(eid, timeout=10)
    assert done.status is Status.SUCCESS
    assert done.response is not None
    assert done.response.json() == {"x": "small"}


async def test_a_step_whose_input_is_over_max_payload_fails_without_being_invoked(
    store_url: str,
) -> None:
    # each response is under the limit; the join's input holds both, and is over it
    joined: list[Message] = []

    async def half(msg: Message) -> dict[str, str]:
        return {"x": "y" * 600}

    async def join(msg: Message) -> None:
        joined.append(msg)

    async with Flow(store_url, max_payload=1000) as flow:
        wf = await flow.workflow_create(
            "fan-in",
            FunctionStep(half, id="a"),
            FunctionStep(half, id="b"),
            FunctionStep(join, id="join", requires=["a", "b"]),
        )
        with pytest.raises(ExecutionFailedError) as err:
            await wf.execute({})
        info = await flow.execution(err.value.execution_id)
    assert joined == []
    run = info.steps["join"]
    assert (run.status, run.attempts, run.request) == (Status.FAILURE, 0, None)
    assert run.error is not None
    assert run.error == "its input is 1227 bytes, over max_payload 1000"


async def test_a_step_returning_over_max_payload_fails_without_retrying(store_url: str) -> None:
    calls = []

    async def grow(msg: Message) -> Message:
        calls.append(1)
        return Message({"x": "y" * 2000})

    async with Flow(store_url, max_payload=1000) as flow:
        wf = await flow.workflow_create("grow", FunctionStep(grow, retry=Retry(max_attempts=5)))
        with pytest.raises(ExecutionFailedError) as err:
            await wf.execute({})
        info = await flow.execution(err.value.execution_id)
    assert "over max_payload 1000" in err.value.error
    assert [run.status for run in info.steps.values()] == [Status.FAILURE]
    assert calls == [1]


def test_max_payload_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_options({}).max_payload == 64 * 1024 * 1024
    monkeypatch.setenv("MICROSAGA_MAX_PAYLOAD", "2048")
    assert resolve_options({}).max_payload == 2048
    monkeypatch.setenv("MICROSAGA_MAX_PAYLOAD", "lots")
    with pytest.raises(ConfigurationError, match="MICROSAGA_MAX_PAYLOAD"):
        resolve_options({})


# the codec ---------------------------------------------------------------------------


def test_aes_gcm_round_trips_and_rotates_keys() -> None:
    k1, k2 = os.urandom(32), os.urandom(16)
    old = AesGcmCodec({"k1": k1})
    sealed = old.encode(b"secret")
    assert b"secret" not in sealed
    assert old.decode(sealed) == b"secret"
    rotated = AesGcmCodec({"k2": k2, "k1": k1})  # the first key encrypts
    assert rotated.decode(sealed) == b"secret"
    with pytest.raises(CodecError) as err:
        old.decode(rotated.encode(b"x"))
    assert err.value.code == "codec_key_unknown"
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(CodecError) as err:
        old.decode(bytes(tampered))
    assert err.value.code == "codec_tampered"
    assert "k1" in repr(old)
    assert k1.hex() not in repr(old)


@pytest.mark.parametrize(
    ("keys", "current", "match"),
    [
        ({}, None, "at least one key"),
        ({"k": b"short"}, None, "16, 24 or 32"),
        ({"k": b"x" * 16}, "j", "not among"),
    ],
)
def test_aes_gcm_refuses_bad_keys(keys: dict[str, bytes], current: str | None, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        AesGcmCodec(keys, current)


def test_codec_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("MICROSAGA_CODEC_KEYS", f"new={key},old={key}")
    codec = resolve_options({}).codec
    assert isinstance(codec, AesGcmCodec)
    assert codec.current == "new"
    monkeypatch.setenv("MICROSAGA_CODEC_KEYS", "new=not-base64!")
    with pytest.raises(ConfigurationError, match="MICROSAGA_CODEC_KEYS"):
        resolve_options({})
    with pytest.raises(ConfigurationError, match="codec"):
        resolve_options({"codec": "aes"})


async def test_bodies_and_headers_are_encrypted_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = f"sqlite:///{path}"
    k1, k2 = os.urandom(32), os.urandom(32)
    request = Message({"card": "4111-SECRET", **BIG}, {"X-Token": "tok-SECRET"})
    async with Flow(store, codec=AesGcmCodec({"k1": k1})) as flow:
        wf = await flow.workflow_create("chain", *chain(2))
        eid = await wf.execute(request)
        small = await wf.execute(Message({"card": "4111-SECRET"}, {"X-Token": "tok-SECRET"}))
        info = await flow.execution(eid)
    assert info.steps["s1"].response is not None
    assert info.steps["s1"].response.json() == request.json()
    assert info.steps["s1"].request is not None
    assert info.steps["s1"].request.header["x-token"] == "tok-SECRET"
    raw = path.read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("s.db-")
    )
    assert b"SECRET" not in raw
    # a new key first, the old one kept: both executions still read
    async with Flow(store, codec=AesGcmCodec({"k2": k2, "k1": k1})) as flow:
        assert (await flow.execution(small)).request.json() == {"card": "4111-SECRET"}
    # without the key, what is shown is marked encrypted, not an error
    async with Flow(store, worker=False) as flow:
        shown = await flow.execution(small)
        assert shown.request.json() == "[encrypted]"
        assert "tok-SECRET" not in str(shown.request.header)


def test_redacted_hides_the_values_of_the_names_given() -> None:
    from microsaga import Metadata

    header = Metadata({"Authorization": "Bearer x", "X-Id": "1"})
    shown = redacted(header, ("authorization", "cookie"))
    assert shown["authorization"] == "[redacted]"
    assert shown["x-id"] == "1"
    assert header["authorization"] == "Bearer x"  # not changed


async def test_redacted_headers_are_never_shown(store_url: str) -> None:
    request = Message({}, {"Authorization": "Bearer tok", "Cookie": "c=1", "X-Id": "7"})
    async with Flow(store_url) as flow:
        wf = await flow.workflow_create("chain", *chain(2))
        eid = await wf.execute(request)
        seen = [await flow.execution(eid), *(await flow.executions()), await flow.wait(eid)]
    for info in seen:
        for msg in (info.request, info.steps["s1"].request, info.steps["s1"].response):
            assert msg is not None
            assert msg.header.getall("authorization") == ["[redacted]"]
            assert msg.header["cookie"] == "[redacted]"
            assert msg.header["x-id"] == "7"
    async with Flow(store_url, redact_headers=["X-Id"]) as flow:
        wf = await flow.workflow_create("chain", *chain(2))
        info = await flow.execution(await wf.execute(request))
    assert info.request.header["authorization"] == "Bearer tok"
    assert info.request.header["x-id"] == "[redacted]"
    with pytest.raises(ConfigurationError, match="redact_headers"):
        Flow(store_url, redact_headers="authorization")


def test_the_python_docs_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.docblocks import ROOT, find

    block = find("docs/python.md", "AesGcmCodec(dict(codec_keys))").text
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MICROSAGA_CODEC_KEYS", raising=False)
    exec(compile(block, str(ROOT / "docs/python.md"), "exec", dont_inherit=True), {})
    assert capsys.readouterr().out == "[redacted] {'charged': True}\n"
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"t0ken" not in stored
    assert b'"order"' not in stored
    assert resolve_options({}).codec is not None  # the keys as the setting
    monkeypatch.delenv("MICROSAGA_CODEC_KEYS")


@pytest.mark.parametrize(
    "body",
    [b"\x00ref:" + b"a" * 64, b"\x00enc:\x01\x02k1", b"\x00raw:x", b"\x00", b"x" * 40_000],
)
async def test_bodies_that_look_like_stored_references_come_back_as_they_were(
    store_url: str, body: bytes
) -> None:
    async def odd(msg: Message) -> Message:
        return Message(body)

    async with Flow(store_url) as flow:
        wf = await flow.workflow_create("odd", FunctionStep(odd, id="odd"))
        info = await flow.execution(await wf.execute({}))
    assert info.steps["odd"].response is not None
    assert info.steps["odd"].response.body == body


async def test_a_redrive_input_over_max_payload_is_refused(store_url: str) -> None:
    async def fail(msg: Message) -> Message:
        raise ValueError("no")

    async with Flow(store_url, max_payload=1000) as flow:
        wf = await flow.workflow_create("fail", FunctionStep(fail, retry=Retry(max_attempts=1)))
        with pytest.raises(ExecutionFailedError) as err:
            await wf.execute({})
        with pytest.raises(PayloadTooLargeError, match="the input"):
            await flow.redrive(err.value.execution_id, input={"x": "y" * 1000})


async def test_a_signal_payload_is_encrypted_at_rest(tmp_path: Path) -> None:
    from microsaga import WaitStep

    path = tmp_path / "s.db"
    codec = AesGcmCodec({"k1": os.urandom(32)})
    async with Flow(f"sqlite:///{path}", codec=codec) as flow:
        wf = await flow.workflow_create("approve", WaitStep("approved"))
        eid = await wf.execute({}, async_=True)
        await flow.signal(eid, "approved", Message({"by": "ann-SECRET"}, {"X-Key": "k-SECRET"}))
        done = await flow.wait(eid, timeout=10)
        assert done.steps["approved"].response is not None
        assert done.steps["approved"].response.json() == {"by": "ann-SECRET"}
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"SECRET" not in stored
