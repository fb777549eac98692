"""The shipped presets: plan scenarios, kube-prometheus-stack defaults, SLAs and escalation."""

from __future__ import annotations

import csv
import functools
import re
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from sidecar.durations import format_duration
from sidecar.rules import RuleSet, load_rules
from tests.conftest import DATA
from tests.support.binaries import require_binary

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
DROPPED = "dropped"


class Scenario(NamedTuple):
    """One example of a plan: the alert as labelled by the preset's conventions."""

    example: str
    labels: dict[str, str]
    annotations: dict[str, str]
    severity: str  # or DROPPED: no incident at all
    team: str | None  # None where the plan names no owner


@pytest.fixture(scope="module")
def marketplace() -> RuleSet:
    return load_rules(RULES_DIR / "llm-marketplace.yaml")


@pytest.fixture(scope="module")
def schema_registry() -> RuleSet:
    return load_rules(RULES_DIR / "schema-registry.yaml")


# Every bullet under "Example Scenarios" of each severity of the LLM-Marketplace plan.
MARKETPLACE_EXAMPLES = [
    Scenario(
        "P0: Publishing service completely down",
        {"alertname": "ServiceDown", "service": "publishing-service", "scope": "total"},
        {},
        "P0",
        "publishing",
    ),
    Scenario(
        "P0: Database cluster failure (all nodes)",
        {"alertname": "PostgresqlDown", "service": "database", "scope": "total"},
        {},
        "P0",
        "database",
    ),
    Scenario(
        "P0: Kubernetes cluster crash",
        {
            "alertname": "KubeAPIDown",
            "service": "infrastructure",
            "component": "kubernetes",
            "scope": "total",
        },
        {},
        "P0",
        "devops",
    ),
    Scenario(
        "P0: Active DDoS attack",
        {"alertname": "DDoSAttackDetected", "category": "ddos", "service": "consumption"},
        {},
        "P0",
        "security",
    ),
    Scenario(
        "P0: Data breach with customer data exposure",
        {"alertname": "CustomerDataExposed", "category": "data-breach", "service": "consumption"},
        {},
        "P0",
        "security",
    ),
    Scenario(
        "P1: Discovery service returning 50% errors",
        {"alertname": "HighErrorRate", "service": "discovery", "severity": "critical"},
        {"error_rate_percent": "50%"},
        "P1",
        "search",
    ),
    Scenario(
        "P1: Search latency > 5 seconds",
        {"alertname": "HighLatency", "service": "discovery", "component": "search"},
        {"latency_seconds": "7.2"},
        "P1",
        "search",
    ),
    Scenario(
        "P1: Single database node failure (replica)",
        {
            "alertname": "PostgresqlDown",
            "service": "database",
            "scope": "single",
            "role": "replica",
        },
        {},
        "P1",
        "database",
    ),
    Scenario(
        "P1: Redis cache cluster down",
        {
            "alertname": "RedisDown",
            "service": "infrastructure",
            "component": "redis",
            "scope": "total",
        },
        {},
        "P1",
        "devops",
    ),
    Scenario(
        "P1: Certificate expiring within 24 hours",
        {"alertname": "CertificateExpiringSoon", "service": "consumption", "severity": "warning"},
        {"expires_in_hours": "20"},
        "P1",
        "api",
    ),
    Scenario(
        "P2: Recommendations engine slow",
        {"alertname": "HighLatency", "service": "discovery", "component": "recommendations"},
        {"latency_seconds": "2.5"},
        "P2",
        "search",
    ),
    Scenario(
        "P2: Specific API endpoint errors",
        {"alertname": "HighErrorRate", "service": "consumption", "endpoint": "/v1/models"},
        {"error_rate_percent": "60"},
        "P2",
        "api",
    ),
    Scenario(
        "P2: Monitoring alerts delayed",
        {
            "alertname": "AlertmanagerNotificationsDelayed",
            "service": "infrastructure",
            "component": "monitoring",
        },
        {},
        "P2",
        "devops",
    ),
    Scenario(
        "P2: Log aggregation issues",
        {"alertname": "LogIngestionBacklog", "service": "infrastructure", "component": "logging"},
        {},
        "P2",
        "devops",
    ),
    Scenario(
        "P2: Single pod restart loop",
        {"alertname": "KubePodCrashLooping", "service": "admin", "severity": "warning"},
        {},
        "P2",
        "platform",
    ),
    Scenario(
        "P3: Dashboard metric incorrect",
        {"alertname": "DashboardMetricIncorrect", "category": "dashboard"},
        {},
        "P3",
        None,
    ),
    Scenario(
        "P3: Log format issues",
        {
            "alertname": "LogFormatInvalid",
            "category": "log-format",
            "service": "infrastructure",
            "component": "logging",
        },
        {},
        "P3",
        "devops",
    ),
    Scenario(
        "P3: Development environment problems",
        {
            "alertname": "ServiceDown",
            "service": "publishing",
            "scope": "total",
            "environment": "development",
        },
        {},
        "P3",
        "publishing",
    ),
    Scenario(
        "P3: Non-critical metric drift",
        {"alertname": "MetricDrift", "category": "metric-drift", "severity": "info"},
        {},
        "P3",
        None,
    ),
    Scenario(
        "P3: Documentation outdated",
        {"alertname": "DocumentationOutdated", "category": "documentation", "service": "admin"},
        {},
        "P3",
        "platform",
    ),
]

