"""The incident book: lifecycle, times and idempotency under Alertmanager's delivery habits."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Literal

import pytest

from sidecar import sla
from sidecar.alertmanager import Notification, notification_from
from sidecar.errors import IncidentNotFound
from sidecar.incidents import Incident, IncidentBook
from sidecar.incidents.alerts import decode_alerts
from sidecar.rules import RuleSet, load_rules
from sidecar.store.codec import incident_from_row, incident_row
from tests.conftest import DATA
from tests.payloads import alert, notification, ts

T0 = 1_700_000_000.0


@pytest.fixture
def rules() -> RuleSet:
    return load_rules(DATA / "rules-mini.yaml")


@pytest.fixture
def book(rules: RuleSet) -> IncidentBook:
    return IncidentBook(rules)


def n(*alerts: dict[str, Any], **kw: Any) -> Notification:
    return notification_from(notification(*alerts, **kw))


def kinds(book: IncidentBook, payload: Notification, now: float) -> list[str]:
    return [e.kind for c in book.apply_notification(payload, now) for e in c.events]


def test_first_firing_notification_opens_an_incident_with_its_times(book: IncidentBook) -> None:
    changes = book.apply_notification(n(alert(labels={"severity": "critical"})), T0 + 90)
    assert len(changes) == 1
    inc = changes[0].incident
    assert (inc.state, inc.severity, inc.team) == ("triggered", "P0", "sre")
    assert inc.started_at == T0
    assert inc.triggered_at == T0 + 90
    assert [e.kind for e in changes[0].events] == ["opened"]
    # The crit rule set the severity; no ownership rule matched (counted, see below).
    assert [(e.kind, e.seconds, e.detail) for e in changes[0].effects] == [
        ("opened", 90.0, None),
        ("unmatched", None, "ownership"),
    ]
    assert book.open_counts[("P0", "triggered")] == 1


def test_an_opened_incident_holds_each_alert_as_reported(book: IncidentBook) -> None:
    """Each instance's own times and severity, the last copy of a repeated fingerprint,
    and the earliest start as the incident's, whatever order the times come in."""
    body = notification(
        alert("A", fingerprint="000000000000000a", starts=T0 + 5, labels={"severity": "critical"}),
        alert("A", fingerprint="000000000000000b", starts=T0 + 5),
        alert("A", fingerprint="000000000000000c", starts=T0 + 1),
        alert("A", fingerprint="000000000000000d", starts=T0 + 5, status="resolved", ends=T0 + 7),
        alert("A", fingerprint="000000000000000e", starts=T0 + 1),
        # Repeated: firing, then resolved; the last copy stands.
        alert("A", fingerprint="000000000000000b", starts=T0 + 5, status="resolved", ends=T0 + 9),
    )
    # The same instant written in another zone is the same instant.
    body["alerts"][4]["startsAt"] = "2023-11-14T23:13:21+01:00"
    [change] = book.apply_notification(notification_from(body), T0 + 60)
    inc = change.incident
    got = {
        fp: (a.status, a.starts_at, a.ends_at, a.severity, a.labels["alertname"])
        for fp, a in inc.alerts.items()
    }
    assert got == {
        "000000000000000a": ("firing", T0 + 5, None, "P0", "A"),
        "000000000000000b": ("resolved", T0 + 5, T0 + 9, "P2", "A"),
        "000000000000000c": ("firing", T0 + 1, None, "P2", "A"),
        "000000000000000d": ("resolved", T0 + 5, T0 + 7, "P2", "A"),
        "000000000000000e": ("firing", T0 + 1, None, "P2", "A"),
    }
    assert list(inc.alerts) == [
        "000000000000000a",
        "000000000000000b",
        "000000000000000c",
        "000000000000000d",
        "000000000000000e",
    ]
    assert (inc.started_at, inc.severity) == (T0 + 1, "P0")
    # Stored and read back, the alerts are the same.
    assert Incident.from_columns(**_columns(inc)).alerts == inc.alerts


def test_alert_states_stay_out_of_the_cyclic_collector(book: IncidentBook) -> None:
    """An open incident's alert states, and the mapping of them, are never walked by
    the cyclic GC: opened, merged, resolved or read back from the store. (Tracked, a
    full collection walked every alert of every incident opened since the start.)"""
    fingerprints = [f"{i:016x}" for i in range(1, 4)]
    [opened] = book.apply_notification(
        n(*(alert("A", fingerprint=fp, starts=T0) for fp in fingerprints)), T0 + 1
    )
    [merged] = book.apply_notification(
        n(
            alert("A", fingerprint=fingerprints[0], starts=T0, status="resolved", ends=T0 + 2),
            alert("A", fingerprint="00000000000000ff", starts=T0 + 2),
        ),
        T0 + 3,
    )
    inc = merged.incident
    assert inc is opened.incident and len(inc.alerts) == 4
    assert inc.alerts[fingerprints[0]].status == "resolved"
    decoded = decode_alerts(inc.alerts_json())
    assert decoded == inc.alerts
    for alerts in (inc.alerts, decoded):
        assert not gc.is_tracked(alerts)
        assert not any(gc.is_tracked(a) for a in alerts.values())


