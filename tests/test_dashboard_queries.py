"""The Grafana dashboard and the alert rules against a real Prometheus scraping a real sidecar.

A sidecar process is fed a scenario (incidents of two severities, an acknowledgment, a
resolution, a webhook with a wrong token, PagerDuty rejecting one event and then failing), a real
Prometheus scrapes it every second with the shipped alert rules loaded, and then every dashboard
query (variables substituted) and every alert expression is evaluated: each must return data.
The few that cannot yet are listed in EXPECTED_EMPTY with the reason, and the test insists they
are still empty, so the list cannot silently go stale. Static checks on the dashboard JSON
(variables, label filters, replica-safe aggregation) need no Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fakes.pagerduty import FakePagerDuty
from tests.payloads import alert, notification
from tests.sidecar_process import SidecarProcess, record_only_ladders, without_recovery_watch
from tests.support.fixtures import PrometheusFactory
from tests.support.prometheus import Prometheus, Sample
from tests.support.prometheus import render_config as render_prometheus_config

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "dashboards" / "incident-sla-sidecar.json"
RULES = REPO / "rules" / "prometheus" / "incident-sla-alerts.yaml"
JOB = "incident-sla-sidecar"

# Labels of every metric, from DESIGN.md section 3 (the contract).
METRIC_LABELS: dict[str, set[str]] = {
    "incident_sla_incidents_total": {"severity", "team"},
    "incident_sla_open_incidents": {"severity", "state"},
    "incident_sla_time_to_detect_seconds": {"severity", "team"},
    "incident_sla_time_to_acknowledge_seconds": {"severity", "team"},
    "incident_sla_time_to_resolve_seconds": {"severity", "team"},
    "incident_sla_breaches_total": {"severity", "team", "sla"},
    "incident_sla_open_breached_incidents": {"severity", "sla"},
    "incident_sla_escalations_total": {"severity", "tier"},
    "incident_sla_pagerduty_events_total": {"action", "result"},
    "incident_sla_pagerduty_outbox_pending": set(),
    "incident_sla_webhook_requests_total": {"source", "code"},
    # Issue 15: every integration's sends and outbox (PagerDuty's included).
    "incident_sla_notifications_total": {"integration", "action", "result"},
    "incident_sla_notifications_pending": {"integration"},
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SHARED_GAUGES = (
    "incident_sla_open_incidents",
    "incident_sla_open_breached_incidents",
    "incident_sla_pagerduty_outbox_pending",
    "incident_sla_notifications_pending",
)

# What the dashboard variables stand for during the test. Grafana's $__rate_interval would be a
# few seconds at a 1 s scrape interval; a minute covers the whole scenario.
VARIABLES = {
    "$severity": ".*",
    "$team": ".*",
    "$window": "1h",
    "$__rate_interval": "1m",
}

# Expressions that cannot return data in this scenario yet, and why. The test fails when one of
# them starts returning data: then remove it here, so that it is checked from then on.
EXPECTED_EMPTY: dict[str, str] = {
    "alert: IncidentSLASidecarAbsent": (
        "the scenario's target exists by design; absence is unit-tested with promtool"
    ),
}


@dataclass(frozen=True)
class Query:
    """One expression to evaluate: a dashboard target or an alert rule."""

    name: str
    expr: str
    raw: str  # as written, dashboard variables not yet substituted


def dashboard() -> dict[str, Any]:
    """The shipped dashboard."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    """Every panel with queries (rows excluded, nested row panels included)."""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def substitute(expr: str) -> str:
    """Replace the dashboard variables (longest names first)."""
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr.replace('"$1"', ""), f"unsubstituted variable in {expr}"
    return expr


def dashboard_queries() -> list[Query]:
    """Every target of every panel, variables substituted."""
    return [
        Query(
            f"panel: {panel['title']} / {target['refId']}",
            substitute(target["expr"]),
            target["expr"],
        )
        for panel in panels()
        for target in panel["targets"]
    ]


def alert_queries() -> list[Query]:
    """Every alert rule's expression."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [
        Query(f"alert: {rule['alert']}", rule["expr"], rule["expr"])
        for group in doc["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, matcher text) for every incident_sla_ selector of an expression."""
    for match in re.finditer(r"\b(incident_sla_\w+)(\{[^}]*\})?", expr):
        yield match.group(1), match.group(2) or ""


def base_metric(name: str) -> str:
    """The contract name of a series name (histogram suffixes removed)."""
    if name in METRIC_LABELS:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in METRIC_LABELS:
            return name.removesuffix(suffix)
    raise AssertionError(f"{name} is not a metric of DESIGN.md section 3")


# Static checks: the dashboard JSON itself.


def test_dashboard_is_single_sourced_from_the_chart() -> None:
    """dashboards/ links to the chart's copy, the one Grafana receives."""
    chart_copy = REPO / "helm/incident-sla-sidecar/files/dashboards/incident-sla-sidecar.json"
    assert DASHBOARD.is_symlink()
    assert DASHBOARD.resolve() == chart_copy.resolve()


def test_dashboard_variables() -> None:
    """Data source, severity, team and window variables; severity and team multi-valued."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "severity", "team", "window"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("severity", "team"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["multi"] is True and variable["includeAll"] is True
        assert variable["allValue"] == ".*"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert "label_values(incident_sla_incidents_total" in variable["definition"]
        assert variable["definition"].endswith(f", {name})")


def test_every_panel_uses_the_datasource_variable_and_has_a_description() -> None:
    """Panels follow the data source chosen on the dashboard and explain themselves."""
    ids = []
    for panel in panels():
        ids.append(panel["id"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"].strip(), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_covers_the_issue() -> None:
    """Compliance, MTTA, MTTR, open incidents, breaches, escalations, PagerDuty health."""
    exprs = "\n".join(q.expr for q in dashboard_queries())
    for metric in (
        "incident_sla_breaches_total",
        "incident_sla_incidents_total",
        "incident_sla_time_to_acknowledge_seconds_sum",
        "incident_sla_time_to_resolve_seconds_sum",
        "incident_sla_time_to_acknowledge_seconds_bucket",
        "incident_sla_open_incidents",
        "incident_sla_escalations_total",
        "incident_sla_pagerduty_events_total",
        "incident_sla_pagerduty_outbox_pending",
        "incident_sla_notifications_total",
        "incident_sla_notifications_pending",
    ):
        assert metric in exprs, metric


@pytest.mark.parametrize("query", dashboard_queries() + alert_queries(), ids=lambda q: q.name)
def test_queries_use_contract_metrics_and_filters(query: Query) -> None:
    """Only DESIGN.md metrics; panels filter on $severity and $team where the labels exist."""
    raw = query.raw
    found = list(selectors(raw))
    for name, matchers in found:
        labels = METRIC_LABELS[base_metric(name)]
        if query.name.startswith("panel:"):
            if "severity" in labels:
                assert 'severity=~"$severity"' in matchers, (query.name, name)
            if "team" in labels:
                assert 'team=~"$team"' in matchers, (query.name, name)
        for label in re.findall(r"(\w+)=~?", matchers):
            assert label in labels | {"le"}, (query.name, name, label)
    grouped = re.findall(r"by \(([\w, ]+)\)", raw)
    names = {base_metric(name) for name, _ in found}
    available = set().union(*(METRIC_LABELS[n] for n in names)) | {"le"} if names else set()
    for clause in grouped:
        for label in (part.strip() for part in clause.split(",")):
            assert label in available, (query.name, label)


@pytest.mark.parametrize("query", dashboard_queries() + alert_queries(), ids=lambda q: q.name)
def test_shared_gauges_take_max_across_replicas(query: Query) -> None:
    """A gauge every replica reports identically is combined with max before anything else."""
    expr = re.sub(r"\s+", " ", query.expr)
    for gauge in SHARED_GAUGES:
        for match in re.finditer(rf"{gauge}\b", expr):
            assert re.search(r"max(?: by \([\w, ]+\))? ?\($", expr[: match.start()]), (
                query.name,
                expr,
            )


def test_expected_empty_names_exist() -> None:
    """Every EXPECTED_EMPTY entry names a real query (no stale entries)."""
    names = {q.name for q in dashboard_queries() + alert_queries()}
    assert set(EXPECTED_EMPTY) <= names


# The live scenario.


ROUTING_KEY = "0123456789abcdef0123456789abcdef"


async def post_webhook(
    session: aiohttp.ClientSession, sidecar: SidecarProcess, payload: dict[str, Any], token: str
) -> int:
    """POST an Alertmanager notification; return the status."""
    async with session.post(
        sidecar.webhook_url, json=payload, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        await response.read()
        return response.status


async def wait_samples(prometheus: Prometheus, expr: str, minimum: float) -> list[Sample]:
    """Wait until ``expr`` has a sample of at least ``minimum``."""
    return await prometheus.wait_for(expr, lambda s: any(x.value >= minimum for x in s))


def finite(samples: list[Sample]) -> list[Sample]:
    """The samples with a real number (0/0 gives NaN)."""
    return [s for s in samples if not math.isnan(s.value) and not math.isinf(s.value)]


@pytest.mark.e2e
async def test_every_query_returns_data_from_a_real_sidecar(
    tmp_path: Path, prometheus_factory: PrometheusFactory
) -> None:
    """Feed a scenario, scrape it with Prometheus, evaluate every panel and alert expression."""
    async with FakePagerDuty() as pagerduty, aiohttp.ClientSession() as session:
        # The first event is refused (400, never retried); then PagerDuty fails (503, retried),
        # so later events stay in the outbox and nothing is ever accepted.
        pagerduty.reject_next(1)
        pagerduty.fail_next(10_000, status=503)
        # The preset with P2's acknowledgment SLA shortened to 3 s, so that the
        # scenario breaches it (and its other clocks) in test time.
        preset = (REPO / "rules" / "llm-marketplace.yaml").read_text(encoding="utf-8")
        fast = preset.replace("acknowledge: 1h    # l.113", "acknowledge: 3s    # l.113")
        assert fast != preset
        rules_file = tmp_path / "rules-fast.yaml"
        # PagerDuty without tier keys: the ladders are record-only, or start is refused.
        # No recovery watch: the MTTR panels read the time to resolve at once.
        rules_file.write_text(without_recovery_watch(record_only_ladders(fast)), encoding="utf-8")
        sidecar = SidecarProcess(
            tmp_path / "sidecar",
            overrides={
                "rules": {"file": str(rules_file)},
                "pagerduty": {
                    "events_url": pagerduty.events_url,
                    "api_url": pagerduty.api_url,
                    "api_token": pagerduty.api_token,
                    "routing_key": ROUTING_KEY,
                },
            },
        )
        await asyncio.to_thread(sidecar.start)
        try:
            prometheus = prometheus_factory(
                config_text=render_prometheus_config(
                    [f"127.0.0.1:{sidecar.port}"], rule_files=[RULES], job_name=JOB
                ),
                start=False,
            )
            await prometheus.astart()
            # Scraped once before anything happens, so every counter starts from its zero.
            await wait_samples(prometheus, f'up{{job="{JOB}"}}', 1)

            now = time.time()
            down = alert(
                "ServiceDown",
                fingerprint="a000000000000001",
                starts=now - 120,
                labels={"service": "publishing", "scope": "total"},
            )
            # Started an hour before the sidecar hears of it: P2's 30 min detection SLA
            # is breached at opening, and its 3 s acknowledgment SLA soon after.
            errors = alert(
                "HighErrorRate",
                fingerprint="a000000000000002",
                starts=now - 3600,
                labels={"service": "discovery", "severity": "warning"},
            )
            crit = alert(
                "HighErrorRate",
                fingerprint="a000000000000003",
                starts=now - 30,
                labels={"service": "consumption", "severity": "critical"},
            )
            down_key = '{}:{alertname="ServiceDown"}'
            token = sidecar.webhook_token
            assert (
                await post_webhook(session, sidecar, notification(down, group_key=down_key), token)
                == 200
            )
            await pagerduty.wait_for_requests(1)  # the P0 trigger, refused
            assert (
                await post_webhook(session, sidecar, notification(errors, group_key="g-p2"), token)
                == 200
            )
            assert (
                await post_webhook(session, sidecar, notification(crit, group_key="g-p1"), token)
                == 200
            )
            # Series of webhook_requests_total appear with their first request, and Prometheus
            # cannot see an increase into a series' first sample: a second 401 comes once the
            # first one has been scraped.
            wrong = notification(errors, group_key="g-p2")
            assert await post_webhook(session, sidecar, wrong, "wrong-token") == 401
            await wait_samples(
                prometheus, 'sum(incident_sla_webhook_requests_total{code="401"})', 1
            )
            assert await post_webhook(session, sidecar, wrong, "wrong-token") == 401

            async with session.get(
                f"{sidecar.url}/api/v1/incidents",
                params={"state": "triggered"},
                headers={"Authorization": f"Bearer {sidecar.api_token}"},
            ) as response:
                assert response.status == 200
                incidents = (await response.json())["incidents"]
            p0 = next(i for i in incidents if i["group_key"] == down_key)
            assert p0["severity"] == "P0"
            async with session.post(
                f"{sidecar.url}/api/v1/incidents/{p0['id']}/acknowledge",
                json={"by": "test"},
                headers={"Authorization": f"Bearer {sidecar.api_token}"},
            ) as response:
                assert response.status == 200, await response.text()
            resolved = alert(
                "ServiceDown",
                fingerprint="a000000000000001",
                status="resolved",
                starts=now - 120,
                ends=time.time(),
                labels={"service": "publishing", "scope": "total"},
            )
            assert (
                await post_webhook(
                    session, sidecar, notification(resolved, group_key=down_key), token
                )
                == 200
            )

            # Everything above is visible to Prometheus before the queries run.
            await wait_samples(prometheus, "sum(incident_sla_incidents_total)", 3)
            await wait_samples(prometheus, "sum(incident_sla_time_to_resolve_seconds_count)", 1)
            await wait_samples(prometheus, "sum(incident_sla_time_to_acknowledge_seconds_count)", 1)
            await wait_samples(
                prometheus, 'sum(incident_sla_pagerduty_events_total{result="rejected"})', 1
            )
            await wait_samples(prometheus, "max(incident_sla_pagerduty_outbox_pending)", 1)
            await wait_samples(
                prometheus, 'sum(incident_sla_webhook_requests_total{code="401"})', 2
            )
            await wait_samples(prometheus, "sum(incident_sla_breaches_total)", 2)
            await wait_samples(
                prometheus, 'max(incident_sla_open_breached_incidents{sla="acknowledge"})', 1
            )
            # rate() and increase() need two samples of a series; these appear late (the
            # other series are exported from start-up).
            await prometheus.wait_for(
                "min(count_over_time(incident_sla_webhook_requests_total[1m]))",
                lambda s: bool(s) and s[0].value >= 2,
            )
            # Label values the severity and team variables offer.
            severities = await prometheus.get(
                "/api/v1/label/severity/values", [("match[]", "incident_sla_incidents_total")]
            )
            teams = await prometheus.get(
                "/api/v1/label/team/values", [("match[]", "incident_sla_incidents_total")]
            )
            assert {"P0", "P1", "P2"} <= set(severities)
            assert {"publishing", "search"} <= set(teams)

            percent_panels = {
                f"panel: {p['title']} / {t['refId']}"
                for p in panels()
                if p["fieldConfig"]["defaults"].get("unit") == "percentunit"
                for t in p["targets"]
            }
            problems: list[str] = []
            for query in dashboard_queries() + [
                q for q in alert_queries() if q.name != "alert: IncidentSLASidecarDown"
            ]:
                samples = finite(await prometheus.query(query.expr))
                if query.name in EXPECTED_EMPTY:
                    if samples:
                        problems.append(
                            f"{query.name} now returns data ({samples[:3]}): "
                            "remove it from EXPECTED_EMPTY"
                        )
                elif not samples:
                    problems.append(f"{query.name} returned no data: {query.expr}")
                elif query.name in percent_panels and not all(0 <= x.value <= 1 for x in samples):
                    problems.append(f"{query.name} is not a ratio: {samples}")
            assert problems == []

            # Rule evaluation itself raised no error (e.g. a bad vector match).
            groups = await prometheus.rules()
            unhealthy = [
                (r["name"], r.get("lastError"))
                for g in groups
                for r in g["rules"]
                if r["health"] not in ("ok", "unknown")
            ]
            assert unhealthy == []
            assert sorted(r["name"] for g in groups for r in g["rules"]) == sorted(
                q.name.removeprefix("alert: ") for q in alert_queries()
            )
        finally:
            await asyncio.to_thread(sidecar.stop)

        # Last: the sidecar is gone, so "sidecar down" has data.
        down_expr = next(
            q.expr for q in alert_queries() if q.name == "alert: IncidentSLASidecarDown"
        )
        await prometheus.wait_for(down_expr, lambda s: len(s) == 1)
