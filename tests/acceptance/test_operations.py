"""docs/operations.md step by step, with the CLI as an operator runs it: upgrading the
workers of a PostgreSQL store (the migration, an older release refusing a migrated
store, what an older worker cannot run) and rotating codec keys (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from microsaga import Flow, Message, Status, Step, StepContext
from microsaga import step as step_module
from tests.acceptance import procs
from tests.helpers import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

STEPS = (
    "import pathlib, time\n"
    "def echo(msg):\n    return {'echo': msg.json()}\n"
    "def slow(msg):  # until the file 'go' exists\n"
    "    for _ in range(1200):\n"
    "        if pathlib.Path('go').exists():\n"
    "            break\n"
    "        time.sleep(0.05)\n"
    "    return {'slow': msg.json()}\n"
)
FLOW = "id: up\nsteps:\n  - function: steps:echo\n"
SLOW = (
    "id: slow\nsteps:\n  - function: steps:slow\n  - function: steps:echo\n    requires: [slow]\n"
)
HELD = (  # parks at its wait step, with a step to undo behind it
    "id: held\nsteps:\n  - function: steps:echo\n    compensate: {function: steps:echo}\n"
    "  - wait: go\n    requires: [echo]\n"
)


class Ops:
    """The CLI on one store, from a folder holding the definitions and their steps."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.workers: list[subprocess.Popen[bytes]] = []
        (folder / "steps.py").write_text(STEPS, encoding="utf-8")
        (folder / "up.yaml").write_text(FLOW, encoding="utf-8")
        (folder / "held.yaml").write_text(HELD, encoding="utf-8")
        (folder / "slow.yaml").write_text(SLOW, encoding="utf-8")

    def cli(
        self, *args: str, keys: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        if keys is not None:
            env["MICROSAGA_CODEC_KEYS"] = keys
        return procs.cli("--store", self.url, *args, cwd=self.folder, extra_env=env)

    def ok(self, *args: str, keys: str | None = None) -> str:
        done = self.cli(*args, keys=keys)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, n: int, keys: str | None = None, wf: str = "up.yaml") -> str:
        return self.ok("run", wf, "--async", "--input", json.dumps({"n": n}), keys=keys).strip()

    def show(self, eid: str, keys: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.ok("show", "--json", eid, keys=keys))
        return found

    async def worker(
        self,
        log: Path,
        keys: str | None = None,
        command: tuple[str, ...] = ("worker",),
        ready: str = "running executions",
        **env: str,
    ) -> subprocess.Popen[bytes]:
        """A ``microsaga worker`` (or ``command``), once it says it runs executions."""
        if keys is not None:
            env["MICROSAGA_CODEC_KEYS"] = keys
        with open(log, "ab") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "microsaga", "--store", self.url, *command],
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=procs.env(env),
            )
        self.workers.append(proc)
        await eventually(lambda: ready in log.read_text(), timeout=30)
        return proc

    async def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM, as a supervisor stops a worker; its exit status."""
        proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(proc.wait, 60)

    async def status(self, eid: str, keys: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.show, eid, keys)

    def kill_left(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_ops(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ops]:
    if request.param == "postgres" and not os.environ.get("CI"):
        pytest.importorskip("asyncpg", reason="needs asyncpg (pip install 'microsaga[postgres]')")
    from tests.integration.pg import empty_store

    async with empty_store(request.param, tmp_path) as url:
        ops = Ops(url, tmp_path)
        try:
            yield ops
        finally:
            ops.kill_left()


async def succeeded(ops: Ops, keys: str | None, *eids: str) -> bool:
    return all([(await ops.status(e, keys))["status"] == "SUCCESS" for e in eids])


# codec keys ------------------------------------------------------------------------------


async def test_a_key_rotation_in_two_steps_then_a_key_dropped_too_early(
    store_ops: Ops, tmp_path: Path
) -> None:
    ops = store_ops
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)  # as the page makes them
    before, step1, step2 = (
        f"2026-06={old}",
        f"2026-06={old},2026-12={new}",
        f"2026-12={new},2026-06={old}",
    )
    only_new = f"2026-12={new}"

    plain = ops.start(0)  # stored before encryption was turned on
    a = ops.start(1, keys=before)
    held = ops.start(2, keys=before, wf="held.yaml")
    b = ops.start(3, keys=step2)  # a process already at step 2, under the new key
    # a worker at step 1 (the new key second) reads all of them
    worker = await ops.worker(tmp_path / "step1.log", keys=step1)
    await eventually(lambda: succeeded(ops, step1, plain, a, b), timeout=60)

    async def parked() -> bool:
        return (await ops.status(held, step1))["steps"]["echo"]["status"] == "SUCCESS"

    await eventually(parked, timeout=60)
    assert await ops.stop(worker) == 0
    assert ops.show(plain, step2)["request"] == {"n": 0}
    assert ops.show(a, step2)["request"] == {"n": 1}

    # the old key dropped while executions stored under it remain
    late = ops.start(4, keys=before)
    c = ops.start(5, keys=step2)
    assert ops.ok("abort", held, keys=only_new).split() == [held, "COMPENSATING"]
    log = tmp_path / "dropped.log"
    worker = await ops.worker(log, keys=only_new, MICROSAGA_LEASE_TTL="1")
    await eventually(lambda: succeeded(ops, only_new, c), timeout=60)
    reason = (
        "stored value encrypted with key '2026-06', which the codec does not have "
        "(give this worker the key: MICROSAGA_CODEC_KEYS or Flow(codec=...))"
    )

    async def noted(eid: str) -> bool:
        return (await ops.status(eid, only_new))[
            "note"
        ] == f"waits for a worker that can run it: {reason}"

    await eventually(lambda: noted(late), timeout=60)
    await eventually(lambda: noted(held), timeout=60)
    assert await ops.stop(worker) == 0
    said = log.read_text()
    assert said.count(f"execution {late} cannot run in this worker: {reason}") == 1, said
    assert ops.show(late, only_new)["status"] == "RUNNING"
    assert ops.show(held, only_new)["status"] == "COMPENSATING"

    shown = ops.ok("show", late, keys=only_new)
    assert 'request    "[encrypted]"' in shown
    assert f"note       waits for a worker that can run it: {reason}" in shown
    why = (
        "encrypted  shown as \"[encrypted]\": stored value encrypted with key '2026-06', "
        "which the codec does not have (give this process the key: MICROSAGA_CODEC_KEYS)"
    )
    assert shown.splitlines().count(why) == 1, shown
    finished = ops.ok("show", a, keys=only_new)  # no note: the last line says why
    assert 'request    "[encrypted]"' in finished
    assert 'response   "[encrypted]"' in finished
    assert "note" not in finished
    assert finished.splitlines()[-1] == why, finished
    as_json = ops.cli("show", "--json", a, keys=only_new)
    assert json.loads(as_json.stdout)["request"] == "[encrypted]"
    assert as_json.stderr.strip() == why
    assert "encrypted  " not in ops.ok("show", a, keys=step2)  # it can read it all
    redrive = ops.cli("redrive", a, keys=only_new)
    assert redrive.returncode == 2
    assert redrive.stderr.startswith(
        "error[codec_key_unknown]: stored value encrypted with key '2026-06', "
        "which the codec does not have"
    ), redrive.stderr
    typo = ops.cli("redrive", a, keys=f"2026-06={new}")  # another key under the right id
    assert typo.returncode == 2
    assert typo.stderr.startswith(
        "error[codec_tampered]: stored value fails its authentication: changed, or another key"
    ), typo.stderr
    unset = ops.cli("redrive", a, MICROSAGA_CODEC_KEYS="")  # the setting forgotten
    assert unset.returncode == 2
    assert unset.stderr.startswith(
        "error[codec]: a stored body is encrypted and this process has no codec keys: "
        "give it MICROSAGA_CODEC_KEYS (in Python, Flow(codec=...))"
    ), unset.stderr

    # the key given back: both go on (after three of the leaving worker's lease TTLs)
    worker = await ops.worker(tmp_path / "back.log", keys=step2)

    async def ended() -> bool:
        shown = [await ops.status(e, step2) for e in (late, held)]
        return [s["status"] for s in shown] == ["SUCCESS", "ABORTED"] and shown

    for shown in await eventually(ended, timeout=60):
        assert shown["note"] is None
    assert await ops.stop(worker) == 0

    # step 3: once what the old key encrypted is pruned, the new key alone is enough
    pruned = ops.ok("prune", "--older-than", "0s")  # needs no key
    assert pruned.strip() == "pruned 6 executions"
    assert ops.ok("list", keys=only_new) == ""
    d = ops.start(6, keys=only_new)
    worker = await ops.worker(tmp_path / "after.log", keys=only_new)
    await eventually(lambda: succeeded(ops, only_new, d), timeout=60)
    assert ops.show(d, only_new)["response"] == {"echo": {"n": 6}}
    assert await ops.stop(worker) == 0


async def test_an_execution_whose_key_is_lost_ends_by_an_abort_without_compensation(
    store_ops: Ops, tmp_path: Path
) -> None:
    ops = store_ops
    lost, kept = f"2026-06={secrets.token_urlsafe(32)}", f"2026-12={secrets.token_urlsafe(32)}"
    waiting, rolling = (ops.start(n, keys=lost, wf="held.yaml") for n in (1, 2))
    worker = await ops.worker(tmp_path / "lost.log", keys=lost)

    async def parked(eid: str) -> bool:
        return (await ops.status(eid, lost))["steps"]["echo"]["status"] == "SUCCESS"

    await eventually(lambda: parked(waiting), timeout=60)
    await eventually(lambda: parked(rolling), timeout=60)
    assert await ops.stop(worker) == 0
    # the key 2026-06 is lost for good: the rollback cannot run, so it stays COMPENSATING
    assert ops.ok("abort", rolling, keys=kept).split() == [rolling, "COMPENSATING"]

    assert ops.ok("abort", "--no-compensate", waiting, keys=kept).split() == [waiting, "RUNNING"]
    assert ops.ok("abort", "--no-compensate", rolling, keys=kept).split() == [
        rolling,
        "COMPENSATING",
    ]
    log = tmp_path / "kept.log"
    worker = await ops.worker(log, keys=kept)  # it cannot read them, and needs not

    async def aborted() -> bool:
        shown = [await ops.status(e, kept) for e in (waiting, rolling)]
        settled = all(  # the wait given up, just after the execution ended
            run["status"] != "WAITING" for s in shown for run in s["steps"].values()
        )
        return [s["status"] for s in shown] == ["ABORTED", "ABORTED"] and settled and shown

    why = "stored value encrypted with key '2026-06', which the codec does not have"
    for shown in await eventually(aborted, timeout=60):
        assert shown["error"] == f"aborted without reading it: {why}"
        assert shown["note"] is None
        assert shown["steps"]["echo"]["compensation"] is None  # nothing rolled back
        assert shown["steps"]["echo"]["status"] == "SUCCESS"
        # the wait waits no more: PENDING, saying why, as a wait given up by an abort
        given_up = [run for sid, run in shown["steps"].items() if sid != "echo"]
        assert [(run["status"], run["error"]) for run in given_up] == [("PENDING", shown["error"])]
    assert await ops.stop(worker) == 0
    assert f"execution {waiting} aborted without reading it: {why}" in log.read_text()
    assert ops.ok("prune", "--older-than", "0s").strip() == "pruned 2 executions"
    assert ops.ok("list", keys=kept) == ""


# upgrades on PostgreSQL ------------------------------------------------------------------


@pytest.fixture
async def pg_url() -> Any:
    if not os.environ.get("CI"):
        pytest.importorskip("asyncpg", reason="needs asyncpg (pip install 'microsaga[postgres]')")
    from tests.integration.pg import fresh_database

    async with fresh_database() as url:
        yield url


@pytest.fixture
def pg_ops(pg_url: str, tmp_path: Path) -> Iterator[Ops]:
    ops = Ops(pg_url, tmp_path)
    yield ops
    ops.kill_left()


async def schema_versions(url: str) -> list[int]:
    from tests.integration.pg import connect

    conn = await connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT version FROM microsaga_schema_version")]
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_the_first_commands_of_a_new_release_migrate_an_older_store_once(
    pg_ops: Ops,
) -> None:
    from microsaga.stores.postgres import SCHEMA_VERSION
    from tests.integration.test_postgres import replay

    await replay(pg_ops.url, SCHEMA_VERSION - 1)  # as the previous release left it
    both = await asyncio.gather(
        *(asyncio.to_thread(pg_ops.cli, "list", "--limit", "1") for _ in range(2))
    )
    assert [done.returncode for done in both] == [0, 0], [d.stderr for d in both]
    assert sorted(await schema_versions(pg_ops.url)) == list(range(1, SCHEMA_VERSION + 1))


@pytest.mark.postgres
async def test_a_newer_migration_stops_a_running_worker_and_refuses_its_restart(
    pg_ops: Ops, tmp_path: Path
) -> None:
    from microsaga.stores.postgres import SCHEMA_VERSION
    from tests.integration.pg import connect

    url = pg_ops.url
    first = pg_ops.start(1)  # the store is made here
    log = tmp_path / "worker.log"
    worker = await pg_ops.worker(log, MICROSAGA_HEARTBEAT="0.5")
    served = tmp_path / "serve.log"
    serve = await pg_ops.worker(
        served, command=("serve", "--port", "0"), ready="serving", MICROSAGA_HEARTBEAT="0.5"
    )
    await eventually(lambda: succeeded(pg_ops, None, first), timeout=60)
    conn = await connect(url)
    try:  # what a newer release's migration does
        await conn.execute("ALTER TABLE microsaga_executions ADD COLUMN newer text")
        await conn.execute("INSERT INTO microsaga_schema_version VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    assert await asyncio.to_thread(worker.wait, 60) == 2  # at its next heartbeat
    assert log.read_text().splitlines()[-1] == f"error[schema_version]: {migrated(url)}"
    assert await asyncio.to_thread(serve.wait, 60) == 2
    assert served.read_text().splitlines()[-1] == f"error[schema_version]: {migrated(url)}"

    refusal = (
        f"error[schema_version]: PostgreSQL store {url} has schema version "
        f"{SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION} this microsaga knows: "
        "upgrade microsaga"
    )
    for args in (["worker"], ["serve", "--no-worker", "--port", "0"], ["list"]):
        done = await asyncio.to_thread(pg_ops.cli, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip() == refusal, args


class Upgraded(Step):
    """A step kind only the newer workers (this test's process) know."""

    kind = "upgraded_probe"

    @property
    def endpoint(self) -> str:
        return "upgraded"

    async def execute(self, req: Message, ctx: StepContext) -> Message:
        return Message({"upgraded": True})

    def to_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: Any) -> Step:
        return cls()


