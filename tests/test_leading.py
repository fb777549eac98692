"""The plan's people and states in the book: numbers, statuses, roles, and the Incident Commander.

Pure commands on the injected time ``now``: no store, no service, no clock.
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sidecar.alertmanager import Notification, notification_from
from sidecar.cli import explain_rules
from sidecar.config import load_config
from sidecar.errors import ConfigError, InvalidRequest, InvalidTransition
from sidecar.incidents import Incident, IncidentBook, Numbering, is_number, war_room
from sidecar.incidents.people import attendees
from sidecar.notify.pagerduty import Pager
from sidecar.rules import RuleSet, load_rules
from sidecar.store.codec import incident_from_row, incident_row
from tests.conftest import DATA, write_config
from tests.payloads import alert, notification

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
PRESETS = Path(__file__).parent.parent / "rules"


@pytest.fixture
def rules() -> RuleSet:
    return load_rules(DATA / "rules-mini.yaml")


@pytest.fixture
def book(rules: RuleSet) -> IncidentBook:
    return IncidentBook(rules)


def n(*alerts: dict[str, Any], **kw: Any) -> Notification:
    return notification_from(notification(*alerts, **kw))


def opened(book: IncidentBook, now: float = T0 + 60, **labels: str) -> Incident:
    [change] = book.apply_notification(n(alert(labels=labels)), now)
    return change.incident


# -- incident numbers ---------------------------------------------------------


def test_numbers_follow_the_days_last_within_a_batch(book: IncidentBook) -> None:
    day = book.numbering.day(T0)
    book.numbering.begin(day, 41)
    first = book.apply_notification(n(alert(fingerprint="a" * 16), group_key="g1"), T0)
    second = book.apply_notification(n(alert(fingerprint="b" * 16), group_key="g2"), T0)
    assert book.numbering.end() == ("2023-11-14", 43)
    assert [c.incident.number for c in first + second] == ["2023-11-14-042", "2023-11-14-043"]
    opened_event = first[0].events[0]
    assert opened_event.data["number"] == "2023-11-14-042"
    assert opened_event.data["war_room"] == "#incident-2023-11-14-042"


def test_outside_a_batch_no_number_is_guessed(book: IncidentBook) -> None:
    assert opened(book).number is None
    assert book.numbering.end() is None


def test_the_day_is_taken_in_the_configured_time_zone() -> None:
    # 22:13 UTC on the 14th is already 07:13 on the 15th in Tokyo (UTC+9).
    assert Numbering(UTC).day(T0) == "2023-11-14"
    assert Numbering(ZoneInfo("Asia/Tokyo")).day(T0) == "2023-11-15"
    assert Numbering(ZoneInfo("America/Los_Angeles")).day(T0) == "2023-11-14"
    numbering = Numbering(ZoneInfo("Asia/Tokyo"))
    numbering.begin("2023-11-15", 0)
    assert numbering.take(T0) == "2023-11-15-001"
    assert numbering.take(T0 + 86400) is None  # another day: not this batch's counter
    assert numbering.end() == ("2023-11-15", 1)


def test_a_busy_day_gets_more_digits_and_numbers_are_told_from_ids() -> None:
    numbering = Numbering()
    numbering.begin("2026-11-30", 999)
    number = numbering.take(1_796_000_000.0 - 1_796_000_000.0 % 86400 + 3600)
    assert number == "2026-11-30-1000"
    assert is_number("2026-11-30-001") and is_number(number)
    assert not is_number("018bd2f1a6c0a1b2c3d4")
    assert war_room(None) is None


# -- statuses -------------------------------------------------------------------


def test_an_incident_opens_in_the_first_status_and_resolves_in_the_last(
    book: IncidentBook,
) -> None:
    inc = opened(book)
    assert (inc.status, inc.status_at) == ("Investigating", T0 + 60)
    book.resolve(inc.id, actor="alice", source="api", now=T0 + 600)
    assert (inc.status, inc.status_at) == ("Resolved", T0 + 600)


def test_a_status_update_sets_the_status_and_when_it_changed(book: IncidentBook) -> None:
    inc = opened(book)
    change = book.record_update(
        inc.id, actor="bob", source="api", now=T0 + 300, message="pool full", status="Identified"
    )
    assert (inc.status, inc.status_at) == ("Identified", T0 + 300)
    [event] = [e for e in change.events if e.kind == "status_update"]
    assert event.message == "[Identified] pool full"
    assert event.data == {"status": "Identified", "previous_status": "Investigating"}
    # The same status again: an update, but the status did not change.
    book.record_update(
        inc.id, actor="bob", source="api", now=T0 + 900, message="still", status="Identified"
    )
    assert inc.status_at == T0 + 300
    assert inc.last_update_at == T0 + 900


def test_a_status_the_plan_does_not_declare_is_refused_with_the_allowed_ones(
    book: IncidentBook,
) -> None:
    inc = opened(book)
    with pytest.raises(InvalidRequest, match="Investigating, Identified, Monitoring, Resolved"):
        book.record_update(
            inc.id, actor="bob", source="api", now=T0 + 300, message="x", status="Fixed"
        )
    assert inc.status == "Investigating"
    assert inc.last_update_at is None  # nothing changed


def test_rules_without_statuses_leave_the_status_unset_and_refuse_one() -> None:
    rules = load_rules(PRESETS / "llm-marketplace.yaml")
    bare = RuleSet(rules.spec.model_copy(update={"statuses": []}))
    book = IncidentBook(bare)
    inc = opened(book, severity="P2")
    assert inc.status is None
    with pytest.raises(InvalidRequest, match="declare no statuses"):
        book.record_update(inc.id, actor="a", source="api", now=T0 + 1, message="m", status="X")


# -- roles ----------------------------------------------------------------------


def test_roles_are_assigned_and_cleared_on_the_timeline(book: IncidentBook) -> None:
    inc = opened(book)
    change = book.assign_roles(
        inc,
        {"incident_commander": "alice", "smes": ["bob", "carol", "bob"], "scribe": "dan"},
        actor="alice",
        source="api",
        now=T0 + 120,
    )
    assert change is not None
    assert inc.roles == {"incident_commander": "alice", "smes": ["bob", "carol"], "scribe": "dan"}
    assert [(e.kind, e.message) for e in change.events] == [
        ("role_assigned", "Incident Commander: alice"),
        ("role_assigned", "Subject Matter Experts: bob, carol"),
        ("role_assigned", "Scribe: dan"),
    ]
    # The same again changes nothing; None clears a role.
    assert book.assign_roles(inc, {"scribe": "dan"}, actor="a", source="api", now=T0 + 130) is None
    cleared = book.assign_roles(inc, {"scribe": None}, actor="a", source="api", now=T0 + 140)
    assert cleared is not None
    assert [(e.kind, e.message) for e in cleared.events] == [("role_cleared", "Scribe: unassigned")]
    assert "scribe" not in inc.roles
    assert attendees(inc.roles) == ["alice", "bob", "carol"]


def test_the_pir_owner_is_assigned_after_resolution(book: IncidentBook) -> None:
    inc = opened(book)
    book.resolve(inc.id, actor="alice", source="api", now=T0 + 600)
    change = book.assign_roles(
        inc, {"pir_owner": "erin"}, actor="alice", source="api", now=T0 + 700
    )
    assert change is not None
    assert change.incident.roles == {"pir_owner": "erin"}
    assert book.get_review(inc.id) is change.incident  # still awaiting its review


@pytest.mark.parametrize(
    ("roles", "reason"),
    [
        ({"commander": "alice"}, "unknown role 'commander'; the roles are incident_commander"),
        ({"smes": "bob"}, "smes must be a list of names"),
        ({"scribe": ""}, "scribe must be a name"),
        ({"scribe": 7}, "scribe must be a name"),
    ],
)
def test_bad_roles_are_refused_and_change_nothing(
    book: IncidentBook, roles: dict[str, Any], reason: str
) -> None:
    inc = opened(book)
    with pytest.raises(InvalidRequest, match=reason):
        book.assign_roles(inc, roles, actor="a", source="api", now=T0 + 1)
    assert not inc.roles


def test_roles_status_and_severity_setter_survive_the_store_codec(book: IncidentBook) -> None:
    inc = opened(book)
    book.assign_roles(inc, {"smes": ["bob"]}, actor="a", source="api", now=T0 + 1)
    book.change_severity(inc.id, "P1", actor="ic", source="api", now=T0 + 2, reason="worse")
    inc.number = "2023-11-14-001"
    back = incident_from_row(incident_row(inc, T0 + 3))
    assert back == inc
    assert (back.roles, back.status) == ({"smes": ["bob"]}, "Investigating")
    assert back.severity_set_by == "ic"


# -- severity changes ----------------------------------------------------------------


def test_raising_the_severity_applies_its_clocks_at_once(book: IncidentBook) -> None:
    inc = opened(book, now=T0 + 60)  # P2 (the default): acknowledge within 1h
    change = book.change_severity(
        inc.id, "P0", actor="ic", source="api", now=T0 + 600, reason="all regions down"
    )
    assert change is not None
    # P0 acknowledges within 5 minutes of declaration: already overdue, recorded now.
    assert [e.kind for e in change.events] == ["severity_raised", "sla_breached"]
    assert change.events[0].message == "severity raised from P2 to P0 by ic: all regions down"
    assert change.events[0].data == {"from": "P2", "to": "P0", "reason": "all regions down"}
    assert (
        change.effects[0].kind,
        change.effects[0].severity,
        change.effects[0].previous_severity,
    ) == (
        "severity_raised",
        "P0",
        "P2",
    )
    assert book.open_counts[("P0", "triggered")] == 1
    assert book.open_counts[("P2", "triggered")] == 0


def test_lowering_the_severity_loosens_its_clocks_and_sends_no_page(rules: RuleSet) -> None:
    book = IncidentBook(rules)
    pager = Pager(rules, routing_names={"default"})
    book.planners.append(pager)
    inc = opened(book, severity="critical")  # P0
    change = book.change_severity(
        inc.id, "P1", actor="ic", source="api", now=T0 + 120, reason="one region only"
    )
    assert change is not None
    assert [e.kind for e in change.effects] == ["severity_lowered"]
    assert change.outbox == []  # nothing to tell PagerDuty: the page stands
    assert book.next_deadline(inc.id) == (T0 + 60 + 15 * 60, True)  # P1's acknowledgment


def test_a_manual_raise_pages_again_with_the_new_severity(rules: RuleSet) -> None:
    book = IncidentBook(rules)
    book.planners.append(Pager(rules, routing_names={"default"}))
    inc = opened(book)  # P2, notify
    change = book.change_severity(inc.id, "P0", actor="ic", source="api", now=T0 + 90, reason="x")
    assert change is not None
    assert [(r.action, r.routing) for r in change.outbox] == [("trigger", "default")]


def test_alerts_already_known_no_longer_raise_a_severity_set_by_hand(book: IncidentBook) -> None:
    inc = opened(book, severity="critical")  # P0 from its alert
    book.change_severity(inc.id, "P1", actor="ic", source="api", now=T0 + 120, reason="scoped")
    # Alertmanager's repeat of the same alert does not undo the decision...
    assert book.apply_notification(n(alert(labels={"severity": "critical"})), T0 + 400) == []
    assert inc.severity == "P1"
    # ...but a new critical alert joining the incident raises it again.
    second = alert(fingerprint="f" * 16, labels={"severity": "critical"})
    [change] = book.apply_notification(n(alert(labels={"severity": "critical"}), second), T0 + 500)
    assert change.incident.severity == "P0"
    assert "severity_raised" in [e.kind for e in change.events]


def test_severity_changes_are_checked(book: IncidentBook) -> None:
    inc = opened(book)
    with pytest.raises(InvalidRequest, match="unknown severity 'P9'"):
        book.change_severity(inc.id, "P9", actor="ic", source="api", now=T0 + 1, reason="x")
    with pytest.raises(InvalidRequest, match="needs a reason"):
        book.change_severity(inc.id, "P0", actor="ic", source="api", now=T0 + 1, reason=" ")
    same = book.change_severity(inc.id, "P2", actor="ic", source="api", now=T0 + 1, reason="x")
    assert same is None
    assert inc.severity_set_by is None


# -- escalation by hand -------------------------------------------------------------


def test_escalating_by_hand_pages_the_tier_once(rules: RuleSet) -> None:
    book = IncidentBook(rules, routed_tiers={"vp"})
    book.planners.append(Pager(rules, routing_names={"default", "tier:vp"}))
    inc = opened(book)
    change = book.escalate_to(
        inc.id, "vp", actor="ic", source="api", now=T0 + 300, reason="customer impact"
    )
    assert inc.escalated == {"vp": T0 + 300}
    assert inc.escalation_outcomes == {"vp": "paged"}
    [escalated] = [e for e in change.events if e.kind == "escalated"]
    assert escalated.message == "escalated to vp by ic: paged: customer impact"
    assert escalated.data["manual"] is True
    assert [(r.action, r.routing) for r in change.outbox] == [("trigger", "tier:vp")]
    with pytest.raises(InvalidTransition, match="escalated to vp already"):
        book.escalate_to(inc.id, "vp", actor="ic", source="api", now=T0 + 301)


def test_escalating_to_a_tier_without_a_key_records_that_nobody_was_routed(
    book: IncidentBook,
) -> None:
    inc = opened(book)
    change = book.escalate_to(inc.id, "cto", actor="ic", source="api", now=T0 + 300)
    assert inc.escalation_outcomes == {"cto": "unrouted"}
    assert change.outbox == []


def test_a_ladder_step_does_not_page_a_tier_escalated_by_hand() -> None:
    rules = load_rules(PRESETS / "llm-marketplace.yaml")
    book = IncidentBook(rules, routed_tiers={"engineering-manager"})
    inc = opened(book, incident_severity="P1")
    assert inc.severity == "P1"
    book.escalate_to(inc.id, "engineering-manager", actor="ic", source="api", now=T0 + 600)
    # P1's ladder reaches the engineering manager at 2h: already escalated, nothing due.
    change = book.check_deadlines(inc.id, T0 + 60 + 7200)
    assert change is not None  # the update cadence breached meanwhile...
    assert "escalated" not in [e.kind for e in change.events]  # ...but no second page
    assert inc.escalated == {"engineering-manager": T0 + 600}


# -- the rules' statuses and the numbering time zone, validated ----------------------


@pytest.mark.parametrize(
    ("statuses", "reason"),
    [
        ("[Investigating, Resolved, Investigating]", "'Investigating' is listed twice"),
        ("[Investigating, 'needs triage']", "invalid name 'needs triage'"),
        ("Investigating", "Input should be a valid list"),
    ],
)
def test_bad_statuses_are_refused_naming_file_and_line(
    tmp_path: Path, statuses: str, reason: str
) -> None:
    text = (DATA / "rules-mini.yaml").read_text()
    text = text.replace("statuses: [Investigating, Identified, Monitoring, Resolved]", "")
    text += f"# the plan's\nstatuses: {statuses}\n"
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    line = text.splitlines().index(f"statuses: {statuses}") + 1
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    [problem] = info.value.problems
    assert str(problem).startswith(f"{path}:{line}:")
    assert reason in str(problem)


def test_an_unknown_numbering_time_zone_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"incidents": {"number_timezone": "Mars/Olympus_Mons"}})
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus_Mons'"):
        load_config(path)


def test_test_rules_shows_the_status_an_incident_opens_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert explain_rules(write_config(tmp_path), ["alertname=DBDown"], []) == 0
    out = capsys.readouterr().out
    assert (
        "status:   Investigating (updates: Investigating, Identified, Monitoring, Resolved)" in out
    )
