"""The HTTP API under load: latencies at 50 clients, and how many SSE clients one
``microsaga serve`` holds with events still arriving within a second.

    .venv/bin/python benchmarks/api_bench.py [--store URL] [--runs 3] [--sse 250,500,1000]

Starts ``microsaga serve`` (with its worker) as a process on a fresh store (SQLite by
default) and, from this process:

- latency: 50 clients at once, each sending its requests one after another:
  ``GET /api/executions/{id}`` of executions that exist, then ``POST
  /api/workflows/bench/executions`` (each starts a three-step saga that the served
  worker runs meanwhile); p50 and p99 of each, and the requests per second.
- SSE: N clients each open ``GET /api/executions/{id}/events`` (``fanout``: on 10
  executions, N/10 clients each; ``spread``: each client on an execution of its own).
  The executions' first step waits for a file. Once every stream has its first events,
  every execution is suspended through the API (``push``: the delay from the stored
  ``updated_at`` to the SUSPEND's arrival at each client, what the API's own actions
  and hook events take); then the file appears, the running first steps finish, and
  each client notes when the step's SUCCESS reaches it (``delay``: from the step's
  stored ``finished_at``; the worker's changes, found by the feed's periodic read in a
  build whose engine calls no hooks), and whether it got its stream's ``end``. Held
  means: every client got every event, the ``delay`` p99 within 1 s.

Prints each run and the medians over the runs as JSON on stdout (progress on stderr).
The clients and the server share the machine: on a 2-core box the clients' own work
is a good part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
BENCH = {
    "id": "bench",
    "steps": [
        {"function": "api_bench:echo", "id": "a"},
        {"function": "api_bench:echo", "id": "b", "requires": ["a"]},
        {"function": "api_bench:echo", "id": "c", "requires": ["b"]},
    ],
}
GATED = {
    "id": "gated",
    "steps": [
        {"function": "api_bench:gate", "id": "wait"},
        {"function": "api_bench:echo", "id": "after", "requires": ["wait"]},
    ],
}


# the steps (imported by the served process) ------------------------------------------


async def echo(msg: Any) -> Any:
    return msg.json()


async def gate(msg: Any) -> Any:
    path = msg.json()["gate"]
    while not os.path.exists(path):
        await asyncio.sleep(0.02)
    return {"opened": True}


# the harness -----------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Served:
    def __init__(self, store: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "microsaga", "--store", store, "serve", "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        found = re.search(r"http://[^/]+", line)
        if found is None:
            raise SystemExit(f"serve did not start: {line}{self.proc.stderr.read()}")
        self.url = found.group(0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


class Connection:
    """One kept-alive HTTP/1.1 connection, as lean as a client can be: the figures
    are the server's, not a Python HTTP client's (httpx with 50 connections costs more
    than the server it measures)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def latency(url: str, clients: int, total: int, make: Any) -> dict[str, Any]:
    """``total`` requests from ``clients`` concurrent connections; ``make(i)`` is the
    ``(method, path, body)`` of request ``i``."""
    host, port = url.removeprefix("http://").split(":")
    times: list[float] = []
    per_client = total // clients

    async def client(c: int) -> None:
        conn = Connection(host, int(port))
        try:
            for i in range(per_client):
                method, path, body = make(c * per_client + i)
                t0 = time.perf_counter()
                status, answer = await conn.request(method, path, body)
                times.append(time.perf_counter() - t0)
                assert status < 300, answer
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "requests": len(times),
        "p50_ms": round(pct(times, 0.50) * 1000, 2),
        "p99_ms": round(pct(times, 0.99) * 1000, 2),
        "per_second": round(len(times) / wall),
    }


