"""Structured logs: one JSON object per line, one line per incident transition, never a secret."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sidecar.logs import JsonFormatter, TextFormatter
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN
from tests.payloads import alert, body, notification


def record(msg: str, **extra: Any) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "sidecar.test", "levelname": "INFO", "msg": msg})
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_structured_fields() -> None:
    line = JsonFormatter().format(record("incident opened", incident_id="abc", severity="P1"))
    data = json.loads(line)
    assert data["msg"] == "incident opened"
    assert (data["incident_id"], data["severity"], data["level"]) == ("abc", "P1", "info")
    assert data["ts"].endswith("Z")


@pytest.mark.parametrize("key", ["webhook_token", "routing_key", "api_secret", "Authorization"])
def test_fields_named_like_secrets_are_redacted(key: str) -> None:
    for formatter in (JsonFormatter(), TextFormatter()):
        out = formatter.format(record("x", **{key: "s3cr3t-value"}))
        assert "s3cr3t-value" not in out
        assert "<redacted>" in out


async def test_one_line_per_transition_and_no_secret_in_any_log_line(
    client: TestClient[Any, Any], auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    resp = await client.post(
        "/webhook/alertmanager", data=body(notification(alert())), headers=auth
    )
    incident_id = (await resp.json())["changed"][0]["id"]
    await client.post(
        f"/api/v1/incidents/{incident_id}/acknowledge",
        json={"actor": "alice"},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    await client.post("/webhook/alertmanager", data=body(notification(alert())), headers=auth)
    transitions = [r for r in caplog.records if getattr(r, "event", "").startswith("incident_")]
    # The repeated notification changes nothing, so it logs no transition.
    assert [r.__dict__["event"] for r in transitions] == [
        "incident_opened",
        "incident_acknowledged",
    ]
    assert transitions[1].__dict__["actor"] == "alice"
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert WEBHOOK_TOKEN not in everything
    assert API_TOKEN not in everything