def test_duplicate_and_repeat_notifications_change_nothing(book: IncidentBook) -> None:
    payload = n(alert())
    book.apply_notification(payload, T0 + 10)
    assert book.apply_notification(payload, T0 + 11) == []  # HA duplicate
    assert book.apply_notification(payload, T0 + 3600) == []  # repeat_interval
    assert len(book) == 1


def test_resolution_takes_ends_at_not_arrival(book: IncidentBook) -> None:
    book.apply_notification(n(alert()), T0 + 10)
    changes = book.apply_notification(n(alert(status="resolved", ends=T0 + 600)), T0 + 900)
    inc = changes[0].incident
    assert inc.state == "resolved"
    assert inc.resolved_at == T0 + 600
    assert [(e.kind, e.seconds) for e in changes[0].effects] == [("resolved", 600.0)]
    assert len(book) == 0
    assert sum(book.open_counts.values()) == 0


def test_late_duplicates_after_resolution_neither_reopen_nor_duplicate(book: IncidentBook) -> None:
    firing = n(alert())
    resolved = n(alert(status="resolved", ends=T0 + 600))
    book.apply_notification(firing, T0 + 10)
    book.apply_notification(resolved, T0 + 620)
    assert book.apply_notification(firing, T0 + 621) == []  # delayed HA peer
    assert book.apply_notification(resolved, T0 + 622) == []
    assert len(book) == 0


def test_group_firing_again_after_it_resolved_opens_a_new_incident(book: IncidentBook) -> None:
    first = book.apply_notification(n(alert()), T0 + 10)[0].incident.id
    book.apply_notification(n(alert(status="resolved", ends=T0 + 600)), T0 + 620)
    again = book.apply_notification(n(alert(starts=T0 + 3000)), T0 + 3010)
    assert len(again) == 1
    assert again[0].incident.id != first
    assert again[0].incident.started_at == T0 + 3000


def test_resolved_notification_without_firing_records_a_closed_incident(book: IncidentBook) -> None:
    changes = book.apply_notification(n(alert(status="resolved", ends=T0 + 300)), T0 + 400)
    inc = changes[0].incident
    assert inc.state == "resolved"
    assert inc.resolved_at == T0 + 300
    assert [e.kind for e in changes[0].events] == ["opened", "resolved"]
    assert changes[0].events[0].data["firing_notification_missed"] is True
    # Detection time is unknown, so it is not observed; resolution time is.
    assert [(e.kind, e.seconds) for e in changes[0].effects] == [
        ("opened", None),
        ("resolved", 300.0),
        ("unmatched", None),
        ("unmatched", None),
    ]
    assert book.apply_notification(n(alert(status="resolved", ends=T0 + 300)), T0 + 401) == []


def test_severity_rises_with_a_more_severe_alert_and_never_falls(book: IncidentBook) -> None:
    warn = alert("Slow", fingerprint="00000000000000a1", labels={"severity": "warning"})
    crit = alert("Down", fingerprint="00000000000000a2", labels={"severity": "critical"})
    inc = book.apply_notification(n(warn, group_key="g"), T0 + 10)[0].incident
    assert inc.severity == "P1"
    changes = book.apply_notification(n(warn, crit, group_key="g"), T0 + 20)
    assert [e.kind for e in changes[0].events] == ["alert_added", "severity_raised"]
    assert inc.severity == "P0"
    assert changes[0].effects[0].previous_severity == "P1"
    crit_resolved = {**crit, "status": "resolved", "endsAt": "2023-11-14T22:20:00Z"}
    book.apply_notification(n(warn, crit_resolved, group_key="g"), T0 + 30)
    assert inc.severity == "P0"
    assert inc.state == "triggered"
    assert book.open_counts[("P0", "triggered")] == 1
    assert book.open_counts[("P1", "triggered")] == 0


def test_alerts_join_and_leave_a_group(book: IncidentBook) -> None:
    a1 = alert("Err", fingerprint="00000000000000b1", labels={"instance": "a"})
    a2 = alert("Err", fingerprint="00000000000000b2", labels={"instance": "b"}, starts=T0 + 5)
    book.apply_notification(n(a1, group_key="g"), T0 + 10)
    assert kinds(book, n(a1, a2, group_key="g"), T0 + 20) == ["alert_added"]
    a1r = alert("Err", fingerprint="00000000000000b1", status="resolved", ends=T0 + 50)
    assert kinds(book, n(a1r, a2, group_key="g"), T0 + 60) == ["alert_resolved"]
    a2r = alert(
        "Err", fingerprint="00000000000000b2", status="resolved", starts=T0 + 5, ends=T0 + 90
    )
    changes = book.apply_notification(n(a2r, group_key="g"), T0 + 100)
    inc = changes[0].incident
    assert [e.kind for e in changes[0].events] == ["alert_resolved", "resolved"]
    assert inc.resolved_at == T0 + 90  # the latest endsAt of all its alerts
    assert inc.started_at == T0


