"""SyncFlow: the flow from scripts, threads and a sync (WSGI) web application."""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import os
import select
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from microsaga import (
    ExecutionFailedError,
    Flow,
    FunctionStep,
    Message,
    MicrosagaError,
    Saga,
    Status,
    SyncFlow,
    WaitStep,
)
from microsaga.sync import SyncWorkflow
from tests.unit import front_saga as shop


def poll(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until ``condition()`` holds, for at most ``seconds``."""
    until = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < until, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def sync_flow(store_url: str) -> Iterator[SyncFlow]:
    with SyncFlow(store_url, poll_interval=0.05) as flow:
        yield flow


def test_every_method_blocks_and_returns_what_the_flow_returns(sync_flow: SyncFlow) -> None:
    wf = sync_flow.workflow_add(shop.saga)
    assert isinstance(wf, SyncWorkflow)
    eid = wf.execute({"order_id": 1, "customer": "ada"})
    assert isinstance(eid, str)
    assert wf.status is Status.SUCCESS
    info = sync_flow.execution(eid)
    assert info.status is Status.SUCCESS
    assert info.response is not None
    assert info.response.json() == {"tracking": "T-1", "payment": "P-1"}
    assert [e.id for e in sync_flow.executions(workflow_id="front-order")] == [eid]
    assert sync_flow.wait(eid, timeout=5).status is Status.SUCCESS
    version = sync_flow.workflow_save(wf)
    assert version == wf.version == 1
    assert [w.id for w in sync_flow.workflow_list()] == ["front-order"]
    loaded = sync_flow.workflow_load("front-order")
    assert loaded.to_dict() == wf.to_dict()
    sync_flow.workflow_remove("front-order")
    assert sync_flow.workflow_list() == []


def test_it_has_every_method_of_flow_and_workflow_none_a_coroutine(sync_flow: SyncFlow) -> None:
    flow_methods = [
        name
        for name, member in inspect.getmembers(Flow)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    ]
    assert {"execution", "workflow_create", "suspend"} <= set(flow_methods)
    for name in flow_methods:
        method = getattr(sync_flow, name)
        assert callable(method), name
        assert not inspect.iscoroutinefunction(method), name
    wf = sync_flow.workflow_add(shop.saga)
    for name in ("execute", "suspend", "resume", "abort", "append_steps", "remove_steps"):
        assert not inspect.iscoroutinefunction(getattr(wf, name)), name


def test_a_coroutine_method_flow_gains_is_there_blocking(
    sync_flow: SyncFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def echo(self: Flow, value: int) -> int:
        return value

    monkeypatch.setattr(Flow, "echo", echo, raising=False)
    assert sync_flow.echo(3) == 3
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = sync_flow.nothing


def test_a_failed_execution_raises_in_the_caller(sync_flow: SyncFlow) -> None:
    shop.CALLS.clear()
    wf = sync_flow.workflow_add(shop.saga)
    with pytest.raises(ExecutionFailedError) as err:
        wf.execute({"order_id": -2, "customer": "bob"})
    assert err.value.step_id == "ship"
    assert shop.CALLS[-1] == "release -2 R--2"


def test_workflows_made_in_sync_code(sync_flow: SyncFlow) -> None:
    def double(msg: Message) -> int:
        return int(msg.json()) * 2

    wf = sync_flow.workflow_create("double", FunctionStep(double, id="double"))
    assert [[s.id for s in level] for level in wf.steps()] == [["double"]]
    wf.append_steps(FunctionStep(double, id="again", requires=["double"]))
    eid = wf.execute(5)
    assert sync_flow.execution(eid).response == Message(b"20")
    wf.remove_steps("again")
    assert [s.id for s in wf.step_list] == ["double"]


def test_suspend_resume_and_abort_from_sync_code(sync_flow: SyncFlow) -> None:
    gate = threading.Event()
    started = threading.Event()

    def hold(msg: Message) -> str:  # a sync step: runs in the flow's threads
        started.set()
        gate.wait(10)
        return "held"

    def after(msg: Message) -> str:
        return "after"

    wf = sync_flow.workflow_create(
        "held", FunctionStep(hold, id="hold"), FunctionStep(after, id="after", requires=["hold"])
    )
    eid = wf.execute(async_=True)
    poll(started.is_set)
    wf.suspend(eid)
    assert sync_flow.execution(eid).status is Status.SUSPEND
    gate.set()
    sync_flow.settle(eid)
    info = sync_flow.execution(eid)
    assert info.steps["hold"].status is Status.SUCCESS
    assert info.steps["after"].status is Status.PENDING
    wf.resume(eid)
    assert sync_flow.wait(eid, timeout=10).status is Status.SUCCESS

    gate.clear()
    started.clear()
    second = wf.execute(async_=True)
    poll(started.is_set)
    sync_flow.abort(second)
    gate.set()
    assert sync_flow.wait(second, timeout=10).status is Status.ABORTED


def test_many_threads_start_executions_at_once(tmp_path: Path) -> None:
    with SyncFlow(f"sqlite:///{tmp_path / 'threads.db'}") as flow:
        wf = flow.workflow_add(shop.saga)

        def one(i: int) -> str:
            return wf.execute({"order_id": i, "customer": f"c{i}"})

        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(one, range(200)))
        assert len(set(ids)) == 200
        done = flow.executions(workflow_id="front-order", limit=500)
        assert len(done) == 200
        assert {e.status for e in done} == {Status.SUCCESS}


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def order_app(flow: SyncFlow) -> Callable[..., Iterable[bytes]]:
    """A WSGI application that runs the order saga for each POST /orders."""
    wf = flow.workflow_add(shop.saga)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        order = json.loads(environ["wsgi.input"].read(size))
        try:
            eid = wf.execute(order)
            body = {"id": eid, "status": str(flow.execution(eid).status)}
            status = "200 OK"
        except ExecutionFailedError as err:
            body = {"id": err.execution_id, "error": err.error}
            status = "422 Unprocessable Entity"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return app


def test_a_threaded_wsgi_server_starts_executions_from_its_request_threads(
    tmp_path: Path,
) -> None:
    with SyncFlow(f"sqlite:///{tmp_path / 'wsgi.db'}") as flow:
        server = make_server(
            "127.0.0.1",
            0,
            order_app(flow),
            server_class=ThreadingWSGIServer,
            handler_class=QuietHandler,
        )
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        url = f"http://127.0.0.1:{server.server_port}/orders"

        def post(i: int) -> tuple[int, dict[str, Any]]:
            data = json.dumps({"order_id": i, "customer": f"c{i}"}).encode()
            request = urllib.request.Request(url, data=data, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as err:
                with err:
                    return err.code, json.loads(err.read())

        try:
            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(post, [*range(1, 60), -1]))
        finally:
            server.shutdown()
            server.server_close()
            serving.join(10)
        ok = [body for status, body in answers if status == 200]
        assert len(ok) == 59
        assert {body["status"] for body in ok} == {"StatusSuccess"}
        assert len({body["id"] for body in ok}) == 59
        assert answers[-1][0] == 422
        assert "no courier" in answers[-1][1]["error"]
        stored = flow.executions(workflow_id="front-order", limit=100)
        assert len(stored) == 60


def test_a_closed_flow_says_so_and_closing_twice_is_fine(tmp_path: Path) -> None:
    flow = SyncFlow("memory://")
    with pytest.raises(MicrosagaError, match="the flow is not open"):
        flow.executions()
    with flow:
        loops = [t for t in threading.enumerate() if t.name == "microsaga-flow-loop"]
        assert loops
        assert "open" in repr(flow)
    flow.close()
    assert not any(t.is_alive() for t in loops)
    with pytest.raises(MicrosagaError, match="the flow is not open"):
        flow.execution("x")
    with flow:  # opens again
        assert flow.executions() == []


def test_a_store_that_cannot_open_fails_open_and_stops_the_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    with pytest.raises(MicrosagaError), SyncFlow(f"sqlite:///{tmp_path}/missing/dir/x.db"):
        pass
    assert threading.active_count() == before


def test_calling_it_from_its_own_loop_is_an_error_not_a_deadlock(sync_flow: SyncFlow) -> None:
    async def inside(msg: Message) -> None:  # an async step runs on the flow's loop
        sync_flow.executions()

    wf = sync_flow.workflow_create("inside", FunctionStep(inside, id="inside"))
    with pytest.raises(ExecutionFailedError, match="called on its own event loop"):
        wf.execute()


def test_a_sync_step_may_use_the_sync_flow(sync_flow: SyncFlow) -> None:
    def count(msg: Message) -> int:  # runs in the flow's threads, not on its loop
        return len(sync_flow.executions())

    wf = sync_flow.workflow_create("count", FunctionStep(count, id="count"))
    eid = wf.execute()
    assert sync_flow.execution(eid).response == Message(b"1")


def test_a_saga_is_added_like_a_workflow(sync_flow: SyncFlow) -> None:
    saga = Saga("tiny")

    @saga.step
    def hello(name: str) -> str:
        return f"hello {name}"

    eid = sync_flow.workflow_add(saga).execute("ada")
    assert sync_flow.execution(eid).response == Message(b'"hello ada"')


def test_a_signal_from_sync_code_wakes_a_waiting_execution(sync_flow: SyncFlow) -> None:
    wf = sync_flow.workflow_create("approval", WaitStep("approved"))
    eid = wf.execute({"n": 1}, async_=True)
    sync_flow.signal(eid, "approved", {"by": "ann"})
    poll(lambda: sync_flow.execution(eid).status is Status.SUCCESS)
    assert sync_flow.execution(eid).response == Message(b'{"by":"ann"}')


def test_hooks_redrive_and_prune_are_methods_of_it_too(sync_flow: SyncFlow) -> None:
    """Hooks (docs/observability.md) are added to a SyncFlow as to a Flow; redrive and
    prune have their own typed methods."""
    from microsaga import ExecutionEvent, Hook

    class Seen(Hook):
        def __init__(self) -> None:
            self.statuses: list[Status] = []

        def execution_status(self, event: ExecutionEvent) -> None:
            self.statuses.append(event.status)

    seen = Seen()
    sync_flow.add_hook(seen)
    assert seen in sync_flow.hooks
    wf = sync_flow.workflow_add(shop.saga)
    eid = wf.execute({"order_id": 7, "customer": "ada"})
    poll(lambda: Status.SUCCESS in seen.statuses)
    sync_flow.remove_hook(seen)
    assert seen not in sync_flow.hooks
    with pytest.raises(MicrosagaError, match="cannot redrive"):
        sync_flow.redrive(eid)
    assert sync_flow.prune(0) == 1
    assert sync_flow.executions() == []
    assert "redrive" in vars(SyncFlow)  # typed methods, not __getattr__'s
    assert "prune" in vars(SyncFlow)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_process_forked_after_open_gets_an_error_not_a_hang(tmp_path: Path) -> None:
    """A pre-forking server (gunicorn --preload, uWSGI) imports the application, which
    opens its SyncFlow, then forks its workers: the loop's thread is not in them."""
    with SyncFlow(f"sqlite:///{tmp_path / 'fork.db'}") as flow:
        assert flow.executions() == []
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report in one line, never return into pytest
            try:
                try:
                    flow.executions()
                    said = "no error"
                except MicrosagaError as exc:
                    said = str(exc)
                flow.close()  # as atexit does in a worker that exits: no wait for ever
                os.write(write, said.encode())
            finally:
                os._exit(0)
        os.close(write)
        try:
            ready, _, _ = select.select([read], [], [], 10)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            said = os.read(read, 4096).decode() if ready else "the child hangs"
        finally:
            os.close(read)
            os.waitpid(pid, 0)
        assert "before this process" in said, said
        assert "open a SyncFlow in each worker process" in said
        assert flow.executions() == []  # the parent's flow is untouched


def test_a_call_waiting_when_the_flow_closes_says_why_it_ends(tmp_path: Path) -> None:
    """A request thread still in execute() when the application shuts down: its
    CancelledError says what happened (it had no message)."""
    flow = SyncFlow(f"sqlite:///{tmp_path / 'close.db'}").open()
    wf = flow.workflow_create("approval", WaitStep("approved"))
    ended: list[BaseException] = []

    def request() -> None:
        try:
            wf.execute({"n": 1}, execution_id="waits")
        except BaseException as exc:  # what the thread would log
            ended.append(exc)

    thread = threading.Thread(target=request)
    thread.start()
    poll(lambda: bool(flow.executions()))
    flow.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(ended) == 1
    assert isinstance(ended[0], concurrent.futures.CancelledError)
    assert str(ended[0]) == "the SyncFlow was closed while this call waited"