# The plan's characteristics and the preset's conventions beyond the examples.
MARKETPLACE_MORE = [
    Scenario(
        "Policy engine completely down",
        {"alertname": "ServiceDown", "service": "policy-engine", "scope": "total"},
        {},
        "P0",
        "security",
    ),
    Scenario("Critical data loss", {"category": "data-loss"}, {}, "P0", None),
    Scenario("Partial data loss", {"category": "data-loss", "scope": "partial"}, {}, "P1", None),
    Scenario(
        "Breach in staging is still P0",
        {"category": "security-breach", "environment": "staging"},
        {},
        "P0",
        "security",
    ),
    Scenario(
        "Certificate expiring in 3 days",
        {"alertname": "CertificateExpiringSoon", "severity": "warning"},
        {"expires_in_hours": "72"},
        "P2",
        None,
    ),
    Scenario(
        "Search latency under 5 s",
        {"alertname": "HighLatency", "service": "discovery", "component": "search"},
        {"latency_seconds": "3"},
        "P2",
        "search",
    ),
    Scenario(
        "Discovery returning 30% errors",
        {"alertname": "HighErrorRate", "service": "discovery"},
        {"error_rate_percent": "30"},
        "P2",
        "search",
    ),
    Scenario(
        "One replica of a service down",
        {"alertname": "ServiceDown", "service": "consumption", "scope": "single"},
        {},
        "P2",
        "api",
    ),
    Scenario("Generic critical alert", {"alertname": "X", "severity": "critical"}, {}, "P1", None),
    Scenario("Generic info alert", {"alertname": "X", "severity": "info"}, {}, "P3", None),
    Scenario("Unlabelled alert", {"alertname": "X"}, {}, "P3", "devops"),
    # The severity floor: an alertname heuristic never takes a critical alert below P1.
    Scenario(
        "Critical errors of a service page",
        {"alertname": "AdminErrors", "service": "admin", "severity": "critical"},
        {},
        "P1",
        "platform",
    ),
    Scenario(
        "Slow critical alert pages",
        {"alertname": "etcdGRPCRequestsSlow", "severity": "critical"},
        {},
        "P1",
        None,
    ),
    Scenario(
        "Warning errors of a service stay P2",
        {"alertname": "AdminErrors", "service": "admin", "severity": "warning"},
        {},
        "P2",
        "platform",
    ),
    Scenario(
        "Critical alert of one instance pages",
        {
            "alertname": "ServiceDown",
            "service": "consumption",
            "scope": "single",
            "severity": "critical",
        },
        {},
        "P1",
        "api",
    ),
    Scenario(
        "Critical alert from staging does not page (below the floor, explicitly)",
        {
            "alertname": "ServiceDown",
            "service": "publishing",
            "environment": "staging",
            "severity": "critical",
        },
        {},
        "P3",
        "publishing",
    ),
    Scenario(
        "Explicit override goes below the floor",
        {"alertname": "X", "incident_severity": "P3", "severity": "critical"},
        {},
        "P3",
        None,
    ),
    Scenario(
        "Watchdog opens no incident",
        {"alertname": "Watchdog", "severity": "none"},
        {},
        DROPPED,
        None,
    ),
    Scenario(
        "An explicit override wins over the drop",
        {"alertname": "Watchdog", "severity": "none", "incident_severity": "P3"},
        {},
        "P3",
        None,
    ),
    Scenario(
        "Explicit team label wins over service",
        {"alertname": "X", "service": "publishing", "team": "search"},
        {},
        "P3",
        "search",
    ),
]

