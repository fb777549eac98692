"""Every metric the sidecar exports, declared in one place on an injected registry.

Label values come only from configuration (severities, teams, tiers) or fixed
enums, never from payloads, so the series count stays bounded however many
incidents are open. Histogram buckets include every configured SLA threshold,
so ``..._bucket{le="<threshold>"}`` counts exactly the incidents within the SLA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

NAMESPACE = "incident_sla"
SLA_KINDS = ("detect", "acknowledge", "resolve", "update", "postmortem")
OPEN_STATES = ("triggered", "acknowledged")
PAGERDUTY_RESULTS = ("accepted", "retried", "rejected")
PAGERDUTY_ACTIONS = ("trigger", "acknowledge", "resolve")
WEBHOOK_SOURCES = ("alertmanager", "pagerduty")
# The rule lists of a rules file: severity_rules, ownership_rules.
RULE_LISTS = ("severity", "ownership")
# Pre-created so that the first 401 after a restart is an increase PromQL can see.
WEBHOOK_CODES = ("200", "400", "401", "413", "503")

# The _created series double the series count and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds; spans a fast page (1 s) to a weekly P3 resolution target.
BASE_BUCKETS = (
    1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800,
    43200, 86400, 172800, 259200, 604800, 1209600,
)  # fmt: skip


def buckets_with(thresholds: Iterable[float]) -> tuple[float, ...]:
    """The base buckets plus every SLA threshold, sorted and unique."""
    return tuple(sorted({float(b) for b in BASE_BUCKETS} | {float(t) for t in thresholds if t > 0}))


class _GaugeFromState(Collector):
    """A gauge computed at scrape time from counts the domain keeps up to date."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        read: Callable[[], Mapping[Any, float]],
        keys: Callable[[], Iterable[tuple[str, ...]]],
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labels = list(labels)
        self._read = read
        self._keys = keys

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._doc, labels=self._labels)
        values = self._read()
        # Every configured label set is exported, zeros included, so that
        # dashboards and absent() checks see the series from the start.
        for key in self._keys():
            family.add_metric(list(key), float(values.get(key, 0)))
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._doc, labels=self._labels)


