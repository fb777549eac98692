"""Tickets through the real service: the ``ticket`` policy creates a Jira Cloud issue.

Jira is the fake written from Atlassian's REST API v3 documentation, a real
HTTP server on 127.0.0.1; without Jira, the ticket goes out as a webhook event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.clock import SystemClock
from sidecar.config import Config
from sidecar.runtime import Components, build_components
from sidecar.web import create_app
from tests.conftest import DATA, WEBHOOK_TOKEN
from tests.fakes.jira import API_TOKEN, EMAIL, FakeJira, adf_text
from tests.fakes.receiver import WebhookReceiver
from tests.payloads import alert, body, notification
from tests.support.outboxes import drain_all

Client = TestClient[Any, Any]
# The mini rules, with a P3 whose policy is "ticket" (plan 000: "Create ticket for team").
TICKET_SEVERITY = (
    "  - {name: P3, title: Low, paging: ticket, pagerduty_severity: info, "
    "sla: {acknowledge: 1d, resolve: 1w}}\n"
)


@pytest.fixture(autouse=True)
def rules_with_a_ticket_severity(tmp_path: Path) -> None:
    """The mini rules plus P3 (policy ticket), which info alerts get."""
    out = (DATA / "rules-mini.yaml").read_text().splitlines(keepends=True)
    out.insert(next(n for n, line in enumerate(out) if line.startswith("teams:")), TICKET_SEVERITY)
    at = next(n for n, line in enumerate(out) if line.startswith("ownership_rules:"))
    out.insert(at, "  - {name: low, match: ['severity=\"info\"'], severity: P3}\n")
    (tmp_path / "rules.yaml").write_text("".join(out))


@pytest.fixture
async def jira() -> AsyncIterator[FakeJira]:
    async with FakeJira(projects={"OPS": ["Task", "Incident"]}) as fake:
        yield fake


def jira_section(fake: FakeJira, **extra: Any) -> dict[str, Any]:
    return {
        "url": fake.base_url,
        "email": EMAIL,
        "api_token": API_TOKEN,
        "project": "OPS",
        "issue_type": "Incident",
        **extra,
    }


async def start(aiohttp_client: Callable[..., Any], config: Config) -> tuple[Client, Components]:
    components = build_components(config, clock=SystemClock(), registry=CollectorRegistry())
    return await aiohttp_client(create_app(components)), components


async def open_incident(client: Client, severity: str) -> str:
    payload = notification(
        alert(
            labels={"severity": severity, "service": "search"},
            annotations={"impact": "Some searches fail"},
            starts=time.time() - 60,
        )
    )
    resp = await client.post(
        "/webhook/alertmanager",
        data=body(payload),
        headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
    )
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["changed"][0]["id"])


RETRY = {"retry": {"initial": "50ms", "max": "2s"}}


async def test_a_ticket_policy_creates_an_issue_and_records_its_key(
    aiohttp_client: Callable[..., Any], config_factory: Callable[..., Config], jira: FakeJira
) -> None:
    client, components = await start(
        aiohttp_client, config_factory({"jira": jira_section(jira), "notifications": RETRY})
    )
    jira.fail_next(502)  # retried with the one policy
    incident_id = await open_incident(client, "info")
    paged = await open_incident_of_group(client, "critical")
    await drain_all(components)
    [issue] = jira.issues  # only the ticket severity's incident
    fields = issue.fields
    assert fields["project"] == {"key": "OPS"}
    assert fields["issuetype"] == {"name": "Incident"}
    assert fields["summary"] == "[P3] DBDown"
    assert fields["labels"] == ["incident"]
    text = adf_text(fields["description"])
    assert "Impact: Some searches fail" in text and "Component: search" in text
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert view["tickets"] == [
        {"key": "OPS-1", "url": f"{jira.base_url}/browse/OPS-1", "system": "jira"}
    ]
    assert "ticket_queued" in [e["kind"] for e in view["timeline"]]
    page = await (await client.get(f"/incidents/{incident_id}")).text()
    assert f'Ticket: <a href="{jira.base_url}/browse/OPS-1">OPS-1</a>' in page
    other = await (await client.get(f"/api/v1/incidents/{paged}")).json()
    assert other["tickets"] == []
    labels = {"integration": "jira", "action": "create", "result": "retried"}
    assert components.registry.get_sample_value("incident_sla_notifications_total", labels) == 1.0


async def open_incident_of_group(client: Client, severity: str) -> str:
    payload = notification(
        alert("OtherDown", labels={"severity": severity}, starts=time.time() - 60),
        group_key='{}:{alertname="OtherDown"}',
    )
    resp = await client.post(
        "/webhook/alertmanager",
        data=body(payload),
        headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
    )
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["changed"][0]["id"])


async def test_a_jira_400_is_a_dead_letter_in_jiras_words(
    aiohttp_client: Callable[..., Any], config_factory: Callable[..., Config], jira: FakeJira
) -> None:
    section = jira_section(jira, project="NOPE", issue_type="Task")
    client, components = await start(
        aiohttp_client, config_factory({"jira": section, "notifications": RETRY})
    )
    incident_id = await open_incident(client, "info")
    await drain_all(components)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    [item] = view["notifications"]
    assert (item["integration"], item["state"]) == ("jira", "dead")
    assert item["last_error"] == "HTTP 400: project: valid project is required"
    assert view["tickets"] == []
    labels = {"integration": "jira", "action": "create", "result": "rejected"}
    assert components.registry.get_sample_value("incident_sla_notifications_total", labels) == 1.0


async def test_a_wrong_token_is_a_dead_letter(
    aiohttp_client: Callable[..., Any], config_factory: Callable[..., Config], jira: FakeJira
) -> None:
    section = jira_section(jira, api_token="wrong")
    client, components = await start(aiohttp_client, config_factory({"jira": section}))
    incident_id = await open_incident(client, "info")
    await drain_all(components)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    [item] = view["notifications"]
    assert item["state"] == "dead" and item["last_error"].startswith("HTTP 401: ")
    assert jira.issues == []


async def test_without_jira_the_ticket_goes_out_as_a_webhook_event(
    aiohttp_client: Callable[..., Any], config_factory: Callable[..., Config]
) -> None:
    async with WebhookReceiver("s") as receiver:
        hook = {"name": "tickets", "url": receiver.url, "secret": "s", "events": ["ticket"]}
        client, components = await start(aiohttp_client, config_factory({"webhooks": [hook]}))
        incident_id = await open_incident(client, "info")
        await open_incident_of_group(client, "critical")
        await drain_all(components)
    [delivery] = receiver.accepted
    assert delivery.json["event"]["kind"] == "ticket"
    assert delivery.json["incident"]["id"] == incident_id
