"""Figures of the dashboard's page of a running map of many runs, in headless Chromium
over SQLite: the bytes the page reads from the API (the execution and its event
stream's first state) and the time until it shows the map's counts, medians of a few
loads. Not a test: run ``.venv/bin/python -m tests.api.map_page_figures``.

The map runs 10,000 runs by default: the last fails, the 50 before them wait for a
gate (RUNNING), the others succeeded, so the execution runs while the page is loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from microsaga import Status

from . import steps
from .live import LiveServer

FAILED = 1  # no run starts after one failed: the last
HELD = 50  # fewer than a worker runs at once (100): the failed ones run

# set before the page's own scripts run: when the map's count line first shows
WATCH = """
window.countsAt = null;
new MutationObserver(() => {
  const line = document.querySelector("#step-m .runs");
  if (window.countsAt === null && line && line.textContent.startsWith("%d runs")) {
    window.countsAt = performance.now();
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def chromium(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1366,900",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def start(live: LiveServer, runs: int) -> str:
    items: list[Any] = [
        {"n": i, "sku": f"SKU-{i:06d}", "warehouse": "north-3", "qty": 1 + i % 5}
        for i in range(runs)
    ]
    # runs start in order, and none starts after one failed
    for i in range(runs - FAILED - HELD, runs - FAILED):
        items[i]["gate"] = "figures"
    for i in range(runs - FAILED, runs):
        items[i]["error"] = "out of stock"
    with httpx.Client(base_url=live.url, timeout=60) as http:
        assert http.put("/api/workflows/mapped", json=steps.mapped()).status_code == 200
        started = http.post("/api/workflows/mapped/executions", json={"input": {"items": items}})
        assert started.status_code == 202, started.text
        eid: str = started.json()["id"]
    flow = live.flow
    assert flow is not None
    while True:  # every run started: the failed ones done, the held ones RUNNING
        info = live.call(lambda: flow.execution(eid), timeout=300)
        counts: dict[Status, int] = defaultdict(int)
        for sid, run in info.steps.items():
            if sid != "m":
                counts[run.status] += 1
        if counts[Status.RUNNING] == HELD and sum(counts.values()) == runs:
            return eid
        time.sleep(0.5)


def load(driver: Any, url: str, eid: str) -> tuple[float, int]:
    """One load of the page: ms until the counts show, bytes read from the API."""
    driver.get_log("performance")  # what came before
    driver.get(f"{url}/?load={time.monotonic_ns()}#/executions/{eid}")
    urls: dict[str, str] = {}
    got: dict[str, int] = defaultdict(int)
    shown = None
    quiet_since = time.monotonic()
    while True:
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message["params"]
            if message["method"] == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
            elif message["method"] == "Network.dataReceived":
                got[params["requestId"]] += params["dataLength"]
                quiet_since = time.monotonic()
        if shown is None:
            shown = driver.execute_script("return window.countsAt")
        elif time.monotonic() - quiet_since > 3:  # the stream's first state has come
            break
        time.sleep(0.05)
    api = {urls[rid]: n for rid, n in got.items() if f"/api/executions/{eid}" in urls.get(rid, "")}
    print(f"counts shown after {shown:7.0f} ms; bytes read from the API: {api}")
    return float(shown), sum(api.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LiveServer(f"sqlite:///{tmp}/store.db") as live:
        began = time.monotonic()
        eid = start(live, args.runs)
        print(f"{args.runs} runs started in {time.monotonic() - began:.0f} s")
        driver = chromium(Path(tmp) / "profile")
        try:
            driver.execute_cdp_cmd(
                "Page.addScriptToEvaluateOnNewDocument", {"source": WATCH % args.runs}
            )
            figures = [load(driver, live.url, eid) for _ in range(args.loads)]
        finally:
            driver.quit()
            live.soon(steps.gate("figures").set)
    ms = statistics.median(f[0] for f in figures)
    size = statistics.median(f[1] for f in figures)
    print(f"median: counts shown after {ms:.0f} ms, {size:,.0f} bytes read from the API")


if __name__ == "__main__":
    main()
