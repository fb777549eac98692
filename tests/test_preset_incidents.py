"""Both presets run their plan's incident: number, statuses, roles, severity changes, escalation.

Each scenario follows its plan's process on the injected time, through the
incident book (with the PagerDuty planner, as the service runs it) and the
plan's own review template. Plan 000 is the LLM-Marketplace framework, plan
002 the Schema Registry plan (``../shared/seeds/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.alertmanager import notification_from
from sidecar.errors import InvalidRequest
from sidecar.incidents import Change, Incident, IncidentBook
from sidecar.notify.pagerduty import Pager
from sidecar.postmortem import render_postmortem
from sidecar.rules import RuleSet, load_rules
from tests.payloads import alert, notification

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
T = 1_796_047_200.0  # 2026-11-30 14:00:00 UTC
MIN = 60.0


def preset(name: str) -> RuleSet:
    return load_rules(RULES_DIR / f"{name}.yaml")


def running(rules: RuleSet, tiers: set[str]) -> IncidentBook:
    """A book that pages the default key and ``tiers``, as the service would."""
    book = IncidentBook(rules, routed_tiers=tiers)
    book.planners.append(Pager(rules, routing_names={"default", *(f"tier:{t}" for t in tiers)}))
    return book


def declare(book: IncidentBook, severity: str, last_number: int = 0) -> Change:
    """The incident of a firing alert with the plan's severity override, numbered as a batch."""
    labels = {"incident_severity": severity, "service": "api"}
    payload = notification_from(notification(alert("ApiDown", starts=T, labels=labels)))
    book.numbering.begin(book.numbering.day(T), last_number)
    [change] = book.apply_notification(payload, T)
    book.numbering.end()
    return change


def pages(change: Change | None) -> list[tuple[str, str]]:
    return [] if change is None else [(r.action, r.routing) for r in change.outbox]


def review(inc: Incident, book: IncidentBook, changes: list[Change | None], rules: RuleSet) -> str:
    timeline = [e for c in changes if c is not None for e in c.events]
    return render_postmortem(inc, timeline, rules, now=T + 600 * MIN)


def test_plan_000_an_incident_commander_runs_a_p1_that_turns_out_to_be_a_p0() -> None:
    rules = preset("llm-marketplace")
    book = running(rules, {"vp-engineering", "engineering-manager", "team-lead"})
    opened = declare(book, "P1", last_number=2)
    inc = opened.incident
    # "War Room: #incident-2024-11-19-001", "Status: Investigating".
    assert (inc.number, inc.status) == ("2026-11-30-003", "Investigating")
    assert opened.events[0].data["war_room"] == "#incident-2026-11-30-003"
    assert pages(opened) == [("trigger", "default")]
    changes: list[Change | None] = [opened]
    # "Incident Commander Actions: ... Assign roles (SME, Scribe, Comms)".
    changes.append(
        book.assign_roles(
            inc,
            {
                "incident_commander": "john.doe",
                "smes": ["ana", "raj"],
                "communications_lead": "kim",
                "scribe": "lee",
            },
            actor="john.doe",
            source="api",
            now=T + 3 * MIN,
        )
    )
    # "Assess severity": a complete outage is P0, and P0 pages VP Engineering at once.
    raised = book.change_severity(
        inc.id, "P0", actor="john.doe", source="api", now=T + 5 * MIN, reason="complete outage"
    )
    changes.append(raised)
    assert inc.severity == "P0"
    assert pages(raised) == [("trigger", "default"), ("trigger", "tier:vp-engineering")]
    assert inc.escalation_outcomes == {"vp-engineering": "paged"}
    # P0's 5-minute acknowledgment ran from declaration: due, not yet breached at 5m.
    assert "acknowledge" not in inc.breaches
    # "Status: [Investigating | Identified | Monitoring | Resolved]".
    for minute, status in ((20, "Identified"), (40, "Monitoring")):
        changes.append(
            book.record_update(
                inc.id,
                actor="kim",
                source="api",
                now=T + minute * MIN,
                message=f"now {status}",
                status=status,
            )
        )
    assert (inc.status, inc.status_at) == ("Monitoring", T + 40 * MIN)
    with pytest.raises(InvalidRequest, match="Investigating, Identified, Monitoring, Resolved"):
        book.record_update(
            inc.id, actor="kim", source="api", now=T + 41 * MIN, message="m", status="Mitigated"
        )
    # Escalating by hand to a tier of another ladder pages it too.
    manual = book.escalate_to(
        inc.id, "engineering-manager", actor="john.doe", source="api", now=T + 45 * MIN
    )
    changes.append(manual)
    assert pages(manual) == [("trigger", "tier:engineering-manager")]
    changes.append(book.resolve(inc.id, actor="john.doe", source="api", now=T + 50 * MIN))
    assert inc.status == "Resolved"
    # "Assign PIR owner" once the incident is closed.
    changes.append(
        book.assign_roles(
            inc, {"pir_owner": "john.doe"}, actor="john.doe", source="api", now=T + 60 * MIN
        )
    )
    text = review(inc, book, changes, rules)
    assert f"**Incident ID**: #2026-11-30-003 (`{inc.id}`)" in text
    assert "**Severity**: P0 (Critical)" in text
    assert "**PIR Owner**: john.doe" in text
    assert "**Attendees**: john.doe, ana, raj, kim, lee" in text
    assert "**War Room**: #incident-2026-11-30-003" in text
    assert "severity raised from P1 to P0 by john.doe: complete outage" in text
    assert "Subject Matter Experts: ana, raj" in text


