"""SIGKILL while Slack is down: the incident's thread still goes out after the restart, once.

The sidecar runs as a process, as users run it; Slack is the fake Slack Web API.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.slack import FakeSlack
from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess

pytestmark = pytest.mark.e2e


async def pending_notifications(http: aiohttp.ClientSession, proc: SidecarProcess) -> int:
    """How many of the incidents' notifications the sidecar still has to send."""
    headers = {"Authorization": f"Bearer {proc.api_token}"}
    async with http.get(f"{proc.url}/api/v1/incidents", headers=headers) as resp:
        incidents = (await resp.json())["incidents"]
    pending = 0
    for inc in incidents:
        async with http.get(f"{proc.url}/api/v1/incidents/{inc['id']}", headers=headers) as r:
            view: dict[str, Any] = await r.json()
        pending += sum(n["state"] == "pending" for n in view["notifications"])
    return pending


async def test_slack_delivery_survives_sigkill(tmp_path: Path) -> None:
    async with FakeSlack(channels={"incidents": "C0INCIDENTS"}) as slack:
        slack.server_error_next(times=100_000)  # down until the sidecar is killed
        proc = SidecarProcess(
            tmp_path,
            overrides={
                "slack": {
                    "token": slack.token,
                    "api_url": slack.api_url,
                    "channels": {"default": "#incidents"},
                    "messages_per_channel": 100,
                },
                "notifications": {"retry": {"initial": "100ms", "max": "300ms"}},
            },
        )
        await proc.astart()
        try:
            async with aiohttp.ClientSession() as http:
                firing = notification(
                    alert(labels={"severity": "critical"}, starts=time.time() - 60)
                )
                headers = {"Authorization": f"Bearer {proc.webhook_token}"}
                async with http.post(proc.webhook_url, data=body(firing), headers=headers) as r:
                    assert r.status == 200
                async with asyncio.timeout(20):
                    while len(slack.calls) < 2:  # tried, failed, retried
                        await asyncio.sleep(0.05)
                await proc.akill()
                slack.clear_faults()
                await proc.astart()
                async with asyncio.timeout(30):
                    while await pending_notifications(http, proc):
                        await asyncio.sleep(0.1)
            assert len(slack.channel_messages("C0INCIDENTS")) == 1
        finally:
            await proc.astop()