@pytest.mark.parametrize("truncated", [1, 0], ids=["truncated", "muted"])
def test_a_resolved_notification_leaves_the_tracked_alerts_it_does_not_list_firing(
    book: IncidentBook, truncated: int
) -> None:
    """Alertmanager computes a notification's status from the alerts it lists: those left
    after its mute stage dropped the silenced and inhibited ones (leaving no trace), and
    after ``max_alerts`` truncated the rest (``truncatedAlerts``). "resolved" says nothing
    of the alerts left out: they may still fire."""
    a1 = alert("Err", fingerprint="00000000000000c1", labels={"instance": "i1"})
    a2 = alert("Err", fingerprint="00000000000000c2", labels={"instance": "i2"})
    inc = book.apply_notification(n(a1, a2, group_key="g"), T0 + 10)[0].incident
    a1r = alert(
        "Err",
        fingerprint="00000000000000c1",
        labels={"instance": "i1"},
        status="resolved",
        ends=T0 + 70,
    )
    payload = n(a1r, group_key="g", truncated=truncated)
    assert payload.status == "resolved"
    assert kinds(book, payload, T0 + 80) == ["alert_resolved"]
    assert inc.state == "triggered"
    assert [a.fingerprint for a in inc.firing()] == ["00000000000000c2"]
    # a2 is sent again, firing (repeat_interval, or its silence expired): a repeat.
    assert book.apply_notification(n(a2, group_key="g"), T0 + 4 * 3600) == []
    assert book.open_for("g") is inc
    # Its own resolution, when it comes, resolves the incident at its endsAt.
    a2r = {**a2, "status": "resolved", "endsAt": ts(T0 + 5 * 3600)}
    done = kinds(book, n(a2r, group_key="g"), T0 + 5 * 3600 + 10)
    assert (done[0], done[-1]) == ("alert_resolved", "resolved")  # SLA breaches between
    assert (inc.state, inc.resolved_at) == ("resolved", T0 + 5 * 3600)


def test_a_tracked_alert_truncated_out_of_a_resolved_notification_still_fires(
    book: IncidentBook,
) -> None:
    """What Alertmanager 0.25 sends with ``max_alerts: 2``: alerts sorted by instance, so one
    that joins sorting first pushes a tracked one out; once the first two resolve, the
    notification lists just them, "resolved", with ``truncatedAlerts: 1``."""

    def err(instance: str, **kw: Any) -> dict[str, Any]:
        return alert(
            "Err", fingerprint=f"00000000000000{instance}", labels={"instance": instance}, **kw
        )

    inc = book.apply_notification(n(err("a2"), err("a3"), group_key="g"), T0 + 10)[0].incident
    book.apply_notification(
        n(err("a1", starts=T0 + 100), err("a2"), group_key="g", truncated=1), T0 + 110
    )
    resolved = n(
        err("a1", starts=T0 + 100, status="resolved", ends=T0 + 200),
        err("a2", status="resolved", ends=T0 + 200),
        group_key="g",
        truncated=1,
    )
    assert kinds(book, resolved, T0 + 210) == ["alert_resolved", "alert_resolved"]
    assert [a.fingerprint for a in inc.firing()] == ["00000000000000a3"]
    # Alertmanager deleted a1 and a2; a3, still firing, is sent again at repeat_interval.
    assert book.apply_notification(n(err("a3"), group_key="g"), T0 + 4 * 3600) == []
    assert len(book) == 1 and inc.state == "triggered"


def test_an_untracked_alert_truncated_out_opens_an_incident_when_it_is_listed(
    book: IncidentBook,
) -> None:
    """An incident resolves when every alert it tracks has: alerts it never saw are not
    covered by its closed episode, and open a new incident once Alertmanager lists them."""
    a1 = alert("Err", fingerprint="00000000000000d1", labels={"instance": "i1"})
    a3 = alert("Err", fingerprint="00000000000000d3", labels={"instance": "i3"})
    first = book.apply_notification(n(a1, group_key="g", truncated=1), T0 + 10)[0].incident
    a1r = {**a1, "status": "resolved", "endsAt": "2023-11-14T22:20:00Z"}
    assert kinds(book, n(a1r, group_key="g", truncated=1), T0 + 80) == [
        "alert_resolved",
        "resolved",
    ]
    [opened] = book.apply_notification(n(a3, group_key="g"), T0 + 4 * 3600)
    assert opened.incident.id != first.id and opened.incident.state == "triggered"


def test_a_listed_alert_that_fires_is_never_taken_as_resolved(book: IncidentBook) -> None:
    """Whatever the status says: the incident it opens is triggered, and its firing
    alert is no closed episode's, so a copy of it is no late copy."""
    a1 = alert("Err", fingerprint="00000000000000e1")
    [change] = book.apply_notification(n(a1, group_key="g", status="resolved"), T0 + 10)
    assert change.incident.state == "triggered"
    assert change.events[0].data["firing_notification_missed"] is False
    assert book.closed.get("g") is None


