"""Every number of both presets against a table transcribed from the plans, line by line.

The tables quote the two plans' texts as the project received them (the
LLM-Marketplace "Incident Response Framework" v1.0.0 and the Schema Registry
"Incident Response Plan" v1.0): each row is a value, the plan's line number
and its words. The tests check that the
preset holds exactly these values (an SLA the plan does not set, such as the
Schema Registry's time to detect, is no target at all), and that the preset's
YAML comment beside each value cites the same line with the same words, so a
reader can check the number against the plan without this file.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.durations import parse_duration
from sidecar.rules import RuleSet, load_rules
from sidecar.yamlfile import load_yaml

RULES = Path(__file__).parent.parent / "rules"
SLAS = ("detect", "acknowledge", "update", "resolve", "postmortem")

# (severity, SLA, target, calendar, plan line, the plan's words)
SLA_PLAN: dict[str, list[tuple[str, str, str, str | None, int, str]]] = {
    "llm-marketplace": [
        ("P0", "detect", "5m", None, 58, "Detection: < 5 minutes"),
        ("P0", "acknowledge", "5m", None, 59, "Acknowledgment: < 5 minutes"),
        ("P0", "update", "15m", None, 60, "Updates: Every 15 minutes"),
        ("P0", "resolve", "1h", None, 61, "Resolution Target: < 1 hour"),
        ("P0", "postmortem", "24h", None, 597, "P0: Within 24 hours"),
        ("P1", "detect", "10m", None, 85, "Detection: < 10 minutes"),
        ("P1", "acknowledge", "15m", None, 86, "Acknowledgment: < 15 minutes"),
        ("P1", "update", "30m", None, 87, "Updates: Every 30 minutes"),
        ("P1", "resolve", "4h", None, 88, "Resolution Target: < 4 hours"),
        ("P1", "postmortem", "3d", None, 598, "P1: Within 3 days"),
        ("P2", "detect", "30m", None, 112, "Detection: < 30 minutes"),
        ("P2", "acknowledge", "1h", None, 113, "Acknowledgment: < 1 hour"),
        ("P2", "update", "2h", None, 114, "Updates: Every 2 hours"),
        ("P2", "resolve", "24h", None, 115, "Resolution Target: < 24 hours"),
        ("P2", "postmortem", "1w", None, 599, "P2: Within 1 week"),
        ("P3", "detect", "2h", None, 139, "Detection: < 2 hours"),
        ("P3", "acknowledge", "4h", None, 140, "Acknowledgment: < 4 hours"),
        ("P3", "update", "1d", None, 141, "Updates: Daily"),
        ("P3", "resolve", "1w", None, 142, "Resolution Target: < 1 week"),
    ],
    "schema-registry": [
        ("P0", "acknowledge", "5m", None, 19, "Response Time: Immediate (< 5 minutes)"),
        ("P0", "resolve", "1h", None, 20, "Resolution Target: < 1 hour"),
        ("P0", "update", "15m", None, 22, "Communication: Every 15 minutes to all stakeholders"),
        ("P0", "postmortem", "24h", None, 310, "Scheduled within 24-48 hours of P0/P1"),
        ("P1", "acknowledge", "15m", None, 34, "Response Time: < 15 minutes"),
        ("P1", "resolve", "4h", None, 35, "Resolution Target: < 4 hours"),
        ("P1", "update", "30m", None, 37, "Communication: Every 30 minutes to stakeholders"),
        ("P1", "postmortem", "48h", None, 310, "Scheduled within 24-48 hours of P0/P1"),
        ("P2", "acknowledge", "1h", "business-hours", 49,
         "Response Time: < 1 hour (business hours)"),
        ("P2", "resolve", "24h", None, 50, "Resolution Target: < 24 hours"),
        ("P2", "update", "1h", None, 52, "Communication: Hourly updates"),
        ("P2", "postmortem", "1w", None, 310, "within 1 week for P2/P3"),
        ("P3", "acknowledge", "4h", "business-hours", 64,
         "Response Time: < 4 hours (business hours)"),
        ("P3", "resolve", "1w", None, 65, "Resolution Target: < 1 week"),
        ("P3", "update", "1d", None, 67, "Communication: Daily updates"),
        ("P3", "postmortem", "1w", None, 310, "within 1 week for P2/P3"),
    ],
}  # fmt: skip

# (severity rule, annotation, bound, value, plan line, the plan's words)
THRESHOLD_PLAN: dict[str, list[tuple[str, str, str, float, int, str]]] = {
    "llm-marketplace": [
        ("p1-error-rate", "error_rate_percent", "at_least", 50, 92,
         "Discovery service returning 50% errors"),
        ("p1-search-latency", "latency_seconds", "above", 5, 93, "Search latency > 5 seconds"),
        ("p1-certificate-expiry", "expires_in_hours", "at_most", 24, 96,
         "Certificate expiring within 24 hours"),
    ],
    "schema-registry": [
        ("p1-error-rate", "error_rate_percent", "above", 10, 29, "Error rate > 10%"),
        ("p1-latency", "latency_ratio", "above", 10, 30, "Latency > 10x normal"),
        ("p2-error-rate", "error_rate_percent", "at_least", 5, 44, "Error rate 5-10%"),
        ("p2-latency", "latency_ratio", "at_least", 3, 45, "Latency 3-10x normal"),
        ("p3-error-rate", "error_rate_percent", "at_least", 1, 59, "Error rate 1-5%"),
        ("p3-latency", "latency_ratio", "at_least", 2, 60, "Latency 2-3x normal"),
    ],
}  # fmt: skip

_CITATION = re.compile(r'#\s*l\.(\d+)(?:-\d+)?\s+"([^"]+)"')


def _rules(preset: str) -> RuleSet:
    return load_rules(RULES / f"{preset}.yaml")


def _citation(preset: str, loc: tuple[str | int, ...]) -> tuple[int, str]:
    """The ``# l.N "words"`` comment on the value's line, or on the line just above it."""
    path = RULES / f"{preset}.yaml"
    position = load_yaml(path).position(loc)
    assert position is not None, loc
    lines = path.read_text(encoding="utf-8").splitlines()
    line = position[0] - 1
    for text in (lines[line], lines[line - 1]):
        if found := _CITATION.search(text):
            return int(found[1]), found[2]
    raise AssertionError(f"{preset}.yaml line {line + 1}: {lines[line]!r} cites no plan line")