# Every bullet under "Examples" of each severity of the Schema Registry plan.
SCHEMA_REGISTRY_EXAMPLES = [
    Scenario(
        "P0: Service completely unavailable (all pods down)",
        {"alertname": "SchemaRegistryDown", "component": "api", "scope": "total"},
        {},
        "P0",
        "sre",
    ),
    Scenario(
        "P0: Data corruption or loss",
        {"alertname": "SchemaChecksumMismatch", "category": "data-corruption"},
        {},
        "P0",
        "sre",
    ),
    Scenario(
        "P0: Security breach actively occurring",
        {"alertname": "IntrusionDetected", "category": "security-breach"},
        {},
        "P0",
        "security",
    ),
    Scenario(
        "P0: Database completely unavailable",
        {"alertname": "PostgresqlDown", "component": "database", "scope": "total"},
        {},
        "P0",
        "database",
    ),
    Scenario(
        "P1: Error rate > 10%",
        {"alertname": "SchemaRegistryHighErrorRate", "severity": "warning"},
        {"error_rate_percent": "12.5"},
        "P1",
        "sre",
    ),
    Scenario(
        "P1: Latency > 10x normal",
        {"alertname": "SchemaRegistryHighLatency"},
        {"latency_ratio": "11x"},
        "P1",
        "sre",
    ),
    Scenario(
        "P1: Critical feature completely broken",
        {
            "alertname": "SchemaValidationBroken",
            "category": "feature-broken",
            "criticality": "critical",
        },
        {},
        "P1",
        "engineering",
    ),
    Scenario(
        "P1: Partial data loss (recoverable from backup)",
        {"alertname": "SchemaVersionsMissing", "category": "data-loss", "recoverable": "true"},
        {},
        "P1",
        "sre",
    ),
    Scenario(
        "P2: Error rate 5-10%",
        {"alertname": "SchemaRegistryHighErrorRate"},
        {"error_rate_percent": "7%"},
        "P2",
        "sre",
    ),
    Scenario(
        "P2: Latency 3-10x normal",
        {"alertname": "SchemaRegistryHighLatency"},
        {"latency_ratio": "4x"},
        "P2",
        "sre",
    ),
    Scenario(
        "P2: Non-critical feature broken",
        {
            "alertname": "SchemaExportBroken",
            "category": "feature-broken",
            "criticality": "non-critical",
        },
        {},
        "P2",
        "engineering",
    ),
    Scenario(
        "P2: Performance degradation",
        {"alertname": "SchemaRegistryPerformanceDegraded", "category": "performance"},
        {},
        "P2",
        "sre",
    ),
    Scenario(
        "P3: Error rate 1-5%",
        {"alertname": "SchemaRegistryHighErrorRate"},
        {"error_rate_percent": "2.5"},
        "P3",
        "sre",
    ),
    Scenario(
        "P3: Latency 2-3x normal",
        {"alertname": "SchemaRegistryHighLatency"},
        {"latency_ratio": "2.5x"},
        "P3",
        "sre",
    ),
    Scenario("P3: Edge case bugs", {"category": "bug"}, {}, "P3", "engineering"),
    Scenario(
        "P3: Non-urgent security vulnerabilities",
        {"alertname": "CVEFound", "category": "vulnerability"},
        {},
        "P3",
        "security",
    ),
    Scenario("P4: Documentation errors", {"category": "documentation"}, {}, "P4", "engineering"),
    Scenario("P4: UI/UX improvements", {"category": "ux"}, {}, "P4", "engineering"),
    Scenario(
        "P4: Performance optimizations (non-urgent)",
        {"category": "enhancement", "area": "performance"},
        {},
        "P4",
        "engineering",
    ),
]


def _rate(error: str | None = None, latency: str | None = None) -> dict[str, str]:
    out = {}
    if error is not None:
        out["error_rate_percent"] = error
    if latency is not None:
        out["latency_ratio"] = latency
    return out