class Metrics:
    """The sidecar's metrics, bound to ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        severities: Sequence[str],
        teams: Sequence[str],
        tiers: Sequence[str] = (),
        escalation_outcomes: Iterable[tuple[str, str, str]] = (),
        sla_thresholds: Iterable[float] = (),
    ) -> None:
        # escalation_outcomes: the (severity, tier, outcome) series exported from the start.
        self.registry = registry
        self.severities = tuple(severities)
        self.teams = tuple(teams)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        buckets = buckets_with(sla_thresholds)
        self.buckets = buckets
        self.incidents_total = Counter(
            "incidents_total",
            "Incidents opened, by severity at opening and owning team.",
            ["severity", "team"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.time_to_detect = Histogram(
            "time_to_detect_seconds",
            "Time from the earliest alert's startsAt to the incident's declaration.",
            ["severity", "team"],
            namespace=NAMESPACE,
            buckets=buckets,
            registry=registry,
        )
        self.time_to_acknowledge = Histogram(
            "time_to_acknowledge_seconds",
            "Time from declaration to acknowledgment (MTTA is its mean).",
            ["severity", "team"],
            namespace=NAMESPACE,
            buckets=buckets,
            registry=registry,
        )
        self.time_to_resolve = Histogram(
            "time_to_resolve_seconds",
            "Time from the earliest alert's startsAt to the alerts' endsAt (MTTR is its mean).",
            ["severity", "team"],
            namespace=NAMESPACE,
            buckets=buckets,
            registry=registry,
        )
        self.breaches_total = Counter(
            "breaches_total",
            "SLA breaches, counted the moment the deadline passes.",
            ["severity", "team", "sla"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.escalations_total = Counter(
            "escalations_total",
            "Escalation steps that came due, whatever their outcome.",
            ["severity", "tier"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.escalation_outcomes_total = Counter(
            "escalation_outcomes_total",
            "Escalation steps that came due, by outcome: paged, recorded (a record_only step) "
            "or unrouted (no routing key: nobody paged).",
            ["severity", "tier", "outcome"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.pagerduty_events_total = Counter(
            "pagerduty_events_total",
            "PagerDuty Events API v2 sends, by action and result.",
            ["action", "result"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.webhook_requests_total = Counter(
            "webhook_requests_total",
            "Inbound webhook requests, by source and HTTP status code.",
            ["source", "code"],
            namespace=NAMESPACE,
            registry=registry,
        )
        # As Prometheus' and Alertmanager's own *_config_last_reload_* gauges.
        self.rules_reload_successful = Gauge(
            "rules_last_reload_successful",
            "Whether the last rules reload succeeded (1) or was refused (0).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.rules_reload_timestamp = Gauge(
            "rules_last_reload_success_timestamp_seconds",
            "When the rules were last loaded successfully (start or reload).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.rules_reload_successful.set(1)
        self.alerts_unmatched_total = Counter(
            "alerts_unmatched_total",
            "New alert instances of incidents that no rule of a list (severity, ownership) "
            "matched: the defaults and the severity floor classified them. By the alert's team.",
            ["rules", "team"],
            namespace=NAMESPACE,
            registry=registry,
        )
        for sev in self.severities:
            for team in self.teams:
                self.incidents_total.labels(sev, team)
                self.time_to_detect.labels(sev, team)
                self.time_to_acknowledge.labels(sev, team)
                self.time_to_resolve.labels(sev, team)
                for sla in SLA_KINDS:
                    self.breaches_total.labels(sev, team, sla)
            for tier in tiers:
                self.escalations_total.labels(sev, tier)
        for severity, tier, outcome in escalation_outcomes:
            self.escalation_outcomes_total.labels(severity, tier, outcome)
        for action in PAGERDUTY_ACTIONS:
            for result in PAGERDUTY_RESULTS:
                self.pagerduty_events_total.labels(action, result)
        for source in WEBHOOK_SOURCES:
            for code in WEBHOOK_CODES:
                self.webhook_requests_total.labels(source, code)
        for rules in RULE_LISTS:
            for team in self.teams:
                self.alerts_unmatched_total.labels(rules, team)

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, memoised.

        ``labels()`` takes a lock and checks its arguments on every call, which
        showed on the webhook path; label values are bounded (see above), so
        is this cache.
        """
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def track_open_incidents(self, counts: Callable[[], Mapping[tuple[str, str], float]]) -> None:
        """Export ``open_incidents{severity,state}`` from the incident book's live counts."""
        keys = [(sev, state) for sev in self.severities for state in OPEN_STATES]
        self.registry.register(
            _GaugeFromState(
                f"{NAMESPACE}_open_incidents",
                "Open incidents by current severity and state.",
                ["severity", "state"],
                counts,
                lambda: keys,
            )
        )

    def track_open_breached(self, counts: Callable[[], Mapping[tuple[str, str], float]]) -> None:
        """Export ``open_breached_incidents{severity,sla}`` from live counts."""
        keys = [(sev, sla) for sev in self.severities for sla in SLA_KINDS]
        self.registry.register(
            _GaugeFromState(
                f"{NAMESPACE}_open_breached_incidents",
                "Open incidents that have breached an SLA, by severity and SLA.",
                ["severity", "sla"],
                counts,
                lambda: keys,
            )
        )

    def track_outbox_pending(self, pending: Callable[[], float]) -> None:
        """Export ``pagerduty_outbox_pending`` from the outbox's live size."""
        self.registry.register(
            _GaugeFromState(
                f"{NAMESPACE}_pagerduty_outbox_pending",
                "PagerDuty events written but not yet delivered.",
                [],
                lambda: {(): pending()},
                lambda: [()],
            )
        )
