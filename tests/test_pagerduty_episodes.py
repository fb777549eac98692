"""Webhooks about PagerDuty incidents that are not simply the newest page of one incident.

One dedup key pages every episode of an Alertmanager group, so PagerDuty opens
an incident per episode on the same key; and with alert grouping PagerDuty puts
several of our pages into one incident. The sidecar runs in the test's event
loop with PagerDuty's fake (a real HTTP server on 127.0.0.1); both read one
clock the test moves, so the times PagerDuty writes and the ones the outbox
records are the test's, and nothing waits on the wall clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.incidents import Incident
from sidecar.pagerduty.inbound import earlier_episode
from sidecar.pagerduty.webhooks import WebhookEvent
from sidecar.runtime import Components, build_components
from sidecar.store.base import KeyPage
from sidecar.web import create_app
from tests.fakes.pagerduty import FakePagerDuty, encode_event, signature_header
from tests.payloads import alert, notification
from tests.test_pagerduty_flow import ROUTING_KEY, SECRET, post

Client = TestClient[Any, Any]
GROUP = '{}:{alertname="DBDown"}'
DEDUP = hashlib.sha256(GROUP.encode()).hexdigest()
OTHER_GROUP = '{}:{alertname="APIDown"}'
# Half past a second: PagerDuty's created_at drops the half.
T0 = 1_700_000_600.5


@pytest.fixture
def shared_clock() -> FakeClock:
    return FakeClock(T0)


def pagerduty(clock: FakeClock, **options: Any) -> FakePagerDuty:
    return FakePagerDuty(clock=lambda: datetime.fromtimestamp(clock.now(), UTC), **options)


async def start(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    clock: FakeClock,
    pd: FakePagerDuty,
) -> tuple[Client, Components]:
    config = config_factory(
        {
            "pagerduty": {
                "events_url": pd.events_url,
                "api_url": pd.api_url,
                "api_token": pd.api_token,
                "webhook_secret": SECRET,
                "routing_key": ROUTING_KEY,
                "timeout": "1s",
                "retry": {"initial": "1s", "max": "2s", "rate_limited_initial": "1s"},
            }
        }
    )
    components = build_components(config, clock=clock, registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    return client, components


async def webhook(client: Client, event: dict[str, Any], delivery: str) -> dict[str, Any]:
    """Deliver one PagerDuty webhook, signed, and return the sidecar's answer."""
    raw = encode_event(event)
    resp = await client.post(
        "/webhook/pagerduty",
        data=raw,
        headers={"X-PagerDuty-Signature": signature_header(raw, SECRET), "X-Webhook-Id": delivery},
    )
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


async def send(components: Components) -> int:
    """Send whatever is due now and wait for every outcome; what is still pending."""
    worker = components.outbox
    assert worker is not None
    await worker.drain()
    return await components.store.outbox_pending()


