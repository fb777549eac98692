"""Every metric the sidecar exports, declared once, on an injected registry.

The body of :class:`Metrics` is the table: one row a metric, giving its type,
label names, help text and which series exist before the first event (the
pattern of query-exporter's table of built-in metrics). Label values come only
from configuration (severities, teams, tiers) or the fixed enums of
:data:`LABEL_VALUES`, never from payloads, so the series count stays bounded
however many incidents are open. Histogram buckets include every configured SLA
threshold, so ``..._bucket{le="<threshold>"}`` counts exactly the incidents
within the SLA.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

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

from sidecar.exposition import Exposition

NAMESPACE = "incident_sla"
SLA_KINDS = ("detect", "acknowledge", "resolve", "update", "postmortem")

LABEL_VALUES: Mapping[str, Sequence[str]] = {
    "sla": SLA_KINDS,
    "state": ("triggered", "acknowledged"),
    "action": ("trigger", "acknowledge", "resolve"),
    "result": ("accepted", "retried", "rejected"),
    "source": ("alertmanager", "pagerduty"),
    # Pre-created so that the first 401 after a restart is an increase PromQL can see.
    "code": ("200", "400", "401", "413", "503"),
    # The rule lists of a rules file: severity_rules, ownership_rules.
    "rules": ("severity", "ownership"),
}
"""The values of the labels that no configuration sets."""

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


Series = Literal["every", "configured"]
"""Which series a metric has from the start, so that dashboards, ``increase()``
and ``absent()`` see them before the first event: ``every`` combination of its
labels' values, or only the combinations the configuration names for it."""

M = TypeVar("M", Counter, Gauge, Histogram)


@dataclass(slots=True)
class Family(Generic[M]):
    """A row of the table: a metric family, created on each :class:`Metrics`' registry."""

    kind: type[M]
    name: str
    labels: str  # label names, space-separated as in collections.namedtuple
    help: str
    series: Series = "every"
    attr: str = field(default="", init=False)

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    @overload
    def __get__(self, metrics: None, owner: type) -> Family[M]: ...
    @overload
    def __get__(self, metrics: Metrics, owner: type) -> M: ...
    def __get__(self, metrics: Metrics | None, owner: type) -> Family[M] | M:
        # A descriptor, so that ``metrics.incidents_total`` is typed as the Counter
        # of that instance's registry while the row stays the one declaration.
        if metrics is None:
            return self
        family: M = metrics.families[self.attr]
        return family


@dataclass(frozen=True, slots=True)
class LiveGauge:
    """A row of the table: a gauge read at scrape time from counts the domain keeps."""

    name: str
    labels: str
    help: str
    series: Series = "every"


Row = Family[Any] | LiveGauge


def label_names(row: Row) -> tuple[str, ...]:
    """The label names of ``row``, in order."""
    return tuple(row.labels.split())


