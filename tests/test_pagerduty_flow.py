"""PagerDuty both ways, in process: pages out through the outbox, webhooks v3 back in.

The sidecar runs in the test's event loop; PagerDuty is the fake written from
its documentation, a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.alertmanager import notification_from
from sidecar.clock import SystemClock
from sidecar.config import Config
from sidecar.incidents import Incident, IncidentBook
from sidecar.notify.pagerduty import Pager
from sidecar.rules import load_rules
from sidecar.runtime import Components, build_components
from sidecar.web import create_app
from tests.conftest import DATA
from tests.fakes.pagerduty import FakePagerDuty, encode_event, signature_header
from tests.payloads import alert, body, notification

Client = TestClient[Any, Any]
ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY00"
SECRET = "webhook-secret-one"
GROUP = '{}:{alertname="DBDown"}'
DEDUP = hashlib.sha256(GROUP.encode()).hexdigest()


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
def pd_config(config_factory: Callable[..., Config], pd: FakePagerDuty) -> Config:
    return config_factory(
        {
            "pagerduty": {
                "events_url": pd.events_url,
                "api_url": pd.api_url,
                "api_token": pd.api_token,
                "webhook_secret": SECRET,
                "routing_key": ROUTING_KEY,
                "timeout": "1s",
                "retry": {"initial": "50ms", "max": "300ms", "rate_limited_initial": "100ms"},
            }
        }
    )


@pytest.fixture
async def sidecar(
    aiohttp_client: Callable[..., Any], pd_config: Config
) -> tuple[Client, Components]:
    components = build_components(pd_config, clock=SystemClock(), registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    return client, components


async def post(client: Client, payload: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(
        "/webhook/alertmanager",
        data=body(payload),
        headers={"Authorization": "Bearer test-webhook-token"},
    )
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def until(check: Callable[[], Any], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not check():
            await asyncio.sleep(0.02)


async def drained(components: Components, limit: float = 30.0) -> None:
    """Deliver until the outbox is empty: every event sent and its outcome recorded.

    What PagerDuty got is final afterwards, so a check that something did not
    arrive can fail, rather than pass because it had not arrived yet.
    """
    worker = components.outbox
    assert worker is not None
    async with asyncio.timeout(limit):
        while True:
            await worker.drain()
            if await components.store.outbox_pending() == 0:
                return
            await asyncio.sleep(0.02)  # an event waits for its retry


def actions(pd: FakePagerDuty, dedup: str = DEDUP) -> list[str]:
    return [e.event_action for e in pd.events_for(dedup)]


async def test_a_p0_pages_once_and_resolves_with_alertmanagers_dedup_key(
    sidecar: tuple[Client, Components], pd: FakePagerDuty
) -> None:
    client, components = sidecar
    firing = notification(alert(labels={"service": "db", "severity": "critical"}), group_key=GROUP)
    incident_id = (await post(client, firing))["changed"][0]["id"]
    await post(client, firing)  # an HA duplicate
    await post(client, firing)  # a repeat
    await pd.wait_for_events(1)
    event = pd.events[0]
    assert event.routing_key == ROUTING_KEY
    assert event.body["payload"]["severity"] == "critical"
    assert event.dedup_key == DEDUP  # sha256(groupKey), as Alertmanager's own integration
    await post(
        client, notification(alert(status="resolved", ends=1_700_000_100.0), group_key=GROUP)
    )
    await drained(components)  # nothing else may follow
    assert actions(pd) == ["trigger", "resolve"]
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert [e["state"] for e in view["pagerduty"]["events"]] == ["delivered", "delivered"]
    assert "pagerduty_queued" in [e["kind"] for e in view["timeline"]]
    reg = components.registry
    assert (
        reg.get_sample_value(
            "incident_sla_pagerduty_events_total", {"action": "trigger", "result": "accepted"}
        )
        == 1
    )


@pytest.mark.parametrize("truncated", [1, 0], ids=["truncated", "muted"])
async def test_a_resolved_notification_leaving_out_a_firing_alert_keeps_the_page_open(
    sidecar: tuple[Client, Components], pd: FakePagerDuty, truncated: int
) -> None:
    """Alertmanager 0.25 computes the status from the alerts it lists, after its mute
    stage left out silenced or inhibited ones and ``max_alerts`` truncated the rest:
    "resolved" while db-2, left out, still fires. PagerDuty's incident stays triggered,
    and db-2 sent again firing is the open incident's, not a late copy of a closed one."""
    client, components = sidecar
    start = time.time() - 60

    def db(instance: str, **kw: Any) -> dict[str, Any]:
        labels = {"severity": "critical", "instance": instance}
        return alert(
            fingerprint=f"00000000000000{instance[-1]}0", labels=labels, starts=start, **kw
        )

    opened = await post(client, notification(db("db-1"), db("db-2"), group_key=GROUP))
    incident_id = opened["changed"][0]["id"]
    left_out = notification(
        db("db-1", status="resolved", ends=time.time()), group_key=GROUP, truncated=truncated
    )
    assert left_out["status"] == "resolved"
    await post(client, left_out)
    assert (await post(client, notification(db("db-2"), group_key=GROUP)))["changed"] == []
    await drained(components)  # nothing else may follow
    assert actions(pd) == ["trigger"]
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert view["state"] == "triggered"
    assert {a["fingerprint"]: a["status"] for a in view["alerts"]} == {
        "0000000000000010": "resolved",
        "0000000000000020": "firing",
    }
    # db-2's own resolution closes the incident and the page.
    await post(
        client, notification(db("db-2", status="resolved", ends=time.time()), group_key=GROUP)
    )
    await drained(components)
    assert actions(pd) == ["trigger", "resolve"]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"severity": "warning"}, ["trigger"]),  # P1 in the mini rules: page (error)
        ({}, ["trigger"]),  # P2: notify, a trigger with severity warning
    ],
)
async def test_paging_policy_by_severity(
    sidecar: tuple[Client, Components],
    pd: FakePagerDuty,
    labels: dict[str, str],
    expected: list[str],
) -> None:
    client, _ = sidecar
    await post(client, notification(alert(labels=labels), group_key=GROUP))
    await pd.wait_for_events(1)
    assert actions(pd) == expected
    severity = pd.events[0].body["payload"]["severity"]
    assert severity == ("error" if labels else "warning")