# The plan's metric bands at and around their edges; the worst metric wins.
SCHEMA_REGISTRY_MORE = [
    Scenario("error rate exactly 10%", {}, _rate("10"), "P2", None),
    Scenario("error rate just over 10%", {}, _rate("10.01%"), "P1", None),
    Scenario("error rate exactly 5%", {}, _rate("5"), "P2", None),
    Scenario("error rate just under 5%", {}, _rate("4.99"), "P3", None),
    Scenario("error rate exactly 1%", {}, _rate("1"), "P3", None),
    Scenario("latency exactly 10x", {}, _rate(latency="10x"), "P2", None),
    Scenario("latency exactly 3x", {}, _rate(latency="3"), "P2", None),
    Scenario("latency just under 3x", {}, _rate(latency="2.99x"), "P3", None),
    Scenario("latency exactly 2x", {}, _rate(latency="2x"), "P3", None),
    Scenario("low error rate, 11x latency", {}, _rate("2", "11x"), "P1", None),
    Scenario("7% errors, 2.5x latency", {}, _rate("7", "2.5x"), "P2", None),
    Scenario("unrecoverable data loss", {"category": "data-loss"}, {}, "P0", None),
    Scenario(
        "cache down is not P0",
        {"alertname": "RedisDown", "component": "cache", "scope": "total"},
        {},
        "P3",
        "sre",
    ),
    Scenario("Generic critical alert", {"alertname": "X", "severity": "critical"}, {}, "P1", None),
    Scenario("Generic warning alert", {"alertname": "X", "severity": "warning"}, {}, "P2", None),
    Scenario("Generic info alert", {"alertname": "X", "severity": "info"}, {}, "P4", None),
    # The severity floor: the metric bands and categories raise, never lower.
    Scenario(
        "Critical alert with a low error rate pages",
        {"alertname": "SchemaRegistryHighErrorRate", "severity": "critical"},
        _rate("2"),
        "P1",
        None,
    ),
    Scenario(
        "Critical bug alert pages",
        {"category": "bug", "severity": "critical"},
        {},
        "P1",
        "engineering",
    ),
    Scenario(
        "Warning documentation alert is P2",
        {"category": "documentation", "severity": "warning"},
        {},
        "P2",
        None,
    ),
    Scenario(
        "Explicit override goes below the floor",
        {"alertname": "X", "incident_severity": "P4", "severity": "critical"},
        {},
        "P4",
        None,
    ),
    Scenario(
        "InfoInhibitor opens no incident",
        {"alertname": "InfoInhibitor", "severity": "none"},
        {},
        DROPPED,
        None,
    ),
]


def _check(rules: RuleSet, scenario: Scenario) -> str:
    got = rules.classify(scenario.labels, scenario.annotations)
    assert got.dropped == (scenario.severity == DROPPED), (scenario.example, got)
    if not got.dropped:
        assert got.severity == scenario.severity, (scenario.example, got)
    if scenario.team is not None:
        assert got.team == scenario.team, (scenario.example, got)
    return got.severity_rule


@pytest.mark.parametrize(
    "scenario", MARKETPLACE_EXAMPLES + MARKETPLACE_MORE, ids=lambda s: s.example
)
def test_marketplace_scenarios(marketplace: RuleSet, scenario: Scenario) -> None:
    _check(marketplace, scenario)


@pytest.mark.parametrize(
    "scenario", SCHEMA_REGISTRY_EXAMPLES + SCHEMA_REGISTRY_MORE, ids=lambda s: s.example
)
def test_schema_registry_scenarios(schema_registry: RuleSet, scenario: Scenario) -> None:
    _check(schema_registry, scenario)


@pytest.mark.parametrize(
    ("preset", "scenarios"),
    [
        ("llm-marketplace", MARKETPLACE_EXAMPLES + MARKETPLACE_MORE),
        ("schema-registry", SCHEMA_REGISTRY_EXAMPLES + SCHEMA_REGISTRY_MORE),
    ],
)
def test_every_rule_is_exercised(preset: str, scenarios: list[Scenario]) -> None:
    """The tables reach every rule of the preset: no rule is dead or shadowed."""
    rules = load_rules(RULES_DIR / f"{preset}.yaml")
    hit_severity = {rules.classify(s.labels, s.annotations).severity_rule for s in scenarios}
    hit_team = {rules.classify(s.labels, s.annotations).team_rule for s in scenarios}
    for policy in rules.severities:
        override = {"incident_severity": policy.name, "alertname": "X"}
        got = rules.classify(override, {})
        assert got.severity == policy.name
        hit_severity.add(got.severity_rule)
    for team in rules.teams:
        got = rules.classify({"team": team, "category": "security-breach"}, {})
        assert got.team == team
        hit_team.add(got.team_rule)
    assert {r.name for r in rules.spec.severity_rules} - hit_severity == set()
    assert {r.name for r in rules.spec.ownership_rules} - hit_team == set()