class Metrics:
    """The sidecar's metrics, bound to ``registry``; the class body is the table of them."""

    incidents_total = Family(
        Counter,
        "incidents_total",
        "severity team",
        "Incidents opened, by severity at opening and owning team.",
    )
    time_to_detect = Family(
        Histogram,
        "time_to_detect_seconds",
        "severity team",
        "Time from the earliest alert's startsAt to the incident's declaration.",
    )
    time_to_acknowledge = Family(
        Histogram,
        "time_to_acknowledge_seconds",
        "severity team",
        "Time from declaration to acknowledgment (MTTA is its mean).",
    )
    time_to_resolve = Family(
        Histogram,
        "time_to_resolve_seconds",
        "severity team",
        "Time from the earliest alert's startsAt to the alerts' endsAt (MTTR is its mean).",
    )
    reopened_total = Family(
        Counter,
        "incidents_reopened_total",
        "severity team",
        "Resolved incidents reopened by a re-fire within their recovery watch.",
    )
    breaches_total = Family(
        Counter,
        "breaches_total",
        "severity team sla",
        "SLA breaches, counted the moment the deadline passes.",
    )
    escalations_total = Family(
        Counter,
        "escalations_total",
        "severity tier",
        "Escalation steps that came due, whatever their outcome.",
    )
    escalation_outcomes_total = Family(
        Counter,
        "escalation_outcomes_total",
        "severity tier outcome",
        "Escalation steps that came due, by outcome: paged, recorded (a record_only step) "
        "or unrouted (no routing key: nobody paged).",
        series="configured",
    )
    pagerduty_events_total = Family(
        Counter,
        "pagerduty_events_total",
        "action result",
        "PagerDuty Events API v2 sends, by action and result.",
    )
    notifications_total = Family(
        Counter,
        "notifications_total",
        "integration action result",
        "Notification sends of every integration (pagerduty, slack, webhook, jira), by "
        "action and result (accepted, retried, rejected: dead-lettered).",
        series="configured",
    )
    webhook_requests_total = Family(
        Counter,
        "webhook_requests_total",
        "source code",
        "Inbound webhook requests, by source and HTTP status code.",
    )
    # As Prometheus' and Alertmanager's own *_config_last_reload_* gauges.
    rules_reload_successful = Family(
        Gauge,
        "rules_last_reload_successful",
        "",
        "Whether the last rules reload succeeded (1) or was refused (0).",
    )
    rules_reload_timestamp = Family(
        Gauge,
        "rules_last_reload_success_timestamp_seconds",
        "",
        "When the rules were last loaded successfully (start or reload).",
    )
    alerts_unmatched_total = Family(
        Counter,
        "alerts_unmatched_total",
        "rules team",
        "New alert instances of incidents that no rule of a list (severity, ownership) "
        "matched: the defaults and the severity floor classified them. By the alert's team.",
    )
    open_incidents = LiveGauge(
        "open_incidents",
        "severity state",
        "Open incidents by current severity and state.",
    )
    open_breached_incidents = LiveGauge(
        "open_breached_incidents",
        "severity sla",
        "Open incidents that have breached an SLA, by severity and SLA.",
    )
    pagerduty_outbox_pending = LiveGauge(
        "pagerduty_outbox_pending", "", "PagerDuty events written but not yet delivered."
    )
    notifications_pending = LiveGauge(
        "notifications_pending",
        "integration",
        "Notifications written to the outbox but not yet delivered, by integration.",
        series="configured",
    )

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        severities: Sequence[str],
        teams: Sequence[str],
        tiers: Sequence[str] = (),
        escalation_outcomes: Iterable[tuple[str, str, str]] = (),
        sla_thresholds: Iterable[float] = (),
        notifications: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.registry = registry
        self.severities = tuple(severities)
        self.teams = tuple(teams)
        self.buckets = buckets_with(sla_thresholds)
        self._values = {
            **LABEL_VALUES,
            "severity": self.severities,
            "team": self.teams,
            "tier": tuple(tiers),
        }
        # The one series per (severity, tier) that each escalation step can have.
        # And the (integration, action) pairs of the configured integrations.
        pairs = sorted(set(notifications))
        self._configured: dict[str, list[tuple[str, ...]]] = {
            "escalation_outcomes_total": list(escalation_outcomes),
            "notifications_total": [(i, a, r) for i, a in pairs for r in LABEL_VALUES["result"]],
            "notifications_pending": sorted({(i,) for i, _ in pairs}),
        }
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # What GET /metrics answers: every collector this registers, in order.
        self._exposition = Exposition()
        # By attribute name; Any because each row's own type is known to its descriptor.
        self.families: dict[str, Any] = {}
        for row in table():
            if isinstance(row, Family):
                self.families[row.attr] = self._create(row)
        self.rules_reload_successful.set(1)

    def _create(self, row: Family[Any]) -> MetricWrapperBase:
        args = (row.name, row.help, label_names(row), NAMESPACE)
        family: MetricWrapperBase
        if row.kind is Histogram:
            family = Histogram(*args, buckets=self.buckets, registry=self.registry)
        else:
            family = row.kind(*args, registry=self.registry)
        if row.labels:
            for values in self.series(row):
                family.labels(*values)
        self._exposition.add(family)
        return family

    def series(self, row: Row) -> list[tuple[str, ...]]:
        """The label values of every series ``row`` has from the start."""
        if row.series == "configured":
            return self._configured[row.name]
        return list(itertools.product(*(self._values[label] for label in label_names(row))))

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
        self._track(Metrics.open_incidents, counts)

    def track_open_breached(self, counts: Callable[[], Mapping[tuple[str, str], float]]) -> None:
        """Export ``open_breached_incidents{severity,sla}`` from live counts."""
        self._track(Metrics.open_breached_incidents, counts)

    def track_outbox_pending(self, pending: Callable[[], float]) -> None:
        """Export ``pagerduty_outbox_pending`` from the outbox's live size."""
        self._track(Metrics.pagerduty_outbox_pending, lambda: {(): pending()})

    def track_notifications_pending(self, pending: Callable[[], Mapping[str, float]]) -> None:
        """Export ``notifications_pending{integration}`` from the outbox workers' live sizes."""
        self._track(
            Metrics.notifications_pending,
            lambda: {(name,): value for name, value in pending().items()},
        )

    def count_notification(self, integration: str, action: str, result: str) -> None:
        """``notifications_total{integration,action,result}``, one more."""
        self.child(self.notifications_total, integration, action, result).inc()

    def exposition(self) -> bytes:
        """The registry's text exposition (``generate_latest``'s bytes, faster)."""
        return self._exposition.render()

    def _track(self, row: LiveGauge, read: Callable[[], Mapping[Any, float]]) -> None:
        gauge = _GaugeFromState(row, read, self.series(row))
        self.registry.register(gauge)
        self._exposition.add(gauge)


def table() -> list[Row]:
    """Every row of the table, in the order the metrics are exported."""
    return [row for row in vars(Metrics).values() if isinstance(row, Family | LiveGauge)]


class _GaugeFromState(Collector):
    """A gauge computed at scrape time from counts the domain keeps up to date."""

    def __init__(
        self, row: LiveGauge, read: Callable[[], Mapping[Any, float]], keys: list[tuple[str, ...]]
    ) -> None:
        self._row = row
        self._read = read
        self._keys = keys

    def _family(self) -> GaugeMetricFamily:
        row = self._row
        return GaugeMetricFamily(f"{NAMESPACE}_{row.name}", row.help, labels=list(label_names(row)))

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        values = self._read()
        # Every configured label set is exported, zeros included, so that
        # dashboards and absent() checks see the series from the start.
        for key in self._keys:
            family.add_metric(list(key), float(values.get(key, 0)))
        yield family

    def describe(self) -> Iterator[Metric]:
        yield self._family()