def test_out_of_order_firing_after_resolved_is_ignored(book: IncidentBook) -> None:
    a1 = alert("Err", fingerprint="00000000000000d1")
    a2 = alert("Err", fingerprint="00000000000000d2")
    book.apply_notification(n(a1, a2, group_key="g"), T0 + 10)
    a1r = alert("Err", fingerprint="00000000000000d1", status="resolved", ends=T0 + 40)
    book.apply_notification(n(a1r, a2, group_key="g"), T0 + 50)
    # A delayed duplicate of the first notification: a1 must stay resolved.
    assert book.apply_notification(n(a1, a2, group_key="g"), T0 + 51) == []


def test_alert_mode_makes_one_incident_per_fingerprint(rules: RuleSet) -> None:
    book = IncidentBook(rules, key_mode="alert")
    a1 = alert("Err", fingerprint="00000000000000e1")
    a2 = alert("Err", fingerprint="00000000000000e2")
    changes = book.apply_notification(n(a1, a2, group_key="g"), T0 + 10)
    assert len({c.incident.id for c in changes}) == 2
    a1r = alert("Err", fingerprint="00000000000000e1", status="resolved", ends=T0 + 30)
    changes = book.apply_notification(n(a1r, a2, group_key="g"), T0 + 40)
    assert [c.incident.state for c in changes] == ["resolved"]
    assert len(book) == 1


