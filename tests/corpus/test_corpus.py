"""Every case of the bad-input corpus gets a one-line error with the right code, or a
clean result: never a traceback, never ``error[internal]`` (see ``loader.py``).

Expected ``code`` values: an error code of the microsaga tree (``definition``,
``configuration``, ``usage`` for the CLI's argument errors ...), a builtin exception's
name (``TypeError``), ``rejected`` (refused at the call, before anything is stored:
any microsaga error, ``ValueError`` or ``TypeError``), or ``ok``.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

import microsaga
from microsaga import (
    Flow,
    FunctionStep,
    Message,
    MicrosagaError,
    SleepStep,
    StepError,
    WaitStep,
    load_definition,
)
from microsaga.api import create_app
from microsaga.cli import main
from microsaga.participant import Participant
from tests.corpus import steps
from tests.corpus.loader import Case, cases, params

ROOT = Path(__file__).resolve().parents[2]
ORDER = """id: corpus
steps:
  - function: tests.corpus.steps:echo
"""
ERROR_LINE = re.compile(r"^error\[([a-z_]+)\]: \S.*$")


def test_the_corpus_is_big_enough() -> None:
    total = sum(len(cases(kind)) for kind in ("definitions", "cli", "python_api", "participant"))
    assert total >= 200


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text.strip(), f"{type(exc).__name__} without a message"
    assert "\n" not in text, f"the message is not one line: {text[:300]!r}"
    assert len(text) < 2000, f"the message is {len(text)} characters long"


def _matches(exc: BaseException, code: str) -> bool:
    if code == "rejected":
        return isinstance(exc, MicrosagaError | ValueError | TypeError)
    if isinstance(exc, MicrosagaError):
        return exc.code == code
    wanted = getattr(builtins, code, None)
    return isinstance(wanted, type) and isinstance(exc, wanted)


# definitions --------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", params("definitions"))
def test_definition_case(case: Case) -> None:
    source = case.get("text") if "text" in case.spec else case.get("data")
    code = case.spec["code"]
    try:
        wf = load_definition(source)
    except MicrosagaError as exc:
        assert code != "ok", f"refused: {exc}"
        assert exc.code == code, f"error[{exc.code}] instead of {code}: {exc}"
        _one_line(exc)
        return
    assert code == "ok", f"accepted: {wf.id!r} with {len(wf.step_list)} steps"


# the command line ---------------------------------------------------------------------


def _arg(value: Any, tmp: Path, order: Path) -> str:
    return str(value).replace("{tmp}", str(tmp)).replace("{order}", str(order))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", params("cli"))
def test_cli_case(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    order = tmp_path / "order.yaml"
    order.write_text(ORDER)
    for name, content in (case.get("files") or {}).items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    monkeypatch.setenv("MICROSAGA_STORE", f"sqlite:///{tmp_path / 'store.db'}")
    for name, value in (case.get("env") or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(ROOT))
    args = [_arg(a, tmp_path, order) for a in case.get("args")]
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "error[internal]" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error[")]
    if case.spec["code"] == "ok":
        assert done.value.code == 0, err[-2000:]
        assert not errors
        return
    assert len(errors) == 1, err[-2000:]
    assert errors[0] == err.splitlines()[-1], "the error is the last line"
    found = ERROR_LINE.match(errors[0])
    assert found is not None, errors[0][:300]
    assert found.group(1) == case.spec["code"], errors[0][:300]
    assert len(errors[0]) < 2000, f"an error line of {len(errors[0])} characters"
    assert done.value.code == case.spec["exit"], errors[0][:300]


# the Python API -----------------------------------------------------------------------


async def _execute(args: list[Any], kwargs: dict[str, Any]) -> str:
    async with microsaga.Flow("memory://") as flow:
        wf = await flow.workflow_create("corpus", FunctionStep(steps.echo))
        return await wf.execute(*args, **kwargs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", params("python_api"))
def test_python_api_case(case: Case) -> None:
    target, args, kwargs = case.spec["target"], case.get("args"), case.get("kwargs") or {}
    code = case.spec["code"]
    try:
        if target == "execute":
            result: Any = asyncio.run(_execute(args, kwargs))
        else:
            result = getattr(microsaga, target)(*args, **kwargs)
    except Exception as exc:
        assert code != "ok", f"refused: {type(exc).__name__}: {exc}"
        assert _matches(exc, code), f"{type(exc).__name__} ({getattr(exc, 'code', '-')}): {exc}"
        _one_line(exc)
        return
    assert code == "ok", f"accepted: {type(result).__name__}"


# participants -------------------------------------------------------------------------


def _participant() -> Participant:
    service = Participant()
    service.add_handler("Inventory.Reserve", steps.echo)

    async def boom(msg: Message) -> None:
        raise RuntimeError("boom")

    async def decline(msg: Message) -> None:
        raise StepError("declined", code="declined", retryable=False)

    async def weird(msg: Message) -> object:
        return object()

    async def nan(msg: Message) -> float:
        return float("nan")

    for name, fn in (("Boom", boom), ("Decline", decline), ("Weird", weird), ("Nan", nan)):
        service.add_handler(f"Broken.{name}", fn)
    return service


async def _asgi(app: Participant, case: Case) -> tuple[int, bytes]:
    body = case.get("body") or b""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    headers = [
        (k.lower().encode("latin-1"), v if isinstance(v, bytes) else v.encode("utf-8"))
        for k, v in case.get("headers") or []
    ]
    scope = {"type": "http", "method": case.spec["method"], "path": case.spec["path"],
             "headers": headers}  # fmt: skip
    sent: list[dict[str, Any]] = []
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(event: Any) -> None:
        sent.append(event)

    await app(scope, receive, send)
    status = next(e["status"] for e in sent if e["type"] == "http.response.start")
    answer = b"".join(e.get("body", b"") for e in sent if e["type"] == "http.response.body")
    return status, answer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", params("participant"))
async def test_participant_case(case: Case) -> None:
    status, answer = await _asgi(_participant(), case)
    assert status == case.spec["status"], answer[:300]
    # strict JSON (no NaN), big integers kept as text
    decoded = json.loads(answer, parse_int=str) if answer else None
    if case.spec["code"] == "ok":
        return
    assert isinstance(decoded, dict), answer[:300]
    assert decoded["error"]["code"] == case.spec["code"]
    assert "\n" not in decoded["error"]["message"]


# HTTP API requests ---------------------------------------------------------------------


async def _api_request(case: Case) -> httpx.Response:
    """``case`` sent to the HTTP API over a memory flow holding two saved workflows, a
    waiting execution (``{waiting}`` in a path or body) and a finished one
    (``{finished}``)."""
    async with Flow("memory://", poll_interval=0.05) as flow:
        app = create_app(flow)
        approval = await flow.workflow_create("approval", WaitStep("go"))
        await flow.workflow_save(approval)
        nap = await flow.workflow_create("nap", SleepStep(0.01, id="nap"))
        await flow.workflow_save(nap)
        ids = {"{waiting}": await approval.execute({}, async_=True),
               "{finished}": await nap.execute({})}  # fmt: skip
        path, body = case.spec["path"], case.get("body")
        for name, eid in ids.items():
            path = path.replace(name, eid)
            if isinstance(body, str):
                body = body.replace(name, eid)
        content = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        headers = {"content-type": "application/json"} if content is not None else {}
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://api.test"
            ) as client:
                return await client.request(
                    case.spec["method"], path, content=content, headers=headers
                )
        finally:
            await app.state.feed.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", params("http_api"))
async def test_http_api_case(case: Case) -> None:
    answer = await _api_request(case)
    assert answer.status_code == case.spec["status"], answer.text[:300]
    assert "Traceback" not in answer.text
    if case.spec["code"] == "ok":
        return
    problem = answer.json()
    assert problem["code"] == case.spec["code"], problem
    assert "\n" not in problem["detail"]
