"""The pages in a real browser: headless Chromium from Debian, at a phone's width, no JavaScript.

A sidecar process runs as users run it; the browser signs in (HTTP basic auth,
as a browser answers the prompt), opens the list and an incident (by its link,
then by its plan number), acknowledges it and posts a status update with the
plan's status through the page's forms, and the API confirms both as the
signed-in user. Screenshots go to the test's temporary directory.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess
from tests.support.binaries import require_binary, skip_or_fail
from tests.support.browser import chromium
from tests.support.readers import READER, READER_PASSWORD

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(tmp_path / "sidecar")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def request(proc: SidecarProcess, method: str, path: str, data: bytes | None, token: str) -> Any:
    req = urllib.request.Request(f"{proc.url}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with _OPENER.open(req, timeout=10) as resp:
        return json.loads(resp.read())


def fire(proc: SidecarProcess) -> str:
    a = alert(
        "ServiceDown",
        starts=time.time() - 120,
        labels={"incident_severity": "P1", "service": "publishing", "namespace": "shop"},
        annotations={"summary": "Checkout API answers 503 to most requests"},
    )
    answer = request(
        proc, "POST", "/webhook/alertmanager", body(notification(a)), proc.webhook_token
    )
    incident_id: str = answer["changed"][0]["id"]
    return incident_id


def fits_the_width(driver: Any) -> bool:
    """No horizontal scrolling of the page itself (wide tables scroll in their own box)."""
    width = driver.execute_script("return document.documentElement.scrollWidth")
    viewport = driver.execute_script("return window.innerWidth")
    return bool(width <= viewport)


def shows(driver: Any, css: str, text: str | None = None) -> bool:
    """Whether the element at ``css`` comes to be there (reading ``text``, if given) once the
    page in flight has loaded.

    Waits for the navigation a click started (generously: a loaded CI machine), not for time
    to pass: it returns as soon as the new page shows the text, and False if it never does.
    """
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    def read(d: Any) -> bool:
        try:
            found = d.find_element(By.CSS_SELECTOR, css)
            return text is None or bool(found.text == text)
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    try:
        return bool(WebDriverWait(driver, 60, poll_frequency=0.05).until(read))
    except TimeoutException:
        return False


def test_a_responder_signs_in_reads_and_acknowledges_from_a_phone(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.select import Select
    except ImportError:
        skip_or_fail("selenium (a dev dependency: pip install -e .[dev]) drives the browser")
    browser, driver_path = require_binary("chromium"), require_binary("chromedriver")
    incident_id = fire(sidecar)
    roles = json.dumps({"roles": {"incident_commander": "alice"}}).encode()
    path = f"/api/v1/incidents/{incident_id}/roles"
    number = request(sidecar, "POST", path, roles, sidecar.api_token)["number"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    signed_in = sidecar.url.replace("http://", f"http://{READER}:{READER_PASSWORD}@")
    with chromium(browser, driver_path) as driver:
        # Without credentials: nothing shown (a headless browser cannot answer the prompt).
        driver.get(f"{sidecar.url}/incidents")
        assert "Checkout API" not in driver.page_source
        driver.get(f"{signed_in}/incidents")
        driver.save_screenshot(str(shots / "list.png"))
        assert "signed in as reader" in driver.find_element(By.TAG_NAME, "header").text
        open_table = driver.find_element(By.CSS_SELECTOR, "table.incidents")
        assert "triggered" in open_table.text
        row = open_table.find_element(By.CSS_SELECTOR, "tbody tr")
        assert row.find_element(By.CSS_SELECTOR, "td[data-label=Status]").text == "Investigating"
        assert row.find_element(By.CSS_SELECTOR, "td[data-label=IC]").text == "alice"
        assert number in row.text
        assert fits_the_width(driver)

        open_table.find_element(By.PARTIAL_LINK_TEXT, "Checkout API").click()
        assert shows(driver, "table.clocks")
        assert driver.current_url.endswith(f"/incidents/{incident_id}")
        driver.save_screenshot(str(shots / "incident.png"))
        clocks = driver.find_element(By.CSS_SELECTOR, "table.clocks").text
        assert "Time to acknowledge" in clocks and "left" in clocks
        assert fits_the_width(driver)
        links = {a.text: a.get_attribute("href") for a in driver.find_elements(By.TAG_NAME, "a")}
        assert links["Source (generatorURL)"].startswith("http://prometheus.example:9090/")
        assert links["In Alertmanager"].startswith("http://alertmanager.example:9093/#/alerts?")

        driver.find_element(By.XPATH, "//button[text()='Acknowledge']").click()
        # The click returns before the form's answer has replaced the page.
        assert shows(driver, ".facts .state", "acknowledged")
        assert driver.current_url.endswith(f"/incidents/{incident_id}")
        # The same page by the plan's number, as the war room calls it.
        driver.get(f"{signed_in}/incidents/{number}")
        assert driver.find_element(By.CSS_SELECTOR, ".facts .number").text == number
        status = Select(driver.find_element(By.ID, "status"))
        offered = [o.get_attribute("value") for o in status.options]
        assert offered == ["", "Investigating", "Identified", "Monitoring", "Resolved"]
        status.select_by_value("Identified")
        driver.find_element(By.ID, "message").send_keys("Rolled back the 14:02 deploy")
        driver.find_element(By.XPATH, "//button[text()='Post update']").click()
        assert shows(driver, ".facts .status", "Identified")
        assert driver.current_url.endswith(f"/incidents/{incident_id}")
        timeline = driver.find_element(By.CSS_SELECTOR, "ol.timeline").text
        assert "Rolled back the 14:02 deploy" in timeline
        driver.save_screenshot(str(shots / "acknowledged.png"))

    view = request(sidecar, "GET", f"/api/v1/incidents/{incident_id}", None, sidecar.api_token)
    assert (view["state"], view["acknowledged_by"], view["acknowledge_source"]) == (
        "acknowledged",
        READER,
        "web",
    )
    assert (view["status"], view["roles"]["incident_commander"]) == ("Identified", "alice")
    updates = [e for e in view["timeline"] if e["kind"] == "status_update"]
    assert [(e["actor"], e["source"], e["data"]) for e in updates] == [
        (READER, "web", {"status": "Identified", "previous_status": "Investigating"})
    ]
    for name in ("list.png", "incident.png", "acknowledged.png"):
        assert (shots / name).read_bytes().startswith(b"\x89PNG"), name
