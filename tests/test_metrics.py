"""The metrics table: what it exports, on a fresh registry, and how its rows bind."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sidecar.metrics import LABEL_VALUES, Family, LiveGauge, Metrics, label_names, table
from tests.conftest import DATA

CONFIGURED_LABELS = {"severity", "team", "tier"}


def metrics(registry: CollectorRegistry) -> Metrics:
    """Metrics of a small configuration, its live gauges tracked as the runtime does."""
    m = Metrics(
        registry,
        severities=["P1", "P2"],
        teams=["sre", "db"],
        tiers=["primary", "secondary"],
        escalation_outcomes=[("P1", "primary", "paged"), ("P2", "secondary", "unrouted")],
        sla_thresholds=[300, 1800.5],
        notifications=[("pagerduty", "trigger"), ("slack", "post")],
    )
    m.track_open_incidents(lambda: {("P1", "triggered"): 2})
    m.track_open_breached(lambda: {("P2", "resolve"): 1})
    m.track_outbox_pending(lambda: 3.0)
    m.track_notifications_pending(lambda: {"pagerduty": 3.0, "slack": 1.0})
    return m


def test_exposition_is_unchanged() -> None:
    """Names, help texts, types, pre-created series and buckets, byte for byte.

    Dashboards, alerting rules and users' queries depend on all of them; the
    golden file is the exposition from before the table replaced the
    hand-written declarations. Regenerate it only for a deliberate change.
    """
    registry = CollectorRegistry()
    m = metrics(registry)
    expected = (DATA / "metrics.prom").read_text(encoding="utf-8")
    assert generate_latest(registry).decode() == expected
    assert m.exposition().decode() == expected  # what GET /metrics answers


def test_the_scrape_answers_what_generate_latest_writes_whatever_the_values() -> None:
    """GET /metrics renders from prepared lines (``sidecar.exposition``); byte for byte
    the library's exposition, with values of every shape, label values that need
    escaping and series that appear after the first scrape."""
    registry = CollectorRegistry()
    m = Metrics(
        registry,
        severities=["P1", "P2"],
        teams=["sre", 'qu"ote', "back\\slash", "new\nline"],
        tiers=["primary"],
        sla_thresholds=[300],
        notifications=[("slack", "post")],
    )
    m.track_open_incidents(lambda: {("P1", "triggered"): 2})
    m.track_outbox_pending(lambda: 3.0)
    assert m.exposition() == generate_latest(registry)
    m.child(m.breaches_total, "P1", 'qu"ote', "resolve").inc(12345678.5)
    m.incidents_total.labels("P2", "new\nline").inc(0.25)
    for seconds in (0.5, 299.9, 300, 1e9, 7200):
        m.time_to_resolve.labels("P1", "back\\slash").observe(seconds)
    m.rules_reload_timestamp.set(1_764_000_000.123)
    m.rules_reload_successful.set(-0.0)
    m.count_notification("slack", "post", "accepted")
    m.count_notification("jira", "create", "retried")  # a series no configuration named
    m.escalations_total.labels("P2", "primary").inc(float("inf"))
    m.webhook_requests_total.labels("alertmanager", "200").inc(1e-7)
    assert m.exposition() == generate_latest(registry)


def test_every_label_has_values_from_configuration_or_a_fixed_enum() -> None:
    """No label can take a value from a payload: each has a known, bounded set."""
    for row in table():
        if row.series == "configured":
            continue
        for label in label_names(row):
            assert label in CONFIGURED_LABELS or label in LABEL_VALUES, (row.name, label)


def test_rows_are_unique_and_typed() -> None:
    names = [row.name for row in table()]
    assert len(names) == len(set(names))
    assert isinstance(Metrics.incidents_total, Family)
    assert Metrics.time_to_detect.kind is Histogram
    assert isinstance(Metrics.open_incidents, LiveGauge)


def test_an_attribute_is_the_family_on_the_injected_registry() -> None:
    registry = CollectorRegistry()
    m = metrics(registry)
    assert isinstance(m.breaches_total, Counter)
    m.child(m.breaches_total, "P1", "db", "resolve").inc()
    m.time_to_acknowledge.labels("P2", "sre").observe(120)
    labels = {"severity": "P1", "team": "db", "sla": "resolve"}
    assert registry.get_sample_value("incident_sla_breaches_total", labels) == 1
    assert (
        registry.get_sample_value(
            "incident_sla_time_to_acknowledge_seconds_bucket",
            {"severity": "P2", "team": "sre", "le": "300.0"},
        )
        == 1
    )
    assert registry.get_sample_value("incident_sla_rules_last_reload_successful") == 1


@pytest.mark.parametrize(
    ("labels", "value"),
    [
        ({"severity": "P1", "tier": "primary", "outcome": "paged"}, 0.0),
        ({"severity": "P2", "tier": "secondary", "outcome": "unrouted"}, 0.0),
        ({"severity": "P1", "tier": "secondary", "outcome": "paged"}, None),
    ],
)
def test_configured_series_are_only_those_the_configuration_names(
    labels: dict[str, str], value: float | None
) -> None:
    registry = CollectorRegistry()
    metrics(registry)
    assert registry.get_sample_value("incident_sla_escalation_outcomes_total", labels) == value


def test_two_instances_do_not_share_families() -> None:
    """The rows resolve per instance, so each registry holds its own counts."""
    first, second = CollectorRegistry(), CollectorRegistry()
    metrics(first).incidents_total.labels("P1", "sre").inc()
    metrics(second)
    labels = {"severity": "P1", "team": "sre"}
    assert first.get_sample_value("incident_sla_incidents_total", labels) == 1
    assert second.get_sample_value("incident_sla_incidents_total", labels) == 0
