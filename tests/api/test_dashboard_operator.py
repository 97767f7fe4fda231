"""The dashboard as an operator uses it, in headless Chromium: child executions, map
runs, errors of the actions, a wrong token, long ids and errors, the store going away."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from . import steps
from .live import LiveServer
from .test_dashboard import (
    AUTH,
    TOKEN,
    browser,
    click,
    click_action,
    execution_status,
    statuses,
    until,
)

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
NAP: dict[str, Any] = {
    "id": "nap",
    "steps": [
        {"function": f"{STEP}:fail_with", "id": "book"},
        {"sleep": 3600, "id": "nap", "requires": ["book"]},
    ],
}
SLOWMAP: dict[str, Any] = {
    "id": "slowmap",
    "steps": [
        {"map": {"over": "request.items", "step": {"function": "tests.api.steps:held"}}, "id": "m"}
    ],
}
MANYMAP: dict[str, Any] = {
    "id": "manymap",
    "steps": [
        {
            "map": {
                "over": "request.items",
                "concurrency": 1,  # in order: the map stops at its failed run
                "step": {"function": f"{STEP}:fail_with"},
            },
            "id": "m",
        }
    ],
}
PARENT: dict[str, Any] = {
    "id": "parent",
    "steps": [
        {"map": {"over": "request.items", "step": {"function": f"{STEP}:item"}}, "id": "items"},
        {"workflow": "payment", "id": "pay", "requires": ["items"]},
        {"wait": "confirmed", "id": "confirm", "requires": ["pay"]},
    ],
}

# its child fails with the request's error: a FAILURE child of a FAILURE parent
DECLINED: dict[str, Any] = {
    "id": "declined",
    "steps": [{"workflow": "payment", "id": "pay", "input": "request"}],
}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(f"sqlite:///{tmp_path / 'store.db'}", token=TOKEN) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            for definition in (steps.ORDER, PAYMENT, PARENT, HELD, NAP, SLOWMAP, MANYMAP, DECLINED):
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
    assert all("run" in r.get_attribute("class").split() for r in runs)  # set under it
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
    click(driver, "a.parent")
    until(lambda: statuses(driver).get("confirm") == "WAITING", what="back on the parent")
    # a signal from the dashboard ends the wait
    click_action(driver, "signal")
    event = driver.find_element(By.CSS_SELECTOR, '#confirm-fields input[name="event"]')
    assert event.get_attribute("value") == "confirmed"  # what the waiting step waits for
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
    # Escape gives up: the page says why, and does not ask again by itself
    driver.find_element(By.ID, "token-input").send_keys(Keys.ESCAPE)
    until(lambda: dialog.get_attribute("open") is None, what="the dialog closed")
    until(lambda: "Cannot show this page" in driver.find_element(By.ID, "main").text)
    assert dialog.get_attribute("open") is None
    driver.find_element(By.ID, "token-button").click()
    until(lambda: dialog.get_attribute("open") is not None, what="asked from the Token button")
    assert not driver.find_element(By.ID, "token-refused").is_displayed()
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
    click(driver, "#confirm-dialog button[value=cancel]")
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
    # the input fixed, the failed step named, it runs again in the same execution
    driver.find_element(By.CSS_SELECTOR, '#confirm-fields input[name="step"]').send_keys("only")
    editor.clear()
    editor.send_keys('{"fixed": true}')
    driver.find_element(By.ID, "confirm-ok").click()
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS after the redrive")
    assert get(live, suspended)["steps"]["only"]["request"] == {"fixed": True}
    # an unknown execution
    driver.get(f"{live.url}/#/executions/no-such-execution")
    until(lambda: "no-such-execution" in driver.find_element(By.CSS_SELECTOR, "main .error").text)
    assert driver.find_element(By.CSS_SELECTOR, "main h1").text == "Cannot show this page"


def rows(driver: Any) -> list[str]:
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#executions tr[data-execution-id]')]"
        ".map((r) => r.dataset.executionId)"
    )
    return found


def test_filters_and_pages_of_the_executions_list(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    signed_in(driver, live)
    until(lambda: "No executions." in driver.find_element(By.ID, "executions").text)
    ids = {start(live, "payment", {"n": i}) for i in range(60)}
    failed = start(live, "payment", {"error": "declined"})
    other = start(live, "order", {"n": 1})
    until(lambda: all(get(live, e)["status"] != "RUNNING" for e in ids), timeout=60)
    until(lambda: get(live, failed)["status"] == "FAILURE", what="the failed one")
    driver.refresh()
    Select(driver.find_element(By.ID, "filter-workflow")).select_by_value("payment")
    until(lambda: other not in rows(driver) and len(rows(driver)) == 25, what="payment only")
    Select(driver.find_element(By.ID, "filter-status")).select_by_value("SUCCESS")
    until(lambda: failed not in rows(driver), what="SUCCESS only")
    seen: list[str] = []
    older = driver.find_element(By.ID, "older")
    for _ in range(3):
        page = until(lambda: rows(driver), what="a page")
        seen += page
        if not older.is_enabled():
            break
        older.click()
        until(lambda p=page: rows(driver) != p, what="the next page")
    assert sorted(seen) == sorted(ids)
    assert not older.is_enabled()
    driver.find_element(By.ID, "newer").click()
    until(lambda: rows(driver) == seen[25:50], what="back a page")
    # the filters are in the address: a reload keeps them
    assert "workflow=payment" in driver.current_url
    assert "status=SUCCESS" in driver.current_url
    driver.refresh()
    until(lambda: rows(driver) == seen[:25], what="the first page after a reload")
    assert Select(driver.find_element(By.ID, "filter-status")).first_selected_option.text == (
        "SUCCESS"
    )


def test_the_store_going_away_and_coming_back(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    from microsaga.errors import StoreError

    driver = browser
    eid = start(live, "order", {"n": 1})
    signed_in(driver, live)
    until(lambda: eid in rows(driver), what="the row")
    assert live.flow is not None
    flow = live.flow

    async def away(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database is locked (test)")

    flow.executions = away  # type: ignore[method-assign]
    alert = driver.find_element(By.ID, "alert")
    until(lambda: alert.is_displayed(), what="the store said away")
    assert "database is locked (test)" in alert.text
    del flow.executions
    until(lambda: not alert.is_displayed(), what="the alert gone when the store is back")
    assert eid in rows(driver)


def overflows(driver: Any) -> bool:
    """The page is wider than the window: the user must scroll sideways."""
    wider: bool = driver.execute_script(
        "return document.documentElement.scrollWidth > document.documentElement.clientWidth"
    )
    return wider


def test_long_ids_and_errors_fit_the_window(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    long_id = "order-" + "x" * 190
    error = "the warehouse said: " + "no stock for this item; " * 200
    eid = start(live, "held", {"error": error}, eid=long_id)
    assert eid == long_id
    until(lambda: get(live, eid)["status"] == "SUSPEND", what="SUSPEND")
    signed_in(driver, live)
    until(lambda: eid in rows(driver), what="the row")
    assert not overflows(driver)
    driver.get(f"{live.url}/#/executions/{eid}")
    until(lambda: execution_status(driver) == "SUSPEND", what="the page")
    assert not overflows(driver)
    assert driver.find_element(By.CSS_SELECTOR, "#step-only .error").text.startswith(
        "the warehouse said"
    )
    # the large request is cut, and shown whole on demand
    request = driver.find_element(By.CSS_SELECTOR, "#messages details.json")
    assert len(request.find_element(By.TAG_NAME, "pre").text) < len(error)
    request.find_element(By.CSS_SELECTOR, "button.show-all").click()
    whole = json.loads(request.find_element(By.TAG_NAME, "pre").get_attribute("textContent"))
    assert whole == {"error": error}
    # a link naming a workflow that is not saved keeps it as the filter
    driver.get(f"{live.url}/#/?workflow=not-saved")
    until(lambda: "No executions." in driver.find_element(By.ID, "executions").text)
    select = driver.find_element(By.ID, "filter-workflow")
    assert select.get_attribute("value") == "not-saved"


def test_a_redrive_links_back_and_definitions_are_drawn(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    failed = start(live, "order", {"fail": True})
    signed_in(driver, live, f"#/executions/{failed}")
    until(lambda: execution_status(driver) == "FAILURE", what="FAILURE")
    click_action(driver, "redrive")
    driver.find_element(By.ID, "confirm-ok").click()  # the same request: fails again
    until(
        lambda: driver.find_element(By.CSS_SELECTOR, "a.redrive-of").text == failed,
        what="the redrive's page, linked to the one it redrives",
    )
    until(lambda: execution_status(driver) == "FAILURE", what="the redrive FAILURE")
    again = driver.find_element(By.CSS_SELECTOR, "main h1 .id").text
    assert not driver.find_element(By.ID, "redriven-by").is_displayed()  # not redriven
    click(driver, "a.redrive-of")
    until(lambda: driver.find_elements(By.CSS_SELECTOR, "a.redrive-of") == [])
    assert failed in driver.find_element(By.CSS_SELECTOR, "main h1").text
    # and the page of the one redriven links forward to its redrives, newest first
    later = httpx.post(f"{live.url}/api/executions/{failed}/redrive", headers=AUTH)
    assert later.status_code == 200, later.text
    driver.refresh()

    def redrives() -> list[str]:
        return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#redriven-by a")]

    until(lambda: redrives() == [later.json()["id"], again], what="both redrives linked")
    assert driver.find_element(By.ID, "redriven-by").is_displayed()
    click(driver, f'#redriven-by a[href$="{again}"]')
    until(lambda: driver.find_element(By.CSS_SELECTOR, "a.redrive-of").text == failed)
    # a saved definition: its steps as boxes, its requirements as arrows
    driver.get(f"{live.url}/#/workflows/parent")
    until(lambda: len(statuses(driver)) == 3, what="the parent's three boxes")
    kinds = driver.execute_script(
        "return [...document.querySelectorAll('.dag .node')].map((n) => "
        "n.dataset.step + ':' + n.querySelector('.status').textContent)"
    )
    assert sorted(kinds) == ["confirm:wait", "items:map", "pay:workflow"]  # not PENDING
    arrows = driver.execute_script(
        "return [...document.querySelectorAll('.dag .edge')].map((e) => "
        "e.dataset.from + '>' + e.dataset.to)"
    )
    assert sorted(arrows) == ["items>pay", "pay>confirm"]
    driver.get(f"{live.url}/#/workflows")
    until(lambda: driver.find_elements(By.CSS_SELECTOR, '#workflows tr[data-workflow-id="held"]'))


def test_a_failed_child_is_redriven_through_its_parent(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    parent = start(live, "declined", {"error": "card declined"})
    until(lambda: get(live, parent)["status"] == "FAILURE", what="the parent FAILURE")
    child = f"{parent}:pay"
    assert get(live, child)["status"] == "FAILURE"
    signed_in(driver, live, f"#/executions/{child}")
    until(lambda: execution_status(driver) == "FAILURE", what="the child's page")
    redrive = driver.find_element(By.CSS_SELECTOR, 'button[data-action="redrive"]')
    assert not redrive.is_enabled()  # the API refuses it: redrive the parent
    click(driver, "a.parent")
    until(lambda: execution_status(driver) == "FAILURE", what="the parent's page")
    until(
        lambda: driver.find_element(By.CSS_SELECTOR, 'button[data-action="redrive"]').is_enabled(),
        what="the parent's Redrive enabled",
    )


def test_a_page_shows_by_itself_when_the_store_is_back(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    from microsaga.errors import StoreError

    driver = browser
    eid = start(live, "order", {"n": 1})
    until(lambda: get(live, eid)["status"] == "SUCCESS", what="SUCCESS")
    assert live.flow is not None
    flow = live.flow

    async def away(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database is locked (test)")

    # the page reads the execution whole, or with its maps in brief
    store = flow.store
    store.get_execution = store.get_execution_in_brief = away  # type: ignore[method-assign]
    signed_in(driver, live, f"#/executions/{eid}")
    until(
        lambda: "database is locked (test)" in driver.find_element(By.CSS_SELECTOR, "main").text,
        what="the store said away",
    )
    del store.get_execution, store.get_execution_in_brief
    until(lambda: execution_status(driver) == "SUCCESS", what="the page once the store is back")


def fill_of(driver: Any, step: str) -> str:
    colour: str = driver.execute_script(
        "const n = [...document.querySelectorAll('.dag .node')]"
        ".find((n) => n.dataset.step === arguments[0]);"
        "return getComputedStyle(n.querySelector('rect')).fill",
        step,
    )
    return colour


def test_the_list_follows_and_an_abort_stops_a_sleep(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    signed_in(driver, live)
    held = start(live, "order", {"gate": "list"})
    badge = f'#executions tr[data-execution-id="{held}"] .badge'
    until(lambda: driver.find_element(By.CSS_SELECTOR, badge).text == "RUNNING", what="RUNNING")
    live.soon(steps.gate("list").set)
    until(lambda: driver.find_element(By.CSS_SELECTOR, badge).text == "SUCCESS", what="live")
    # a sleeping step: WAITING, in its own colour; abort without compensating
    napping = start(live, "nap", {"n": 1})
    driver.get(f"{live.url}/#/executions/{napping}")
    until(lambda: statuses(driver).get("nap") == "WAITING", what="nap WAITING")
    assert statuses(driver)["book"] == "SUCCESS"
    assert fill_of(driver, "nap") != fill_of(driver, "book")
    click_action(driver, "abort")
    Select(
        driver.find_element(By.CSS_SELECTOR, '#confirm-fields select[name="compensate"]')
    ).select_by_value("no")
    driver.find_element(By.ID, "confirm-ok").click()
    until(lambda: execution_status(driver) == "ABORTED", what="ABORTED")
    assert statuses(driver)["book"] == "SUCCESS"  # not compensated
    buttons = driver.find_elements(By.CSS_SELECTOR, "button[data-action]")
    enabled = [b.get_attribute("data-action") for b in buttons if b.is_enabled()]
    assert enabled == ["redrive"]


def test_an_unsaved_workflow_is_a_filter_not_a_dead_link(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    from microsaga import FunctionStep

    from . import operator_steps

    driver = browser
    flow = live.flow
    assert flow is not None

    async def run() -> str:
        wf = await flow.workflow_create("adhoc", FunctionStep(operator_steps.item, id="one"))
        return await flow.execute(wf, {"n": 1})

    eid = live.call(run)
    signed_in(driver, live, f"#/executions/{eid}")
    until(lambda: execution_status(driver) == "SUCCESS", what="the unsaved one")
    assert statuses(driver) == {"one": "SUCCESS"}

    async def held() -> str:
        wf = await flow.workflow_create(
            "adhoc-held",
            FunctionStep(steps.held, id="first"),
            FunctionStep(operator_steps.item, id="then", requires=["first"]),
        )
        return await flow.execute(wf, {"gate": "adhoc"}, async_=True)

    running = live.call(held)
    driver.get(f"{live.url}/#/executions/{running}")
    until(lambda: statuses(driver).get("first") == "RUNNING", what="first RUNNING")
    live.soon(steps.gate("adhoc").set)
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS, live")
    assert statuses(driver) == {"first": "SUCCESS", "then": "SUCCESS"}
    driver.get(f"{live.url}/#/executions/{eid}")
    until(lambda: driver.find_element(By.CSS_SELECTOR, "main h1 .id").text == eid, what="its page")
    until(lambda: execution_status(driver) == "SUCCESS", what="the unsaved one")
    # its workflow, never saved, leads to its executions, not to a missing definition
    click(driver, "main .meta a.workflow")
    until(lambda: rows(driver) == [eid], what="its executions")
    assert driver.find_element(By.ID, "filter-workflow").get_attribute("value") == "adhoc"
    row = f'#executions tr[data-execution-id="{eid}"]'
    click(driver, f"{row} a.workflow")
    until(lambda: rows(driver) == [eid], what="the same list from its row")
    assert "Cannot show" not in driver.find_element(By.ID, "main").text


def test_an_unsaved_workflow_links_its_children_and_draws_its_arrows(
    browser: Any, live: LiveServer
) -> None:
    from selenium.webdriver.common.by import By

    from microsaga import FunctionStep, SubflowStep

    from . import operator_steps

    driver = browser
    flow = live.flow
    assert flow is not None

    async def run() -> str:
        wf = await flow.workflow_create(
            "adhoc-parent",
            FunctionStep(operator_steps.item, id="first"),
            SubflowStep("payment", id="pay", requires=["first"]),
        )
        return await flow.execute(wf, {"n": 1})

    eid = live.call(run)
    signed_in(driver, live, f"#/executions/{eid}")
    until(lambda: statuses(driver).get("pay") == "SUCCESS", what="pay SUCCESS")
    arrows = driver.execute_script(
        "return [...document.querySelectorAll('.dag .edge')].map((e) => "
        "e.dataset.from + '>' + e.dataset.to)"
    )
    assert arrows == ["first>pay"]
    assert "not stored" not in driver.find_element(By.ID, "main").text
    click(driver, "#step-pay a.child")
    until(
        lambda: (
            execution_status(driver) == "SUCCESS"
            and driver.find_element(By.CSS_SELECTOR, "a.parent").text == eid
        ),
        what="the child's page, linked back to its parent",
    )
    assert statuses(driver) == {"charge": "SUCCESS"}


def test_an_id_with_url_characters_is_shown_and_steered(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    odd = "odd%20?x=1#frag&y+z'\"<b>é"
    eid = start(live, "held", {"error": "no"}, eid=odd)
    until(lambda: get_odd(live, eid)["status"] == "SUSPEND", what="SUSPEND")
    signed_in(driver, live)
    until(lambda: eid in rows(driver), what="the row")
    click(driver, "#executions tr[data-execution-id] td.id a")
    until(lambda: execution_status(driver) == "SUSPEND", what="its page")
    assert driver.find_element(By.CSS_SELECTOR, "main h1 .id").text == eid
    click_action(driver, "abort")
    driver.find_element(By.ID, "confirm-ok").click()
    until(lambda: execution_status(driver) == "ABORTED", what="ABORTED from its page")


def get_odd(live: LiveServer, eid: str) -> dict[str, Any]:
    from urllib.parse import quote

    answer = httpx.get(f"{live.url}/api/executions/{quote(eid, safe='')}", headers=AUTH)
    info: dict[str, Any] = answer.json()
    return info


def test_why_an_execution_waits_for_a_worker_is_shown(browser: Any, live: LiveServer) -> None:
    import dataclasses

    from selenium.webdriver.common.by import By

    driver = browser
    eid = start(live, "order", {"gate": "noted"})
    assert live.flow is not None
    flow = live.flow
    note = "no worker can run step reserve: no address for service 'inventory'"
    store = flow.store
    read_one, read_brief, read_many = flow.execution, store.get_execution_in_brief, flow.executions

    async def one(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(await read_one(*args, **kwargs), note=note)

    async def brief(*args: Any, **kwargs: Any) -> Any:  # what the page reads
        info, maps = await read_brief(*args, **kwargs)
        return dataclasses.replace(info, note=note), maps

    async def many(*args: Any, **kwargs: Any) -> Any:
        return [dataclasses.replace(x, note=note) for x in await read_many(*args, **kwargs)]

    flow.execution, flow.executions = one, many  # type: ignore[method-assign]
    store.get_execution_in_brief = brief  # type: ignore[method-assign]
    signed_in(driver, live)
    cell = f'#executions tr[data-execution-id="{eid}"] td.err'
    until(lambda: driver.find_element(By.CSS_SELECTOR, cell).text == note, what="in the list")
    driver.get(f"{live.url}/#/executions/{eid}")
    until(lambda: driver.find_element(By.ID, "execution-note").text == note, what="on its page")
    del flow.execution, flow.executions, store.get_execution_in_brief


def test_map_runs_update_live_without_closing_what_is_open(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    eid = start(live, "slowmap", {"items": [{"gate": "m0"}, {"gate": "m1"}, {"gate": "m2"}]})
    signed_in(driver, live, f"#/executions/{eid}")
    card = "#steps .step[data-step='m[{}]']"
    until(lambda: driver.find_element(By.CSS_SELECTOR, card.format(2)), what="the runs")
    # the operator opens the first run's request
    click(driver, f"{card.format(0)} details summary")
    opened = f"{card.format(0)} details[open]"
    assert driver.find_elements(By.CSS_SELECTOR, opened)
    live.soon(steps.gate("m1").set)
    until(
        lambda: (
            driver.find_element(By.CSS_SELECTOR, card.format(1)).get_attribute("data-status")
            == "SUCCESS"
        ),
        what="m[1] SUCCESS, live",
    )
    assert "SUCCESS 1" in driver.find_element(By.CSS_SELECTOR, "#step-m .runs").text
    assert driver.find_elements(By.CSS_SELECTOR, opened), "the opened request was closed"
    order = [
        c.get_attribute("data-step") for c in driver.find_elements(By.CSS_SELECTOR, "#steps .step")
    ]
    assert order == ["m", "m[0]", "m[1]", "m[2]"]
    for name in ("m0", "m2"):
        live.soon(steps.gate(name).set)
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS")
    until(lambda: "SUCCESS 3" in driver.find_element(By.CSS_SELECTOR, "#step-m .runs").text)
    assert driver.find_elements(By.CSS_SELECTOR, opened), "closed when the execution ended"


def test_starting_from_a_definition_and_its_refusal(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    lost: dict[str, Any] = {"id": "lost", "steps": [{"call": "nowhere.Service.Do", "id": "gone"}]}
    for description in ("first", "second"):  # two versions
        lost["description"] = description
        answer = httpx.put(f"{live.url}/api/workflows/lost", json=lost, headers=AUTH)
        assert answer.status_code == 200, answer.text
    signed_in(driver, live, "#/workflows/lost")
    until(lambda: statuses(driver).keys() == {"gone"}, what="its box")
    driver.find_element(By.ID, "start").click()
    until(lambda: driver.find_element(By.ID, "confirm-dialog").get_attribute("open") is not None)
    driver.find_element(By.ID, "confirm-ok").click()
    error = driver.find_element(By.ID, "confirm-error")
    until(lambda: error.is_displayed(), what="the 422 said in the dialog")
    assert error.text == "client not set: no client and no address for service 'nowhere'"
    click(driver, "#confirm-dialog button[value=cancel]")
    # an older version is shown, and not started
    Select(driver.find_element(By.ID, "version")).select_by_value("1")
    until(lambda: driver.execute_script("return location.hash").endswith("version=1"))
    until(lambda: not driver.find_element(By.ID, "start").is_enabled(), what="start disabled")
    # a saved workflow that runs: started from its page, shown
    driver.get(f"{live.url}/#/workflows/payment")
    until(lambda: statuses(driver).keys() == {"charge"}, what="its box")
    driver.find_element(By.ID, "start").click()
    editor = driver.find_element(By.CSS_SELECTOR, '#confirm-fields textarea[name="input"]')
    editor.clear()
    editor.send_keys('{"amount": 3}')
    driver.find_element(By.ID, "confirm-ok").click()
    until(lambda: execution_status(driver) == "SUCCESS", what="the started one")
    assert driver.find_element(By.CSS_SELECTOR, "#messages pre").text.startswith("{")


FAIL_READS = """
window.failReads = true;
const realFetch = window.fetch;
window.fetch = (url, init) => {
  const path = String(url);
  if (window.failReads && /api\\/executions\\/[^/?]+(\\?map_runs=\\d+)?$/.test(path)) {
    const problem = {type: "about:blank", title: "Service Unavailable", status: 503,
      detail: "the store is unavailable (test)", code: "store_unavailable"};
    return Promise.resolve(new Response(JSON.stringify(problem),
      {status: 503, headers: {"Content-Type": "application/problem+json"}}));
  }
  return realFetch(url, init);
};
"""


def test_the_end_of_an_execution_is_shown_after_a_failed_read(
    browser: Any, live: LiveServer
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    eid = start(live, "order", {"gate": "reread"})
    signed_in(driver, live, f"#/executions/{eid}")
    until(lambda: statuses(driver).get("reserve") == "RUNNING", what="reserve RUNNING")
    driver.execute_script(FAIL_READS)  # the read after the stream's end gets a 503
    live.soon(steps.gate("reread").set)
    alert = driver.find_element(By.ID, "alert")
    until(lambda: "the store is unavailable (test)" in alert.text, what="the 503 said")
    driver.execute_script("window.failReads = false")
    response = "#messages details:nth-of-type(2) pre"
    until(
        lambda: (
            '"charged": true' in driver.find_element(By.CSS_SELECTOR, response).text
            or "sent" in driver.find_element(By.CSS_SELECTOR, response).text
        ),
        what="the execution's response, read again",
    )
    until(lambda: not alert.is_displayed(), what="the alert gone")


def test_an_empty_store_without_a_token(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    with LiveServer(f"sqlite:///{tmp_path / 'empty.db'}") as server:
        driver.get(server.url + "/")
        until(lambda: "No executions." in driver.find_element(By.ID, "executions").text)
        driver.get(f"{server.url}/#/workflows")
        until(lambda: "No saved workflows." in driver.find_element(By.ID, "workflows").text)
        driver.get(f"{server.url}/#/workflows/nothing")
        until(lambda: "nothing" in driver.find_element(By.CSS_SELECTOR, "main .error").text)
        assert driver.find_element(By.ID, "token-dialog").get_attribute("open") is None


def test_a_suspended_execution_steered_elsewhere_shows_it(browser: Any, live: LiveServer) -> None:
    driver = browser
    eid = start(live, "held", {"error": "not yet"})
    until(lambda: get(live, eid)["status"] == "SUSPEND", what="SUSPEND")
    signed_in(driver, live, f"#/executions/{eid}")
    until(lambda: execution_status(driver) == "SUSPEND", what="its page")
    # another operator, or the CLI, redrives it with a mended input
    answer = httpx.post(
        f"{live.url}/api/executions/{eid}/redrive", json={"input": {"ok": 1}}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS without a reload")
    assert statuses(driver) == {"only": "SUCCESS"}


def test_the_list_says_where_an_execution_came_from(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    parent = start(live, "parent", {"items": [1]})
    failed = start(live, "order", {"fail": True})
    until(lambda: get(live, failed)["status"] == "FAILURE", what="the order FAILURE")
    redriven = httpx.post(f"{live.url}/api/executions/{failed}/redrive", headers=AUTH)
    assert redriven.status_code == 200, redriven.text
    again = redriven.json()["id"]
    child = f"{parent}:pay"
    until(lambda: get(live, child).get("status") == "SUCCESS", what="the child SUCCESS")
    listed = httpx.get(f"{live.url}/api/executions", headers=AUTH).json()["items"]
    found = {x["id"]: (x["parent_id"], x["redrive_of"]) for x in listed}
    assert (found[child], found[again], found[parent]) == (
        (parent, None),
        (None, failed),
        (None, None),
    )
    signed_in(driver, live)
    until(lambda: child in rows(driver) and again in rows(driver), what="both listed")

    def said(eid: str) -> list[str]:
        row = driver.find_element(By.CSS_SELECTOR, f'#executions tr[data-execution-id="{eid}"]')
        return [line.text for line in row.find_elements(By.CSS_SELECTOR, ".lineage")]

    assert said(child) == [f"child of {parent}"]
    assert said(again) == [f"redrives {failed}"]
    assert said(parent) == []
    row = driver.find_element(By.CSS_SELECTOR, f'#executions tr[data-execution-id="{child}"]')
    row.find_element(By.CSS_SELECTOR, ".lineage a").click()
    until(
        lambda: (
            driver.execute_script("return decodeURIComponent(location.hash)")
            == f"#/executions/{parent}"
        ),
        what="the parent's page",
    )
    # the parent ends, and its page's event stream with it: the server stops at once
    signal = {"event": "confirmed", "payload": {}}
    answer = httpx.post(f"{live.url}/api/executions/{parent}/signal", json=signal, headers=AUTH)
    assert answer.status_code == 200, answer.text
    until(lambda: execution_status(driver) == "SUCCESS", what="the parent SUCCESS")


def run_cards(driver: Any, map_id: str) -> list[str]:
    """The ids of the run cards drawn under a map, in order."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#steps .step.run')].map((c) => c.dataset.step)"
        ".filter((s) => s.startsWith(arguments[0] + '['))",
        map_id,
    )
    return found


