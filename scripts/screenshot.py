"""Photograph the incident page for the README, as a responder sees it on a phone.

Run by ``scripts/screenshot``; reuses the tests' sidecar process and browser helpers.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.payloads import alert, body, notification  # noqa: E402
from tests.sidecar_process import SidecarProcess  # noqa: E402
from tests.support.binaries import find_binary  # noqa: E402
from tests.support.browser import chromium  # noqa: E402
from tests.support.readers import write_users_file  # noqa: E402

WIDTH, MAX_HEIGHT, SCALE = 390, 1500, 2


def fire(proc: SidecarProcess) -> str:
    """Two pods of the checkout API failing for nine minutes: one P1 incident."""
    now = time.time()
    alerts = [
        alert(
            "CheckoutErrorRate",
            fingerprint=f"{i:016x}",
            starts=now - 540 + 20 * i,
            labels={
                "incident_severity": "P1",
                "service": "publishing",
                "namespace": "shop",
                "pod": f"checkout-api-7d9f{i}",
            },
            annotations={"summary": "Checkout API answers 503 to most requests"},
        )
        for i in range(2)
    ]
    url = f"{proc.url}/webhook/alertmanager"  # loopback http, ours
    req = urllib.request.Request(url, data=body(notification(*alerts)), method="POST")  # noqa: S310
    incident_id: str = _call(req, proc.webhook_token)["changed"][0]["id"]
    # The Incident Commander and an expert, as the plan's roles.
    roles = {"roles": {"incident_commander": "alice", "smes": ["bob"]}}
    url = f"{proc.url}/api/v1/incidents/{incident_id}/roles"
    req = urllib.request.Request(url, data=json.dumps(roles).encode(), method="POST")  # noqa: S310
    _call(req, proc.api_token)
    return incident_id


def _call(req: urllib.request.Request, token: str) -> dict[str, Any]:
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "incident-page.png")
    args = parser.parse_args()
    browser, driver_path = find_binary("chromium"), find_binary("chromedriver")
    if browser is None or driver_path is None:
        print("install Debian's chromium and chromium-driver", file=sys.stderr)
        return 1
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    with tempfile.TemporaryDirectory() as tmp:
        users = write_users_file(Path(tmp) / "web-config.yml", {"alice": "correct-horse"})
        proc = SidecarProcess(
            Path(tmp) / "sidecar", overrides={"server": {"web_config_file": str(users)}}
        )
        proc.start()
        try:
            incident_id = fire(proc)
            signed_in = proc.url.replace("http://", "http://alice:correct-horse@")
            with chromium(browser, driver_path, size=(WIDTH, 844)) as driver:
                driver.get(f"{signed_in}/incidents/{incident_id}")
                driver.find_element(By.XPATH, "//button[text()='Acknowledge']").click()
                message = "Rolled back the 14:02 deploy of checkout-api; error rate falling."
                Select(driver.find_element(By.ID, "status")).select_by_value("Identified")
                driver.find_element(By.ID, "message").send_keys(message)
                driver.find_element(By.XPATH, "//button[text()='Post update']").click()
                height = driver.execute_script("return document.documentElement.scrollHeight")
                shot = driver.execute_cdp_cmd(
                    "Page.captureScreenshot",
                    {
                        "format": "png",
                        "captureBeyondViewport": True,
                        "clip": {
                            "x": 0,
                            "y": 0,
                            "width": WIDTH,
                            "height": min(int(height), MAX_HEIGHT),
                            "scale": SCALE,
                        },
                    },
                )
        finally:
            proc.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
