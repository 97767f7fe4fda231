"""The app served by uvicorn on a loopback port, from a thread with its own event loop:
for clients that block (a browser driven by selenium, schemathesis's requests)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import uvicorn

from microsaga import Flow
from microsaga.api import create_app

T = TypeVar("T")


class LiveServer:
    def __init__(self, store_url: str, token: str | None = None) -> None:
        self.store_url = store_url
        self.token = token
        self.url = ""
        self.flow: Flow | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-api", daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the live API did not start within 30 s")
        if self._failed is not None:
            raise self._failed
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the live API did not stop within 30 s"

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run ``fn()`` on the server's loop (where the flow lives); its result."""
        assert self.loop is not None

        async def run() -> T:
            return await fn()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(timeout)

    def soon(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` on the server's loop (to open a gate, say)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with Flow(self.store_url, poll_interval=0.05) as flow:
            self.flow = flow
            app = create_app(flow, token=self.token)
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    log_level="warning",
                    lifespan="off",
                    access_log=False,
                    # as `microsaga serve`: a browser's event stream, reopened while
                    # the server stops, does not hold the stop for ever
                    timeout_graceful_shutdown=10,
                )
            )
            task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            self._ready.set()
            await self._stop.wait()
            server.should_exit = True
            await app.state.feed.close()
            await task
        sock.close()
