"""Outbound webhooks through the real service: signed lifecycle events, in order, retried.

The receiver is a real HTTP server on 127.0.0.1 that checks the signature as
the README tells receivers to.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.clock import Clock, FakeClock, SystemClock
from sidecar.config import Config
from sidecar.notify.webhooks import sign, verify
from sidecar.runtime import Components, build_components
from sidecar.web import create_app
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN
from tests.fakes.receiver import WebhookReceiver
from tests.payloads import alert, body, notification
from tests.support.outboxes import drain_all

Client = TestClient[Any, Any]
SECRET = "outbound-secret-1"


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(SECRET) as fake:
        yield fake


@pytest.fixture
def make_sidecar(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    receiver: WebhookReceiver,
) -> Callable[..., Any]:
    async def make(
        secret: str = SECRET, clock: Clock | None = None, **hook: Any
    ) -> tuple[Client, Components]:
        endpoint = {"name": "status-page", "url": receiver.url, "secret": secret, **hook}
        config = config_factory(
            {
                "notifications": {"retry": {"initial": "50ms", "max": "2s"}},
                "server": {"external_url": "https://sidecar.example"},
                "webhooks": [endpoint],
            }
        )
        components = build_components(
            config, clock=clock or SystemClock(), registry=CollectorRegistry()
        )
        return await aiohttp_client(create_app(components)), components

    return make


async def open_incident(
    client: Client, severity: str = "critical", now: float | None = None
) -> str:
    starts = (time.time() if now is None else now) - 60
    payload = notification(
        alert(labels={"severity": severity}, starts=starts, annotations={"impact": "x"})
    )
    resp = await client.post(
        "/webhook/alertmanager",
        data=body(payload),
        headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
    )
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["changed"][0]["id"])


async def api(client: Client, incident_id: str, action: str, **fields: str) -> None:
    resp = await client.post(
        f"/api/v1/incidents/{incident_id}/{action}",
        json=fields,
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert resp.status == 200, await resp.text()


def test_the_signature_is_pagerduty_style_and_verifies() -> None:
    raw = b'{"event":{"kind":"opened"}}'
    header = sign(raw, "s3cret")
    assert header.startswith("v1=") and len(header) == 3 + 64
    assert verify(raw, header, "s3cret")
    assert verify(raw, f"v1=00, {header}", "s3cret")  # any of several, during a rotation
    assert not verify(raw + b" ", header, "s3cret")
    assert not verify(raw, header, "other")


async def test_lifecycle_events_arrive_signed_in_order_with_the_incident(
    make_sidecar: Callable[..., Any], receiver: WebhookReceiver
) -> None:
    client, components = await make_sidecar()
    incident_id = await open_incident(client)
    await api(client, incident_id, "acknowledge", actor="alice")
    await api(client, incident_id, "updates", actor="alice", message="mitigating")
    await api(client, incident_id, "resolve", actor="alice", message="fixed")
    await drain_all(components)
    assert all(d.signed for d in receiver.deliveries)
    kinds = [d.json["event"]["kind"] for d in receiver.accepted]
    assert kinds == ["opened", "acknowledged", "status_update", "resolved"]
    assert [d.headers["X-Incident-SLA-Event"] for d in receiver.accepted] == kinds
    first = receiver.accepted[0].json
    assert first["incident"]["id"] == incident_id
    assert first["incident"]["severity"] == "P0"
    assert first["incident"]["impact"] == "x"
    assert first["incident"]["url"] == f"https://sidecar.example/api/v1/incidents/{incident_id}"
    assert receiver.accepted[2].json["event"]["message"] == "mitigating"
    deliveries = {d.headers["X-Incident-SLA-Delivery"] for d in receiver.accepted}
    assert len(deliveries) == 4


async def test_only_the_subscribed_events_go(
    make_sidecar: Callable[..., Any], receiver: WebhookReceiver
) -> None:
    client, components = await make_sidecar(events=["resolved"])
    incident_id = await open_incident(client)
    await api(client, incident_id, "acknowledge", actor="alice")
    await api(client, incident_id, "resolve", actor="alice")
    await drain_all(components)
    assert [d.json["event"]["kind"] for d in receiver.accepted] == ["resolved"]


async def test_a_5xx_and_a_429_are_retried_with_the_same_delivery_id(
    make_sidecar: Callable[..., Any], receiver: WebhookReceiver
) -> None:
    client, components = await make_sidecar()
    receiver.fail_next(503)
    receiver.fail_next(429, retry_after=1)
    incident_id = await open_incident(client)
    await api(client, incident_id, "acknowledge", actor="alice")
    await drain_all(components)
    assert [d.status for d in receiver.deliveries] == [503, 429, 204, 204]
    ids = [d.headers["X-Incident-SLA-Delivery"] for d in receiver.deliveries]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    reg = components.registry
    labels = {"integration": "webhook", "action": "opened", "result": "retried"}
    assert reg.get_sample_value("incident_sla_notifications_total", labels) == 2.0


async def test_a_refusal_is_a_dead_letter_shown_on_the_incident(
    make_sidecar: Callable[..., Any], receiver: WebhookReceiver
) -> None:
    client, components = await make_sidecar(secret="not-what-the-receiver-expects")
    incident_id = await open_incident(client)
    await drain_all(components)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    [item] = view["notifications"]
    assert (item["integration"], item["state"]) == ("webhook", "dead")
    assert item["last_error"] == "HTTP 401: nope"
    labels = {"integration": "webhook", "action": "opened", "result": "rejected"}
    assert components.registry.get_sample_value("incident_sla_notifications_total", labels) == 1.0


async def test_reminders_breaches_and_the_reviews_deadline_are_events_too(
    make_sidecar: Callable[..., Any], receiver: WebhookReceiver, clock: FakeClock
) -> None:
    client, components = await make_sidecar(clock=clock)
    t0 = clock.now()
    incident_id = await open_incident(client, now=t0)  # P0: updates every 15m, review in 24h
    await api(client, incident_id, "acknowledge", actor="alice")
    await drain_all(components)
    clock.set(t0 + 10 * 60)  # the reminder, 5 minutes before
    assert await components.scheduler.run_due() == 1
    await drain_all(components)
    clock.set(t0 + 15 * 60 + 1)
    assert await components.scheduler.run_due() == 1
    await drain_all(components)
    await api(client, incident_id, "resolve", actor="alice")
    await drain_all(components)
    clock.set(t0 + 15 * 60 + 1 + 86400 + 1)
    assert await components.scheduler.run_due() == 1
    await drain_all(components)
    kinds = [d.json["event"]["kind"] for d in receiver.accepted]
    assert kinds == ["opened", "acknowledged", "reminder", "breached", "resolved", "review_due"]
    assert receiver.accepted[3].json["event"]["data"]["sla"] == "update"