def test_plan_002_statuses_a_severity_changed_both_ways_and_a_cto_paged_by_hand() -> None:
    rules = preset("schema-registry")
    ladder_tiers = {s.tier for p in rules.severities for s in p.escalation}
    book = running(rules, ladder_tiers)
    opened = declare(book, "P2")
    inc = opened.incident
    assert (inc.number, inc.status, inc.severity) == ("2026-11-30-001", "Investigating", "P2")
    # Plan 002 names two statuses only: "Identified" is not one of them.
    with pytest.raises(InvalidRequest, match="must be one of Investigating, Resolved"):
        book.record_update(
            inc.id, actor="sre", source="api", now=T + MIN, message="m", status="Identified"
        )
    changes: list[Change | None] = [opened]
    # Raised to P1: its ladder's 0-minute on-call step is due at once, its 15-minute
    # engineering lead step too (declared 20 minutes ago), both unacknowledged.
    raised = book.change_severity(
        inc.id, "P1", actor="sre", source="api", now=T + 20 * MIN, reason="error rate > 10%"
    )
    changes.append(raised)
    assert pages(raised) == [
        ("trigger", "default"),
        ("trigger", "tier:on-call-sre"),
        ("trigger", "tier:engineering-lead"),
    ]
    # P1 acknowledges within 15 minutes of declaration: overdue by the time it is P1.
    assert "acknowledge" in inc.breaches
    # The CTO is on P0's ladder only; the Incident Commander pages them by hand.
    cto = book.escalate_to(
        inc.id, "cto", actor="sre", source="api", now=T + 25 * MIN, reason="customer data"
    )
    changes.append(cto)
    assert pages(cto) == [("trigger", "tier:cto")]
    # Lowered again: nothing is paged, and the same alert does not raise it back.
    lowered = book.change_severity(
        inc.id, "P2", actor="sre", source="api", now=T + 30 * MIN, reason="one tenant only"
    )
    changes.append(lowered)
    assert pages(lowered) == []
    repeat = notification_from(
        notification(
            alert("ApiDown", starts=T, labels={"incident_severity": "P2", "service": "api"})
        )
    )
    assert book.apply_notification(repeat, T + 31 * MIN) == []
    changes.append(
        book.assign_roles(
            inc, {"incident_commander": "sre", "pir_owner": "mia"}, actor="sre", source="api",
            now=T + 32 * MIN,
        )
    )  # fmt: skip
    changes.append(book.resolve(inc.id, actor="sre", source="api", now=T + 60 * MIN))
    assert (inc.status, inc.status_at) == ("Resolved", T + 60 * MIN)
    text = review(inc, book, changes, rules)
    assert f"**Incident ID:** #2026-11-30-001 (`{inc.id}`)" in text
    assert "**Review Owner:** mia" in text
    assert "**Attendees:** sre, mia" in text
    assert "severity lowered from P1 to P2 by sre: one tenant only" in text
    assert "escalated to cto by sre: paged: customer data" in text
