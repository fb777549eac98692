"""SLAs and escalation steps in business time, end to end on the injected clock.

The real components (rules, SQLite store, service, deadline scheduler, HTTP
API) run on a :class:`FakeClock`; the scheduler fires what is due when the
test moves time. The Schema Registry preset's default calendar is Monday to
Friday, 09:00-17:00 UTC, so its P2 opened on a Friday at 16:30 is due for
acknowledgment on Monday at 09:30, and nothing breaches over the weekend.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from sidecar.clock import FakeClock, isoformat
from sidecar.config import Config
from sidecar.runtime import Components, build_components
from sidecar.web import create_app
from tests.payloads import alert, body, notification
from tests.test_sla import (
    API_AUTH,
    WEBHOOK_AUTH,
    SidecarFactory,
    group_key,
    sidecar,
)

__all__ = ["sidecar"]  # the fixture, shared with test_sla

MIN = 60.0
HOUR = 3600.0


def utc(text: str) -> float:
    """``2026-11-27 16:30`` UTC as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


FRIDAY_1630 = utc("2026-11-27 16:30")
MONDAY_0930 = utc("2026-11-30 09:30")


async def test_p2_opened_friday_afternoon_is_due_monday_morning(
    sidecar: SidecarFactory, clock: FakeClock
) -> None:
    clock.set(FRIDAY_1630)
    sc = await sidecar("schema-registry")
    incident = await sc.fire("P2")
    await sc.at(utc("2026-11-28 12:00"))  # the weekend: no business time passes
    await sc.at(MONDAY_0930)
    assert sc.breaches("P2", "acknowledge") == 0, "breached at exactly its deadline"
    await sc.tick(1)
    assert sc.breaches("P2", "acknowledge") == 1
    (event,) = [e for e in await sc.timeline(incident) if e.data.get("sla") == "acknowledge"]
    assert (event.at, event.data["deadline"]) == (MONDAY_0930 + 1, MONDAY_0930)
    assert event.data["calendar"] == "business-hours"
    assert event.message == (
        "acknowledge SLA of P2 breached (deadline passed 1s ago; "
        "business time of calendar business-hours)"
    )
    # The wall-clock SLAs of the same severity still ran over the weekend.
    assert sc.breaches("P2", "update") == 1
    assert sc.breaches("P2", "resolve") == 1


async def test_acknowledged_monday_morning_is_in_time_and_measured_in_business_time(
    sidecar: SidecarFactory, clock: FakeClock
) -> None:
    clock.set(FRIDAY_1630)
    sc = await sidecar("schema-registry")
    incident = await sc.fire("P2")
    await sc.at(utc("2026-11-30 09:20"))
    await sc.acknowledge(incident)
    await sc.at(MONDAY_0930 + HOUR)
    assert sc.breaches("P2", "acknowledge") == 0
    # The histogram observes the business time (50 minutes), so that its
    # le="3600" bucket, the P2 target, counts this acknowledgment as within it.
    labels = {"severity": "P2", "team": "sre"}
    registry = sc.c.registry
    assert registry.get_sample_value("incident_sla_time_to_acknowledge_seconds_sum", labels) == (
        50 * MIN
    )
    bucket = {**labels, "le": "3600.0"}
    assert registry.get_sample_value("incident_sla_time_to_acknowledge_seconds_bucket", bucket) == 1


async def test_a_business_time_deadline_survives_a_restart(
    sidecar: SidecarFactory, clock: FakeClock
) -> None:
    clock.set(FRIDAY_1630)
    sc = await sidecar("schema-registry")
    incident = await sc.fire("P3")
    await sc.restart()
    due = utc("2026-11-30 12:30")  # 4h: 30 minutes on Friday, 3h30 on Monday
    await sc.at(due)
    assert sc.breaches("P3", "acknowledge") == 0
    await sc.restart()
    await sc.tick(1)
    assert sc.breaches("P3", "acknowledge") == 1
    assert (await sc.breach_events(incident))["acknowledge"] == [due + 1]