class _FailsOn:
    """The rules, failing on an alert carrying ``boom``: a bug half-way through a notification."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rules, name)

    def classify(self, labels: Any, annotations: Any) -> Any:
        if "boom" in labels:
            raise RuntimeError("a bug")
        return self.rules.classify(labels, annotations)


def test_alert_mode_undoes_the_alerts_applied_before_one_that_fails(rules: RuleSet) -> None:
    book = IncidentBook(rules, key_mode="alert")
    book.classifier = _FailsOn(rules)  # type: ignore[assignment]
    a1 = alert("Err", fingerprint="00000000000000e1")
    bad = alert("Err", fingerprint="00000000000000e2", labels={"boom": "1"})
    with pytest.raises(RuntimeError):
        book.apply_notification(n(a1, bad, group_key="g"), T0 + 10)
    assert len(book) == 0  # nothing of it stays in memory, unwritten and never undone
    book.classifier = rules
    assert len(book.apply_notification(n(a1, group_key="g"), T0 + 20)) == 1


def test_acknowledge_is_idempotent_and_measures_time_to_acknowledge(book: IncidentBook) -> None:
    inc = book.apply_notification(n(alert()), T0 + 10)[0].incident
    change = book.acknowledge(inc.id, actor="alice", source="api", now=T0 + 70)
    assert change is not None
    assert (inc.state, inc.acknowledged_by, inc.acknowledge_source) == (
        "acknowledged",
        "alice",
        "api",
    )
    assert change.effects[0].seconds == 60.0
    assert book.acknowledge(inc.id, actor="bob", source="api", now=T0 + 80) is None
    assert inc.acknowledged_by == "alice"


def test_manual_resolution_and_unknown_ids(book: IncidentBook) -> None:
    inc = book.apply_notification(n(alert()), T0 + 10)[0].incident
    change = book.resolve(inc.id, actor="bob", source="api", now=T0 + 100)
    assert (inc.state, inc.resolved_at, inc.resolved_by) == ("resolved", T0 + 100, "bob")
    assert change.effects[0].seconds == 100.0
    with pytest.raises(IncidentNotFound):
        book.acknowledge(inc.id, actor="x", source="api", now=T0 + 200)
    with pytest.raises(IncidentNotFound):
        book.resolve("nope", actor="x", source="api", now=T0)


def test_undo_restores_the_state_before_a_failed_commit(book: IncidentBook) -> None:
    a1 = alert("Err", fingerprint="00000000000000f1")
    inc = book.apply_notification(n(a1, group_key="g"), T0 + 10)[0].incident
    a1r = alert("Err", fingerprint="00000000000000f1", status="resolved", ends=T0 + 20)
    change = book.apply_notification(n(a1r, group_key="g"), T0 + 30)[0]
    assert len(book) == 0
    book.undo(change)
    assert len(book) == 1
    restored = book.get_open(inc.id)
    assert restored is not None
    assert restored.alerts["00000000000000f1"].status == "firing"
    assert book.open_counts[("P2", "triggered")] == 1
    # The retried notification now applies again.
    assert [c.incident.state for c in book.apply_notification(n(a1r, group_key="g"), T0 + 40)] == [
        "resolved"
    ]


def test_a_restored_incident_decodes_its_alerts_when_touched_and_undoes_cleanly(
    book: IncidentBook, rules: RuleSet
) -> None:
    a1 = alert("Err", fingerprint="00000000000000f1")
    original = book.apply_notification(n(a1, group_key="g"), T0 + 10)[0].incident
    restored = Incident.from_columns(**_columns(original))
    assert restored.alerts_doc is not None
    assert restored == original  # equality reads, and so decodes, the alerts
    fresh = IncidentBook(rules)
    fresh.restore([Incident.from_columns(**_columns(original))], [])
    a1r = alert("Err", fingerprint="00000000000000f1", status="resolved", ends=T0 + 20)
    change = fresh.apply_notification(n(a1r, group_key="g"), T0 + 30)[0]
    assert change.incident.alerts["00000000000000f1"].status == "resolved"
    fresh.undo(change)
    back = fresh.get_open(original.id)
    assert back is not None
    assert back.alerts["00000000000000f1"].status == "firing"
    assert back == original


def _columns(inc: Incident) -> dict[str, Any]:
    return {
        "id": inc.id,
        "key": inc.key,
        "state": inc.state,
        "severity": inc.severity,
        "team": inc.team,
        "started_at": inc.started_at,
        "triggered_at": inc.triggered_at,
        "acknowledged_at": inc.acknowledged_at,
        "resolved_at": inc.resolved_at,
        "data": inc.data_json(),
        "alerts_doc": inc.alerts_json(),
    }


def test_undo_of_an_opening_forgets_the_incident(book: IncidentBook) -> None:
    change = book.apply_notification(n(alert()), T0 + 10)[0]
    book.undo(change)
    assert len(book) == 0
    assert sum(book.open_counts.values()) == 0
    assert len(book.apply_notification(n(alert()), T0 + 20)) == 1


def test_a_resend_of_an_alert_firing_at_a_manual_resolve_opens_a_new_incident(
    book: IncidentBook, rules: RuleSet
) -> None:
    """Alertmanager's own pagerduty_configs triggers again on its next notification
    after a person resolved the PagerDuty incident while the alert fired: so must the
    sidecar. What the incident saw resolved stays covered, whichever book asks."""
    db1, db2 = "00000000000000d1", "00000000000000d2"
    both = n(alert(fingerprint=db1), alert(fingerprint=db2))
    first = one_incident(book, both, T0 + 10)
    one_resolved = n(
        alert(fingerprint=db1), alert(fingerprint=db2, status="resolved", ends=T0 + 50)
    )
    assert len(book.apply_notification(one_resolved, T0 + 60)) == 1
    book.resolve(first.id, actor="bob", source="api", now=T0 + 100)
    assert [a.status for a in first.alerts.values()] == ["firing", "resolved"]
    restored = IncidentBook(rules)  # a restart, or another replica: from the stored alerts
    restored.restore([], [incident_from_row(incident_row(first, T0 + 100))])
    for each in (book, restored):
        # db2, reported resolved: its late firing copy is still a copy.
        assert each.apply_notification(n(alert(fingerprint=db2)), T0 + 200) == []
        # Alertmanager's resend of the group (db1 still fires) opens a new incident.
        second = one_incident(each, one_resolved, T0 + 300)
        assert second.id != first.id
        assert (second.state, second.started_at) == ("triggered", T0)
        assert each.apply_notification(one_resolved, T0 + 301) == []  # its HA copy
        ended = n(
            alert(fingerprint=db1, status="resolved", ends=T0 + 900),
            alert(fingerprint=db2, status="resolved", ends=T0 + 50),
        )
        [closed] = each.apply_notification(ended, T0 + 960)
        assert (closed.incident.id, closed.incident.state) == (second.id, "resolved")
        assert each.apply_notification(ended, T0 + 961) == []  # its HA copy
        assert each.apply_notification(one_resolved, T0 + 962) == []  # a late copy
        assert len(each) == 0


def test_the_end_of_an_alert_firing_at_a_manual_resolve_opens_nothing(rules: RuleSet) -> None:
    """The resolved notification of an alert still firing when a person resolved its
    incident ends that episode: no phantom incident, recorded or paged."""
    modes: tuple[Literal["group", "alert"], ...] = ("group", "alert")
    for mode in modes:
        book = IncidentBook(rules, key_mode=mode)
        inc = one_incident(book, n(alert()), T0 + 10)
        book.resolve(inc.id, actor="bob", source="api", now=T0 + 100)
        restored = IncidentBook(rules, key_mode=mode)
        restored.restore([], [incident_from_row(incident_row(inc, T0 + 100))])
        ended = n(alert(status="resolved", ends=T0 + 600))
        for each in (book, restored):
            assert each.apply_notification(ended, T0 + 660) == []
            assert each.apply_notification(ended, T0 + 661) == []  # an HA copy
            assert len(each) == 0


def test_an_incident_resolved_by_hand_with_every_alert_resolved_covers_their_copies(
    book: IncidentBook,
) -> None:
    firing = n(alert())
    resolved = n(alert(status="resolved", ends=T0 + 600))
    inc = one_incident(book, firing, T0 + 10)
    book.apply_notification(resolved, T0 + 620)
    # Reopened in PagerDuty, then resolved there again: nothing fires any more.
    assert book.reopen(inc, actor="pd", source="pagerduty", now=T0 + 700) is not None
    book.resolve(inc.id, actor="bob", source="pagerduty", now=T0 + 800)
    assert book.apply_notification(firing, T0 + 900) == []
    assert book.apply_notification(resolved, T0 + 901) == []
    assert len(book) == 0


def test_a_late_copy_of_the_closed_episode_never_joins_the_groups_next_incident(
    book: IncidentBook,
) -> None:
    """Found by the paging property test: a late HA copy of a resolved episode's
    notifications joined the group's next incident, its alert firing there for ever
    (raising the severity, paging) or resolved, the same instance in two incidents."""
    crit, warn = "00000000000000c1", "00000000000000c2"
    first = n(alert(fingerprint=crit, labels={"severity": "critical"}))
    ended = n(
        alert(fingerprint=crit, labels={"severity": "critical"}, status="resolved", ends=T0 + 50)
    )
    one_incident(book, first, T0 + 10)
    assert len(book.apply_notification(ended, T0 + 60)) == 1
    second = one_incident(book, n(alert(fingerprint=warn, starts=T0 + 100)), T0 + 110)
    assert book.apply_notification(first, T0 + 120) == []
    assert book.apply_notification(ended, T0 + 121) == []
    assert (set(second.alerts), second.severity, second.state) == ({warn}, "P2", "triggered")


def one_incident(book: IncidentBook, payload: Notification, now: float) -> Incident:
    [change] = book.apply_notification(payload, now)
    assert change.effects[0].kind == "opened"
    return change.incident


def test_restore_rebuilds_open_and_recently_closed(book: IncidentBook, rules: RuleSet) -> None:
    open_inc = book.apply_notification(n(alert(), group_key="a"), T0 + 10)[0].incident
    book.apply_notification(n(alert(fingerprint="1111111111111111"), group_key="b"), T0 + 10)
    closed = book.apply_notification(
        n(alert(fingerprint="1111111111111111", status="resolved", ends=T0 + 50), group_key="b"),
        T0 + 60,
    )[0].incident
    fresh = IncidentBook(rules)
    fresh.restore([open_inc], [closed])
    assert fresh.get_open(open_inc.id) is not None
    assert fresh.apply_notification(n(alert(), group_key="a"), T0 + 70) == []
    late = n(alert(fingerprint="1111111111111111"), group_key="b")
    assert fresh.apply_notification(late, T0 + 70) == []


def test_open_deadlines_are_each_open_incidents_next_deadline(tmp_path: Path) -> None:
    # P0's step comes due with its acknowledgment deadline: the step goes first.
    path = tmp_path / "rules.yaml"
    path.write_text(
        (DATA / "rules-mini.yaml")
        .read_text()
        .replace(
            "postmortem: 24h}}",
            "postmortem: 24h}, escalation: [{after: 5m, tier: vp, while: unacknowledged}]}",
        )
    )
    book = IncidentBook(load_rules(path), routed_tiers={"vp"})
    ids = []
    for i, severity in enumerate(["critical", "warning", "info", "critical"]):
        payload = n(alert(fingerprint=f"{i:016x}", labels={"severity": severity}), group_key=str(i))
        ids.append(book.apply_notification(payload, T0 + 10 * i)[0].incident.id)
    book.acknowledge(ids[0], actor="alice", source="api", now=T0 + 100)
    # The scheduler's one pass at start must agree with its lookups by id after.
    expected = {i.id: book.next_deadline(i.id) for i in book.open_incidents()}
    assert expected[ids[0]] == (T0 + 900, True)  # acknowledged: its update is next
    assert expected[ids[3]] == (T0 + 30 + 300, False)  # the step, at the ack's deadline
    assert len(set(expected.values())) == 4
    assert dict(book.open_deadlines()) == expected
    # ... and each is the earliest of its pending deadlines.
    for inc in book.open_incidents():
        pending = sla.pending_deadlines(inc, book.classifier.policy(inc.severity))
        assert expected[inc.id] == min((at, sla.is_strict(kind)) for kind, at in pending)


def test_expired_closed_incidents_are_forgotten(rules: RuleSet) -> None:
    book = IncidentBook(rules, dedup_window=100)
    book.apply_notification(n(alert()), T0 + 10)
    book.apply_notification(n(alert(status="resolved", ends=T0 + 20)), T0 + 30)
    assert book.expire_closed(T0 + 500) == 1
    assert book.expire_closed(T0 + 500) == 0


def test_incident_ids_sort_by_creation_time_and_never_repeat() -> None:
    from sidecar.incidents import new_incident_id

    times = [1_700_000_000.0 + i * 0.0005 for i in range(2000)] + [1_600_000_000.0] * 50
    ids = [new_incident_id(t) for t in times]
    assert len(set(ids)) == len(ids)  # the same millisecond, or a clock set back, too
    assert all(len(i) == 20 and int(i, 16) >= 0 for i in ids)
    forward = ids[:2000]
    assert [i[:12] for i in forward] == sorted(i[:12] for i in forward)
    assert ids[-1][:12] < ids[0][:12]  # ordered by the time given, not by the call


# -- dropped alerts and alerts no rule matched ---------------------------------


def watchdog(**kw: Any) -> dict[str, Any]:
    """The Watchdog of kube-prometheus-stack: severity none, always firing; dropped by the rules."""
    return alert("Watchdog", fingerprint="00000000000000f0", labels={"severity": "none"}, **kw)


@pytest.mark.parametrize("key_mode", ["group", "alert"])
def test_a_notification_of_dropped_alerts_only_opens_nothing(
    rules: RuleSet, key_mode: Literal["group", "alert"]
) -> None:
    book = IncidentBook(rules, key_mode=key_mode)
    assert book.apply_notification(n(watchdog(), group_key="w"), T0 + 10) == []
    assert book.apply_notification(n(watchdog(), group_key="w"), T0 + 3600) == []
    resolved = n(watchdog(status="resolved", ends=T0 + 7200), group_key="w")
    assert book.apply_notification(resolved, T0 + 7210) == []
    assert len(book) == 0
    assert sum(book.open_counts.values()) == 0


def test_a_dropped_alert_never_joins_an_incident(book: IncidentBook) -> None:
    db = alert("DBDown", fingerprint="00000000000000f1", labels={"severity": "critical"})
    change = book.apply_notification(n(watchdog(), db, group_key="g"), T0 + 10)[0]
    inc = change.incident
    assert set(inc.alerts) == {"00000000000000f1"}
    assert inc.title.startswith("DBDown")
    assert change.events[0].data["alerts"] == ["00000000000000f1"]
    # The same group with the Watchdog again, and alone: nothing changes.
    assert book.apply_notification(n(db, watchdog(), group_key="g"), T0 + 20) == []
    assert book.apply_notification(n(watchdog(), group_key="g"), T0 + 30) == []
    assert set(inc.alerts) == {"00000000000000f1"}


def test_a_dropped_alert_firing_on_does_not_keep_the_incident_open(book: IncidentBook) -> None:
    db = alert("DBDown", fingerprint="00000000000000f1")
    book.apply_notification(n(db, watchdog(), group_key="g"), T0 + 10)
    db_resolved = alert("DBDown", fingerprint="00000000000000f1", status="resolved", ends=T0 + 50)
    # Alertmanager says "firing": the Watchdog fires. Every alert the book keeps resolved.
    payload = n(db_resolved, watchdog(), group_key="g")
    assert payload.status == "firing"
    changes = book.apply_notification(payload, T0 + 60)
    assert [e.kind for e in changes[0].events] == ["alert_resolved", "resolved"]
    assert changes[0].incident.resolved_at == T0 + 50
    assert len(book) == 0


def test_truncated_alerts_do_not_count_in_the_group_status(book: IncidentBook) -> None:
    """Alertmanager computes the status from the alerts left after truncating to
    ``max_alerts``: here the Watchdog's "firing" alone. Every alert tracked resolved."""
    db = alert("DBDown", fingerprint="00000000000000f1")
    book.apply_notification(n(db, watchdog(), group_key="g"), T0 + 10)
    db_resolved = alert("DBDown", fingerprint="00000000000000f1", status="resolved", ends=T0 + 50)
    payload = n(db_resolved, watchdog(), group_key="g", truncated=3)
    assert payload.status == "firing"
    changes = book.apply_notification(payload, T0 + 60)
    assert [e.kind for e in changes[0].events] == ["alert_resolved", "resolved"]
    assert len(book) == 0


