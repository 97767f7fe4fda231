"""The dashboard as an operator uses it, in headless Chromium: child executions, map
runs, errors of the actions, a wrong token, long ids and errors, the store going away."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import steps
from .live import LiveServer
from .test_dashboard import AUTH, TOKEN, browser, click_action, execution_status, statuses, until

__all__ = ["browser"]  # the fixture, used by name

pytestmark = pytest.mark.timeout(180)

STEP = "tests.api.operator_steps"
PAYMENT: dict[str, Any] = {
    "id": "payment",
    "steps": [{"function": f"{STEP}:fail_with", "id": "charge"}],
}
HELD: dict[str, Any] = {
    "id": "held",
    "on_failure": "suspend",
    "steps": [{"function": f"{STEP}:fail_with", "id": "only"}],
}
PARENT: dict[str, Any] = {
    "id": "parent",
    "steps": [
        {"map": {"over": "request.items", "step": {"function": f"{STEP}:item"}}, "id": "items"},
        {"workflow": "payment", "id": "pay", "requires": ["items"]},
        {"wait": "confirmed", "id": "confirm", "requires": ["pay"]},
    ],
}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(f"sqlite:///{tmp_path / 'store.db'}", token=TOKEN) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            for definition in (steps.ORDER, PAYMENT, PARENT, HELD):
                answer = http.put(f"/api/workflows/{definition['id']}", json=definition)
                assert answer.status_code == 200, answer.text
        yield server
        for name in list(steps.GATES):
            server.soon(steps.GATES[name].set)


def start(live: LiveServer, workflow: str, input: Any, eid: str | None = None) -> str:
    body: dict[str, Any] = {"input": input}
    if eid:
        body["execution_id"] = eid
    answer = httpx.post(f"{live.url}/api/workflows/{workflow}/executions", json=body, headers=AUTH)
    assert answer.status_code == 202, answer.text
    started: str = answer.json()["id"]
    return started


def get(live: LiveServer, eid: str) -> dict[str, Any]:
    info: dict[str, Any] = httpx.get(f"{live.url}/api/executions/{eid}", headers=AUTH).json()
    return info


def signed_in(driver: Any, live: LiveServer, page: str = "#/") -> None:
    driver.get(live.url + "/")
    driver.execute_script(f"sessionStorage.setItem('microsaga.token', {json.dumps(TOKEN)})")
    driver.get(f"{live.url}/{page}")
    driver.refresh()


def test_a_child_and_map_runs_from_the_parent_page(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    parent = start(live, "parent", {"items": [1, 2, 3]})
    signed_in(driver, live, f"#/executions/{parent}")
    until(lambda: statuses(driver).get("confirm") == "WAITING", what="confirm WAITING")
    # the map's runs are listed with the map step, each with its own status
    runs = driver.find_elements(By.CSS_SELECTOR, '#steps .step[data-step^="items["]')
    assert [r.get_attribute("data-step") for r in runs] == ["items[0]", "items[1]", "items[2]"]
    assert {r.get_attribute("data-status") for r in runs} == {"SUCCESS"}
    assert driver.find_element(By.CSS_SELECTOR, "#step-items .runs").text == "3 runs SUCCESS 3"
    # the workflow step links to its child, and the child back to its parent
    link = driver.find_element(By.CSS_SELECTOR, "#step-pay a.child")
    link.click()
    child = f"{parent}:pay"
    until(
        lambda: (
            driver.execute_script("return decodeURIComponent(location.hash)")
            == f"#/executions/{child}"
        )
    )
    until(lambda: execution_status(driver) == "SUCCESS", what="the child SUCCESS")
    driver.find_element(By.CSS_SELECTOR, "a.parent").click()
    until(lambda: statuses(driver).get("confirm") == "WAITING", what="back on the parent")
    # a signal from the dashboard ends the wait
    click_action(driver, "signal")
    driver.find_element(By.CSS_SELECTOR, '#confirm-fields input[name="event"]').send_keys(
        "confirmed"
    )
    driver.find_element(By.CSS_SELECTOR, '#confirm-fields textarea[name="payload"]').send_keys(
        '{"by": "ops"}'
    )
    driver.find_element(By.ID, "confirm-ok").click()
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS after the signal")
    assert get(live, parent)["steps"]["confirm"]["response"] == {"by": "ops"}


def test_a_wrong_token_is_said_to_be_refused(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(live.url + "/")
    dialog = driver.find_element(By.ID, "token-dialog")
    until(lambda: dialog.get_attribute("open") is not None, what="the token asked")
    assert not driver.find_element(By.ID, "token-refused").is_displayed()
    driver.find_element(By.ID, "token-input").send_keys("not-the-token" + Keys.ENTER)
    until(
        lambda: driver.find_element(By.ID, "token-refused").is_displayed(),
        what="the token said to be refused",
    )
    assert dialog.get_attribute("open") is not None
    driver.find_element(By.ID, "token-input").send_keys(TOKEN + Keys.ENTER)
    until(lambda: driver.find_element(By.ID, "executions"), what="the executions list")


def test_errors_of_actions_and_pages_are_readable(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    held = start(live, "order", {"gate": "late"})
    signed_in(driver, live, f"#/executions/{held}")
    until(lambda: statuses(driver).get("reserve") == "RUNNING", what="reserve RUNNING")
    click_action(driver, "suspend")  # the dialog open, the execution ends meanwhile
    live.soon(steps.gate("late").set)
    until(lambda: get(live, held)["status"] == "SUCCESS", what="SUCCESS in the store")
    driver.find_element(By.ID, "confirm-ok").click()
    error = driver.find_element(By.ID, "confirm-error")
    until(lambda: error.is_displayed(), what="the 409 shown in the dialog")
    assert error.text == "cannot suspend an execution that is SUCCESS"
    # a finished execution is redriven whole: no step is asked for
    failed = start(live, "order", {"fail": True})
    driver.get(f"{live.url}/#/executions/{failed}")
    until(lambda: execution_status(driver) == "FAILURE", what="FAILURE")
    click_action(driver, "redrive")
    assert driver.find_elements(By.CSS_SELECTOR, '#confirm-fields input[name="step"]') == []
    driver.find_element(By.CSS_SELECTOR, "#confirm-dialog button[value=cancel]").click()
    # a suspended one: a step that does not exist is said in the dialog
    suspended = start(live, "held", {"error": "out of stock"})
    driver.get(f"{live.url}/#/executions/{suspended}")
    until(lambda: execution_status(driver) == "SUSPEND", what="SUSPEND")
    assert "out of stock" in driver.find_element(By.CSS_SELECTOR, "#step-only .error").text
    click_action(driver, "redrive")
    driver.find_element(By.CSS_SELECTOR, '#confirm-fields input[name="step"]').send_keys("nope")
    driver.find_element(By.ID, "confirm-ok").click()
    until(lambda: error.is_displayed(), what="the unknown step said in the dialog")
    assert "nope" in error.text
    # edited input that is not JSON is said before anything is sent
    editor = driver.find_element(By.CSS_SELECTOR, '#confirm-fields textarea[name="input"]')
    editor.clear()
    editor.send_keys("{oops")
    driver.find_element(By.CSS_SELECTOR, '#confirm-fields input[name="step"]').clear()
    driver.find_element(By.ID, "confirm-ok").click()
    until(lambda: "not valid JSON" in error.text, what="the JSON error")
    # the input fixed, the failed step runs again in the same execution
    editor.clear()
    editor.send_keys('{"fixed": true}')
    driver.find_element(By.ID, "confirm-ok").click()
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS after the redrive")
    # an unknown execution
    driver.get(f"{live.url}/#/executions/no-such-execution")
    until(lambda: "no-such-execution" in driver.find_element(By.CSS_SELECTOR, "main .error").text)
    assert driver.find_element(By.CSS_SELECTOR, "main h1").text == "Cannot show this page"