RULES = """\
name: berlin
severities:
  - name: P1
    title: High
    paging: page
    pagerduty_severity: error
    sla:
      acknowledge: {target: 1h, calendar: office}
    escalation:
      - {after: 0s, tier: on-call, while: unacknowledged, record_only: true}
      - {after: 30m, tier: lead, while: unacknowledged, record_only: true, calendar: office}
teams: [ops]
default_severity: P1
default_team: ops
time_intervals:
  - name: berlin-office
    time_intervals:
      - weekdays: ['monday:friday']
        times: [{start_time: '09:00', end_time: '17:00'}]
        location: Europe/Berlin
  - name: easter
    time_intervals:
      - {years: ['2026'], months: ['april'], days_of_month: ['3:6'], location: Europe/Berlin}
calendars:
  - name: office
    active_time_intervals: [berlin-office]
    mute_time_intervals: [easter]
"""


@pytest.fixture
async def office(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    clock: FakeClock,
    tmp_path: Path,
) -> AsyncIterator[tuple[Any, Components]]:
    """A sidecar on Berlin office hours with Easter muted, and an HTTP client of it."""
    path = tmp_path / "berlin.yaml"
    path.write_text(textwrap.dedent(RULES), encoding="utf-8")
    config = config_factory({"rules": {"file": str(path)}})
    components = build_components(config, clock=clock, registry=CollectorRegistry())
    yield await aiohttp_client(create_app(components)), components


async def _open(client: Any, clock: FakeClock) -> str:
    a = alert("ServiceDown", starts=clock.now(), labels={})
    resp = await client.post(
        "/webhook/alertmanager",
        data=body(notification(a, group_key=group_key("berlin"))),
        headers=WEBHOOK_AUTH,
    )
    assert resp.status == 200
    (inc,) = (await (await client.get("/api/v1/incidents?state=open")).json())["incidents"]
    return str(inc["id"])


def berlin(text: str) -> float:
    """Wall time in Berlin as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


@pytest.mark.parametrize(
    ("opened", "lead_due", "ack_due"),
    [
        # Easter (Good Friday to Easter Monday) is muted: 15 minutes on Thursday,
        # then Tuesday morning.
        ("2026-04-02 16:45", "2026-04-07 09:15", "2026-04-07 09:45"),
        # Berlin springs forward over this weekend: Monday 09:15 is CEST.
        ("2026-03-27 16:45", "2026-03-30 09:15", "2026-03-30 09:45"),
    ],
    ids=["easter-holidays", "spring-forward-weekend"],
)
async def test_steps_and_deadlines_run_on_berlin_business_time(
    office: tuple[Any, Components], clock: FakeClock, opened: str, lead_due: str, ack_due: str
) -> None:
    client, components = office
    clock.set(berlin(opened))
    incident = await _open(client, clock)

    async def view() -> dict[str, Any]:
        return dict(await (await client.get(f"/api/v1/incidents/{incident}")).json())

    ack = (await view())["sla"]["acknowledge"]
    assert ack == {
        "target_seconds": HOUR,
        "actual_seconds": None,
        "elapsed_seconds": 0.0,
        "calendar": "office",
        "deadline": isoformat(berlin(ack_due)),
        "status": "pending",
    }
    clock.set(berlin(lead_due) - 1)
    await components.scheduler.run_due()
    assert set((await view())["escalated"]) == {"on-call"}
    clock.set(berlin(lead_due))  # a step is due at its time exactly
    await components.scheduler.run_due()
    current = await view()
    assert current["escalated"] == {
        "on-call": isoformat(berlin(opened)),
        "lead": isoformat(berlin(lead_due)),
    }
    assert current["sla"]["acknowledge"]["elapsed_seconds"] == 30 * MIN
    clock.set(berlin(ack_due))
    await components.scheduler.run_due()
    assert (await view())["breaches"] == {}
    clock.set(berlin(ack_due) + 1)
    await components.scheduler.run_due()
    current = await view()
    assert current["breaches"] == {"acknowledge": isoformat(berlin(ack_due) + 1)}
    assert current["sla"]["acknowledge"]["status"] == "breached"
    assert current["sla"]["acknowledge"]["elapsed_seconds"] == HOUR + 1

    resp = await client.post(
        f"/api/v1/incidents/{incident}/acknowledge", json={"actor": "alice"}, headers=API_AUTH
    )
    assert resp.status == 200
    acknowledged = (await view())["sla"]["acknowledge"]
    assert acknowledged["actual_seconds"] == berlin(ack_due) + 1 - berlin(opened)  # wall time
    assert acknowledged["elapsed_seconds"] == HOUR + 1  # business time