def test_a_large_map_shows_its_counts_and_failed_runs(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    items: list[dict[str, Any]] = [{} for _ in range(30)]
    items[25] = {"error": "out of stock"}
    eid = start(live, "manymap", {"items": items})
    signed_in(driver, live, f"#/executions/{eid}")
    until(lambda: execution_status(driver) == "FAILURE", what="FAILURE")
    line = driver.find_element(By.CSS_SELECTOR, "#step-m .runs").text
    assert line == "26 runs SUCCESS 25 FAILURE 1", line
    # a card for the failed run, not 26 cards
    assert run_cards(driver, "m") == ["m[25]"]
    assert "out of stock" in driver.find_element(By.ID, "step-m[25]").text
    show = driver.find_element(By.CSS_SELECTOR, "#step-m .show-runs")
    assert show.text == "Show all 26 runs"
    show.click()  # every run read now: they show when they have come
    until(lambda: run_cards(driver, "m") == [f"m[{i}]" for i in range(26)], what="every run")
    click(driver, "#step-m .show-runs")
    assert run_cards(driver, "m") == ["m[25]"]


def test_a_large_map_running_updates_its_counts_live(browser: Any, live: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    eid = start(live, "slowmap", {"items": [{"gate": f"big{i}"} for i in range(25)]})
    signed_in(driver, live, f"#/executions/{eid}")
    runs = "#step-m .runs"
    until(lambda: "RUNNING 25" in driver.find_element(By.CSS_SELECTOR, runs).text, what="25")
    assert run_cards(driver, "m") == []  # none failed: the count line alone
    # the page follows the stream, not by reading the whole execution again
    driver.get_log("performance")
    for i in range(10):
        live.soon(steps.gate(f"big{i}").set)
    until(
        lambda: "SUCCESS 10" in driver.find_element(By.CSS_SELECTOR, runs).text,
        what="10 runs SUCCESS, live",
    )
    assert driver.find_element(By.CSS_SELECTOR, runs).text == "25 runs SUCCESS 10 RUNNING 15"
    assert run_cards(driver, "m") == []
    assert not [url for url in requested(driver) if urlsplit(url).path.endswith(f"/{eid}")]
    for i in range(10, 25):
        live.soon(steps.gate(f"big{i}").set)
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS")
    until(lambda: driver.find_element(By.CSS_SELECTOR, runs).text == "25 runs SUCCESS 25")


def test_a_large_running_map_comes_in_brief(browser: Any, live: LiveServer) -> None:
    """The page of a running map of many runs reads its counts and its failed runs, not
    every run's request and response (twice: the execution, then the stream's first
    state); "Show all" reads them."""
    from selenium.webdriver.common.by import By

    saved = httpx.put(f"{live.url}/api/workflows/mapped", json=steps.mapped(), headers=AUTH)
    assert saved.status_code == 200, saved.text
    # two runs wait for their gate, 22 succeed, the last fails: the execution runs
    items: list[Any] = [{"gate": "brief"}, {"gate": "brief"}]
    items += [{"n": i} for i in range(22)] + [{"error": "out of stock"}]
    eid = start(live, "mapped", {"items": items})
    driver = browser
    signed_in(driver, live, f"#/executions/{eid}")
    runs = "#step-m .runs"
    until(
        lambda: (
            driver.find_element(By.CSS_SELECTOR, runs).text
            == "25 runs RUNNING 2 SUCCESS 22 FAILURE 1"
        ),
        what="the counts",
    )
    assert execution_status(driver) == "RUNNING"
    until(lambda: run_cards(driver, "m") == ["m[24]"], what="the failed run's card")
    # read with until: the stream's first state may draw the cards again meanwhile
    until(
        lambda: "out of stock" in driver.find_element(By.ID, "step-m[24]").text,
        what="the failed run's error",
    )
    until(
        lambda: (
            driver.find_element(By.CSS_SELECTOR, "#step-m .runs-shown").text
            == "Its failed or undoing runs are shown below. Show all 25 runs"
        ),
        what="the note on the runs shown",
    )
    asked = [urlsplit(url) for url in requested(driver)]
    reads = [u.query for u in asked if u.path.endswith((f"/{eid}", f"/{eid}/events"))]
    assert reads  # the execution, then its stream: each in brief, no read of every run
    assert set(reads) == {"map_runs=20"}
    # live, in brief: the counts follow
    live.soon(steps.gate("brief").set)
    until(lambda: execution_status(driver) == "FAILURE", what="FAILURE")
    until(
        lambda: driver.find_element(By.CSS_SELECTOR, runs).text == "25 runs SUCCESS 24 FAILURE 1",
        what="the counts at the end",
    )
    assert run_cards(driver, "m") == ["m[24]"]
    # every run, when asked for
    click(driver, "#step-m .show-runs")
    until(lambda: run_cards(driver, "m") == [f"m[{i}]" for i in range(25)], what="every run")
    reads = [u.query for u in map(urlsplit, requested(driver)) if u.path.endswith(f"/{eid}")]
    assert reads[-1] == ""  # the execution read whole
    click(driver, "#step-m .show-runs")
    until(lambda: run_cards(driver, "m") == ["m[24]"], what="the failed run again")


def requested(driver: Any) -> list[str]:
    """The URLs the page asked for since the performance log was last read."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_a_large_map_of_an_unstored_definition_is_one_box(browser: Any, live: LiveServer) -> None:
    """A map of a workflow whose definition is not stored (a local function): its runs
    were each a box of the DAG, 10,000 boxes for 10,000 runs."""
    from selenium.webdriver.common.by import By

    from microsaga import FunctionStep, MapStep

    flow = live.flow
    assert flow is not None

    async def local(msg: Any) -> Any:  # not importable: the definition is not stored
        return msg.json()

    async def run() -> str:
        wf = await flow.workflow_create(
            "local-map", MapStep(FunctionStep(local), over="request.items", id="m")
        )
        return await flow.execute(wf, {"items": list(range(30))})

    eid = live.call(run)
    driver = browser
    signed_in(driver, live, f"#/executions/{eid}")
    until(lambda: execution_status(driver) == "SUCCESS", what="SUCCESS")
    assert statuses(driver) == {"m": "SUCCESS"}
    assert driver.find_element(By.CSS_SELECTOR, "#step-m .runs").text == "30 runs SUCCESS 30"
    assert run_cards(driver, "m") == []
    click(driver, "#step-m .show-runs")
    until(lambda: run_cards(driver, "m") == [f"m[{i}]" for i in range(30)], what="every run")