async def sse(url: str, clients: int, executions: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        folder = tempfile.mkdtemp(prefix="api-bench-")
        gate_path = os.path.join(folder, "go")
        ids = []
        for _ in range(executions):
            started = await http.post(
                "/api/workflows/gated/executions", json={"input": {"gate": gate_path}}
            )
            ids.append(started.json()["id"])
        connected = asyncio.Event()
        ready = 0
        delays: list[float] = []  # a step's SUCCESS: found by the periodic read
        pushed: list[float] = []  # SUSPEND asked through the API: read at once
        ended = 0

        host, port = url.removeprefix("http://").split(":")

        async def watch(eid: str) -> None:
            # a raw HTTP/1.1 client (chunked transfer), as lean as the latency one
            nonlocal ready, ended
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /api/executions/{eid}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # the status line and headers
            first = True
            buffer = b""
            try:
                while True:
                    size = int((await reader.readline()).strip() or b"0", 16)
                    if size == 0:
                        return
                    buffer += await reader.readexactly(size + 2)
                    buffer = buffer[:-2] if buffer.endswith(b"\r\n") else buffer
                    while b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        lines = block.decode().split("\n")
                        kind = next((x[7:] for x in lines if x.startswith("event: ")), "")
                        raw = next((x[6:] for x in lines if x.startswith("data: ")), None)
                        if raw is None:
                            continue
                        if first:
                            first = False
                            ready += 1
                            if ready == clients:
                                connected.set()
                        data = json.loads(raw)
                        if kind == "step" and data["step_id"] == "wait":
                            step = data["step"]
                            if step["status"] == "SUCCESS":
                                done = datetime.fromisoformat(step["finished_at"]).timestamp()
                                delays.append(time.time() - done)
                        elif kind == "execution" and data["status"] == "SUSPEND":
                            at = datetime.fromisoformat(data["updated_at"]).timestamp()
                            pushed.append(time.time() - at)
                        elif kind == "end":
                            ended += 1
            finally:
                writer.close()

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(watch(ids[i % executions])) for i in range(clients)]
        await asyncio.wait_for(connected.wait(), 120)
        connect_s = time.perf_counter() - t0
        # what this process changes reaches the streams at once (as hook events will)
        await asyncio.gather(*(http.post(f"/api/executions/{eid}/suspend") for eid in ids))
        while len(pushed) < clients:
            await asyncio.sleep(0.05)
        # what the worker does is found by the once-a-second read in this build
        Path(gate_path).touch()
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
        finally:
            for task in tasks:
                task.cancel()
        return {
            "clients": clients,
            "executions": executions,
            "connect_s": round(connect_s, 2),
            "got_end": ended,
            "delay_p50_ms": round(pct(delays, 0.50) * 1000),
            "delay_p99_ms": round(pct(delays, 0.99) * 1000),
            "delay_max_ms": round(max(delays, default=float("nan")) * 1000),
            "push_p50_ms": round(pct(pushed, 0.50) * 1000),
            "push_p99_ms": round(pct(pushed, 0.99) * 1000),
            "held": ended == clients and len(delays) == clients and pct(delays, 0.99) <= 1.0,
        }


async def one_run(store: str, sse_sizes: list[int]) -> dict[str, Any]:
    served = Served(store)
    try:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=served.url, limits=limits, timeout=30) as http:
            for wf in (BENCH, GATED):
                assert (await http.put(f"/api/workflows/{wf['id']}", json=wf)).status_code == 200
            ids = []
            for n in range(200):
                answer = await http.post(
                    "/api/workflows/bench/executions", json={"input": {"n": n}}
                )
                ids.append(answer.json()["id"])
            await asyncio.sleep(1)  # the 200 executions end
            log("latency: GET /api/executions/{id}")
            get = await latency(
                served.url,
                50,
                10000,
                lambda i: ("GET", f"/api/executions/{ids[i % len(ids)]}", b""),
            )
            log("latency: POST /api/workflows/bench/executions")
            post = await latency(
                served.url,
                50,
                3000,
                lambda i: (
                    "POST",
                    "/api/workflows/bench/executions",
                    json.dumps({"input": {"i": i}}).encode(),
                ),
            )
        out: dict[str, Any] = {"get_execution": get, "start_execution": post, "sse": []}
        for size in sse_sizes:
            for shape, executions in (("fanout", 10), ("spread", size)):
                log(f"sse: {size} clients, {shape}")
                result = await sse(served.url, size, executions)
                out["sse"].append({"shape": shape, **result})
                log(f"  {result}")
        return out
    finally:
        served.stop()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[Any]) -> Any:
        return statistics.median(values)

    out: dict[str, Any] = {}
    for key in ("get_execution", "start_execution"):
        out[key] = {k: med([r[key][k] for r in runs]) for k in runs[0][key]}
    out["sse"] = []
    for i, first in enumerate(runs[0]["sse"]):
        rows = [r["sse"][i] for r in runs]
        row = {k: med([x[k] for x in rows]) for k in first if k not in ("shape", "held")}
        row["shape"] = first["shape"]
        row["held_runs"] = f"{sum(x['held'] for x in rows)}/{len(rows)}"
        out["sse"].append(row)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store URL (default: a fresh SQLite file per run)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sse", default="250,500,1000", help="numbers of SSE clients")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sse.split(",") if s]
    runs = []
    for run in range(args.runs):
        store = args.store or f"sqlite:///{tempfile.mkdtemp(prefix='api-bench-')}/store.db"
        log(f"run {run + 1}/{args.runs} on {store}")
        runs.append(await one_run(store, sizes))
    print(json.dumps({"runs": runs, "median": median_of(runs)}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
