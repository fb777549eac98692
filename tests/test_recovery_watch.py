"""The recovery watch and escalation rules on the incident book, on an injected clock.

A resolved incident of a watched severity reopens when its group fires again
within the watch (same id, a ``reopened`` event, time to resolve measured once
to the final resolution), stays closed against late copies, and is closed for
good when the watch ends; escalation rules page their tier once per incident.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar.alertmanager import Notification, notification_from
from sidecar.clock import FakeClock, isoformat
from sidecar.config import Config
from sidecar.errors import ConfigError
from sidecar.incidents import Change, Incident, IncidentBook
from sidecar.notify.pagerduty import Pager
from sidecar.postmortem import render_postmortem
from sidecar.rules import RuleSet, load_rules
from sidecar.runtime import build_components
from sidecar.sla.verdict import sla_report
from sidecar.store.codec import incident_from_row, incident_row
from sidecar.web import create_app
from tests.conftest import DATA, REPO
from tests.payloads import alert, body, notification

T0 = 1_700_000_000.0
HOUR = 3600.0
# The mini rules with a one-hour watch on P0, a ladder (vp at once, cto at
# 60 min while unresolved, lead at 15 min while unacknowledged) and an
# escalation rule on a label and one on an annotation.
WATCHED_RULES = (
    (DATA / "rules-mini.yaml")
    .read_text()
    .replace(
        "postmortem: 24h}}",
        "postmortem: 24h}, recovery_watch: 1h, escalation: ["
        "{after: 0s, tier: vp, while: unresolved},"
        " {after: 15m, tier: lead, while: unacknowledged},"
        " {after: 60m, tier: cto, while: unresolved}]}",
    )
    + """escalation_rules:
  - {name: emergency-change, match: ['change="emergency"'], tier: change-manager}
  - name: customer-facing
    match_annotations: ['impact=~"customers?"']
    tier: comms
    record_only: true
