"""The dashboard in headless Chromium, against a real lab (API + Celery worker)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from server.models import Worker, utcnow
from tests.browser.support import TOKEN, Lab, requires_chromium
from tests.conftest import TINY

pytestmark = requires_chromium

# The unit tests' tiny model, meta-tested often, and long enough to cancel.
LIVE_OVERRIDES = [*TINY, "training.num_iterations=100000", "evaluation.every=10"]
HTML_NAME = "<img src=x onerror=alert(1)>"
HTML_WORKER = "<b>x</b>"
RUN_START_S = 60.0  # a busy machine takes a while to start a worker and torch
DIGITS_CURVES = ".dataset-panel[data-dataset=digits] .curve-chart .trace"
API_REFUSAL = re.compile(r"/api/\S+ - Failed to load resource: .* status of 4\d\d")


def wait(driver: Any, condition: Any, timeout: float = 20.0) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def console_errors(driver: Any) -> list[str]:
    """Console errors since the last call (failed scripts, CSP violations).

    An API call answered 4xx is logged too; the page shows those itself.
    """
    return [
        e["message"] for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not API_REFUSAL.search(e["message"])
    ]  # fmt: skip


def loss_points(driver: Any) -> int:
    return driver.execute_script(
        "const chart = document.getElementById('loss-chart');"
        "return chart.data ? chart.data[0].x.length : 0;"
    )


def accuracy_points(driver: Any) -> int:
    """Meta-tests drawn for VSML on digits."""
    return driver.execute_script(
        "const chart = document.querySelector("
        "'.dataset-panel[data-dataset=digits] .accuracy-chart');"
        "return chart && chart.data ? chart.data[0].x.length : 0;"
    )


def run_status(driver: Any) -> str:
    return driver.find_element(By.ID, "run-page").get_attribute("data-status") or ""


def while_alive(condition: Any) -> Any:
    """`condition` for a run page, failing at once (with why) if the run fails."""

    def check(driver: Any) -> Any:
        if run_status(driver) == "failed":
            error = driver.find_element(By.ID, "run-error-text").text
            raise AssertionError(f"the run failed: {error}")
        return condition(driver)

    return check


def create_from_preset(driver: Any, lab: Lab, name: str) -> None:
    """New-experiment page: the quick preset, tiny overrides, create and launch."""
    driver.get(lab.url + "/")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#experiments-body tr"))
    driver.find_element(By.LINK_TEXT, "New experiment").click()
    picker = wait(driver, lambda d: d.find_element(
        By.CSS_SELECTOR, "#preset option[value=quick]"))  # fmt: skip
    Select(driver.find_element(By.ID, "preset")).select_by_value(picker.text)
    editor = driver.find_element(By.ID, "config")
    assert "name: quick" in editor.get_attribute("value")
    driver.find_element(By.ID, "name").clear()
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "overrides").send_keys("\n".join(LIVE_OVERRIDES))
    driver.find_element(By.ID, "create-launch").click()


def test_launch_from_preset_watch_live_and_cancel(lab: Lab, chrome: Any) -> None:
    """A run launched from the browser draws its loss live and cancels."""
    create_from_preset(chrome, lab, "browser-live")
    wait(chrome, lambda d: re.search(r"/runs/\d+$", d.current_url))
    wait(chrome, while_alive(lambda d: run_status(d) == "running"), RUN_START_S)

    # Points arrive over the event stream: the page is never reloaded.
    wait(chrome, while_alive(lambda d: loss_points(d) >= 3), RUN_START_S)
    seen = loss_points(chrome)
    wait(chrome, while_alive(lambda d: loss_points(d) >= seen + 5))
    wait(chrome, while_alive(lambda d: accuracy_points(d) >= 2))  # meta-tests too
    wait(chrome, lambda d: d.find_elements(By.CSS_SELECTOR, DIGITS_CURVES))
    assert chrome.find_element(By.ID, "run-logs").text
    table = chrome.find_element(By.ID, "meta-test-table").text
    assert all(learner in table for learner in ("vsml", "sgd", "adam")), table

    chrome.find_element(By.ID, "cancel-run").click()
    wait(chrome, lambda d: run_status(d) == "cancelled", timeout=30)
    assert not chrome.find_element(By.ID, "cancel-run").is_displayed()
    assert console_errors(chrome) == []


def test_user_text_is_shown_as_text(lab: Lab, chrome: Any) -> None:
    """An experiment named like HTML shows as that text, never as markup."""
    experiment = lab.call("POST", "/api/experiments", {
        "name": HTML_NAME, "description": "<b>not bold</b>",
        "tags": ["<i>tag</i>"], "config": "name: xss\n",
    })  # fmt: skip
    overrides = [*TINY, "training.num_iterations=2"]
    [run] = lab.call("POST", f"/api/experiments/{experiment['id']}/runs",
                     {"seeds": [0], "overrides": overrides})  # fmt: skip

    chrome.get(lab.url + "/")
    row = f"#experiments-body tr[data-experiment-id='{experiment['id']}']"
    cell = wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"{row} strong"))
    assert cell.text == HTML_NAME
    assert chrome.find_element(By.CSS_SELECTOR, f"{row} .tag").text == "<i>tag</i>"
    run_row = f"#runs-body tr[data-run-id='{run['id']}'] td:nth-child(3)"
    run_cell = wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, run_row))
    assert run_cell.text == HTML_NAME
    assert chrome.find_elements(By.CSS_SELECTOR, "main img, main b, main i") == []

    chrome.get(f"{lab.url}/runs/{run['id']}")
    title = wait(chrome, lambda d: d.find_element(By.ID, "run-title").text)
    assert title.startswith(HTML_NAME)
    info = chrome.find_element(By.ID, "run-info").text
    assert all(field in info for field in ("Queue", "Devices", "Attempts")), info
    assert chrome.find_elements(By.CSS_SELECTOR, "main img") == []

    # Plotly would render tags in legend names: they must show as text.
    deadline = time.monotonic() + 60
    while lab.call("GET", f"/api/runs/{run['id']}")["status"] != "succeeded":
        assert time.monotonic() < deadline, "the 2-iteration run did not finish"
        time.sleep(0.3)
    chrome.get(f"{lab.url}/compare?runs={run['id']}")
    legend = ".legendtext"
    wait(chrome, lambda d: any(HTML_NAME in e.text for e in
                               d.find_elements(By.CSS_SELECTOR, legend)))  # fmt: skip
    with pytest.raises(NoAlertPresentException):
        chrome.switch_to.alert.text  # noqa: B018 (reading it is the check)
    assert console_errors(chrome) == []


def add_worker(lab: Lab, name: str) -> None:
    """A worker row beating now, written straight into the lab's database."""
    now = utcnow()
    engine = create_engine(lab.database_url)
    try:
        with Session(engine) as session, session.begin():
            session.add(Worker(
                name=name, hostname="<i>host</i>", queues=["runs.gpu8"], gpus=8,
                devices=["cuda:0 <i>GPU</i>"], pid=1, started_at=now,
                heartbeat_at=now,
            ))  # fmt: skip
    finally:
        engine.dispose()