def test_a_tracked_alert_the_reloaded_rules_drop_still_resolves_its_incident(
    book: IncidentBook, tmp_path: Path
) -> None:
    inc = book.apply_notification(n(alert()), T0 + 10)[0].incident
    text = (DATA / "rules-mini.yaml").read_text().replace('severity="none"', 'alertname="DBDown"')
    (tmp_path / "rules.yaml").write_text(text)
    book.set_classifier(load_rules(tmp_path / "rules.yaml"))
    assert book.apply_notification(n(alert()), T0 + 20) == []
    changes = book.apply_notification(n(alert(status="resolved", ends=T0 + 90)), T0 + 100)
    assert changes[0].incident is inc
    assert inc.state == "resolved"
    # A new instance of it is a new alert to the new rules: dropped.
    assert book.apply_notification(n(alert(starts=T0 + 200)), T0 + 210) == []


def unmatched(changes: list[Any]) -> list[tuple[str | None, str, int]]:
    return [
        (e.detail, e.team, e.count) for c in changes for e in c.effects if e.kind == "unmatched"
    ]


def test_alerts_no_rule_matched_are_counted_once_per_new_instance(book: IncidentBook) -> None:
    a1 = alert("Err", fingerprint="0000000000000011")  # no rule at all: both lists
    a2 = alert("Err", fingerprint="0000000000000012", labels={"service": "db"})  # team rule only
    a3 = alert("Err", fingerprint="0000000000000013", labels={"severity": "warning"})
    first = book.apply_notification(n(a1, a2, watchdog(), group_key="g"), T0 + 10)
    assert unmatched(first) == [
        ("ownership", "sre", 1),
        ("severity", "db", 1),
        ("severity", "sre", 1),
    ]
    # Repeats count nothing; a new alert joining counts; dropped alerts never count.
    assert book.apply_notification(n(a1, a2, watchdog(), group_key="g"), T0 + 20) == []
    assert unmatched(book.apply_notification(n(a1, a2, a3, group_key="g"), T0 + 30)) == [
        ("ownership", "sre", 1)
    ]
    # A known alert firing again is a new instance: counted again.
    a1_resolved = alert("Err", fingerprint="0000000000000011", status="resolved", ends=T0 + 40)
    book.apply_notification(n(a1_resolved, a2, a3, group_key="g"), T0 + 45)
    a1_again = alert("Err", fingerprint="0000000000000011", starts=T0 + 100)
    assert unmatched(book.apply_notification(n(a1_again, a2, a3, group_key="g"), T0 + 110)) == [
        ("ownership", "sre", 1),
        ("severity", "sre", 1),
    ]