"""
)


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(WATCHED_RULES)
    return load_rules(path)


@pytest.fixture
def book(rules: RuleSet) -> IncidentBook:
    return IncidentBook(rules, routed_tiers={"vp", "cto", "lead", "change-manager"})


def n(*alerts: dict[str, Any], **kw: Any) -> Notification:
    return notification_from(notification(*alerts, **kw))


def firing(start: float = T0, **kw: Any) -> Notification:
    labels = {"severity": "critical", **kw.pop("labels", {})}
    return n(alert(labels=labels, starts=start, **kw))


def resolved(start: float, end: float) -> Notification:
    return n(alert(labels={"severity": "critical"}, starts=start, status="resolved", ends=end))


def one(changes: list[Change]) -> Change:
    assert len(changes) == 1, changes
    return changes[0]


def kinds(change: Change) -> list[str]:
    return [e.kind for e in change.events]


def resolve_times(changes: list[Change]) -> list[float]:
    """Every time to resolve the changes would observe (the histogram's samples)."""
    return [
        e.seconds
        for c in changes
        for e in c.effects
        if e.kind in ("resolved", "closed") and e.seconds is not None
    ]


def open_and_resolve(book: IncidentBook) -> tuple[Incident, list[Change]]:
    opened = one(book.apply_notification(firing(), T0 + 60))
    closed = one(book.apply_notification(resolved(T0, T0 + 600), T0 + 660))
    return closed.incident, [opened, closed]


def test_a_resolution_starts_the_watch_and_measures_nothing_yet(book: IncidentBook) -> None:
    inc, changes = open_and_resolve(book)
    assert inc.state == "resolved"
    assert (inc.resolved_at, inc.watch_until, inc.closed_at) == (T0 + 600, T0 + 600 + HOUR, None)
    assert inc.is_watching
    assert [i.id for i in book.watching()] == [inc.id]
    resolved_event = changes[1].events[-1]
    assert resolved_event.kind == "resolved"
    assert resolved_event.data["watch_until"] == T0 + 600 + HOUR
    assert "recovery watch of 1h" in resolved_event.message
    assert resolve_times(changes) == []  # measured once, when the watch ends
    # The end of the watch is the incident's next deadline (strict: a re-fire
    # at its very end still reopens).
    assert book.next_deadline(inc.id) == (T0 + 600 + HOUR, True)


def test_a_re_fire_within_the_watch_reopens_the_same_incident(book: IncidentBook) -> None:
    inc, changes = open_and_resolve(book)
    escalated = dict(inc.escalated)
    assert set(escalated) == {"vp"}
    refire = firing(start=T0 + 1800)
    reopened = one(book.apply_notification(refire, T0 + 1830))
    assert reopened.incident.id == inc.id
    assert reopened.incident.state == "triggered"
    # Nobody acknowledged it: the lead step (15 min, unacknowledged) is due;
    # vp, paged at opening, is not paged again.
    assert kinds(reopened) == ["reopened", "alert_added", "escalated"]
    assert reopened.events[2].data["tier"] == "lead"
    assert "within its 1h recovery watch: reopened" in reopened.events[0].message
    assert reopened.events[0].data == {"resolved_at": T0 + 600, "reopens": 1}
    assert [e.kind for e in reopened.effects] == ["reopened", "escalated", "unmatched"]
    assert reopened.incident.reopens == 1
    assert (reopened.incident.resolved_at, reopened.incident.watch_until) == (None, None)
    assert book.get_open(inc.id) is reopened.incident
    assert list(book.watching()) == []
    # The clocks go on from the start.
    assert reopened.incident.escalated["vp"] == escalated["vp"]
    assert book.apply_notification(refire, T0 + 1840) == []  # an HA duplicate
    final = one(book.apply_notification(resolved(T0 + 1800, T0 + 2400), T0 + 2460))
    assert final.incident.resolved_at == T0 + 2400
    assert final.incident.watch_until == T0 + 2400 + HOUR
    # Still nothing measured; the end of the watch closes it for good, once.
    assert book.check_deadlines(inc.id, T0 + 2400 + HOUR) is None  # strict
    ended = book.check_deadlines(inc.id, T0 + 2400 + HOUR + 1)
    assert ended is not None
    assert kinds(ended) == ["closed"]
    assert "closed, reopened 1 time" in ended.events[0].message
    assert ended.incident.closed_at == T0 + 2400 + HOUR
    assert not ended.incident.is_watching
    all_changes = [*changes, reopened, final, ended]
    # Resolution measured to the final resolve, and counted once.
    assert resolve_times(all_changes) == [2400.0]
    assert [e.kind for c in all_changes for e in c.effects].count("opened") == 1
    assert book.check_deadlines(inc.id, T0 + 10 * HOUR) is None


def test_an_acknowledged_incident_reopens_acknowledged(book: IncidentBook) -> None:
    one(book.apply_notification(firing(), T0 + 60))
    inc_id = book.open_incidents().__iter__().__next__().id
    assert book.acknowledge(inc_id, actor="alice", source="api", now=T0 + 120) is not None
    one(book.apply_notification(resolved(T0, T0 + 600), T0 + 660))
    reopened = one(book.apply_notification(firing(start=T0 + 900), T0 + 930))
    inc = reopened.incident
    assert (inc.state, inc.acknowledged_at, inc.acknowledged_by) == (
        "acknowledged",
        T0 + 120,
        "alice",
    )
    # Acknowledged but still unresolved at 60 min: the cto step (unresolved)
    # comes due; the lead step (unacknowledged) never does.
    ladder = book.check_deadlines(inc.id, T0 + 60 + HOUR)
    assert ladder is not None
    tiers = [e.data["tier"] for e in ladder.events if e.kind == "escalated"]
    assert tiers == ["cto"]
    assert "lead" not in ladder.incident.escalated


def test_an_acknowledgment_after_the_reopening_is_recorded_and_paged_out_once(
    book: IncidentBook,
) -> None:
    pager = Pager(book.classifier, routing_names={"default"})
    opened = one(book.apply_notification(firing(), T0 + 60))
    assert "trigger" in [e.action for e in pager.events_for(opened, T0 + 60)]
    inc_id = opened.incident.id
    first = book.acknowledge(inc_id, actor="alice", source="api", now=T0 + 120)
    assert first is not None and first.effects[0].seconds == 60.0
    assert book.acknowledge(inc_id, actor="bob", source="api", now=T0 + 130) is None
    one(book.apply_notification(resolved(T0, T0 + 600), T0 + 660))
    reopened = one(book.apply_notification(firing(start=T0 + 900), T0 + 930))
    assert "trigger" in [e.action for e in pager.events_for(reopened, T0 + 930)]
    inc = reopened.incident
    # The reopening's trigger paged the on-call again: that page awaits an acknowledgment.
    assert inc.state == "acknowledged" and inc.awaits_acknowledgment
    again = book.acknowledge(inc_id, actor="bob", source="api", now=T0 + 990)
    assert again is not None
    assert kinds(again) == ["acknowledged"]
    assert again.events[0].actor == "bob"
    assert "again, after the reopening" in again.events[0].message
    # Time to acknowledge was measured once, at the first acknowledgment.
    assert [(e.kind, e.seconds, e.source) for e in again.effects] == [("acknowledged", None, "api")]
    assert (inc.acknowledged_at, inc.acknowledged_by, inc.reacknowledged_at) == (
        T0 + 120,
        "alice",
        T0 + 990,
    )
    assert not inc.awaits_acknowledgment
    assert book.acknowledge(inc_id, actor="carol", source="api", now=T0 + 1000) is None
    # PagerDuty hears the acknowledgment on the page the reopening triggered.
    acks = [(e.action, e.dedup_key) for e in pager.events_for(again, T0 + 990)]
    assert ("acknowledge", pager.dedup_key(inc)) in acks
    assert {action for action, _ in acks} == {"acknowledge"}
    # The acknowledgment after the reopening survives a restart.
    restored = incident_from_row(incident_row(inc, T0 + 990))
    assert restored.reacknowledged_at == T0 + 990 and not restored.awaits_acknowledgment


def test_late_copies_during_the_watch_reopen_nothing(book: IncidentBook) -> None:
    inc, _ = open_and_resolve(book)
    # The first episode's notifications again (HA peers, retries), in any order.
    assert book.apply_notification(firing(), T0 + 700) == []
    assert book.apply_notification(resolved(T0, T0 + 600), T0 + 700) == []
    reopened = one(book.apply_notification(firing(start=T0 + 1200), T0 + 1230))
    one(book.apply_notification(resolved(T0 + 1200, T0 + 1500), T0 + 1530))
    # An instance older than the one the incident now tracks is a copy too,
    # though the closed log keeps only the newest episode's instances.
    assert book.apply_notification(firing(), T0 + 1600) == []
    assert reopened.incident.id == inc.id
    assert reopened.incident.reopens == 1


def test_a_re_fire_that_started_after_the_window_opens_a_new_incident(
    book: IncidentBook,
) -> None:
    inc, _ = open_and_resolve(book)
    # The scheduler has not closed it yet (the sidecar was down, say).
    late = firing(start=T0 + 600 + HOUR + 5)
    ended, opened = book.apply_notification(late, T0 + 600 + HOUR + 60)
    assert ended.incident.id == inc.id
    assert kinds(ended) == ["closed"]
    assert resolve_times([ended]) == [600.0]
    assert opened.incident.id != inc.id
    assert kinds(opened)[0] == "opened"
    assert list(book.watching()) == []


def test_after_the_watch_a_re_fire_opens_a_new_incident(book: IncidentBook) -> None:
    inc, _ = open_and_resolve(book)
    assert book.check_deadlines(inc.id, T0 + 600 + HOUR + 1) is not None
    opened = one(book.apply_notification(firing(start=T0 + 600 + HOUR + 30), T0 + 2 * HOUR))
    assert opened.incident.id != inc.id
    assert kinds(opened)[0] == "opened"


def test_a_severity_without_a_watch_is_closed_at_resolution(book: IncidentBook) -> None:
    opened = one(book.apply_notification(n(alert(labels={"severity": "info"})), T0 + 60))
    assert opened.incident.severity == "P2"
    closed = one(book.apply_notification(n(alert(status="resolved", ends=T0 + 300)), T0 + 360))
    inc = closed.incident
    assert (inc.watch_until, inc.closed_at) == (None, T0 + 300)
    assert resolve_times([closed]) == [300.0]
    assert list(book.watching()) == []
    again = one(book.apply_notification(n(alert(starts=T0 + 400)), T0 + 430))
    assert again.incident.id != inc.id


def test_a_reopen_that_is_not_committed_is_undone_into_the_watch(book: IncidentBook) -> None:
    inc, _ = open_and_resolve(book)
    reopened = one(book.apply_notification(firing(start=T0 + 900), T0 + 930))
    book.undo(reopened)
    assert book.get_open(inc.id) is None
    [watched] = book.watching()
    assert (watched.id, watched.state, watched.reopens) == (inc.id, "resolved", 0)
    assert watched.watch_until == T0 + 600 + HOUR
    again = one(book.apply_notification(firing(start=T0 + 900), T0 + 940))
    assert again.incident.id == inc.id  # the retry reopens it


def test_the_watch_survives_a_restart(rules: RuleSet) -> None:
    before = IncidentBook(rules)
    inc, _ = open_and_resolve(before)
    stored = incident_from_row(incident_row(inc, T0 + 660))
    assert (stored.watch_until, stored.closed_at, stored.reopens) == (
        inc.watch_until,
        None,
        0,
    )
    after = IncidentBook(rules)
    after.restore([], [stored])
    assert [i.id for i in after.watching()] == [inc.id]
    assert after.next_deadline(inc.id) == (T0 + 600 + HOUR, True)
    reopened = one(after.apply_notification(firing(start=T0 + 900), T0 + 930))
    assert reopened.incident.id == inc.id
    row = incident_from_row(incident_row(reopened.incident, T0 + 930))
    assert (row.reopens, row.reopened_at, row.watch_until) == (1, T0 + 930, None)


def test_a_reopening_owes_no_update_for_the_time_it_was_resolved(book: IncidentBook) -> None:
    inc, _ = open_and_resolve(book)
    # P0 updates every 15 min: the incident was resolved for 20 minutes.
    reopened = one(book.apply_notification(firing(start=T0 + 1800), T0 + 1830))
    assert "sla_breached" not in kinds(reopened)
    assert book.check_deadlines(inc.id, T0 + 1830 + 900) is None
    late = book.check_deadlines(inc.id, T0 + 1830 + 901)
    assert late is not None
    assert [e.data.get("sla") for e in late.events if e.kind == "sla_breached"] == ["update"]


# -- escalation rules -------------------------------------------------------------


def test_an_escalation_rule_pages_its_tier_once(book: IncidentBook) -> None:
    opened = one(book.apply_notification(firing(labels={"change": "emergency"}), T0 + 60))
    escalations = {
        e.data["tier"]: (e.data["outcome"], e.message)
        for e in opened.events
        if e.kind == "escalated"
    }
    assert escalations["change-manager"][0] == "paged"
    assert "rule emergency-change" in escalations["change-manager"][1]
    assert opened.incident.escalation_outcomes["change-manager"] == "paged"
    another = alert(
        "Other", labels={"severity": "critical", "change": "emergency"}, fingerprint="f" * 16
    )
    merged = one(book.apply_notification(n(another), T0 + 120))
    assert [e for e in merged.events if e.kind == "escalated"] == []


def test_an_escalation_rule_reads_annotations_and_may_only_record(book: IncidentBook) -> None:
    plain = one(book.apply_notification(n(alert(labels={"severity": "info"})), T0 + 60))
    assert plain.incident.escalated == {}
    joined = alert(
        "Checkout",
        labels={"severity": "info"},
        annotations={"impact": "customers"},
        fingerprint="c" * 16,
    )
    merged = one(book.apply_notification(n(joined), T0 + 120))
    [event] = [e for e in merged.events if e.kind == "escalated"]
    assert (event.data["tier"], event.data["outcome"]) == ("comms", "recorded")
    assert "nobody paged" in event.message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("recovery_watch: 1h,", "recovery watch must be longer than 0s"),
        ("escalation_rules:\n  - {name: x, tier: y}\n", "give match, match_annotations or when"),
        (
            "escalation_rules:\n  - {name: x, match: ['a=\"b\"'], tier: y}\n"
            "  - {name: x, match: ['a=\"c\"'], tier: z}\n",
            "duplicate rule name 'x'",
        ),
        ("escalation_rules:\n  - {name: default, match: ['a=\"b\"'], tier: y}\n", "reserved"),
    ],
)
def test_bad_watches_and_escalation_rules_are_refused_by_line(
    tmp_path: Path, text: str, reason: str
) -> None:
    base = (DATA / "rules-mini.yaml").read_text()
    if text.startswith("recovery_watch"):
        base = base.replace("postmortem: 24h}}", "postmortem: 24h}, recovery_watch: 0s}")
    else:
        base += text
    path = tmp_path / "rules.yaml"
    path.write_text(base)
    with pytest.raises(ConfigError) as exc:
        load_rules(path)
    [problem] = exc.value.problems
    assert reason in problem.reason
    assert problem.line is not None


