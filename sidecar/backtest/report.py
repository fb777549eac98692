"""The backtest's report: what the plan would have done, as figures, in Markdown or JSON.

Incidents per severity and team; pages per routing key and PagerDuty severity,
and escalations per tier (with their outcome); SLA breaches per severity;
alerts that only the rules' defaults classified; flapping groups (a group that
opened at least ``flap_threshold`` incidents); and the noisiest alerts by
firing episodes (alerts the rules drop are left out: they open nothing).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sidecar.clock import isoformat
from sidecar.rules import DEFAULT_RULE, RuleSet
from sidecar.simulate.alertmanager import SimAlert
from sidecar.simulate.run import Simulation
from sidecar.store.rows import PAGERDUTY

SLAS = ("detect", "acknowledge", "update", "resolve", "postmortem")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the report says it assumed."""

    start: float
    end: float
    step: float
    ack: str
    flap_threshold: int = 3
    top: int = 10


def summarize(
    sim: Simulation, alerts: list[SimAlert], rules: RuleSet, settings: Settings
) -> dict[str, Any]:
    """The report's figures, as plain data (the JSON output)."""
    incidents = list(sim.incidents.values())
    by_sev_team = Counter((i.severity, i.team) for i in incidents)
    breaches: dict[str, Counter[str]] = defaultdict(Counter)
    escalations: dict[str, Counter[str]] = defaultdict(Counter)
    for inc in incidents:
        for sla in inc.breaches:
            breaches[inc.severity][sla] += 1
        for tier in inc.escalated:
            escalations[tier][inc.escalation_outcomes.get(tier, "paged")] += 1
    pages = Counter(
        (s.routing, s.severity or "")
        for s in sim.sent
        if s.integration == PAGERDUTY and s.action == "trigger"
    )
    per_key = Counter(i.key for i in incidents)
    labels_of = {i.key: i.labels for i in incidents}
    flapping = [
        {"group_key": key, "labels": labels_of[key], "incidents": n}
        for key, n in per_key.most_common()
        if n >= settings.flap_threshold
    ]
    episodes: Counter[str] = Counter()
    firing: dict[str, float] = defaultdict(float)
    defaults: dict[str, dict[str, Any]] = {}
    dropped = 0
    for alert in alerts:
        name = alert.labels.get("alertname", "")
        cls = rules.classify(alert.labels, {})
        if cls.dropped:
            dropped += 1
            continue  # the plan opens nothing for it: no noise for anyone
        episodes[name] += 1
        firing[name] += (alert.ends_at or settings.end) - (alert.sent_at or alert.starts_at)
        which = [
            list_name
            for list_name, rule in (("severity", cls.severity_rule), ("ownership", cls.team_rule))
            if rule == DEFAULT_RULE
        ]
        if which:
            entry = defaults.setdefault(
                name,
                {
                    "alertname": name,
                    "rules": which,
                    "severity": cls.severity,
                    "team": cls.team,
                    "episodes": 0,
                },
            )
            entry["episodes"] += 1
    return {
        "range": {
            "from": isoformat(settings.start),
            "to": isoformat(settings.end),
            "step_seconds": settings.step,
        },
        "assumptions": {
            "acknowledgment": settings.ack,
            "annotations": "none (Prometheus' ALERTS series carry labels only)",
        },
        "alerts": {
            "series": len({tuple(sorted(a.labels.items())) for a in alerts}),
            "episodes": len(alerts),
            "dropped_by_rules": dropped,
        },
        "incidents": {
            "total": len(incidents),
            "open_at_end": sum(1 for i in incidents if i.is_open),
            "by_severity_team": [
                {"severity": sev, "team": team, "count": n}
                for (sev, team), n in sorted(
                    by_sev_team.items(), key=lambda kv: (rules.rank(kv[0][0]), kv[0][1])
                )
            ],
        },
        "pages": [
            {"routing": routing, "pagerduty_severity": severity, "count": n}
            for (routing, severity), n in sorted(pages.items())
        ],
        "escalations": {tier: dict(sorted(c.items())) for tier, c in sorted(escalations.items())},
        "breaches": {
            sev.name: {sla: breaches[sev.name][sla] for sla in SLAS if breaches[sev.name][sla]}
            for sev in rules.severities
            if breaches[sev.name]
        },
        "default_rule_only": sorted(
            defaults.values(), key=lambda d: (-d["episodes"], d["alertname"])
        ),
        "flapping_groups": flapping,
        "noisiest_alerts": [
            {"alertname": name, "episodes": n, "firing_seconds": round(firing[name])}
            for name, n in sorted(episodes.items(), key=lambda kv: (-kv[1], kv[0]))[: settings.top]
        ],
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    r = report
    lines = [
        f"# Backtest {r['range']['from']} to {r['range']['to']}",
        "",
        f"- alert episodes: {r['alerts']['episodes']} of {r['alerts']['series']} series "
        f"({r['alerts']['dropped_by_rules']} of them dropped by the rules)",
        f"- incidents: {r['incidents']['total']} ({r['incidents']['open_at_end']} still open)",
        f"- acknowledgment assumed: {r['assumptions']['acknowledgment']}",
        f"- annotations: {r['assumptions']['annotations']}",
        "",
        "## Incidents per severity and team",
        "",
        *_table(
            ["severity", "team", "incidents"],
            [[x["severity"], x["team"], x["count"]] for x in r["incidents"]["by_severity_team"]],
        ),
        "## Pages per routing key",
        "",
        "PagerDuty severity critical and error wake someone; warning and info do not.",
        "",
        *_table(
            ["routing key", "PagerDuty severity", "pages"],
            [[p["routing"], p["pagerduty_severity"], p["count"]] for p in r["pages"]],
        ),
        "## Escalations per tier",
        "",
        *_table(
            ["tier", "paged", "recorded", "unrouted"],
            [
                [t, c.get("paged", 0), c.get("recorded", 0), c.get("unrouted", 0)]
                for t, c in r["escalations"].items()
            ],
        ),
        "## SLA breaches per severity",
        "",
        *_table(
            ["severity", *SLAS],
            [[sev, *(c.get(s, 0) for s in SLAS)] for sev, c in r["breaches"].items()],
        ),
        "## Alerts only the default rule matched",
        "",
        *_table(
            ["alertname", "defaults used", "severity", "team", "episodes"],
            [
                [d["alertname"], ", ".join(d["rules"]), d["severity"], d["team"], d["episodes"]]
                for d in r["default_rule_only"]
            ],
        ),
        "## Flapping groups",
        "",
        *_table(
            ["group", "incidents"],
            [[_labels(f["labels"]), f["incidents"]] for f in r["flapping_groups"]],
        ),
        "## Noisiest alerts",
        "",
        *_table(
            ["alertname", "episodes", "hours firing"],
            [
                [n["alertname"], n["episodes"], f"{n['firing_seconds'] / 3600:.1f}"]
                for n in r["noisiest_alerts"]
            ],
        ),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["(none)", ""]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*out, ""]
