"""The dashboard in a real headless browser: Debian's chromium driven by selenium.

Skipped, saying why, when /usr/bin/chromium or /usr/bin/chromedriver is absent (they
fail instead when CI is set: .ci/run installs them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from microsaga import Flow

from . import steps
from .live import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "browser-T0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.timeout(180)


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1366,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(f"sqlite:///{tmp_path / 'store.db'}", token=TOKEN) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            assert http.put("/api/workflows/order", json=steps.ORDER).status_code == 200
        yield server
        for name in list(steps.GATES):  # let held steps end before the flow closes
            server.soon(steps.GATES[name].set)


def until(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``check`` (in the browser) until it is truthy; fail after ``timeout``."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(None, timeout, poll_frequency=0.05, ignored_exceptions=(Exception,)).until(
        lambda _: check(), message=f"not within {timeout}s: {what}"
    )


def start(live: LiveServer, input: Any) -> str:
    answer = httpx.post(
        f"{live.url}/api/workflows/order/executions", json={"input": input}, headers=AUTH
    )
    assert answer.status_code == 202, answer.text
    eid: str = answer.json()["id"]
    return eid


def open_gate(live: LiveServer, name: str) -> None:
    live.soon(steps.gate(name).set)


def statuses(driver: Any) -> dict[str, str]:
    """The status of each box of the DAG on the page."""
    found: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('.dag .node')]"
        ".map((n) => [n.dataset.step, n.dataset.status]))"
    )
    return found


def execution_status(driver: Any) -> str | None:
    found: str | None = driver.execute_script(
        "const s = document.getElementById('execution-status'); return s && s.dataset.status;"
    )
    return found


def click(driver: Any, css: str) -> None:
    """Click the element ``css`` selects, again if the page redrew it between finding
    and clicking (a live page does: a stale element raises, and is looked up anew)."""
    from selenium.webdriver.common.by import By

    def clicked() -> bool:
        driver.find_element(By.CSS_SELECTOR, css).click()
        return True

    until(clicked, what=f"click {css}")


def click_action(driver: Any, action: str) -> None:
    from selenium.webdriver.common.by import By

    click(driver, f'button[data-action="{action}"]')
    until(lambda: driver.find_element(By.ID, "confirm-dialog").get_attribute("open") is not None)


def confirm(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "confirm-ok").click()
    until(
        lambda: driver.find_element(By.ID, "confirm-dialog").get_attribute("open") is None,
        what="the dialog closed after the action",
    )


def test_the_dashboard_follows_and_steers_executions(
    browser: Any, live: LiveServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(live.url + "/")
    # the token is asked once, and kept for the tab
    until(lambda: driver.find_element(By.ID, "token-dialog").get_attribute("open") is not None)
    driver.find_element(By.ID, "token-input").send_keys(TOKEN + Keys.ENTER)
    until(lambda: driver.find_element(By.ID, "executions"), what="the executions list")
    driver.execute_script("window.sameDocument = true")  # gone if the page reloads

    # an execution started through the API shows up, then turns SUCCESS, live
    eid = start(live, {"gate": "first"})
    row = f'tr[data-execution-id="{eid}"]'
    until(lambda: driver.find_element(By.CSS_SELECTOR, row), what="the new row")
    driver.find_element(By.CSS_SELECTOR, f"{row} a").click()
    until(lambda: statuses(driver).get("reserve") == "RUNNING", what="reserve RUNNING")
    assert statuses(driver)["charge"] == "PENDING"
    open_gate(live, "first")
    until(lambda: set(statuses(driver).values()) == {"SUCCESS"}, what="every box SUCCESS, live")
    until(lambda: execution_status(driver) == "SUCCESS", what="the execution SUCCESS")
    assert driver.execute_script("return window.sameDocument") is True
    cards = driver.find_elements(By.CSS_SELECTOR, "#steps .step")
    assert [c.get_attribute("data-status") for c in cards] == ["SUCCESS"] * 4
    # by keyboard: a box takes the focus; Enter goes to its step's run
    node = driver.find_element(By.CSS_SELECTOR, '.dag .node[data-step="charge"]')
    node.send_keys(Keys.ENTER)
    until(lambda: driver.switch_to.active_element.get_attribute("id") == "step-charge")
    shot = tmp_path / "execution.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot of the execution page: {shot}")

    # a failed execution shows its compensated steps
    failed = start(live, {"fail": True})
    driver.get(f"{live.url}/#/executions/{failed}")
    until(lambda: execution_status(driver) == "FAILURE", what="FAILURE")
    until(lambda: statuses(driver).get("reserve") == "COMPENSATED", what="reserve COMPENSATED")
    assert statuses(driver)["charge"] == "FAILURE"
    compensation = driver.find_element(By.CSS_SELECTOR, "#step-reserve .comp")
    assert compensation.get_attribute("data-compensation") == "SUCCESS"
    assert "card declined" in driver.find_element(By.ID, "execution-error").text

    # suspend and resume from the buttons
    held = start(live, {"gate": "second"})
    driver.get(f"{live.url}/#/executions/{held}")
    until(lambda: statuses(driver).get("reserve") == "RUNNING", what="reserve RUNNING")
    click_action(driver, "suspend")
    confirm(driver)
    until(lambda: execution_status(driver) == "SUSPEND", what="SUSPEND")
    open_gate(live, "second")  # the running step still finishes, and the page shows it
    until(lambda: statuses(driver).get("reserve") == "SUCCESS", what="reserve SUCCESS")
    assert statuses(driver)["charge"] == "PENDING"
    click_action(driver, "resume")
    confirm(driver)
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS after resume")
    assert set(statuses(driver).values()) == {"SUCCESS"}


@pytest.mark.skipif(
    not hasattr(Flow, "redrive"),
    reason="redrive with edited input: Flow.redrive is not in this build yet",
)
def test_the_dashboard_redrives_with_edited_input(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    failed = start(live, {"fail": True})
    driver.get(live.url + "/")
    driver.execute_script(f"sessionStorage.setItem('microsaga.token', {json.dumps(TOKEN)})")
    driver.get(f"{live.url}/#/executions/{failed}")
    driver.refresh()  # a new hash alone does not reload: the token is read at load
    until(lambda: execution_status(driver) == "FAILURE", what="FAILURE")
    click_action(driver, "redrive")
    editor = driver.find_element(By.CSS_SELECTOR, '#confirm-fields textarea[name="input"]')
    editor.clear()
    editor.send_keys('{"fixed": true}')
    confirm(driver)
    until(lambda: execution_status(driver) == "SUCCESS", what="the redriven execution SUCCESS")
    shown = driver.execute_script("return location.hash").rsplit("/", 1)[-1]
    redriven = httpx.get(f"{live.url}/api/executions/{shown}", headers=AUTH).json()
    assert redriven["request"] == {"fixed": True}


def test_the_dashboard_loads_nothing_from_elsewhere(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    eid = start(live, {"n": 1})
    driver.get(live.url + "/")
    driver.execute_script(f"sessionStorage.setItem('microsaga.token', {json.dumps(TOKEN)})")
    for page in ("#/", f"#/executions/{eid}", "#/workflows", "#/workflows/order"):
        driver.get(f"{live.url}/{page}")
        until(lambda: driver.find_element(By.CSS_SELECTOR, "main h1"), what=page)
        until(lambda: "Loading" not in driver.find_element(By.ID, "main").text, what=page)
    urls = [
        message["params"]["request"]["url"]
        for entry in driver.get_log("performance")
        if (message := json.loads(entry["message"])["message"])["method"]
        == "Network.requestWillBeSent"
    ]
    assert any(url.endswith("/static/vendor/dagre.min.js") for url in urls)
    assert any("/api/executions" in url for url in urls)
    # what goes over the network (the browser's own chrome:// pages do not)
    fetched = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")]
    assert [u for u in fetched if not u.startswith(live.url + "/")] == []
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    assert all(url.startswith(live.url + "/") for url in loaded), loaded