@pytest.mark.parametrize("preset", sorted(SLA_PLAN))
def test_every_sla_target_is_the_plans(preset: str) -> None:
    rules = _rules(preset)
    expected = {(sev, sla): (parse_duration(v), cal) for sev, sla, v, cal, _, _ in SLA_PLAN[preset]}
    got = {
        (policy.name, sla): (getattr(policy.sla, sla), policy.sla.calendar(sla))
        for policy in rules.severities
        for sla in SLAS
        if getattr(policy.sla, sla) is not None
    }
    # Equal sets: a target the plan never sets (an invented one) fails too.
    assert got == expected


@pytest.mark.parametrize("preset", sorted(SLA_PLAN))
def test_every_sla_target_cites_its_plan_line(preset: str) -> None:
    rules = _rules(preset)
    index = {p.name: i for i, p in enumerate(rules.severities)}
    for sev, sla, _, _, line, words in SLA_PLAN[preset]:
        loc = ("severities", index[sev], "sla", sla)
        assert _citation(preset, loc) == (line, words), (sev, sla)


@pytest.mark.parametrize("preset", sorted(THRESHOLD_PLAN))
def test_every_threshold_is_the_plans_and_cites_it(preset: str) -> None:
    data = load_yaml(RULES / f"{preset}.yaml").data
    rules = {r["name"]: (i, r) for i, r in enumerate(data["severity_rules"])}
    numeric = {
        name for name, (_, r) in rules.items() for c in r.get("when", []) if c.get("annotation")
    }
    assert numeric == {row[0] for row in THRESHOLD_PLAN[preset]}, "a threshold without its row"
    for name, annotation, bound, value, line, words in THRESHOLD_PLAN[preset]:
        index, rule = rules[name]
        (condition,) = rule["when"]
        assert (condition["annotation"], condition[bound]) == (annotation, value), name
        assert _citation(preset, ("severity_rules", index, "when", 0)) == (line, words), name


def test_schema_registry_has_no_detection_target() -> None:
    """The plan never sets one: nothing may breach on detection, nor say so in the review."""
    rules = _rules("schema-registry")
    assert all(p.sla.detect is None for p in rules.severities)


def test_schema_registry_business_hours_default_to_weekdays_9_to_17_utc() -> None:
    rules = _rules("schema-registry")
    (interval,) = rules.spec.time_intervals
    (entry,) = interval.time_intervals
    assert entry.weekdays == ["monday:friday"]
    assert [(t.start_time, t.end_time) for t in entry.times] == [("09:00", "17:00")]
    assert entry.location == "UTC"
    # The one place: both business-hours targets name the one calendar.
    (calendar,) = rules.spec.calendars
    assert calendar.active_time_intervals == [interval.name]
    target = rules.policy("P2").clocks.acknowledge
    assert target is not None
    friday = datetime(2026, 11, 27, 16, 30, tzinfo=UTC).timestamp()
    monday = datetime(2026, 11, 30, 9, 30, tzinfo=UTC).timestamp()
    assert target.deadline(friday) == monday