async def view(client: Client, incident_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/incidents/{incident_id}")
    assert resp.status == 200
    result: dict[str, Any] = await resp.json()
    return result


def resolved_events(pd: FakePagerDuty, pd_incident_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in pd.webhook_events
        if e["event"]["event_type"] == "incident.resolved"
        and e["event"]["data"]["id"] == pd_incident_id
    ]


def firing(starts: float) -> dict[str, Any]:
    return notification(alert(labels={"severity": "critical"}, starts=starts), group_key=GROUP)


def over(starts: float, ends: float) -> dict[str, Any]:
    done = alert(labels={"severity": "critical"}, status="resolved", starts=starts, ends=ends)
    return notification(done, group_key=GROUP)


@pytest.fixture
async def pd(shared_clock: FakeClock) -> AsyncIterator[FakePagerDuty]:
    async with pagerduty(shared_clock) as fake:
        yield fake


async def test_a_late_echo_of_the_previous_episodes_resolve_leaves_the_new_incident_open(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    shared_clock: FakeClock,
    pd: FakePagerDuty,
) -> None:
    client, components = await start(aiohttp_client, config_factory, shared_clock, pd)
    # Episode A pages: PagerDuty opens incident #1.
    a = (await post(client, firing(T0 - 60)))["changed"][0]["id"]
    assert await send(components) == 0
    first = pd.open_incident(DEDUP)
    assert first is not None
    # PagerDuty is down: A's resolve waits in the outbox.
    pd.go_down(503)
    shared_clock.advance(1)
    await post(client, over(T0 - 60, T0))
    assert await send(components) == 1
    # The group fires again: a new incident B on the same dedup key, its trigger
    # queued behind A's resolve.
    shared_clock.advance(1)
    b = (await post(client, firing(T0 + 2)))["changed"][0]["id"]
    assert b != a
    # PagerDuty is back: A's resolve resolves #1, then B's trigger opens #2.
    pd.come_back()
    shared_clock.advance(10)
    assert await send(components) == 0
    second = pd.open_incident(DEDUP)
    assert second is not None and second.id != first.id
    # PagerDuty tells of #1's resolution (caused by A's resolve): about A, not B.
    [echo] = resolved_events(pd, first.id)
    answer = await webhook(client, echo, "echo")
    assert answer["incident_ids"] == [b] and answer["changed"] == [{"id": b, "state": "triggered"}]
    b_view = await view(client, b)
    assert b_view["state"] == "triggered"
    [ignored] = [e for e in b_view["timeline"] if e["kind"] == "pagerduty_ignored"]
    assert f"PagerDuty incident {first.id} was created" in ignored["message"]
    assert "earlier episode" in ignored["message"]
    # B's own PagerDuty incident still acts on B.
    await webhook(client, pd.acknowledge_incident(second.id), "ack-2")
    assert (await view(client, b))["state"] == "acknowledged"
    # And Alertmanager's resolution of B reaches #2.
    shared_clock.advance(1)
    await post(client, over(T0 + 2, T0 + 13))
    assert await send(components) == 0
    assert [e.event_action for e in pd.events_for(DEDUP)] == [
        "trigger",
        "resolve",
        "trigger",
        "acknowledge",
        "resolve",
    ]
    assert pd.incidents[second.id].status == "resolved"


async def test_the_previous_episodes_page_delivered_after_the_new_incident_opened_is_told_apart(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    shared_clock: FakeClock,
    pd: FakePagerDuty,
) -> None:
    """A's page itself waited until after B opened: #1 is younger than B's trigger time."""
    client, components = await start(aiohttp_client, config_factory, shared_clock, pd)
    pd.go_down(503)
    a = (await post(client, firing(T0 - 60)))["changed"][0]["id"]
    assert await send(components) == 1
    shared_clock.advance(1)
    await post(client, over(T0 - 60, T0))
    shared_clock.advance(1)
    b = (await post(client, firing(T0 + 2)))["changed"][0]["id"]
    assert b != a
    # PagerDuty comes back and takes A's trigger, but its answer is lost: the
    # trigger is retried later, with the key's events behind it.
    pd.come_back()
    pd.timeout_next(1, seconds=2.0, process=True)
    shared_clock.advance(10)
    assert await send(components) == 3
    first = pd.open_incident(DEDUP)
    assert first is not None
    b_triggered = datetime.fromisoformat((await view(client, b))["triggered_at"])
    assert first.created_at > b_triggered  # no time of B's trigger tells them apart
    shared_clock.advance(5)
    assert await send(components) == 0
    [echo] = resolved_events(pd, first.id)
    await webhook(client, echo, "echo")
    b_view = await view(client, b)
    assert b_view["state"] == "triggered"
    assert [e["kind"] for e in b_view["timeline"]].count("pagerduty_ignored") == 1
    second = pd.open_incident(DEDUP)
    assert second is not None and second.id != first.id
    await webhook(client, pd.acknowledge_incident(second.id), "ack-2")
    assert (await view(client, b))["state"] == "acknowledged"


@pytest.mark.parametrize("incident_key", [False, True], ids=["null-incident-key", "incident-key"])
async def test_an_acknowledgment_of_a_grouped_pagerduty_incident_reaches_every_page_in_it(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    shared_clock: FakeClock,
    incident_key: bool,
) -> None:
    """With or without ``incident_key`` (it names only the alert that opened the incident)."""
    options = {"alert_grouping": True, "incident_key_is_dedup_key": incident_key}
    async with pagerduty(shared_clock, **options) as pd:
        client, components = await start(aiohttp_client, config_factory, shared_clock, pd)
        db = notification(alert("DBDown", labels={"severity": "critical"}), group_key=GROUP)
        api_down = alert("APIDown", fingerprint="fedcba9876543210", labels={"severity": "critical"})
        x = (await post(client, db))["changed"][0]["id"]
        shared_clock.advance(3)
        y = (await post(client, notification(api_down, group_key=OTHER_GROUP)))["changed"][0]["id"]
        assert await send(components) == 0
        [grouped] = pd.incidents.values()
        assert len(grouped.alert_ids) == 2  # both pages in one PagerDuty incident
        ack = pd.acknowledge_incident(grouped.id)
        answer = await webhook(client, ack, "ack")
        assert sorted(answer["incident_ids"]) == sorted([x, y])
        assert sorted((c["id"], c["state"]) for c in answer["changed"]) == sorted(
            [(x, "acknowledged"), (y, "acknowledged")]
        )
        # A redelivery changes nothing.
        assert (await webhook(client, ack, "ack"))["status"] == "duplicate"
        for incident_id in (x, y):
            acks = [
                e
                for e in (await view(client, incident_id))["timeline"]
                if e["kind"] == "acknowledged"
            ]
            assert [(e["source"], e["actor"]) for e in acks] == [("pagerduty", "Primary On-call")]
        await webhook(client, pd.resolve_incident(grouped.id), "resolve")
        for incident_id in (x, y):
            seen = await view(client, incident_id)
            assert (seen["state"], seen["resolve_source"]) == ("resolved", "pagerduty")
        # Each page follows what was done in PagerDuty; that changes nothing there.
        emitted = len(pd.webhook_events)
        assert await send(components) == 0
        for group in (GROUP, OTHER_GROUP):
            dedup = hashlib.sha256(group.encode()).hexdigest()
            actions = [e.event_action for e in pd.events_for(dedup)]
            assert actions == ["trigger", "acknowledge", "resolve"]
        assert len(pd.webhook_events) == emitted


async def test_without_the_rest_api_the_incident_key_still_maps_the_event(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    shared_clock: FakeClock,
) -> None:
    async with pagerduty(shared_clock, incident_key_is_dedup_key=True) as pd:
        client, components = await start(aiohttp_client, config_factory, shared_clock, pd)
        incident_id = (await post(client, firing(T0 - 60)))["changed"][0]["id"]
        assert await send(components) == 0
        pd_incident = pd.open_incident(DEDUP)
        assert pd_incident is not None
        pd.fail_next(api="rest")
        answer = await webhook(client, pd.acknowledge_incident(pd_incident.id), "ack")
        assert pd.pending_faults("rest") == 0  # the REST API was asked, and failed
        assert answer["incident_ids"] == [incident_id]
        assert (await view(client, incident_id))["state"] == "acknowledged"


def test_a_pagerduty_alert_is_an_earlier_pages_only_when_the_new_page_went_out_a_later_second() -> (
    None
):
    created = datetime.fromtimestamp(1_700_000_600, UTC)  # whole seconds, as PagerDuty writes
    inc = Incident(
        id="b",
        key="k",
        group_key="g",
        receiver="r",
        state="triggered",
        severity="P0",
        team="t",
        title="DBDown",
        labels={},
        external_url="",
        started_at=1_700_000_500.0,
        triggered_at=1_700_000_590.0,
    )
    event = WebhookEvent(
        event_id="E1",
        event_type="incident.resolved",
        resource_type="incident",
        occurred_at=datetime.fromtimestamp(1_700_000_700, UTC),
        pd_incident_id="POLD",
        incident_key=None,
        agent="pagerduty",
        message=None,
        pd_created_at=created,
    )

    def page(sent_from: float, follows: bool = True) -> KeyPage:
        return KeyPage("b", sent_from, follows)

    # B's page cannot have gone out before the second PagerDuty created the alert ended.
    reason = earlier_episode(event, inc, created, page(1_700_000_601.0))
    assert reason is not None and "POLD" in reason and "earlier episode" in reason
    # B's page waits behind the key's earlier events: it has not gone out.
    reason = earlier_episode(event, inc, created, page(math.inf))
    assert reason is not None and "has not yet" in reason
    # It may have gone out within that second: it may be B's own.
    assert earlier_episode(event, inc, created, page(1_700_000_600.999)) is None
    assert earlier_episode(event, inc, created, page(1_700_000_590.0)) is None
    # The first incident on the key, an unknown alert time or no outbox rows: B's.
    assert earlier_episode(event, inc, created, page(1_700_000_700.0, follows=False)) is None
    assert earlier_episode(event, inc, None, page(1_700_000_700.0)) is None
    assert earlier_episode(event, inc, created, None) is None
    # An event that happened before B was triggered is an earlier episode's.
    before = dataclasses.replace(event, occurred_at=datetime.fromtimestamp(1_700_000_588, UTC))
    reason = earlier_episode(before, inc, None, None)
    assert reason is not None and "before this incident was triggered" in reason