class KubePrometheusAlert(NamedTuple):
    """One default alerting rule of kube-prometheus-stack and what each preset makes of it."""

    alertname: str
    severity: str
    rules_file: str
    expected: dict[str, str]  # preset name -> severity or DROPPED


def _kube_prometheus_alerts() -> list[KubePrometheusAlert]:
    path = DATA / "kube-prometheus-stack-alerts.csv"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line[:1] != "#"]
    rows = []
    for row in csv.DictReader(lines):
        name, severity, rules_file = (
            row.pop("alertname"),
            row.pop("severity"),
            row.pop("rules_file"),
        )
        rows.append(KubePrometheusAlert(name, severity, rules_file, row))
    return rows


KUBE_PROMETHEUS_ALERTS = _kube_prometheus_alerts()
PRESETS = ("llm-marketplace", "schema-registry")


def test_the_kube_prometheus_table_is_whole() -> None:
    """The table is the chart's default rules, not a sample: the issue's alerts are in it."""
    pairs = {(a.alertname, a.severity) for a in KUBE_PROMETHEUS_ALERTS}
    assert len(pairs) == len(KUBE_PROMETHEUS_ALERTS) > 100
    assert {a.severity for a in KUBE_PROMETHEUS_ALERTS} == {"critical", "warning", "info", "none"}
    downgraded_before = {
        "KubeAPIErrorBudgetBurn",
        "KubePersistentVolumeErrors",
        "KubeStateMetricsListErrors",
        "KubeStateMetricsWatchErrors",
        "PrometheusErrorSendingAlertsToAnyAlertmanager",
        "etcdGRPCRequestsSlow",
    }
    assert {(name, "critical") for name in downgraded_before} <= pairs
    assert {("Watchdog", "none"), ("InfoInhibitor", "none")} <= pairs
    assert all(set(a.expected) == set(PRESETS) for a in KUBE_PROMETHEUS_ALERTS)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(
    "alert", KUBE_PROMETHEUS_ALERTS, ids=lambda a: f"{a.alertname}-{a.severity}"
)
def test_kube_prometheus_default_alerts(preset: str, alert: KubePrometheusAlert) -> None:
    """Each default alert, with only its own labels, gets the table's severity; critical pages."""
    rules = _preset(preset)
    got = rules.classify({"alertname": alert.alertname, "severity": alert.severity}, {})
    expected = alert.expected[preset]
    assert (DROPPED if got.dropped else got.severity) == expected, got
    if alert.severity == "critical":
        assert rules.policy(got.severity).paging == "page", got
    if alert.severity == "none":
        assert got.dropped, got


@functools.cache
def _preset(name: str) -> RuleSet:
    return load_rules(RULES_DIR / f"{name}.yaml")


def _sla(**values: str | None) -> dict[str, timedelta | None]:
    units = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
    out: dict[str, timedelta | None] = {}
    for key in ("detect", "acknowledge", "update", "resolve", "postmortem"):
        value = values.get(key)
        out[key] = None if value is None else timedelta(seconds=int(value[:-1]) * units[value[-1]])
    return out


MARKETPLACE_POLICY = {
    # severity: (title, paging, PagerDuty severity, SLA, escalation)
    "P0": ("Critical", "page", "critical",
           _sla(detect="5m", acknowledge="5m", update="15m", resolve="1h", postmortem="24h"),
           [("0m", "vp-engineering", "unresolved")]),
    "P1": ("High", "page", "error",
           _sla(detect="10m", acknowledge="15m", update="30m", resolve="4h", postmortem="3d"),
           [("2h", "engineering-manager", "unresolved")]),
    "P2": ("Medium", "notify", "warning",
           _sla(detect="30m", acknowledge="1h", update="2h", resolve="24h", postmortem="1w"),
           [("12h", "team-lead", "unresolved")]),
    "P3": ("Low", "ticket", "info",
           _sla(detect="2h", acknowledge="4h", update="1d", resolve="1w"),
           []),
}  # fmt: skip