async def test_ticket_and_none_policies_page_nobody(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    pd: FakePagerDuty,
    tmp_path: Any,
) -> None:
    rules = tmp_path / "rules.yaml"
    from tests.conftest import DATA

    text = (DATA / "rules-mini.yaml").read_text().replace("paging: notify", "paging: ticket")
    rules.write_text(text)
    config = config_factory(
        {"pagerduty": {"events_url": pd.events_url, "routing_key": ROUTING_KEY}}
    )
    components = build_components(config, clock=SystemClock(), registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    incident_id = (await post(client, notification(alert(), group_key=GROUP)))["changed"][0]["id"]
    await drained(components)
    assert pd.events == []
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert "ticket" in [e["kind"] for e in view["timeline"]]
    assert view["pagerduty"]["events"] == []


async def test_acknowledge_from_the_api_is_forwarded_but_not_one_from_pagerduty(
    sidecar: tuple[Client, Components], pd: FakePagerDuty
) -> None:
    client, _ = sidecar
    incident_id = (await post(client, notification(alert(), group_key=GROUP)))["changed"][0]["id"]
    await pd.wait_for_events(1)
    resp = await client.post(
        f"/api/v1/incidents/{incident_id}/acknowledge",
        json={"actor": "alice"},
        headers={"Authorization": "Bearer test-api-token"},
    )
    assert resp.status == 200
    await pd.wait_for_events(2)
    assert actions(pd) == ["trigger", "acknowledge"]


async def test_pagerduty_acknowledgment_and_resolution_flow_back(
    sidecar: tuple[Client, Components], pd: FakePagerDuty
) -> None:
    client, components = sidecar
    incident_id = (await post(client, notification(alert(), group_key=GROUP)))["changed"][0]["id"]
    await pd.wait_for_events(1)
    pd.subscribe(f"{client.make_url('/webhook/pagerduty')}", SECRET)
    pd_incident = pd.open_incident(DEDUP)
    assert pd_incident is not None
    pd.acknowledge_incident(pd_incident.id)
    await pd.drain_webhooks()
    inc = components.book.get_open(incident_id)
    assert inc is not None
    assert (inc.state, inc.acknowledge_source) == ("acknowledged", "pagerduty")
    assert inc.acknowledged_by == "Primary On-call"
    pd.publish_status_update(pd_incident.id, "Rolling back the release")
    await pd.drain_webhooks()
    assert inc.last_update_at is not None
    pd.resolve_incident(pd_incident.id)
    await pd.drain_webhooks()
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert (view["state"], view["resolve_source"]) == ("resolved", "pagerduty")
    kinds = [e["kind"] for e in view["timeline"]]
    assert kinds[-3:] == ["acknowledged", "status_update", "resolved"]
    await drained(components)
    # What PagerDuty did goes to every page of the incident (here only the
    # team's, the one acted on: PagerDuty takes the events and changes nothing,
    # so no webhook comes back and the timeline stays as it was).
    assert actions(pd) == ["trigger", "acknowledge", "resolve"]
    await pd.drain_webhooks()
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert [e["kind"] for e in view["timeline"]] == kinds
    assert [i.status for i in pd.incidents_for(DEDUP)] == ["resolved"]
    # The incident was mapped through the REST API: the fake's incident_key is null.
    assert any("/alerts" in r.path for r in pd.requests)


async def signed_post(client: Client, raw: bytes, header: str | None, webhook_id: str) -> int:
    headers = {"Content-Type": "application/json", "X-Webhook-Id": webhook_id}
    if header is not None:
        headers["X-PagerDuty-Signature"] = header
    resp = await client.post("/webhook/pagerduty", data=raw, headers=headers)
    return resp.status


@pytest.mark.parametrize(
    ("make_header", "tamper", "status"),
    [
        (lambda raw: signature_header(raw, SECRET), False, 200),
        (lambda raw: signature_header(raw, ["old-rotated-secret", SECRET]), False, 200),
        (lambda raw: signature_header(raw, "not-the-secret"), False, 401),
        (lambda raw: None, False, 401),
        (lambda raw: "v1=zz", False, 401),
        (lambda raw: "v2=" + signature_header(raw, SECRET)[3:], False, 401),
        (lambda raw: signature_header(raw, SECRET), True, 401),
    ],
    ids=["valid", "rotated", "invalid", "missing", "malformed", "other-version", "tampered"],
)
async def test_webhook_signatures(
    sidecar: tuple[Client, Components],
    pd: FakePagerDuty,
    make_header: Callable[[bytes], str | None],
    tamper: bool,
    status: int,
) -> None:
    client, components = sidecar
    await post(client, notification(alert(), group_key=GROUP))
    await pd.wait_for_events(1)
    pd_incident = pd.open_incident(DEDUP)
    assert pd_incident is not None
    event = pd.webhook_event("incident.escalated", pd_incident.id)
    raw = encode_event(event)
    header = make_header(raw)
    sent = raw.replace(b"incident.escalated", b"incident.resolved") if tamper else raw
    assert await signed_post(client, sent, header, "delivery-1") == status
    code = str(status)
    assert (
        components.registry.get_sample_value(
            "incident_sla_webhook_requests_total", {"source": "pagerduty", "code": code}
        )
        == 1
    )


async def test_redelivery_is_recognised_and_bad_bodies_get_400(
    sidecar: tuple[Client, Components], pd: FakePagerDuty
) -> None:
    client, _ = sidecar
    incident_id = (await post(client, notification(alert(), group_key=GROUP)))["changed"][0]["id"]
    await pd.wait_for_events(1)
    pd_incident = pd.open_incident(DEDUP)
    assert pd_incident is not None
    event = pd.acknowledge_incident(pd_incident.id)
    raw = encode_event(event)
    header = signature_header(raw, SECRET)
    assert await signed_post(client, raw, header, "same-delivery") == 200
    resp = await client.post(
        "/webhook/pagerduty",
        data=raw,
        headers={"X-PagerDuty-Signature": header, "X-Webhook-Id": "same-delivery"},
    )
    assert (await resp.json())["status"] == "duplicate"
    timeline = (await (await client.get(f"/api/v1/incidents/{incident_id}")).json())["timeline"]
    assert [e["kind"] for e in timeline].count("acknowledged") == 1
    bad = b'{"event": {"id": 5}}'
    assert await signed_post(client, bad, signature_header(bad, SECRET), "d-bad") == 400


async def test_outage_then_recovery_delivers_every_event_once_in_order(
    sidecar: tuple[Client, Components], pd: FakePagerDuty
) -> None:
    client, components = sidecar
    pd.fail_next(3, status=500)
    pd.rate_limit_next(2)
    pd.timeout_next(2, seconds=3)  # longer than the sidecar's 1 s client timeout
    pd.drop_next(1)
    groups = [f'{{}}:{{alertname="Flap{i}"}}' for i in range(6)]
    for i, group in enumerate(groups):
        await post(
            client, notification(alert(f"Flap{i}", fingerprint=f"{i:016x}"), group_key=group)
        )
        await post(
            client,
            notification(
                alert(f"Flap{i}", fingerprint=f"{i:016x}", status="resolved", ends=1_700_000_050.0),
                group_key=group,
            ),
        )
    await drained(components)
    for group in groups:
        assert actions(pd, hashlib.sha256(group.encode()).hexdigest()) == ["trigger", "resolve"]
    assert pd.pending_faults() == 0
    retried = sum(
        components.registry.get_sample_value(
            "incident_sla_pagerduty_events_total", {"action": a, "result": "retried"}
        )
        or 0
        for a in ("trigger", "resolve")
    )
    assert retried >= 8
    await until(lambda: components.outbox is not None and components.outbox.pending == 0)


async def test_a_400_is_dead_lettered_and_shown_on_the_incident(
    sidecar: tuple[Client, Components], pd: FakePagerDuty
) -> None:
    client, components = sidecar
    pd.reject_next(1)
    incident_id = (await post(client, notification(alert(), group_key=GROUP)))["changed"][0]["id"]

    async def dead() -> bool:
        view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
        return (
            bool(view["pagerduty"]["events"]) and view["pagerduty"]["events"][0]["state"] == "dead"
        )

    async with asyncio.timeout(10):
        while not await dead():
            await asyncio.sleep(0.05)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert view["pagerduty"]["events"][0]["last_error"]
    assert ROUTING_KEY not in str(view)
    assert (
        components.registry.get_sample_value(
            "incident_sla_pagerduty_events_total", {"action": "trigger", "result": "rejected"}
        )
        == 1
    )
    # The resolve that follows is still delivered: a dead letter does not block its key.
    await post(
        client, notification(alert(status="resolved", ends=1_700_000_100.0), group_key=GROUP)
    )
    await pd.wait_for_events(1)
    assert actions(pd) == ["resolve"]


# -- escalation outcomes: paged, recorded, unrouted -------------------------------

VP_KEY = "VPVPVPVPVPVPVPVPVPVPVPVPVPVPVP00"
# The mini rules with a P0 ladder: vp pages at once, scribe is recorded only.
LADDER = (
    (DATA / "rules-mini.yaml")
    .read_text()
    .replace(
        "postmortem: 24h}}",
        "postmortem: 24h}, escalation: [{after: 0s, tier: vp, while: unresolved},"
        " {after: 0s, tier: scribe, while: unresolved, record_only: true}]}",
    )
)


def outcomes(components: Components, tier: str) -> dict[str, float | None]:
    """``incident_sla_escalation_outcomes_total`` of P0 and ``tier``, by outcome."""
    return {
        outcome: components.registry.get_sample_value(
            "incident_sla_escalation_outcomes_total",
            {"severity": "P0", "tier": tier, "outcome": outcome},
        )
        for outcome in ("paged", "recorded", "unrouted")
    }


async def ladder_sidecar(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    tmp_path: Path,
    pagerduty: dict[str, Any] | None,
) -> tuple[Client, Components]:
    (tmp_path / "rules.yaml").write_text(LADDER)
    config = config_factory({"pagerduty": pagerduty} if pagerduty is not None else None)
    components = build_components(config, clock=SystemClock(), registry=CollectorRegistry())
    return await aiohttp_client(create_app(components)), components


async def test_a_routed_tier_is_paged_and_a_record_only_one_recorded(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    pd: FakePagerDuty,
    tmp_path: Path,
) -> None:
    pagerduty = {
        "events_url": pd.events_url,
        "routing_key": ROUTING_KEY,
        "tier_routing_keys": {"vp": {"key": VP_KEY}},
    }
    client, components = await ladder_sidecar(aiohttp_client, config_factory, tmp_path, pagerduty)
    firing = notification(alert(labels={"severity": "critical"}), group_key=GROUP)
    incident_id = (await post(client, firing))["changed"][0]["id"]
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    escalated = {e["data"]["tier"]: e for e in view["timeline"] if e["kind"] == "escalated"}
    assert {t: e["data"]["outcome"] for t, e in escalated.items()} == {
        "vp": "paged",
        "scribe": "recorded",
    }
    assert escalated["vp"]["message"].startswith("escalated to vp: paged")
    assert "nobody paged" in escalated["scribe"]["message"]
    assert {t: e["outcome"] for t, e in view["escalations"].items()} == {
        "vp": "paged",
        "scribe": "recorded",
    }
    assert set(view["escalated"]) == {"vp", "scribe"}
    assert outcomes(components, "vp") == {"paged": 1, "recorded": None, "unrouted": None}
    assert outcomes(components, "scribe") == {"paged": None, "recorded": 1, "unrouted": None}
    for tier in ("vp", "scribe"):  # the contract counter counts every step that came due
        labels = {"severity": "P0", "tier": tier}
        assert components.registry.get_sample_value("incident_sla_escalations_total", labels) == 1
    # Resolved: the team's page and vp's follow; scribe, never paged, has no event at all.
    resp = await client.post(
        f"/api/v1/incidents/{incident_id}/resolve",
        json={"actor": "alice"},
        headers={"Authorization": "Bearer test-api-token"},
    )
    assert resp.status == 200
    await pd.wait_for_events(4)
    assert sorted((e.routing_key, e.event_action) for e in pd.events) == sorted(
        (key, action) for key in (ROUTING_KEY, VP_KEY) for action in ("trigger", "resolve")
    )
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert sorted(e["routing"] for e in view["pagerduty"]["events"]) == [
        "default",
        "default",
        "tier:vp",
        "tier:vp",
    ]


async def test_without_pagerduty_a_due_step_says_nobody_was_routed(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        client, components = await ladder_sidecar(aiohttp_client, config_factory, tmp_path, None)
    tiers = [r.getMessage() for r in caplog.records if "escalation tier" in r.getMessage()]
    assert len(tiers) == 1  # vp would page; scribe is record_only
    assert tiers[0].startswith("escalation tier 'vp' (P0) would page")
    assert "nobody will be paged for it" in tiers[0]
    firing = notification(alert(labels={"severity": "critical"}), group_key=GROUP)
    incident_id = (await post(client, firing))["changed"][0]["id"]
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    escalated = {e["data"]["tier"]: e for e in view["timeline"] if e["kind"] == "escalated"}
    assert escalated["vp"]["data"]["outcome"] == "unrouted"
    assert escalated["vp"]["message"].startswith("escalation to vp due: nobody routed")
    assert view["escalations"]["vp"]["outcome"] == "unrouted"
    assert view["escalations"]["scribe"]["outcome"] == "recorded"
    assert view["pagerduty"]["events"] == []
    assert outcomes(components, "vp") == {"paged": None, "recorded": None, "unrouted": 1}


@pytest.mark.parametrize(
    ("stored", "followed"),
    [
        ({"vp": "paged"}, ["default", "tier:vp"]),
        ({"vp": "recorded"}, ["default"]),
        ({"vp": "unrouted"}, ["default"]),
        ({}, ["default", "tier:vp"]),  # a row from before outcomes: as it was paged then
    ],
)
def test_acknowledgment_follows_only_the_tiers_that_were_paged(
    stored: dict[str, str], followed: list[str]
) -> None:
    book = IncidentBook(load_rules(DATA / "rules-mini.yaml"), routed_tiers={"vp"})
    inc = Incident.from_columns(
        id="i1",
        key=GROUP,
        state="triggered",
        severity="P0",
        team="sre",
        started_at=1_700_000_000.0,
        triggered_at=1_700_000_000.0,
        acknowledged_at=None,
        resolved_at=None,
        data={
            "group_key": GROUP,
            "paged_dedup_key": DEDUP,
            "escalated": {"vp": 1_700_000_000.0},
            "escalation_outcomes": stored,
        },
    )
    book.restore([inc], [])
    pager = Pager(book.classifier, routing_names={"default", "tier:vp"})
    change = book.acknowledge("i1", actor="alice", source="api", now=1_700_000_060.0)
    assert change is not None
    events = pager.events_for(change, 1_700_000_060.0)
    assert [(e.routing, e.action) for e in events] == [(r, "acknowledge") for r in followed]


# -- a reopened incident pages a new PagerDuty incident on the same dedup key ------------


@pytest.fixture
def watched_config(pd_config: Config) -> Config:
    """``pd_config`` with a one-hour recovery watch on P0 (the rules load with the components)."""
    rules = (DATA / "rules-mini.yaml").read_text()
    watched = rules.replace("postmortem: 24h}}", "postmortem: 24h}, recovery_watch: 1h}", 1)
    assert watched != rules
    pd_config.rules_file.write_text(watched)
    return pd_config


async def test_pagerduty_events_of_the_old_incident_leave_the_reopened_one_open(
    aiohttp_client: Callable[..., Any], watched_config: Config, pd: FakePagerDuty
) -> None:
    components = build_components(watched_config, clock=SystemClock(), registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    url = f"{client.make_url('/webhook/pagerduty')}"
    # Only acknowledgments flow back by themselves: the test delivers the
    # resolution late, as PagerDuty may.
    pd.subscribe(url, SECRET, events={"incident.acknowledged"})
    start = time.time() - 60
    critical = {"severity": "critical"}
    fired = notification(alert(labels=critical, starts=start), group_key=GROUP)
    incident_id = (await post(client, fired))["changed"][0]["id"]
    await pd.wait_for_events(1)
    old = pd.open_incident(DEDUP)
    assert old is not None
    pd.acknowledge_incident(old.id)
    await pd.drain_webhooks()
    resolved = alert(labels=critical, starts=start, status="resolved", ends=time.time())
    await post(client, notification(resolved, group_key=GROUP))
    await drained(components)  # PagerDuty resolved its incident: the echo waits
    restart = time.time()
    again = notification(alert(labels=critical, starts=restart), group_key=GROUP)
    assert [c["id"] for c in (await post(client, again))["changed"]] == [incident_id]
    await drained(components)
    new = pd.open_incident(DEDUP)
    assert new is not None and new.id != old.id  # the reopening's trigger paged anew
    # Now the old incident's resolution and acknowledgment arrive, late or again.
    for event in pd.webhook_events:
        if event["event"]["data"]["id"] == old.id and event["event"]["event_type"] in (
            "incident.resolved",
            "incident.acknowledged",
        ):
            assert await pd.deliver(url, event, SECRET) == 200
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert view["state"] == "acknowledged"  # still open: the new page is live
    ignored = [e for e in view["timeline"] if e["kind"] == "pagerduty_ignored"]
    assert len(ignored) == 2
    assert all(f"PagerDuty incident {old.id}" in e["message"] for e in ignored)
    # The responder acknowledges the new page in PagerDuty: that is recorded.
    pd.acknowledge_incident(new.id)
    await pd.drain_webhooks()
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    acks = [e for e in view["timeline"] if e["kind"] == "acknowledged"]
    assert [(e["source"], e["actor"]) for e in acks] == [("pagerduty", "Primary On-call")] * 2
    # Alertmanager's resolution closes the incident and PagerDuty's new incident.
    over = alert(labels=critical, starts=restart, status="resolved", ends=time.time())
    await post(client, notification(over, group_key=GROUP))
    await drained(components)
    # Each acknowledgment in PagerDuty went to the incident's pages (the team's
    # only here), on the PagerDuty incident it was made on.
    assert actions(pd) == ["trigger", "acknowledge", "resolve", "trigger", "acknowledge", "resolve"]
    assert pd.incidents[new.id].status == "resolved"


async def resolve_by_hand(
    client: Client, components: Components, pd: FakePagerDuty, incident_id: str, by: str
) -> None:
    """A person resolves the incident while its alert fires: in the API or in PagerDuty."""
    if by == "api":
        resp = await client.post(
            f"/api/v1/incidents/{incident_id}/resolve",
            json={"actor": "alice"},
            headers={"Authorization": "Bearer test-api-token"},
        )
        assert resp.status == 200
    else:
        paged = pd.open_incident(DEDUP)
        assert paged is not None
        pd.subscribe(f"{client.make_url('/webhook/pagerduty')}", SECRET)
        pd.resolve_incident(paged.id)
        await pd.drain_webhooks()
    await drained(components)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert view["state"] == "resolved"
    assert [a["status"] for a in view["alerts"]] == ["firing"]
    assert actions(pd) == ["trigger", "resolve"]


async def incident_ids(client: Client) -> list[str]:
    listing = await (await client.get("/api/v1/incidents", params={"limit": "100"})).json()
    return sorted(i["id"] for i in listing["incidents"])


@pytest.mark.parametrize("by", ["api", "pagerduty"])
async def test_alertmanagers_resend_after_a_manual_resolve_pages_again(
    sidecar: tuple[Client, Components], pd: FakePagerDuty, by: str
) -> None:
    """Alertmanager's own pagerduty_configs triggers on its next notification after a
    person resolved the PagerDuty incident while the alert fired, and PagerDuty opens
    a new incident: the sidecar pages as much, and resolves that page with the alert."""
    client, components = sidecar
    start = time.time() - 60
    firing = notification(alert(starts=start), group_key=GROUP)
    first = (await post(client, firing))["changed"][0]["id"]
    await drained(components)
    old = pd.open_incident(DEDUP)
    await resolve_by_hand(client, components, pd, first, by)
    # The resend: byte for byte the body applied before, which is no repeat now.
    changed = (await post(client, firing))["changed"]
    assert [c["state"] for c in changed] == ["triggered"]
    second = changed[0]["id"]
    assert second != first
    assert (await post(client, firing))["changed"] == []  # its HA copy
    await drained(components)
    assert actions(pd) == ["trigger", "resolve", "trigger"]
    new = pd.open_incident(DEDUP)
    assert old is not None and new is not None and new.id != old.id  # the on-call is paged
    ended = notification(alert(starts=start, status="resolved", ends=time.time()), group_key=GROUP)
    assert [c["id"] for c in (await post(client, ended))["changed"]] == [second]
    assert (await post(client, ended))["changed"] == []  # its HA copy
    await drained(components)
    await pd.drain_webhooks()
    await drained(components)
    assert actions(pd) == ["trigger", "resolve", "trigger", "resolve"]
    assert [i.status for i in pd.incidents_for(DEDUP)] == ["resolved", "resolved"]
    assert await incident_ids(client) == sorted([first, second])


@pytest.mark.parametrize("by", ["api", "pagerduty"])
async def test_the_end_of_an_alert_resolved_by_hand_pages_nobody(
    sidecar: tuple[Client, Components], pd: FakePagerDuty, by: str
) -> None:
    """Its resolved notification ends the episode the person closed: no new incident,
    and no trigger and resolve pair to PagerDuty."""
    client, components = sidecar
    start = time.time() - 60
    first = (await post(client, notification(alert(starts=start), group_key=GROUP)))["changed"]
    await drained(components)
    await resolve_by_hand(client, components, pd, first[0]["id"], by)
    ended = notification(alert(starts=start, status="resolved", ends=time.time()), group_key=GROUP)
    assert (await post(client, ended))["changed"] == []
    assert (await post(client, ended))["changed"] == []  # its HA copy
    await drained(components)
    assert actions(pd) == ["trigger", "resolve"]
    assert len(pd.incidents_for(DEDUP)) == 1
    assert await incident_ids(client) == [first[0]["id"]]


# -- what a responder does in PagerDuty reaches every page of the incident ----------


@pytest.mark.parametrize("acted_on", ["team", "tier"])
@pytest.mark.parametrize(
    ("act", "action", "status"),
    [
        ("resolve_incident", "resolve", "resolved"),
        ("acknowledge_incident", "acknowledge", "acknowledged"),
    ],
)
async def test_acting_on_one_page_in_pagerduty_acts_on_every_page_of_the_incident(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    pd: FakePagerDuty,
    tmp_path: Path,
    acted_on: str,
    act: str,
    action: str,
    status: str,
) -> None:
    pagerduty = {
        "events_url": pd.events_url,
        "api_url": pd.api_url,
        "api_token": pd.api_token,
        "webhook_secret": SECRET,
        "routing_key": ROUTING_KEY,
        "tier_routing_keys": {"vp": {"key": VP_KEY}},
        "timeout": "1s",
    }
    client, components = await ladder_sidecar(aiohttp_client, config_factory, tmp_path, pagerduty)
    pd.subscribe(f"{client.make_url('/webhook/pagerduty')}", SECRET)
    firing = notification(alert(labels={"severity": "critical"}), group_key=GROUP)
    incident_id = (await post(client, firing))["changed"][0]["id"]
    await drained(components)
    await pd.drain_webhooks()
    team, tier = pd.open_incident(DEDUP, ROUTING_KEY), pd.open_incident(f"{DEDUP}:vp", VP_KEY)
    assert team is not None and tier is not None
    pages = {"team": team, "tier": tier}
    # A responder acts on one page in PagerDuty's web app.
    getattr(pd, act)(pages[acted_on].id)
    # Until quiet: the sidecar's events to PagerDuty cause webhooks, which must
    # cause nothing more (no loop).
    for _ in range(3):
        await pd.drain_webhooks()
        await drained(components)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert (view["state"], view[f"{action}_source"]) == (status, "pagerduty")
    # The other page follows: PagerDuty stops escalating it for a handled incident.
    assert {name: p.status for name, p in pages.items()} == {"team": status, "tier": status}
    # One event to each page, nothing echoed back and forth.
    assert actions(pd) == ["trigger", action]
    assert actions(pd, f"{DEDUP}:vp") == ["trigger", action]
    assert [e["kind"] for e in view["timeline"]].count(status) == 1


async def test_a_page_queued_for_a_team_key_removed_since_goes_to_the_default_key(
    config_factory: Callable[..., Config], pd: FakePagerDuty
) -> None:
    team_key = "T3AMKEYT3AMKEYT3AMKEYT3AMKEY0000"
    settings: dict[str, Any] = {
        "events_url": pd.events_url,
        "routing_key": ROUTING_KEY,
        "team_routing_keys": {"sre": {"key": team_key}},
        "timeout": "1s",
    }
    # Queued while the team had its own key; not sent before the restart.
    before = build_components(
        config_factory({"pagerduty": settings}), clock=SystemClock(), registry=CollectorRegistry()
    )
    await before.store.open()
    await before.service.start()
    await before.service.submit(
        lambda now: before.book.apply_notification(
            notification_from(notification(alert(), group_key=GROUP)), now
        )
    )
    await before.service.stop()
    await before.store.close()
    # Restarted with the team's key removed: its page still goes out, to the default.
    del settings["team_routing_keys"]
    after = build_components(
        config_factory({"pagerduty": settings}), clock=SystemClock(), registry=CollectorRegistry()
    )
    await after.store.open()
    assert after.outbox is not None
    await after.outbox.start()
    try:
        await drained(after)
    finally:
        await after.outbox.stop()
        await after.store.close()
    [trigger] = pd.events_for(DEDUP)
    assert (trigger.event_action, trigger.routing_key) == ("trigger", ROUTING_KEY)
