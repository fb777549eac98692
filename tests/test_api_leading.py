"""The plan's numbers, statuses, roles and Incident Commander actions through the HTTP API.

An in-process sidecar on SQLite with the injected clock; PagerDuty, where a
test pages, is the fake written from its documentation, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.alertmanager import notification_from
from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.runtime import Components, build_components
from sidecar.web import create_app
from tests.conftest import DATA
from tests.fakes.pagerduty import FakePagerDuty
from tests.payloads import alert, body, notification

Client = TestClient[Any, Any]
HOOK = "/webhook/alertmanager"
DAY = "2023-11-14"  # the clock fixture's day, in UTC


async def fire(client: Client, auth: dict[str, str], group: str = "g1", **kw: Any) -> str:
    """Open an incident of ``group``; returns its id."""
    fingerprint = hashlib.sha256(group.encode()).hexdigest()[:16]
    payload = notification(alert(fingerprint=fingerprint, **kw), group_key=group)
    resp = await client.post(HOOK, data=body(payload), headers=auth)
    assert resp.status == 200, await resp.text()
    [changed] = (await resp.json())["changed"]
    return str(changed["id"])


async def get(client: Client, path: str) -> dict[str, Any]:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def post(
    client: Client, path: str, api_auth: dict[str, str], payload: Any, status: int = 200
) -> dict[str, Any]:
    resp = await client.post(path, json=payload, headers=api_auth)
    assert resp.status == status, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


# -- numbers ------------------------------------------------------------------------


async def test_incidents_are_numbered_per_day_and_found_by_number(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], clock: FakeClock
) -> None:
    first = await fire(client, auth, "g1")
    second = await fire(client, auth, "g2")
    one = await get(client, f"/api/v1/incidents/{first}")
    assert (one["number"], one["war_room"]) == (f"{DAY}-001", f"#incident-{DAY}-001")
    assert (await get(client, f"/api/v1/incidents/{second}"))["number"] == f"{DAY}-002"
    # The number is accepted wherever an id is.
    by_number = await get(client, f"/api/v1/incidents/{DAY}-002")
    assert by_number["id"] == second
    acked = await post(client, f"/api/v1/incidents/{DAY}-001/acknowledge", api_auth, {})
    assert (acked["id"], acked["state"]) == (first, "acknowledged")
    review = await client.get(f"/api/v1/incidents/{DAY}-001/postmortem")
    assert f"**Incident ID:** #{DAY}-001 ([`{first}`]" in await review.text()
    assert f"**War Room:** #incident-{DAY}-001" in await review.text()
    resp = await client.get(f"/api/v1/incidents/{DAY}-999")
    assert resp.status == 404
    assert DAY + "-999" in (await resp.json())["error"]
    # The next day starts again at 001.
    clock.advance(86400)
    third = await fire(client, auth, "g3")
    assert (await get(client, f"/api/v1/incidents/{third}"))["number"] == "2023-11-15-001"


async def test_an_incident_opened_in_the_batch_that_resolves_its_keys_last_one_is_numbered(
    client: Client, auth: dict[str, str], components: Components, clock: FakeClock
) -> None:
    first = await fire(client, auth, "g1")
    fingerprint = hashlib.sha256(b"g1").hexdigest()[:16]
    again = notification_from(
        notification(alert(fingerprint=fingerprint, starts=clock.now() + 60), group_key="g1")
    )
    book, service = components.book, components.service
    clock.advance(120)
    # Queued together, so one batch: the resolve (by id) runs first and frees the
    # key, then the notification opens a new incident on it.
    resolved, opened = await asyncio.gather(
        service.submit(
            lambda now: [book.resolve(first, actor="alice", source="api", now=now)], ids=[first]
        ),
        service.submit(lambda now: book.apply_notification(again, now), keys=book.keys_of(again)),
    )
    assert [c.incident.id for c in resolved] == [first]
    [change] = opened
    assert change.incident.id != first
    assert change.incident.number == f"{DAY}-002"


async def test_the_number_and_war_room_are_on_the_incidents_log_lines(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.incidents")
    incident_id = await fire(client, auth)
    await post(client, f"/api/v1/incidents/{incident_id}/acknowledge", api_auth, {})
    lines = [r for r in caplog.records if getattr(r, "incident_id", None) == incident_id]
    assert [getattr(r, "event", None) for r in lines] == [
        "incident_opened",
        "incident_acknowledged",
    ]
    for record in lines:
        assert getattr(record, "incident_number", None) == f"{DAY}-001"
        assert getattr(record, "war_room", None) == f"#incident-{DAY}-001"


async def test_numbers_are_not_given_again_after_a_restart(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    clock: FakeClock,
    auth: dict[str, str],
) -> None:
    config = config_factory()
    for expected in ("001", "002"):
        components = build_components(config, clock=clock, registry=CollectorRegistry())
        client = await aiohttp_client(create_app(components))
        incident_id = await fire(client, auth, f"group-{expected}")
        assert (await get(client, f"/api/v1/incidents/{incident_id}"))[
            "number"
        ] == f"{DAY}-{expected}"
        await client.close()


async def test_the_day_of_a_number_is_the_configured_time_zones(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    clock: FakeClock,
    auth: dict[str, str],
) -> None:
    config = config_factory({"incidents": {"number_timezone": "Asia/Tokyo"}})
    components = build_components(config, clock=clock, registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    incident_id = await fire(client, auth)
    # 22:23 UTC on the 14th is 07:23 on the 15th in Tokyo.
    assert (await get(client, f"/api/v1/incidents/{incident_id}"))["number"] == "2023-11-15-001"


async def test_two_replicas_on_postgresql_number_without_repeats_or_gaps(
    config_factory: Callable[..., Config], clock: FakeClock, postgres_database_dsn: str
) -> None:
    config = config_factory({"store": {"url": postgres_database_dsn}})
    replicas = [
        build_components(config, clock=clock, registry=CollectorRegistry()) for _ in range(2)
    ]
    for c in replicas:
        await c.store.open()
        await c.service.start()
    try:

        async def open_group(n: int) -> list[str]:
            c = replicas[n % 2]
            one = notification_from(
                notification(alert(fingerprint=f"{n:016x}"), group_key=f"group-{n}")
            )
            changes = await c.service.submit(
                lambda now: c.book.apply_notification(one, now), keys=c.book.keys_of(one)
            )
            return [ch.incident.number or "" for ch in changes]

        given = await asyncio.gather(*(open_group(n) for n in range(12)))
        assert sorted(n for numbers in given for n in numbers) == [
            f"{DAY}-{n:03d}" for n in range(1, 13)
        ]
    finally:
        for c in replicas:
            await c.service.stop()
            await c.store.close()


# -- statuses ---------------------------------------------------------------------------


async def test_a_status_update_carries_the_plans_status(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], clock: FakeClock
) -> None:
    incident_id = await fire(client, auth)
    opened = await get(client, f"/api/v1/incidents/{incident_id}")
    assert (opened["status"], opened["status_changed_at"]) == (
        "Investigating",
        opened["triggered_at"],
    )
    clock.advance(300)
    updated = await post(
        client,
        f"/api/v1/incidents/{incident_id}/updates",
        api_auth,
        {"actor": "bob", "message": "pool exhausted", "status": "Identified"},
    )
    assert updated["status"] == "Identified"
    assert updated["status_changed_at"] == "2023-11-14T22:28:20Z"
    timeline = (await get(client, f"/api/v1/incidents/{incident_id}"))["timeline"]
    assert timeline[-1]["message"] == "[Identified] pool exhausted"
    assert timeline[-1]["data"] == {"status": "Identified", "previous_status": "Investigating"}


@pytest.mark.parametrize("status", ["Fixed", "investigating", 7])
async def test_a_bad_status_gets_400_listing_the_allowed_and_changes_nothing(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], status: Any
) -> None:
    incident_id = await fire(client, auth)
    before = await get(client, f"/api/v1/incidents/{incident_id}")
    answer = await post(
        client,
        f"/api/v1/incidents/{incident_id}/updates",
        api_auth,
        {"message": "m", "status": status},
        status=400,
    )
    assert "Investigating, Identified, Monitoring, Resolved" in answer["error"]
    after = await get(client, f"/api/v1/incidents/{incident_id}")
    assert after["timeline"] == before["timeline"]
    assert after["status"] == "Investigating"


# -- roles ------------------------------------------------------------------------------


async def test_roles_show_on_the_incident_the_timeline_and_the_review(
    client: Client, auth: dict[str, str], api_auth: dict[str, str]
) -> None:
    incident_id = await fire(client, auth)
    roles = {
        "incident_commander": "alice",
        "smes": ["bob", "carol"],
        "communications_lead": "dan",
        "scribe": "erin",
    }
    answer = await post(
        client,
        f"/api/v1/incidents/{incident_id}/roles",
        api_auth,
        {"actor": "alice", "roles": roles},
    )
    assert answer["roles"] == {**roles, "pir_owner": None}
    await post(client, f"/api/v1/incidents/{incident_id}/resolve", api_auth, {"actor": "alice"})
    # The PIR owner is named once the incident is resolved.
    await post(
        client,
        f"/api/v1/incidents/{incident_id}/roles",
        api_auth,
        {"actor": "alice", "roles": {"pir_owner": "frank"}},
    )
    data = await get(client, f"/api/v1/incidents/{incident_id}")
    assert data["roles"]["pir_owner"] == "frank"
    assigned = [
        (e["kind"], e["actor"], e["message"]) for e in data["timeline"] if "role" in e["kind"]
    ]
    assert assigned == [
        ("role_assigned", "alice", "Incident Commander: alice"),
        ("role_assigned", "alice", "Subject Matter Experts: bob, carol"),
        ("role_assigned", "alice", "Communications Lead: dan"),
        ("role_assigned", "alice", "Scribe: erin"),
        ("role_assigned", "alice", "PIR Owner: frank"),
    ]
    review = await (await client.get(f"/api/v1/incidents/{incident_id}/postmortem")).text()
    assert "**Review Owner:** frank" in review
    assert "**Attendees:** alice, bob, carol, dan, erin, frank" in review
    plan_000 = await client.get(
        f"/api/v1/incidents/{incident_id}/postmortem", params={"template": "llm-marketplace"}
    )
    text = await plan_000.text()
    assert "**PIR Owner**: frank" in text
    assert "**Attendees**: alice, bob, carol, dan, erin, frank" in text


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"roles": {"commander": "alice"}}, "unknown role 'commander'"),
        ({"roles": {"smes": "bob"}}, "smes must be a list of names"),
        ({"roles": {}}, "roles must be an object"),
        ({"roles": ["alice"]}, "roles must be an object"),
    ],
)
async def test_bad_roles_get_400_with_a_reason(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], payload: Any, reason: str
) -> None:
    incident_id = await fire(client, auth)
    answer = await post(client, f"/api/v1/incidents/{incident_id}/roles", api_auth, payload, 400)
    assert reason in answer["error"]


async def test_the_incident_commanders_actions_need_the_api_token(
    client: Client, auth: dict[str, str]
) -> None:
    incident_id = await fire(client, auth)
    for action, payload in (
        ("roles", {"roles": {"scribe": "x"}}),
        ("severity", {"severity": "P0", "reason": "r"}),
        ("escalate", {"tier": "vp"}),
    ):
        resp = await client.post(f"/api/v1/incidents/{incident_id}/{action}", json=payload)
        assert resp.status == 401, action


# -- severity -----------------------------------------------------------------------------


async def test_the_severity_changes_by_hand_with_a_reason(
    client: Client,
    auth: dict[str, str],
    api_auth: dict[str, str],
    clock: FakeClock,
    components: Components,
) -> None:
    incident_id = await fire(client, auth)  # P2 by default
    clock.advance(60)
    answer = await post(
        client,
        f"/api/v1/incidents/{incident_id}/severity",
        api_auth,
        {"actor": "alice", "severity": "P0", "reason": "checkout down"},
    )
    assert (answer["severity"], answer["severity_set_by"]) == ("P0", "alice")
    # P0's clocks apply: its 5 minute acknowledgment target runs from declaration.
    assert answer["sla"]["acknowledge"]["target_seconds"] == 300
    timeline = (await get(client, f"/api/v1/incidents/{incident_id}"))["timeline"]
    assert [e["kind"] for e in timeline][-1] == "severity_raised"
    assert timeline[-1]["message"] == "severity raised from P2 to P0 by alice: checkout down"
    # The gauge counts the incident under its severity now.
    registry = components.registry
    open_p0 = {"severity": "P0", "state": "triggered"}
    assert registry.get_sample_value("incident_sla_open_incidents", open_p0) == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"severity": "P9", "reason": "x"}, "severity must be one of P0, P1, P2; got 'P9'"),
        ({"severity": "P0"}, "reason is required"),
        ({"severity": "P0", "reason": 5}, "reason must be a string"),
    ],
)
async def test_bad_severity_changes_get_400(
    client: Client, auth: dict[str, str], api_auth: dict[str, str], payload: Any, reason: str
) -> None:
    incident_id = await fire(client, auth)
    answer = await post(client, f"/api/v1/incidents/{incident_id}/severity", api_auth, payload, 400)
    assert reason in answer["error"]
    assert (await get(client, f"/api/v1/incidents/{incident_id}"))["severity"] == "P2"


async def test_a_resolved_incidents_severity_is_final(
    client: Client, auth: dict[str, str], api_auth: dict[str, str]
) -> None:
    incident_id = await fire(client, auth)
    await post(client, f"/api/v1/incidents/{incident_id}/resolve", api_auth, {})
    payload = {"severity": "P0", "reason": "x"}
    await post(client, f"/api/v1/incidents/{incident_id}/severity", api_auth, payload, 409)


# -- escalation by hand, paging the fake PagerDuty ------------------------------------------

ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY00"
VP_KEY = "VPKEYVPKEYVPKEYVPKEYVPKEYVPKEY00"


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
async def paging(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    tmp_path: Path,
    pd: FakePagerDuty,
    clock: FakeClock,
) -> tuple[Client, Components]:
    """A sidecar whose P0 ladder names ``vp`` (routed) and ``board`` (record only)."""
    rules = (
        (DATA / "rules-mini.yaml")
        .read_text()
        .replace(
            "postmortem: 24h}}",
            "postmortem: 24h}, escalation: [{after: 1h, tier: vp, while: unacknowledged},"
            " {after: 2h, tier: board, while: unresolved, record_only: true}]}",
            1,
        )
    )
    (tmp_path / "rules.yaml").write_text(rules)
    config = config_factory(
        {
            "pagerduty": {
                "events_url": pd.events_url,
                "routing_key": ROUTING_KEY,
                "tier_routing_keys": {"vp": {"key": VP_KEY}},
                "timeout": "1s",
            }
        }
    )
    components = build_components(config, clock=clock, registry=CollectorRegistry())
    return await aiohttp_client(create_app(components)), components


async def drained(components: Components) -> None:
    worker = components.outbox
    assert worker is not None
    async with asyncio.timeout(30):
        while await components.store.outbox_pending():
            await worker.drain()


async def test_escalating_by_hand_pages_the_named_tier(
    paging: tuple[Client, Components],
    pd: FakePagerDuty,
    auth: dict[str, str],
    api_auth: dict[str, str],
) -> None:
    client, components = paging
    incident_id = await fire(client, auth, labels={"severity": "critical"})  # P0
    answer = await post(
        client,
        f"/api/v1/incidents/{incident_id}/escalate",
        api_auth,
        {"actor": "alice", "tier": "vp", "reason": "no progress"},
    )
    assert answer["escalations"]["vp"]["outcome"] == "paged"
    await drained(components)
    vp_pages = [e for e in pd.events if e.routing_key == VP_KEY]
    assert [e.event_action for e in vp_pages] == ["trigger"]
    # The summary names the incident by the plan's number.
    assert vp_pages[0].body["payload"]["summary"].startswith(f"[P0] #{DAY}-001 ")
    assert vp_pages[0].body["payload"]["custom_details"]["war_room"] == f"#incident-{DAY}-001"
    timeline = (await get(client, f"/api/v1/incidents/{incident_id}"))["timeline"]
    [escalated] = [e for e in timeline if e["kind"] == "escalated"]
    assert (escalated["actor"], escalated["source"]) == ("alice", "api")
    # Once is enough: the tier was paged.
    again = {"tier": "vp"}
    answer = await post(client, f"/api/v1/incidents/{incident_id}/escalate", api_auth, again, 409)
    assert "escalated to vp already" in answer["error"]


@pytest.mark.parametrize(
    ("tier", "status", "reason"),
    [
        ("cto", 400, "unknown escalation tier 'cto'; the tiers are: board, vp"),
        (None, 400, "unknown escalation tier None"),
        ("board", 409, "tier 'board' has no PagerDuty routing key"),
    ],
)
async def test_escalating_to_a_tier_that_pages_nobody_is_refused(
    paging: tuple[Client, Components],
    pd: FakePagerDuty,
    auth: dict[str, str],
    api_auth: dict[str, str],
    tier: str | None,
    status: int,
    reason: str,
) -> None:
    client, components = paging
    incident_id = await fire(client, auth, labels={"severity": "critical"})
    payload = {"actor": "alice", "tier": tier}
    answer = await post(
        client, f"/api/v1/incidents/{incident_id}/escalate", api_auth, payload, status
    )
    assert reason in answer["error"]
    await drained(components)
    assert [e.routing_key for e in pd.events] == [ROUTING_KEY]  # the first page only