# -- escalation outcomes ---------------------------------------------------------

LADDER = (
    (DATA / "rules-mini.yaml")
    .read_text()
    .replace(
        "postmortem: 24h}}",
        "postmortem: 24h}, escalation: [{after: 0s, tier: vp, while: unresolved},"
        " {after: 0s, tier: scribe, while: unresolved, record_only: true}]}",
    )
)


@pytest.fixture
def ladder(tmp_path: Any) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(LADDER)
    return load_rules(path)


@pytest.mark.parametrize(
    ("routed", "expected"),
    [
        ({"vp"}, {"vp": "paged", "scribe": "recorded"}),
        # Without a key (no PagerDuty at all): due, recorded, nobody routed.
        (set(), {"vp": "unrouted", "scribe": "recorded"}),
        # A key never turns a record_only step into a page.
        ({"vp", "scribe"}, {"vp": "paged", "scribe": "recorded"}),
    ],
)
def test_a_due_step_records_its_outcome_with_the_change(
    ladder: RuleSet, routed: set[str], expected: dict[str, str]
) -> None:
    book = IncidentBook(ladder, routed_tiers=routed)
    [change] = book.apply_notification(n(alert(labels={"severity": "critical"})), T0 + 60)
    events = {e.data["tier"]: e for e in change.events if e.kind == "escalated"}
    assert {tier: e.data["outcome"] for tier, e in events.items()} == expected
    effects = {e.detail: e.outcome for e in change.effects if e.kind == "escalated"}
    assert effects == expected
    assert dict(change.incident.escalation_outcomes) == expected
    assert set(change.incident.escalated) == {"vp", "scribe"}
    messages = {tier: e.message for tier, e in events.items()}
    assert messages["scribe"].startswith("escalated to scribe: recorded only, nobody paged")
    if expected["vp"] == "paged":
        assert messages["vp"].startswith("escalated to vp: paged")
    else:
        assert messages["vp"].startswith("escalation to vp due: nobody routed")