SCHEMA_REGISTRY_POLICY = {
    "P0": ("Critical", "page", "critical",
           _sla(acknowledge="5m", update="15m", resolve="1h", postmortem="24h"),
           [("0m", "on-call-sre", "unacknowledged"), ("0m", "engineering-manager", "unresolved"),
            ("15m", "engineering-lead", "unacknowledged"), ("60m", "cto", "unresolved")]),
    "P1": ("High", "page", "error",
           _sla(acknowledge="15m", update="30m", resolve="4h", postmortem="48h"),
           [("0m", "on-call-sre", "unacknowledged"), ("15m", "engineering-lead", "unacknowledged"),
            ("30m", "engineering-manager", "unacknowledged")]),
    "P2": ("Medium", "notify", "warning",
           _sla(acknowledge="1h", update="1h", resolve="24h", postmortem="1w"),
           []),
    "P3": ("Low", "ticket", "info",
           _sla(acknowledge="4h", update="1d", resolve="1w", postmortem="1w"),
           []),
    "P4": ("Trivial", "none", "info", _sla(), []),
}  # fmt: skip


@pytest.mark.parametrize(
    ("preset", "expected", "teams", "defaults"),
    [
        (
            "llm-marketplace",
            MARKETPLACE_POLICY,
            ("publishing", "search", "api", "platform", "security", "devops", "database"),
            ("P3", "devops"),
        ),
        (
            "schema-registry",
            SCHEMA_REGISTRY_POLICY,
            ("sre", "engineering", "database", "security"),
            ("P3", "sre"),
        ),
    ],
)
def test_preset_matches_its_plan(
    preset: str,
    expected: dict[
        str, tuple[str, str, str, dict[str, timedelta | None], list[tuple[str, str, str]]]
    ],
    teams: tuple[str, ...],
    defaults: tuple[str, str],
) -> None:
    rules = load_rules(RULES_DIR / f"{preset}.yaml")
    assert rules.name == preset
    assert rules.description
    assert [p.name for p in rules.severities] == list(expected)
    assert rules.teams == teams
    assert (rules.default_severity, rules.default_team) == defaults
    for name, (title, paging, pd_severity, sla, ladder) in expected.items():
        policy = rules.policy(name)
        assert (policy.title, policy.paging, policy.pagerduty_severity) == (
            title,
            paging,
            pd_severity,
        )
        assert policy.description
        assert {key: getattr(policy.sla, key) for key in sla} == sla, name
        steps = [(s.after, s.tier, s.while_) for s in policy.escalation]
        assert steps == [(_sla(detect=a)["detect"], tier, w) for a, tier, w in ladder], name


def test_sla_thresholds_cover_both_plans(marketplace: RuleSet, schema_registry: RuleSet) -> None:
    assert marketplace.sla_thresholds() == [
        300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0, 259200.0, 604800.0,
    ]  # fmt: skip
    assert 172800.0 in schema_registry.sla_thresholds()  # the 48 h P1 review


def test_preset_matchers_are_valid_alertmanager_matchers(tmp_path: Path) -> None:
    """Every `match` line of both presets is accepted by Alertmanager's own config check."""
    amtool = str(require_binary("amtool"))
    lines = []
    for preset in ("llm-marketplace", "schema-registry"):
        data = yaml.safe_load((RULES_DIR / f"{preset}.yaml").read_text(encoding="utf-8"))
        for section in ("severity_rules", "ownership_rules"):
            lines += [line for rule in data[section] for line in rule.get("match", [])]
    assert len(lines) > 50
    config = {
        "route": {
            "receiver": "default",
            "routes": [{"receiver": "default", "matchers": [line]} for line in lines],
        },
        "receivers": [{"name": "default"}],
    }
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- ladders, recovery watches and escalation rules, read from the plans ---------

