"""Slack through the real service: one thread per incident, kept current, dead letters shown.

The sidecar runs in the test's event loop with ``slack_sdk`` pointed at the fake
Slack Web API (a real HTTP server on 127.0.0.1, written from Slack's docs).
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
from sidecar.runtime import Components, build_components
from sidecar.web import create_app
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.payloads import alert, body, notification
from tests.support.outboxes import drain_all

Client = TestClient[Any, Any]
INCIDENTS, ENGINEERING, DB = "C0INCIDENTS", "C0ENGINEERING", "C0DBTEAM"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    channels = {"incidents": INCIDENTS, "engineering": ENGINEERING, "db-team": DB}
    async with FakeSlack(channels=channels) as fake:
        yield fake


def slack_section(fake: FakeSlack, **extra: Any) -> dict[str, Any]:
    return {
        "token": fake.token,
        "api_url": fake.api_url,
        "channels": {
            "default": "#incidents",
            "stakeholders": "#engineering",
            "stakeholder_severities": ["P0"],
            **extra.pop("channels", {}),
        },
        "users": {"alice": "U0ALICE01"},
        "messages_per_channel": 100,
        "timeout": "2s",
        **extra,
    }


@pytest.fixture
def make_sidecar(
    aiohttp_client: Callable[..., Any], config_factory: Callable[..., Config], slack: FakeSlack
) -> Callable[..., Any]:
    async def make(
        *, clock: Clock | None = None, sections: dict[str, Any] | None = None, **extra: Any
    ) -> tuple[Client, Components]:
        config = config_factory(
            {
                "slack": slack_section(slack, **extra),
                "server": {"external_url": "https://sidecar.example"},
                "notifications": {"retry": {"initial": "50ms", "max": "2s"}},
                **(sections or {}),
            }
        )
        components = build_components(
            config, clock=clock or SystemClock(), registry=CollectorRegistry()
        )
        return await aiohttp_client(create_app(components)), components

    return make


async def post_alert(client: Client, payload: dict[str, Any]) -> str:
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


def count(components: Components, action: str, result: str) -> float | None:
    return components.registry.get_sample_value(
        "incident_sla_notifications_total",
        {"integration": "slack", "action": action, "result": result},
    )


def firing(now: float | None = None) -> dict[str, Any]:
    """A P0 that started a minute ago (by default on the real clock, as the service runs)."""
    return notification(
        alert(
            labels={"severity": "critical", "service": "search"},
            annotations={"summary": "Search slow", "impact": "100% of queries > 5s & <rising>"},
            starts=(time.time() if now is None else now) - 60,
        )
    )


async def test_an_incident_gets_one_thread_kept_current_and_closed(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar()
    incident_id = await post_alert(client, firing())
    await api(client, incident_id, "acknowledge", actor="alice")
    await api(client, incident_id, "updates", actor="alice", message="Rolled back the deploy")
    await api(client, incident_id, "resolve", actor="alice", message="A bad index build")
    await drain_all(components)

    [head] = slack.channel_messages(INCIDENTS)
    # The head: the declared message, escaped as Slack asks, then kept current in place.
    assert "DBDown" in head.edits[0] and "Status: Investigating" in head.edits[0]
    assert "Impact: 100% of queries &gt; 5s &amp; &lt;rising&gt;" in head.edits[0]
    assert "acknowledged by <@U0ALICE01>" in head.edits[1]  # the mapped user is mentioned
    assert "Status: Resolved" in head.text
    replies = [m.text for m in slack.replies(INCIDENTS, head.ts)]
    assert len(replies) == 2
    assert "Rolled back the deploy" in replies[0]
    assert "Resolved" in replies[1] and "Root cause: A bad index build" in replies[1]
    # P0 also goes to the stakeholders, without the internals.
    [stake] = slack.channel_messages(ENGINEERING)
    assert [m.text for m in slack.replies(ENGINEERING, stake.ts)] == replies
    assert count(components, "post", "accepted") == 2.0
    assert count(components, "reply", "rejected") == 0.0
    assert (
        components.registry.get_sample_value(
            "incident_sla_notifications_pending", {"integration": "slack"}
        )
        == 0.0
    )


async def test_team_channel_wins_and_no_stakeholder_thread_below_p0(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar(channels={"teams": {"db": "#db-team"}})
    await post_alert(
        client,
        notification(
            alert(labels={"severity": "warning", "service": "db"}, starts=time.time() - 60)
        ),
    )
    await drain_all(components)
    assert len(slack.channel_messages(DB)) == 1
    assert slack.channel_messages(INCIDENTS) == []
    assert slack.channel_messages(ENGINEERING) == []


async def test_an_unknown_channel_is_a_dead_letter_with_slacks_words_and_blocks_nothing(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar(
        channels={"default": "#no-such-channel", "stakeholders": None}
    )
    incident_id = await post_alert(client, firing())
    await api(client, incident_id, "updates", actor="alice", message="looking")
    await drain_all(components)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    slack_items = [n for n in view["notifications"] if n["integration"] == "slack"]
    assert [(n["action"], n["state"]) for n in slack_items] == [
        ("post", "dead"),
        ("reply", "dead"),
        ("update", "dead"),
    ]
    assert slack_items[0]["last_error"] == "channel_not_found"
    # The thread never started: its replies and updates say why.
    assert all("channel_not_found" in n["last_error"] for n in slack_items[1:])
    assert count(components, "post", "rejected") == 1.0
    assert count(components, "reply", "rejected") == 1.0


@pytest.mark.parametrize("error", ["invalid_auth", "token_revoked"])
async def test_a_bad_token_is_a_dead_letter(
    make_sidecar: Callable[..., Any], slack: FakeSlack, error: str
) -> None:
    client, components = await make_sidecar()
    if error == "token_revoked":
        slack.revoke(slack.token)
    else:
        slack.tokens.clear()
    incident_id = await post_alert(client, firing())
    await drain_all(components)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    errors = {n["last_error"] for n in view["notifications"] if n["integration"] == "slack"}
    assert errors == {error}
    assert slack.messages == {}


async def test_a_429_waits_its_retry_after_then_the_thread_goes_on_in_order(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar(channels={"stakeholders": None})
    slack.rate_limit_next(retry_after=1)
    slack.server_error_next()
    incident_id = await post_alert(client, firing())
    await api(client, incident_id, "updates", actor="alice", message="first")
    await api(client, incident_id, "updates", actor="alice", message="second")
    await drain_all(components)
    posts = [c for c in slack.calls if c.method == "chat.postMessage"]
    assert [c.status for c in posts[:3]] == [429, 500, 200]
    # Slack asked for a second: the retry waited at least that long.
    assert posts[1].at - posts[0].at >= 1.0
    [head] = slack.channel_messages(INCIDENTS)
    assert ["first" in r.text for r in slack.replies(INCIDENTS, head.ts)] == [True, False]
    assert count(components, "post", "retried") == 2.0


async def test_the_per_channel_rate_is_kept(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    slack.per_channel_per_second = 1
    client, components = await make_sidecar(
        messages_per_channel=1, rate_window="1s", channels={"stakeholders": None}
    )
    incident_id = await post_alert(client, firing())
    await api(client, incident_id, "updates", actor="alice", message="one")
    await api(client, incident_id, "updates", actor="alice", message="two")
    await drain_all(components)
    assert [c.status for c in slack.calls] == [200] * 5  # post; reply, update; reply, update


MIN = 60.0


async def test_a_reminder_before_the_update_deadline_mentions_the_ic_then_the_breach(
    make_sidecar: Callable[..., Any], slack: FakeSlack, clock: FakeClock
) -> None:
    # P0 of the mini rules: a status update every 15 minutes; remind 3 minutes before.
    client, components = await make_sidecar(
        clock=clock,
        sections={"reminders": {"before": "5m", "severities": {"P0": "3m"}}},
        channels={"stakeholders": None},
    )
    t0 = clock.now()
    incident_id = await post_alert(client, firing(t0))
    await api(client, incident_id, "acknowledge", actor="alice")
    # Sent before time moves: a lease counts on the same clock, and a jump of
    # minutes would lapse one in flight (and send it twice).
    await drain_all(components)
    run_due = components.scheduler.run_due
    clock.set(t0 + 12 * MIN - 1)
    assert await run_due() == 0
    clock.set(t0 + 12 * MIN)
    assert await run_due() == 1  # the reminder, at its time
    assert await run_due() == 0  # once per update window
    clock.set(t0 + 15 * MIN + 1)
    assert await run_due() == 1  # the update SLA breached
    await drain_all(components)
    [head] = slack.channel_messages(INCIDENTS)
    reminder, breach = (m.text for m in slack.replies(INCIDENTS, head.ts))
    assert reminder.startswith(":alarm_clock: <@U0ALICE01>, a status update is due by ")
    assert "update SLA of P0 breached" in breach and "<@U0ALICE01>" in breach
    # A status update opens a new window, with its own reminder.
    await api(client, incident_id, "updates", actor="alice", message="still on it")
    await drain_all(components)
    clock.set(t0 + 15 * MIN + 1 + 12 * MIN)
    assert await run_due() == 1
    await drain_all(components)
    assert sum("alarm_clock" in m.text for m in slack.replies(INCIDENTS, head.ts)) == 2
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert [e["kind"] for e in view["timeline"]].count("update_reminder") == 2


async def test_without_a_slack_user_id_the_reminder_names_the_ic(
    make_sidecar: Callable[..., Any], slack: FakeSlack, clock: FakeClock
) -> None:
    client, components = await make_sidecar(clock=clock, channels={"stakeholders": None})
    t0 = clock.now()
    incident_id = await post_alert(client, firing(t0))
    await api(client, incident_id, "acknowledge", actor="bob")
    await drain_all(components)
    clock.set(t0 + 10 * MIN)  # the default: 5 minutes before the 15-minute deadline
    assert await components.scheduler.run_due() == 1
    await drain_all(components)
    [head] = slack.channel_messages(INCIDENTS)
    [reminder] = slack.replies(INCIDENTS, head.ts)
    assert reminder.text.startswith(":alarm_clock: bob, a status update is due by ")


async def test_what_slack_missed_while_down_goes_out_after_a_restart_once_and_in_order(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar(channels={"stakeholders": None})
    slack.server_error_next(times=1_000)  # Slack is down for as long as this sidecar runs
    incident_id = await post_alert(client, firing())
    await api(client, incident_id, "updates", actor="alice", message="first")
    for worker in components.outboxes:
        await worker.drain()  # one attempt each, failed: all still pending
    assert await components.store.outbox_pending("slack") == 3
    await client.close()  # the sidecar stops with its notifications in the store

    slack.clear_faults()  # Slack is back
    client, components = await make_sidecar(channels={"stakeholders": None})
    await drain_all(components)
    [head] = slack.channel_messages(INCIDENTS)
    assert ["first" in m.text for m in slack.replies(INCIDENTS, head.ts)] == [True]
    assert len(head.edits) == 1  # the update after the reply, once


async def test_a_raised_severity_replies_and_brings_the_stakeholders_in(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar()
    starts = time.time() - 60
    warning = alert(fingerprint="1111111111111111", labels={"severity": "warning"}, starts=starts)
    incident_id = await post_alert(client, notification(warning))
    await drain_all(components)
    assert slack.channel_messages(ENGINEERING) == []  # P1: not the stakeholders' business
    critical = alert(fingerprint="2222222222222222", labels={"severity": "critical"}, starts=starts)
    assert await post_alert(client, notification(warning, critical)) == incident_id
    await drain_all(components)
    [head] = slack.channel_messages(INCIDENTS)
    assert "P0 INCIDENT" in head.text and "P1 INCIDENT" in head.edits[0]
    [raised] = slack.replies(INCIDENTS, head.ts)
    assert raised.text == ":arrow_up: Severity raised from P1 to *P0*."
    [stake] = slack.channel_messages(ENGINEERING)  # its thread starts now, at P0
    assert "P0 INCIDENT" in stake.text


async def test_slack_down_never_holds_up_pagerduty(
    aiohttp_client: Callable[..., Any], config_factory: Callable[..., Config], slack: FakeSlack
) -> None:
    async with FakePagerDuty() as pd:
        config = config_factory(
            {
                "slack": slack_section(slack, channels={"stakeholders": None}),
                "pagerduty": {"events_url": pd.events_url, "routing_key": "R" * 32},
                "notifications": {"retry": {"initial": "10s", "max": "10s"}},
            }
        )
        components = build_components(config, clock=SystemClock(), registry=CollectorRegistry())
        client = await aiohttp_client(create_app(components))
        slack.server_error_next(times=1_000)
        await post_alert(client, firing())
        await pd.wait_for_events(1)  # paged while Slack fails
        assert [e.event_action for e in pd.events] == ["trigger"]
        assert await components.store.outbox_pending("slack") == 1


async def test_a_raise_into_another_severitys_channel_starts_the_thread_there(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar(
        channels={"severities": {"P0": "#db-team"}, "stakeholders": None}
    )
    starts = time.time() - 60
    warning = alert(fingerprint="1111111111111111", labels={"severity": "warning"}, starts=starts)
    await post_alert(client, notification(warning))
    critical = alert(fingerprint="2222222222222222", labels={"severity": "critical"}, starts=starts)
    await post_alert(client, notification(warning, critical))
    await drain_all(components)
    [p1_head] = slack.channel_messages(INCIDENTS)
    assert [m.text for m in slack.replies(INCIDENTS, p1_head.ts)] == [
        ":arrow_up: Severity raised from P1 to *P0*."
    ]
    [p0_head] = slack.channel_messages(DB)
    assert "P0 INCIDENT" in p0_head.text
    assert not any(c.answer.get("ok") is False for c in slack.calls)


async def test_the_head_carries_number_war_room_status_and_roles_kept_current(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar(channels={"stakeholders": None})
    incident_id = await post_alert(client, firing())
    resp = await client.post(
        f"/api/v1/incidents/{incident_id}/roles",
        json={"actor": "alice", "roles": {"incident_commander": "alice", "scribe": "sam"}},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert resp.status == 200, await resp.text()
    await api(
        client, incident_id, "updates", actor="alice", message="found it", status="Identified"
    )
    await drain_all(components)
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    number = view["number"]
    [head] = slack.channel_messages(INCIDENTS)
    assert f"Incident: #{number}" in head.edits[0]
    assert f"War Room: #incident-{number}" in head.edits[0]
    assert "Status: Investigating" in head.edits[0]
    assert "Incident Commander: <@U0ALICE01>" in head.edits[1] and "Scribe: sam" in head.edits[1]
    assert "Status: Identified" in head.text


async def test_each_thread_keeps_its_order_among_many_incidents(
    make_sidecar: Callable[..., Any], slack: FakeSlack
) -> None:
    client, components = await make_sidecar(channels={"stakeholders": None})
    slack.server_error_next(times=3)  # some sends fail and are retried meanwhile
    ids = []
    for n in range(5):
        payload = notification(
            alert(f"Down{n}", fingerprint=f"{n:016x}", starts=time.time() - 60),
            group_key=f'{{}}:{{alertname="Down{n}"}}',
        )
        ids.append(await post_alert(client, payload))
    for step in range(3):
        for incident_id in ids:
            await api(client, incident_id, "updates", actor="alice", message=f"step {step}")
    await drain_all(components)
    heads = slack.channel_messages(INCIDENTS)
    assert len(heads) == 5
    for head in heads:
        replies = [m.text for m in slack.replies(INCIDENTS, head.ts)]
        assert [r.split("step ")[1][0] for r in replies] == ["0", "1", "2"]