def worker_rows(driver: Any) -> dict[str, str]:
    """Worker name -> the text of its row in the Workers panel."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#workers-body tr")
    return {r.find_element(By.CSS_SELECTOR, ".worker-name").text: r.text for r in rows}


def test_workers_panel_lists_workers_as_text(lab: Lab, chrome: Any) -> None:
    """The runs page lists online workers, with what they report shown as text."""
    add_worker(lab, HTML_WORKER)
    chrome.get(lab.url + "/")
    wait(chrome, lambda d: HTML_WORKER in worker_rows(d))
    row = worker_rows(chrome)[HTML_WORKER]
    assert all(text in row for text in ("<i>host</i>", "<i>GPU</i>", "runs.gpu8"))
    assert chrome.find_elements(By.CSS_SELECTOR, "main b, main i") == []

    # The lab's own worker announces itself too (`vsml-lab up` names it local@).
    wait(chrome, lambda d: any(n.startswith("local@") for n in worker_rows(d)),
         RUN_START_S)  # fmt: skip
    assert not chrome.find_element(By.ID, "workers-none").is_displayed()
    assert console_errors(chrome) == []


def test_config_problem_marks_its_line(lab: Lab, chrome: Any) -> None:
    """An unknown key in the YAML is marked on its line, with the fix."""
    chrome.get(lab.url + "/experiments/new")
    editor = wait(chrome, lambda d: d.find_element(By.ID, "config"))
    editor.send_keys("name: typo\ntraining:\n  num_iteration: 5\n")
    chrome.find_element(By.ID, "create").click()
    mark = wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, "#gutter .error"))
    assert mark.text.endswith("3")
    problem = chrome.find_element(By.CSS_SELECTOR, "#problems li").text
    assert "num_iteration" in problem and "num_iterations" in problem
    band = chrome.find_element(By.CSS_SELECTOR, "#backdrop .mark")
    assert band.get_attribute("data-line") == "3"
    assert console_errors(chrome) == []


def test_token_is_asked_once(token_lab: Lab, chrome: Any) -> None:
    """With a token, a page asks for it, refuses a wrong one, then remembers it."""
    chrome.get(token_lab.url + "/compare")
    wait(chrome, lambda d: "/login?next=/compare" in d.current_url)
    field = chrome.find_element(By.ID, "token")
    field.send_keys("wrong")
    field.submit()
    error = wait(chrome, lambda d: d.find_element(By.ID, "login-error"))
    wait(chrome, lambda d: error.is_displayed())
    field.clear()
    field.send_keys(TOKEN)
    field.submit()
    wait(chrome, lambda d: d.current_url == token_lab.url + "/compare")

    # The cookie opens every page, the API and the event streams.
    chrome.get(token_lab.url + "/")
    wait(chrome, lambda d: d.find_elements(By.CSS_SELECTOR, "#experiments-body tr"))
    live = chrome.find_element(By.ID, "live-indicator")
    wait(chrome, lambda d: live.text == "live")
    # `vsml-lab api` starts no worker: the page says runs would wait.
    none = chrome.find_element(By.ID, "workers-none")
    wait(chrome, lambda d: none.is_displayed())
    assert none.text.startswith("No worker is online")
    assert chrome.current_url == token_lab.url + "/"
    assert console_errors(chrome) == []


def test_experiment_is_deleted_from_the_runs_page(lab: Lab, chrome: Any) -> None:
    """Delete asks for confirmation, then the experiment leaves the list."""
    experiment = lab.call("POST", "/api/experiments",
                          {"name": "to-delete", "config": "name: x\n"})  # fmt: skip
    chrome.get(lab.url + "/")
    row = f"tr[data-experiment-id='{experiment['id']}']"
    button = wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .delete"))
    button.click()
    chrome.switch_to.alert.accept()
    wait(chrome, lambda d: not d.find_elements(By.CSS_SELECTOR, row))
    names = [e["name"] for e in lab.call("GET", "/api/experiments")["items"]]
    assert "to-delete" not in names