def test_outcomes_survive_the_store_and_old_rows_have_none(ladder: RuleSet) -> None:
    book = IncidentBook(ladder, routed_tiers={"vp"})
    [change] = book.apply_notification(n(alert(labels={"severity": "critical"})), T0 + 60)
    columns = _columns(change.incident)
    restored = Incident.from_columns(**columns)
    assert restored.escalation_outcomes == {"vp": "paged", "scribe": "recorded"}
    # A row written before outcomes were kept: {tier: at} only.
    legacy = {k: v for k, v in columns["data"].items() if k != "escalation_outcomes"}
    old = Incident.from_columns(**{**columns, "data": legacy})
    assert set(old.escalated) == {"vp", "scribe"}
    assert old.escalation_outcomes == {}


def test_incidents_quoting_the_same_annotations_share_them_through_the_store(
    book: IncidentBook, rules: RuleSet
) -> None:
    quoted = {"summary": "Disk full on db-1", "runbook_url": "https://runbooks.example/disk"}
    a = book.apply_notification(n(alert(annotations=quoted), group_key="a"), T0 + 10)[0]
    b = book.apply_notification(n(alert(annotations=dict(quoted)), group_key="b"), T0 + 10)[0]
    other = {**quoted, "summary": "Disk full on db-2"}
    c = book.apply_notification(n(alert(annotations=other), group_key="c"), T0 + 10)[0]
    assert a.incident.annotations == quoted
    assert a.incident.annotations is b.incident.annotations  # one mapping, not one each
    assert c.incident.annotations == other
    restored = [Incident.from_columns(**_columns(ch.incident)) for ch in (a, b, c)]
    assert [r.annotations for r in restored] == [quoted, quoted, other]
    assert restored[0].annotations is restored[1].annotations
    assert restored[0].data_json()["annotations"] == quoted  # stored as before