# -- the review and the SLA report of a reopened incident ----------------------------


def test_the_review_shows_the_reopening_and_measures_to_the_final_resolve(
    tmp_path: Path,
) -> None:
    rules = load_rules(Path(__file__).parent.parent / "rules" / "llm-marketplace.yaml")
    book = IncidentBook(rules)
    labels = {"incident_severity": "P0", "service": "publishing"}
    min_ = 60.0

    def at(start: float, *, end: float | None = None) -> Notification:
        status = "firing" if end is None else "resolved"
        return n(alert("ServiceDown", labels=labels, starts=start, ends=end, status=status))

    changes = book.apply_notification(at(T0), T0 + min_)
    changes += book.apply_notification(at(T0, end=T0 + 10 * min_), T0 + 11 * min_)
    changes += book.apply_notification(at(T0 + 30 * min_), T0 + 31 * min_)
    changes += book.apply_notification(at(T0 + 30 * min_, end=T0 + 40 * min_), T0 + 41 * min_)
    inc = changes[-1].incident
    ended = book.check_deadlines(inc.id, T0 + 40 * min_ + HOUR + 1)
    assert ended is not None
    changes.append(ended)
    timeline = [e for c in changes for e in c.events]
    markdown = render_postmortem(inc, timeline, rules, now=T0 + 3 * HOUR)
    lines = markdown.splitlines()
    start = lines.index("| Time (UTC) | Event | Source | Actor |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line.split(" | ")[1])
    assert [r.split(" ")[0] for r in rows if r.startswith(("fired", "all", "recovery"))] == [
        "all",
        "fired",
        "all",
        "recovery",
    ]
    assert any("within its 1h recovery watch: reopened" in r for r in rows)
    assert any("recovery watch of 1h ended without a re-fire: closed" in r for r in rows)
    assert "40m" in markdown  # the duration runs to the final resolution
    report = {r.name: r for r in sla_report(inc, timeline, rules, T0 + 3 * HOUR)}
    # Updates every 15 min: 9 min open, 21 min resolved (nothing owed), 9 min open.
    assert report["update"].status == "met"
    assert report["update"].actual_seconds == 9 * min_
    assert report["resolve"].actual_seconds == 40 * min_


# -- through the HTTP API ------------------------------------------------------------


async def test_the_api_shows_the_watch_and_the_reopening(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    clock: FakeClock,
    tmp_path: Path,
    auth: dict[str, str],
    api_auth: dict[str, str],
) -> None:
    (tmp_path / "rules.yaml").write_text(WATCHED_RULES)
    components = build_components(config_factory(), clock=clock, registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    fired = notification(alert(labels={"severity": "critical"}, starts=clock.now()))
    resp = await client.post("/webhook/alertmanager", data=body(fired), headers=auth)
    assert resp.status == 200
    incident_id = (await resp.json())["changed"][0]["id"]
    resp = await client.post(f"/api/v1/incidents/{incident_id}/resolve", headers=api_auth)
    assert resp.status == 200
    resolved_at = clock.now()
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert view["state"] == "resolved"
    number = view["number"]
    assert number is not None
    assert view["recovery_watch"] == {
        "until": isoformat(resolved_at + HOUR),
        "watching": True,
        "closed_at": None,
    }
    spec = yaml.safe_load((REPO / "sidecar" / "web" / "openapi.yaml").read_text())
    documented = spec["components"]["schemas"]["Incident"]["properties"]
    assert set(view["recovery_watch"]) == set(documented["recovery_watch"]["properties"])
    assert {"reopens", "reopened_at"} <= set(documented)
    # A resolved incident cannot be resolved again, watched or not.
    resp = await client.post(f"/api/v1/incidents/{incident_id}/resolve", headers=api_auth)
    assert resp.status == 409
    clock.advance(600)
    again = notification(alert(labels={"severity": "critical"}, starts=clock.now()))
    resp = await client.post("/webhook/alertmanager", data=body(again), headers=auth)
    assert [c["id"] for c in (await resp.json())["changed"]] == [incident_id]
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert (view["state"], view["reopens"], view["reopened_at"]) == (
        "triggered",
        1,
        isoformat(clock.now()),
    )
    assert view["recovery_watch"] == {"until": None, "watching": False, "closed_at": None}
    assert view["number"] == number  # the same incident, under its plan number too
    by_number = await (await client.get(f"/api/v1/incidents/{number}")).json()
    assert by_number["id"] == incident_id
    reopened = [e for e in view["timeline"] if e["kind"] == "reopened"]
    assert len(reopened) == 1
    assert reopened[0]["data"] == {"resolved_at": resolved_at, "reopens": 1}
    review = await client.get(f"/api/v1/incidents/{incident_id}/postmortem", headers=api_auth)
    assert "recovery watch: reopened" in await review.text()


def test_a_re_fire_reported_only_once_resolved_reopens_and_closes_without_paging(
    rules: RuleSet,
) -> None:
    """The group flapped within group_wait: on the timeline, but PagerDuty has nothing to do."""
    book = IncidentBook(rules, routed_tiers={"vp"})
    pager = Pager(book.classifier, routing_names={"default", "tier:vp"})
    inc, _ = open_and_resolve(book)
    flap = one(book.apply_notification(resolved(T0 + 1200, T0 + 1230), T0 + 1260))
    assert flap.incident.id == inc.id
    assert kinds(flap) == ["reopened", "alert_added", "resolved"]
    assert (flap.incident.state, flap.incident.resolved_at) == ("resolved", T0 + 1230)
    assert flap.incident.watch_until == T0 + 1230 + HOUR
    assert pager.events_for(flap, T0 + 1260) == []
    # A re-fire reported while firing does trigger, on the same dedup key.
    refire = one(book.apply_notification(firing(start=T0 + 1500), T0 + 1530))
    assert [(e.action, e.routing) for e in pager.events_for(refire, T0 + 1530)] == [
        ("trigger", "default")
    ]


# -- any sequence of re-fires, resolutions, late copies and time ------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("fire"), st.integers(1, 2 * 3600)),
        st.tuples(st.just("resolve"), st.integers(1, 3600)),
        st.tuples(st.just("copy"), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.integers(1, 3 * 3600)),
    ),
    max_size=30,
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(steps=STEPS)
def test_any_sequence_keeps_one_incident_per_watch_and_measures_it_once(
    steps: list[tuple[str, int]],
) -> None:
    """A model of the watch against the book: ids, reopenings and time to resolve."""
    path = Path(__file__).parent / "data" / "rules-mini.yaml"
    rules = load_rules(path)
    # P0 of the mini rules, with a one-hour watch.
    spec = rules.spec.model_copy(
        update={
            "severities": [
                rules.policy("P0").model_copy(update={"recovery_watch": timedelta(hours=1)}),
                *rules.severities[1:],
            ]
        }
    )
    book = IncidentBook(RuleSet(spec))
    now = T0
    sent: list[Notification] = []
    start: float | None = None  # the firing instance's startsAt, if firing
    # The model: the current incident, its resolution's watch end, closed or not.
    current: str | None = None
    watch_until: float | None = None
    closed = True
    measured: dict[str, int] = {}
    opened: list[str] = []
    for action, amount in steps:
        if action == "tick":
            now += amount
            changes = [c for i in list(book.watching()) if (c := book.check_deadlines(i.id, now))]
            if watch_until is not None and not closed and now > watch_until:
                closed = True
        elif action == "fire" and start is None:
            now += amount
            start = now - 1
            payload = firing(start=start)
            changes = book.apply_notification(payload, now)
            sent.append(payload)
            reopen = current is not None and not closed and watch_until is not None
            if reopen and start <= (watch_until or 0):
                assert [c.incident.id for c in changes][-1] == current
            else:
                assert changes[-1].incident.id not in opened
                current = changes[-1].incident.id
                opened.append(current)
            watch_until, closed = None, False
        elif action == "resolve" and start is not None:
            now += amount
            payload = resolved(start, now - 1)
            changes = book.apply_notification(payload, now)
            sent.append(payload)
            assert [c.incident.id for c in changes] == [current]
            watch_until, start = now - 1 + HOUR, None
        elif action == "copy" and sent:
            changes = book.apply_notification(sent[amount % len(sent)], now)
            # A copy never opens, reopens or closes anything.
            assert all(
                e.kind not in ("opened", "reopened", "resolved", "closed")
                for c in changes
                for e in c.effects
            )
        else:
            continue
        for c in changes:
            for e in c.effects:
                if e.kind in ("resolved", "closed") and e.seconds is not None:
                    measured[e.incident_id] = measured.get(e.incident_id, 0) + 1
                    assert e.kind == "closed"
                    assert e.seconds == c.incident.resolved_at - c.incident.started_at
    # Each incident's time to resolve is measured once at most, and only once closed.
    assert all(count == 1 for count in measured.values()), measured
    for incident_id in opened[:-1]:
        assert measured.get(incident_id) == 1, incident_id


def test_a_resend_of_an_alert_firing_when_resolved_by_hand_reopens_it_and_pages(
    book: IncidentBook,
) -> None:
    """Alertmanager's own pagerduty_configs triggers again after a person resolved the
    PagerDuty incident while the alert fired; within the watch, the incident reopens."""
    pager = Pager(book.classifier, routing_names={"default"})
    opened = one(book.apply_notification(firing(), T0 + 60))
    pages = [(e.routing, e.action) for e in pager.events_for(opened, T0 + 60)]
    assert pages[0] == ("default", "trigger")
    inc = opened.incident
    manual = book.resolve(inc.id, actor="bob", source="api", now=T0 + 120)
    resolves = [(e.routing, e.action) for e in pager.events_for(manual, T0 + 120)]
    assert resolves == [("default", "resolve")]
    assert inc.is_watching
    assert [a.status for a in inc.alerts.values()] == ["firing"]
    reopened = one(book.apply_notification(firing(), T0 + 420))  # repeat or group_interval
    assert (reopened.incident.id, reopened.incident.state) == (inc.id, "triggered")
    assert kinds(reopened)[0] == "reopened"
    # The team is paged again; vp, paged at opening, is not.
    again = [(e.routing, e.action) for e in pager.events_for(reopened, T0 + 420)]
    assert again == [("default", "trigger")]
    assert book.apply_notification(firing(), T0 + 421) == []  # its HA copy
    final = one(book.apply_notification(resolved(T0, T0 + 900), T0 + 960))
    assert (final.incident.state, final.incident.resolved_at) == ("resolved", T0 + 900)
    # Reported resolved now: a late copy of the firing notification is a copy again,
    # in the watch and after it.
    assert book.apply_notification(firing(), T0 + 1000) == []
    assert book.check_deadlines(inc.id, T0 + 900 + HOUR + 1) is not None
    assert book.apply_notification(firing(), T0 + 2 * HOUR) == []
    assert book.apply_notification(resolved(T0, T0 + 900), T0 + 2 * HOUR) == []
    assert len(book) == 0
    assert reopened.incident.reopens == 1


def test_the_end_of_an_alert_firing_when_resolved_by_hand_reopens_nothing(
    rules: RuleSet, book: IncidentBook
) -> None:
    """Its resolved notification ends the episode a person closed: no reopening, no
    trigger and resolve pair, in the watch, after it, or after a restart."""
    inc = one(book.apply_notification(firing(), T0 + 60)).incident
    book.resolve(inc.id, actor="bob", source="pagerduty", now=T0 + 120)
    after = IncidentBook(rules)
    after.restore([], [incident_from_row(incident_row(inc, T0 + 120))])
    for each in (book, after):
        assert each.apply_notification(resolved(T0, T0 + 600), T0 + 660) == []
        [watched] = each.watching()
        assert (watched.id, watched.state, watched.reopens) == (inc.id, "resolved", 0)
        assert each.check_deadlines(inc.id, T0 + 120 + HOUR + 1) is not None
        assert each.apply_notification(resolved(T0, T0 + 600), T0 + 2 * HOUR) == []
        assert len(each) == 0


def test_a_late_resolved_copy_of_an_earlier_episode_leaves_the_current_one_open(
    book: IncidentBook,
) -> None:
    """Found by the sequence test: it used to resolve whatever incident the group had open."""
    for severity in ("critical", "info"):  # with a watch (reopened) and without (a new one)
        group = f'{{}}:{{alertname="DBDown", s="{severity}"}}'

        def note(
            start: float, end: float | None = None, *, sev: str = severity, key: str = group
        ) -> Notification:
            status = "firing" if end is None else "resolved"
            return n(
                alert(labels={"severity": sev}, starts=start, ends=end, status=status),
                group_key=key,
            )

        one(book.apply_notification(note(T0), T0 + 60))
        first_resolved = note(T0, T0 + 600)
        one(book.apply_notification(first_resolved, T0 + 660))
        current = one(book.apply_notification(note(T0 + 1200), T0 + 1230)).incident
        assert book.apply_notification(first_resolved, T0 + 1300) == []
        assert book.get_open(current.id) is current
        assert current.state == "triggered"


def test_after_the_watch_a_copy_of_any_episode_it_covered_opens_nothing(
    book: IncidentBook,
) -> None:
    inc, _ = open_and_resolve(book)
    one(book.apply_notification(firing(start=T0 + 1200), T0 + 1230))
    one(book.apply_notification(resolved(T0 + 1200, T0 + 1500), T0 + 1530))
    assert book.check_deadlines(inc.id, T0 + 1500 + HOUR + 1) is not None
    assert book.apply_notification(firing(), T0 + 2 * HOUR) == []
    assert book.apply_notification(firing(start=T0 + 1200), T0 + 2 * HOUR) == []


def test_a_copy_of_an_episode_before_the_newest_closed_one_opens_nothing(
    book: IncidentBook,
) -> None:
    """Found by the sequence test: fire, resolve, fire after the watch, resolve, the
    second watch ends, then a late copy of the very first firing."""
    inc, _ = open_and_resolve(book)
    assert book.check_deadlines(inc.id, T0 + 2 * HOUR) is not None  # the first watch ends
    second = one(book.apply_notification(firing(start=T0 + 2 * HOUR), T0 + 2 * HOUR + 1))
    assert second.incident.id != inc.id
    one(book.apply_notification(resolved(T0 + 2 * HOUR, T0 + 2 * HOUR + 60), T0 + 2 * HOUR + 61))
    assert book.check_deadlines(second.incident.id, T0 + 4 * HOUR) is not None
    assert book.apply_notification(firing(), T0 + 4 * HOUR + 1) == []
    assert len(book) == 0


def test_a_copy_read_during_the_watch_cannot_write_it_back_open_once_it_closed(
    book: IncidentBook,
) -> None:
    from sidecar.errors import InvalidTransition

    inc, _ = open_and_resolve(book)
    book.complete_review(inc, actor="alice", source="api", now=T0 + 650)
    # What a request read (through the store's form) while the watch ran.
    stale = incident_from_row(incident_row(inc, T0 + 700))
    assert stale.is_watching
    assert book.check_deadlines(inc.id, T0 + 600 + HOUR + 1) is not None  # the watch ends
    with pytest.raises(InvalidTransition, match="closed meanwhile"):
        book.assign_roles(
            stale, {"pir_owner": "alice"}, actor="bob", source="api", now=T0 + HOUR * 2
        )


async def test_the_page_offers_to_acknowledge_the_page_a_reopening_sent(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    clock: FakeClock,
    tmp_path: Path,
    auth: dict[str, str],
    api_auth: dict[str, str],
) -> None:
    (tmp_path / "rules.yaml").write_text(WATCHED_RULES)
    components = build_components(config_factory(), clock=clock, registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    fired = notification(alert(labels={"severity": "critical"}, starts=clock.now()))
    resp = await client.post("/webhook/alertmanager", data=body(fired), headers=auth)
    incident_id = (await resp.json())["changed"][0]["id"]
    ack_form = f'action="/incidents/{incident_id}/acknowledge"'
    ack_url = f"/api/v1/incidents/{incident_id}/acknowledge"

    async def page() -> str:
        resp = await client.get(f"/incidents/{incident_id}")
        assert resp.status == 200
        return await resp.text()

    async def acknowledgments() -> list[str]:
        view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
        return [e["actor"] for e in view["timeline"] if e["kind"] == "acknowledged"]

    clock.advance(60)
    resp = await client.post(ack_url, json={"actor": "alice"}, headers=api_auth)
    assert resp.status == 200
    assert ack_form not in await page()
    resp = await client.post(f"/api/v1/incidents/{incident_id}/resolve", headers=api_auth)
    assert resp.status == 200
    clock.advance(600)
    again = notification(alert(labels={"severity": "critical"}, starts=clock.now()))
    resp = await client.post("/webhook/alertmanager", data=body(again), headers=auth)
    assert [c["id"] for c in (await resp.json())["changed"]] == [incident_id]
    # Reopened, still acknowledged, but paged again: the page offers to acknowledge.
    view = await (await client.get(f"/api/v1/incidents/{incident_id}")).json()
    assert view["state"] == "acknowledged"
    assert ack_form in await page()
    clock.advance(30)
    resp = await client.post(ack_url, json={"actor": "bob"}, headers=api_auth)
    assert resp.status == 200
    assert await acknowledgments() == ["alice", "bob"]
    assert ack_form not in await page()
    # Time to acknowledge was observed once, for alice's.
    counts = [
        sample.value
        for family in components.registry.collect()
        for sample in family.samples
        if sample.name == "incident_sla_time_to_acknowledge_seconds_count"
    ]
    assert sum(counts) == 1.0