# The plan lines the presets quote beside each step, watch and rule, transcribed
# (the plans' box-drawing arrows, mis-encoded in the originals, as ASCII).
PLAN_LINES = {
    "llm-marketplace": """
        - P0 incident declared -> Page VP Engineering immediately
        - P1 unresolved after 2 hours -> Escalate to Engineering Manager
        - P2 unresolved after 12 hours -> Escalate to Team Lead
        - Any incident requiring emergency change -> Page Change Manager
        1. **Monitor Stability**
           - Watch metrics for 1 hour (P0/P1)
    """,
    "schema-registry": """
        **Response Time:** Immediate (< 5 minutes)
        **Resolution Target:** < 1 hour
        **Escalation:** Page on-call SRE + Engineering Manager immediately
        **Response Time:** < 15 minutes
        **Resolution Target:** < 4 hours
        **Escalation:** Page on-call SRE
        # Monitor for stability (30-60 minutes)
        | On-Call SRE | <--- 0-5 minutes
        |-(15 min)-> | Engineering Lead |
        |-(30 min)-> | Engineering Mgr |
        +-(60 min)-> | CTO |
        - CTO (for P0 only)
    """,
}

# severity: (ladder as (after, tier, condition), recovery watch)
WATCHED = {
    "llm-marketplace": {
        "P0": ([("0s", "vp-engineering", "unresolved")], "1h"),
        "P1": ([("2h", "engineering-manager", "unresolved")], "1h"),
        "P2": ([("12h", "team-lead", "unresolved")], None),
        "P3": ([], None),
    },
    "schema-registry": {
        "P0": (
            [
                ("0s", "on-call-sre", "unacknowledged"),
                ("0s", "engineering-manager", "unresolved"),
                ("15m", "engineering-lead", "unacknowledged"),
                ("1h", "cto", "unresolved"),
            ],
            "1h",
        ),
        "P1": (
            [
                ("0s", "on-call-sre", "unacknowledged"),
                ("15m", "engineering-lead", "unacknowledged"),
                ("30m", "engineering-manager", "unacknowledged"),
            ],
            "1h",
        ),
        "P2": ([], "30m"),
        "P3": ([], "30m"),
        "P4": ([], None),
    },
}


def _plain(text: str) -> str:
    """Letters and digits only, lower case: how a quote is found in the plan's words."""
    return "".join(c for c in text.lower() if c.isascii() and c.isalnum())


@pytest.mark.parametrize("preset", sorted(WATCHED))
def test_ladders_and_watches_are_the_plans(preset: str) -> None:
    rules = _preset(preset)
    for name, (ladder, watch) in WATCHED[preset].items():
        policy = rules.policy(name)
        steps = [(format_duration(s.after), s.tier, s.while_) for s in policy.escalation]
        assert steps == ladder, name
        got = None if policy.recovery_watch is None else format_duration(policy.recovery_watch)
        assert got == watch, name


@pytest.mark.parametrize("preset", sorted(PLAN_LINES))
def test_every_step_watch_and_escalation_rule_quotes_its_plan_line(preset: str) -> None:
    """The comment beside (or right above) each one quotes the plan, and the plan says it."""
    lines = (RULES_DIR / f"{preset}.yaml").read_text(encoding="utf-8").splitlines()
    plan = _plain(PLAN_LINES[preset])
    checked = 0
    for i, line in enumerate(lines):
        body = line.split("#", 1)[0]
        if not re.search(r"\btier: |recovery_watch: |^\s+- name: emergency", body):
            continue
        if body.strip().startswith("tier:"):
            continue  # the escalation rule's own tier: its quote is at its name
        comment = line.split("#", 1)[1] if "#" in line else ""
        above = i - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            comment = lines[above].strip().lstrip("#") + " " + comment
            above -= 1
        quotes = re.findall(r'"([^"]+)"', comment)
        assert quotes, f"{preset}.yaml:{i + 1}: no quote of the plan beside: {line.strip()}"
        for quote in quotes:
            if len(_plain(quote)) > 3:  # a label value such as "emergency" is no quote
                assert _plain(quote) in plan, f"{preset}.yaml:{i + 1}: not in the plan: {quote}"
        checked += 1
    assert checked >= (5 if preset == "llm-marketplace" else 9)


def test_an_emergency_change_pages_the_change_manager_at_any_severity(
    marketplace: RuleSet,
) -> None:
    """Plan 000: "Any incident requiring emergency change -> Page Change Manager"."""
    hits = marketplace.escalations({"change": "emergency", "service": "admin"}, {})
    assert [(h.rule, h.tier, h.record_only) for h in hits] == [
        ("emergency-change", "change-manager", False)
    ]
    assert marketplace.escalations({"change": "planned"}, {}) == ()
    assert marketplace.escalations({}, {}) == ()