@pytest.mark.postgres
async def test_an_execution_of_a_kind_an_older_worker_lacks_waits_for_a_newer_one(
    pg_ops: Ops, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(step_module._KINDS, Upgraded.kind, Upgraded)
    url = pg_ops.url
    async with Flow(url, worker=False) as client:
        wf = await client.workflow_create("newer", Upgraded(id="probe"))
        await client.workflow_save(wf)
        eid = await wf.execute({}, async_=True)
    log = tmp_path / "older.log"
    older = await pg_ops.worker(log, MICROSAGA_LEASE_TTL="1")  # has no such kind
    reason = "steps[0]: unknown step kind 'upgraded_probe'; a step needs one of: "

    async def noted() -> str:
        note: str = (await pg_ops.status(eid))["note"] or ""
        return note

    note = await eventually(noted, timeout=60)
    assert note.startswith(f"waits for a worker that can run it: {reason}"), note
    assert f"execution {eid} cannot run in this worker: {reason}" in log.read_text()
    assert "note       waits for a worker that can run it: steps[0]" in pg_ops.ok("show", eid)
    assert await pg_ops.stop(older) == 0
    async with Flow(url, poll_interval=0.05) as newer:  # within three lease TTLs of 1 s
        done = await newer.wait(eid, timeout=60)
    assert done.status is Status.SUCCESS
    assert done.note is None


# a newer release migrating the store under running workers ------------------------------


def known_version(url: str) -> int:
    """The schema version this microsaga knows for the store at ``url``."""
    if url.startswith("sqlite:"):
        from microsaga.stores.sqlite import SCHEMA_VERSION as sqlite_version

        return sqlite_version
    from microsaga.stores.postgres import SCHEMA_VERSION

    return SCHEMA_VERSION


def where(url: str) -> str:
    """How errors name the store at ``url``."""
    if url.startswith("sqlite:"):
        return f"SQLite store {url.removeprefix('sqlite:///')}"
    return f"PostgreSQL store {url}"


async def stamp(url: str, version: int) -> None:
    """Set the store's schema version, as a release's migration does (or its backup,
    restored, undoes)."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            conn.execute(f"PRAGMA user_version = {version}")
        finally:
            conn.close()
        return
    from tests.integration.pg import connect

    pg = await connect(url)
    try:
        await pg.execute("DELETE FROM microsaga_schema_version WHERE version > $1", version)
        await pg.execute(
            "INSERT INTO microsaga_schema_version VALUES ($1) ON CONFLICT DO NOTHING", version
        )
    finally:
        await pg.close()


def migrated(url: str) -> str:
    known = known_version(url)
    return (
        f"{where(url)} has schema version {known + 1}, newer than the {known} this "
        "microsaga knows: a newer microsaga migrated it while this process ran; upgrade "
        "microsaga in this process and start it again"
    )


async def migrate_under(ops: Ops, proc: subprocess.Popen[bytes], log: Path) -> str:
    """Stamp the store as a newer release's while ``proc`` runs step slow of slow.yaml;
    see it say (in ``log``) that it stops, let the step finish, and ``proc`` exit with
    status 2. What it said."""
    await stamp(ops.url, known_version(ops.url) + 1)  # a newer release migrated it
    said = f"stops running executions (they go to other workers): {migrated(ops.url)}"
    await eventually(lambda: said in log.read_text(), timeout=60)
    (ops.folder / "go").touch()  # the step it runs finishes; the next one does not start
    assert await asyncio.to_thread(proc.wait, 60) == 2
    return said


async def finished_by_a_newer_worker(ops: Ops, eid: str, tmp_path: Path) -> None:
    """Once the store is back to this release's schema (as if it were the newer one),
    ``eid`` is RUNNING with its slow step done, and a worker finishes it."""
    await stamp(ops.url, known_version(ops.url))  # back: as if this release were newer
    left = ops.show(eid)
    assert left["status"] == "RUNNING", left  # not failed: for another worker
    assert [left["steps"][s]["status"] for s in ("slow", "echo")] == ["SUCCESS", "PENDING"]
    upgraded = await ops.worker(tmp_path / "upgraded.log")
    await eventually(lambda: succeeded(ops, None, eid), timeout=60)
    assert await ops.stop(upgraded) == 0


async def test_a_running_worker_stops_when_a_newer_release_migrates_its_store(
    store_ops: Ops, tmp_path: Path
) -> None:
    ops = store_ops
    eid = ops.start(1, wf="slow.yaml")
    log = tmp_path / "worker.log"
    worker = await ops.worker(log, MICROSAGA_HEARTBEAT="0.2")

    async def slow_running() -> bool:
        return (await ops.status(eid))["steps"]["slow"]["status"] == "RUNNING"

    await eventually(slow_running, timeout=60)
    said = await migrate_under(ops, worker, log)
    output = log.read_text()
    assert output.count(said) == 1, output
    assert output.splitlines()[-1] == f"error[schema_version]: {migrated(ops.url)}", output

    await finished_by_a_newer_worker(ops, eid, tmp_path)
    assert ops.show(eid)["response"] == {"echo": {"slow": {"n": 1}}}


async def test_run_stops_following_when_a_newer_release_migrates_its_store(
    store_ops: Ops, tmp_path: Path
) -> None:
    ops = store_ops
    out, err = tmp_path / "run.out", tmp_path / "run.err"
    command = ("run", "slow.yaml", "--execution-id", "mine", "--input", json.dumps({"n": 1}))
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-m", "microsaga", "--store", ops.url, *command],
            stdout=stdout,
            stderr=stderr,
            cwd=ops.folder,
            env=procs.env({"MICROSAGA_HEARTBEAT": "0.2"}),
        )
    ops.workers.append(run)

    async def slow_running() -> bool:
        found = await asyncio.to_thread(ops.cli, "show", "--json", "mine")
        return (
            found.returncode == 0
            and json.loads(found.stdout)["steps"]["slow"]["status"] == "RUNNING"
        )

    await eventually(slow_running, timeout=60)
    await migrate_under(ops, run, err)
    assert out.read_text().splitlines()[-1] == "mine"  # which execution it leaves
    assert err.read_text().splitlines()[-1] == (
        f"error[schema_version]: {migrated(ops.url)}; execution mine is left to the "
        "workers of the newer microsaga: `microsaga show mine` follows it"
    )

    await finished_by_a_newer_worker(ops, "mine", tmp_path)


GATE = threading.Event()


def gated(msg: Message) -> dict[str, Any]:
    GATE.wait(60)
    return {"gated": msg.json()}


async def test_a_flow_whose_store_a_newer_release_migrates_raises_it(store_ops: Ops) -> None:
    from microsaga import FunctionStep, SchemaVersionError

    url = store_ops.url
    GATE.clear()
    async with Flow(url, heartbeat_interval=0.1, lease_ttl=1.0) as flow:
        wf = await flow.workflow_create("gated", FunctionStep(gated, id="gated"))
        await flow.workflow_save(wf)
        eid = await wf.execute({"n": 1}, async_=True)

        async def gated_running() -> bool:
            return (await flow.execution(eid)).steps["gated"].status is Status.RUNNING

        await eventually(gated_running, timeout=60)
        await stamp(url, known_version(url) + 1)
        with pytest.raises(SchemaVersionError) as raised:
            await asyncio.wait_for(flow.join(), 60)
        assert str(raised.value) == migrated(url)
        with pytest.raises(SchemaVersionError):  # and every call after
            await wf.execute({"n": 2}, async_=True)
        with pytest.raises(SchemaVersionError):
            await flow.wait(eid)
    await stamp(url, known_version(url))
    GATE.set()
    async with Flow(url, poll_interval=0.05) as upgraded:  # it was handed back
        done = await upgraded.wait(eid, timeout=60)
    assert done.status is Status.SUCCESS
    assert done.response is not None
    assert done.response.json() == {"gated": {"n": 1}}
