"""Post-incident reviews: SLA verdicts and both plans' templates, pre-filled from real events."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.incidents import AlertState, Incident, State, TimelineEvent
from sidecar.postmortem import affected_services, cell, render_postmortem
from sidecar.rules import RuleSet, load_rules
from sidecar.sla.verdict import SlaResult, sla_report
from tests.conftest import DATA

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
T0 = 1_700_038_800.0  # 2023-11-15 09:00:00 UTC
MIN = 60.0
HOUR = 3600.0
DAY = 86400.0


@pytest.fixture(scope="module")
def presets() -> dict[str, RuleSet]:
    return {
        "llm-marketplace": load_rules(RULES_DIR / "llm-marketplace.yaml"),
        "schema-registry": load_rules(RULES_DIR / "schema-registry.yaml"),
        "mini": load_rules(DATA / "rules-mini.yaml"),
    }


def incident(
    *,
    severity: str = "P0",
    state: State = "resolved",
    started: float = T0,
    triggered: float = T0 + MIN,
    acknowledged: float | None = T0 + 3 * MIN,
    acknowledged_by: str | None = "alice",
    resolved: float | None = T0 + 40 * MIN,
    last_update: float | None = None,
    title: str = "ServiceDown: publishing is down",
    labels: dict[str, str] | None = None,
    alerts: list[AlertState] | None = None,
) -> Incident:
    """An incident with plausible defaults: a P0 resolved within every SLA."""
    alert_list = alerts or [
        AlertState(
            "a1b2c3d4e5f60718",
            "resolved" if resolved is not None else "firing",
            started,
            resolved,
            severity,
            {"alertname": "ServiceDown", "service": "publishing"},
            "http://prometheus:9090/graph?g0.expr=up%3D%3D0",
        )
    ]
    return Incident(
        id="0123456789abcdef",
        key='{}:{alertname="ServiceDown"}',
        group_key='{}:{alertname="ServiceDown"}',
        receiver="sidecar",
        state=state if resolved is None else "resolved",
        severity=severity,
        team="publishing",
        title=title,
        labels=labels if labels is not None else {"alertname": "ServiceDown"},
        external_url="http://alertmanager:9093",
        started_at=started,
        triggered_at=triggered,
        acknowledged_at=acknowledged,
        acknowledged_by=acknowledged_by if acknowledged is not None else None,
        acknowledge_source="api" if acknowledged is not None else None,
        resolved_at=resolved,
        resolve_source="alertmanager" if resolved is not None else None,
        last_update_at=last_update,
        alerts={a.fingerprint: a for a in alert_list},
    )


def ev(
    seq: int,
    at: float,
    kind: str,
    message: str = "",
    *,
    source: str = "api",
    actor: str | None = None,
    data: dict[str, Any] | None = None,
) -> TimelineEvent:
    return TimelineEvent("0123456789abcdef", seq, at, kind, source, actor, message, data or {})


def events_for(inc: Incident, *updates: float) -> list[TimelineEvent]:
    """The timeline the incident book would have written, with status updates at ``updates``."""
    out = [
        ev(1, inc.triggered_at, "opened", f"{inc.severity} incident opened", source="alertmanager")
    ]
    if inc.acknowledged_at is not None:
        out.append(
            ev(2, inc.acknowledged_at, "acknowledged", "acknowledged by alice", actor="alice")
        )
    for i, at in enumerate(updates):
        out.append(ev(10 + i, at, "status_update", f"update {i + 1}", actor="alice"))
    if inc.resolved_at is not None:
        out.append(
            ev(99, inc.resolved_at, "resolved", "all alerts resolved", source="alertmanager")
        )
    return out


def verdicts(results: list[SlaResult]) -> dict[str, tuple[str, float | None, float | None]]:
    return {r.name: (r.status, r.actual_seconds, r.deadline) for r in results}


# -- sla_report --------------------------------------------------------------


@dataclass
class SlaCase:
    """One incident and the verdict expected for each SLA of its severity."""

    id: str
    preset: str
    incident: Incident
    now: float
    expected: dict[str, tuple[str, float | None, float | None]]
    updates: tuple[float, ...] = ()
    extra_events: list[TimelineEvent] = field(default_factory=list)


SLA_CASES = [
    SlaCase(
        "marketplace-p0-resolved-within-sla",
        "llm-marketplace",
        incident(),
        T0 + 2 * HOUR,
        {
            "detect": ("met", 60.0, T0 + 5 * MIN),
            "acknowledge": ("met", 120.0, T0 + MIN + 5 * MIN),
            "update": ("met", 12 * MIN, None),
            "resolve": ("met", 40 * MIN, T0 + HOUR),
            "postmortem": ("pending", None, T0 + 40 * MIN + DAY),
        },
        updates=(T0 + 10 * MIN, T0 + 22 * MIN, T0 + 34 * MIN),
    ),
    SlaCase(
        "marketplace-p1-breached-on-acknowledge",
        "llm-marketplace",
        incident(severity="P1", acknowledged=T0 + MIN + 20 * MIN, resolved=T0 + 2 * HOUR),
        T0 + 3 * HOUR,
        {
            "detect": ("met", 60.0, T0 + 10 * MIN),
            "acknowledge": ("breached", 20 * MIN, T0 + MIN + 15 * MIN),
            "update": ("met", 25 * MIN, None),
            "resolve": ("met", 2 * HOUR, T0 + 4 * HOUR),
            "postmortem": ("pending", None, T0 + 2 * HOUR + 3 * DAY),
        },
        updates=tuple(T0 + MIN + k * 25 * MIN for k in range(1, 5)),
    ),
    SlaCase(
        "schema-registry-p1-breached-on-acknowledge",
        "schema-registry",
        incident(severity="P1", acknowledged=T0 + MIN + 16 * MIN, resolved=T0 + 25 * MIN),
        T0 + HOUR,
        {
            "acknowledge": ("breached", 16 * MIN, T0 + 16 * MIN),
            "update": ("met", 24 * MIN, None),
            "resolve": ("met", 25 * MIN, T0 + 4 * HOUR),
            "postmortem": ("pending", None, T0 + 25 * MIN + 2 * DAY),
        },
    ),
    SlaCase(
        "acknowledged-exactly-at-the-deadline-is-met",
        "llm-marketplace",
        incident(acknowledged=T0 + MIN + 5 * MIN, resolved=T0 + 10 * MIN),
        T0 + HOUR,
        {
            "detect": ("met", 60.0, T0 + 5 * MIN),
            "acknowledge": ("met", 5 * MIN, T0 + 6 * MIN),
            "update": ("met", 9 * MIN, None),
            "resolve": ("met", 10 * MIN, T0 + HOUR),
            "postmortem": ("pending", None, T0 + 10 * MIN + DAY),
        },
    ),
    SlaCase(
        "open-incident-everything-pending",
        "llm-marketplace",
        incident(state="triggered", acknowledged=None, resolved=None),
        T0 + 4 * MIN,
        {
            "detect": ("met", 60.0, T0 + 5 * MIN),
            "acknowledge": ("pending", None, T0 + 6 * MIN),
            "update": ("pending", 3 * MIN, T0 + 16 * MIN),
            "resolve": ("pending", None, T0 + HOUR),
            "postmortem": ("pending", None, None),
        },
    ),
    SlaCase(
        "open-incident-breaches-as-soon-as-deadlines-pass",
        "llm-marketplace",
        incident(state="triggered", acknowledged=None, resolved=None),
        T0 + 2 * HOUR,
        {
            "detect": ("met", 60.0, T0 + 5 * MIN),
            "acknowledge": ("breached", None, T0 + 6 * MIN),
            "update": ("breached", 2 * HOUR - MIN, T0 + 16 * MIN),
            "resolve": ("breached", None, T0 + HOUR),
            "postmortem": ("pending", None, None),
        },
    ),
    SlaCase(
        "resolved-before-acknowledged-within-the-deadline",
        "llm-marketplace",
        incident(acknowledged=None, resolved=T0 + 4 * MIN),
        T0 + DAY / 2,
        {
            "detect": ("met", 60.0, T0 + 5 * MIN),
            "acknowledge": ("not_applicable", None, T0 + 6 * MIN),
            "update": ("met", 3 * MIN, None),
            "resolve": ("met", 4 * MIN, T0 + HOUR),
            "postmortem": ("pending", None, T0 + 4 * MIN + DAY),
        },
    ),
    SlaCase(
        "resolved-unacknowledged-after-the-deadline",
        "llm-marketplace",
        incident(acknowledged=None, resolved=T0 + 10 * MIN),
        T0 + HOUR,
        {
            "detect": ("met", 60.0, T0 + 5 * MIN),
            "acknowledge": ("breached", None, T0 + 6 * MIN),
            "update": ("met", 9 * MIN, None),
            "resolve": ("met", 10 * MIN, T0 + HOUR),
            "postmortem": ("pending", None, T0 + 10 * MIN + DAY),
        },
    ),
    SlaCase(
        "late-detection-and-late-resolution",
        "llm-marketplace",
        incident(triggered=T0 + 7 * MIN, acknowledged=T0 + 8 * MIN, resolved=T0 + 90 * MIN),
        T0 + 2 * HOUR,
        {
            "detect": ("breached", 7 * MIN, T0 + 5 * MIN),
            "acknowledge": ("met", MIN, T0 + 12 * MIN),
            "update": ("met", 15 * MIN, None),
            "resolve": ("breached", 90 * MIN, T0 + HOUR),
            "postmortem": ("pending", None, T0 + 90 * MIN + DAY),
        },
        updates=tuple(T0 + 7 * MIN + k * 15 * MIN for k in range(1, 6)),
    ),
    SlaCase(
        "review-overdue-counts-as-a-breach",
        "llm-marketplace",
        incident(),
        T0 + 40 * MIN + DAY + 1,
        {
            "detect": ("met", 60.0, T0 + 5 * MIN),
            "acknowledge": ("met", 120.0, T0 + 6 * MIN),
            "update": ("met", 13 * MIN, None),
            "resolve": ("met", 40 * MIN, T0 + HOUR),
            "postmortem": ("breached", None, T0 + 40 * MIN + DAY),
        },
        updates=(T0 + 14 * MIN, T0 + 27 * MIN),
    ),
    SlaCase(
        "review-done-in-time",
        "llm-marketplace",
        incident(severity="P2", resolved=T0 + 40 * MIN),
        T0 + 30 * DAY,
        {
            "detect": ("met", 60.0, T0 + 30 * MIN),
            "acknowledge": ("met", 120.0, T0 + 61 * MIN),
            "update": ("met", 39 * MIN, None),
            "resolve": ("met", 40 * MIN, T0 + DAY),
            "postmortem": ("met", 6 * DAY, T0 + 40 * MIN + 7 * DAY),
        },
        extra_events=[ev(50, T0 + 40 * MIN + 6 * DAY, "postmortem_done", "review held")],
    ),
    SlaCase(
        "review-done-late",
        "schema-registry",
        incident(),
        T0 + 30 * DAY,
        {
            "acknowledge": ("met", 120.0, T0 + 6 * MIN),
            "update": ("met", 13 * MIN, None),
            "resolve": ("met", 40 * MIN, T0 + HOUR),
            "postmortem": ("breached", 2 * DAY, T0 + 40 * MIN + DAY),
        },
        updates=(T0 + 14 * MIN, T0 + 27 * MIN),
        extra_events=[ev(50, T0 + 40 * MIN + 2 * DAY, "postmortem_done", "review held")],
    ),
    SlaCase(
        "firing-notification-missed-leaves-detection-unknown",
        "llm-marketplace",
        incident(triggered=T0 + 2 * HOUR, acknowledged=None, resolved=T0 + 20 * MIN),
        T0 + 2 * HOUR,
        {
            "detect": ("not_applicable", None, T0 + 5 * MIN),
            "acknowledge": ("not_applicable", None, T0 + 2 * HOUR + 5 * MIN),
            "update": ("met", 0.0, None),
            "resolve": ("met", 20 * MIN, T0 + HOUR),
            "postmortem": ("pending", None, T0 + 20 * MIN + DAY),
        },
        extra_events=[
            ev(1, T0 + 2 * HOUR, "opened", data={"firing_notification_missed": True}),
        ],
    ),
    SlaCase(
        "marketplace-p3-sets-no-review",
        "llm-marketplace",
        incident(severity="P3", resolved=T0 + HOUR),
        T0 + 30 * DAY,
        {
            "detect": ("met", 60.0, T0 + 2 * HOUR),
            "acknowledge": ("met", 120.0, T0 + MIN + 4 * HOUR),
            "update": ("met", 59 * MIN, None),
            "resolve": ("met", HOUR, T0 + 7 * DAY),
        },
    ),
    SlaCase(
        "schema-registry-p4-has-no-sla",
        "schema-registry",
        incident(severity="P4", state="triggered", acknowledged=None, resolved=None),
        T0 + 30 * DAY,
        {},
    ),
    SlaCase(
        "severity-no-longer-declared-has-no-sla",
        "schema-registry",
        incident(severity="SEV1"),
        T0 + HOUR,
        {},
    ),
]


@pytest.mark.parametrize("case", SLA_CASES, ids=lambda c: c.id)
def test_sla_report(case: SlaCase, presets: dict[str, RuleSet]) -> None:
    timeline = events_for(case.incident, *case.updates) + case.extra_events
    results = sla_report(case.incident, timeline, presets[case.preset], case.now)
    assert [r.name for r in results] == list(case.expected)  # the plan's order
    assert verdicts(results) == case.expected


def test_review_done_can_be_given_explicitly(presets: dict[str, RuleSet]) -> None:
    inc = incident()
    rules = presets["llm-marketplace"]
    late = T0 + 40 * MIN + DAY + 1
    (review,) = [
        r for r in sla_report(inc, [], rules, late, reviewed_at=late) if r.name == "postmortem"
    ]
    assert (review.status, review.actual_seconds) == ("breached", DAY + 1)


@dataclass
class CadenceCase:
    """Status updates at given offsets from triggered_at, and the update-cadence verdict."""

    id: str
    resolved_after: float | None  # seconds after triggered_at; None while open
    now_after: float
    updates: tuple[float, ...]
    expected: tuple[str, float, float | None]  # status, longest gap, deadline (offset)
    last_update_after: float | None = None
    timeline: bool = True


# LLM-Marketplace P1: an update every 30 minutes.
CADENCE_CASES = [
    CadenceCase(
        "no-update-needed-for-a-short-incident", 20 * MIN, HOUR, (), ("met", 20 * MIN, None)
    ),
    CadenceCase(
        "regular-updates", 2 * HOUR, 3 * HOUR, (25 * MIN, 50 * MIN, 75 * MIN, 100 * MIN),
        ("met", 25 * MIN, None),
    ),
    CadenceCase(
        "a-gap-exactly-at-the-target-is-met", HOUR, 2 * HOUR, (30 * MIN,), ("met", 30 * MIN, None)
    ),
    CadenceCase(
        "the-longest-gap-in-the-middle-breaches",
        2 * HOUR, 3 * HOUR, (10 * MIN, 55 * MIN, 80 * MIN, 105 * MIN),
        ("breached", 45 * MIN, 40 * MIN),
    ),
    CadenceCase(
        "the-gap-up-to-resolution-counts",
        HOUR, 2 * HOUR, (20 * MIN,), ("breached", 40 * MIN, 50 * MIN),
    ),
    CadenceCase(
        "open-and-within-cadence", None, 50 * MIN, (20 * MIN, 45 * MIN),
        ("pending", 25 * MIN, 75 * MIN),
    ),
    CadenceCase(
        "open-with-an-update-this-very-moment", None, 50 * MIN, (20 * MIN, 50 * MIN),
        ("pending", 30 * MIN, 80 * MIN),
    ),
    CadenceCase(
        "open-and-the-current-gap-overran", None, 90 * MIN, (20 * MIN, 45 * MIN),
        ("breached", 45 * MIN, 75 * MIN),
    ),
    CadenceCase(
        "updates-outside-the-incident-are-ignored", HOUR, 2 * HOUR,
        (-10 * MIN, 20 * MIN, 40 * MIN, 3 * HOUR), ("met", 20 * MIN, None),
    ),
    CadenceCase(
        "without-a-timeline-the-last-update-still-counts", None, 50 * MIN, (),
        ("pending", 25 * MIN, 55 * MIN), last_update_after=25 * MIN, timeline=False,
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", CADENCE_CASES, ids=lambda c: c.id)
def test_update_cadence_is_the_longest_gap_between_status_updates(
    case: CadenceCase, presets: dict[str, RuleSet]
) -> None:
    triggered = T0 + MIN
    inc = incident(
        severity="P1",
        state="acknowledged",
        resolved=None if case.resolved_after is None else triggered + case.resolved_after,
        last_update=None if case.last_update_after is None else triggered + case.last_update_after,
    )
    timeline = events_for(inc, *(triggered + u for u in case.updates)) if case.timeline else []
    results = sla_report(inc, timeline, presets["llm-marketplace"], triggered + case.now_after)
    (update,) = [r for r in results if r.name == "update"]
    status, longest, deadline = case.expected
    assert update.target_seconds == 30 * MIN
    assert (update.status, update.actual_seconds) == (status, longest)
    assert update.deadline == (None if deadline is None else triggered + deadline)


def test_sla_result_json_gives_times_as_rfc3339() -> None:
    result = SlaResult("acknowledge", 300.0, 120.0, T0 + 360, "met", 120.0)
    assert result.to_json() == {
        "target_seconds": 300.0,
        "actual_seconds": 120.0,
        "elapsed_seconds": 120.0,
        "calendar": None,
        "deadline": "2023-11-15T09:06:00Z",
        "status": "met",
    }
    assert SlaResult("postmortem", 60.0, None, None, "pending").to_json()["deadline"] is None


# -- templates ---------------------------------------------------------------

MARKETPLACE_HEADINGS = [
    "# Post-Incident Review: ",
    "## Executive Summary",
    "## Timeline",
    "## Root Cause Analysis",
    "### What Happened",
    "### Why It Happened",
    "### Why We Didn't Catch It",
    "## Impact Assessment",
    "## What Went Well",
    "## What Went Wrong",
    "## Action Items",
    "## Lessons Learned",
]
MARKETPLACE_FIELDS = [
    "**Incident ID**:",
    "**Date**:",
    "**Duration**:",
    "**Severity**:",
    "**Impact**:",
    "**PIR Owner**:",
    "**Attendees**:",
]
SCHEMA_REGISTRY_HEADINGS = [
    "# Post-Incident Review: ",
    "## Summary",
    "## Timeline",
    "## Root Cause",
    "## Impact Assessment",
    "## What Went Well",
    "## What Went Wrong",
    "## Action Items",
    "## Lessons Learned",
    "## Appendices",
    "### Relevant Logs",
    "### Metrics Screenshots",
    "### Communication Log",
]
SCHEMA_REGISTRY_FIELDS = [
    "**Incident ID:**",
    "**Date:**",
    "**Severity:**",
    "**Duration:**",
    "**Impact:**",
]
GENERIC_HEADINGS = [
    "# Post-Incident Review: ",
    "## Summary",
    "## Timeline",
    "## Root Cause",
    "## Impact Assessment",
    "## What Went Well",
    "## What Went Wrong",
    "## Action Items",
    "## Lessons Learned",
]


def headings(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("#")]


def in_order(needles: list[str], lines: list[str]) -> bool:
    """Each needle starts some line, after the line the previous needle started."""
    position = 0
    for needle in needles:
        found = next((i for i in range(position, len(lines)) if lines[i].startswith(needle)), None)
        if found is None:
            return False
        position = found + 1
    return True


@pytest.mark.parametrize(
    ("preset", "template", "expected_headings", "expected_fields"),
    [
        ("llm-marketplace", None, MARKETPLACE_HEADINGS, MARKETPLACE_FIELDS),
        ("schema-registry", None, SCHEMA_REGISTRY_HEADINGS, SCHEMA_REGISTRY_FIELDS),
        ("mini", None, GENERIC_HEADINGS, SCHEMA_REGISTRY_FIELDS),
        ("mini", "llm-marketplace", MARKETPLACE_HEADINGS, MARKETPLACE_FIELDS),
        ("llm-marketplace", "schema-registry", SCHEMA_REGISTRY_HEADINGS, SCHEMA_REGISTRY_FIELDS),
        ("schema-registry", "generic", GENERIC_HEADINGS, SCHEMA_REGISTRY_FIELDS),
    ],
)
def test_each_plans_headings_and_fields_in_order(
    preset: str,
    template: Any,
    expected_headings: list[str],
    expected_fields: list[str],
    presets: dict[str, RuleSet],
) -> None:
    inc = incident()
    markdown = render_postmortem(
        inc, events_for(inc), presets[preset], template=template, now=T0 + 2 * HOUR
    )
    found = headings(markdown)
    assert in_order(expected_headings, found), found
    # The plan's own headings come once each, as no other template's do.
    for heading in expected_headings[1:]:
        assert found.count(heading) == 1, heading
    assert in_order(expected_fields, markdown.splitlines())
    assert markdown.startswith("# Post-Incident Review: ServiceDown: publishing is down\n")
    assert markdown.endswith("\n") and not markdown.endswith("\n\n")


def test_marketplace_template_not_confused_with_schema_registry(
    presets: dict[str, RuleSet],
) -> None:
    inc = incident()
    marketplace = render_postmortem(inc, [], presets["llm-marketplace"], now=T0 + HOUR)
    registry = render_postmortem(inc, [], presets["schema-registry"], now=T0 + HOUR)
    assert "## Executive Summary" in marketplace and "## Executive Summary" not in registry
    assert "## Appendices" in registry and "## Appendices" not in marketplace
    assert "**PIR Owner**: [Name]" in marketplace
    assert "- Revenue impact: [Amount or N/A]" in registry


def sla_rows(markdown: str) -> dict[str, list[str]]:
    """The SLA table as {SLA title: [target, actual, deadline, status]}."""
    lines = markdown.splitlines()
    start = lines.index("| SLA | Target | Actual | Deadline (UTC) | Status |")
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_p0_resolved_within_sla_is_prefilled(presets: dict[str, RuleSet]) -> None:
    inc = incident()
    timeline = events_for(inc, T0 + 15 * MIN, T0 + 28 * MIN)
    markdown = render_postmortem(
        inc,
        timeline,
        presets["llm-marketplace"],
        now=T0 + 2 * HOUR,
        incident_url="https://sidecar.example/api/v1/incidents/0123456789abcdef",
    )
    assert (
        "**Incident ID**: [`0123456789abcdef`]"
        "(https://sidecar.example/api/v1/incidents/0123456789abcdef)"
    ) in markdown
    assert "**Date**: 2023-11-15  \n" in markdown
    assert "**Duration**: 40m  \n" in markdown
    assert "**Severity**: P0 (Critical)  \n" in markdown
    assert "**Impact**: [User impact description]  \n" in markdown
    assert "**Owning Team**: publishing  \n" in markdown
    assert "**PIR Due**: 2023-11-16 09:40:00 UTC" in markdown
    assert "- **Detected**: 2023-11-15 09:01:00 UTC (incident declared)" in markdown
    assert "- **Acknowledged**: 2023-11-15 09:03:00 UTC" in markdown
    assert "- **Acknowledged by**: alice (api)" in markdown
    assert "- **Resolved**: 2023-11-15 09:40:00 UTC" in markdown
    assert "- **Response SLAs Breached**: none" in markdown
    assert sla_rows(markdown) == {
        "Time to detect": ["5m", "1m", "2023-11-15 09:05:00", "met"],
        "Time to acknowledge": ["5m", "2m", "2023-11-15 09:06:00", "met"],
        "Status update cadence (longest gap)": ["15m", "14m", "—", "met"],
        "Time to resolve": ["1h", "40m", "2023-11-15 10:00:00", "met"],
        "Post-incident review": ["1d", "—", "2023-11-16 09:40:00", "pending"],
    }


def test_p1_breached_on_acknowledge_is_reported(presets: dict[str, RuleSet]) -> None:
    inc = incident(severity="P1", acknowledged=T0 + 21 * MIN, resolved=T0 + 50 * MIN)
    timeline = events_for(inc, T0 + 25 * MIN)
    registry = render_postmortem(inc, timeline, presets["schema-registry"], now=T0 + HOUR)
    assert sla_rows(registry)["Time to acknowledge"] == [
        "15m", "20m", "2023-11-15 09:16:00", "**breached**",
    ]  # fmt: skip
    assert "- SLA breach: Yes (acknowledge)" in registry
    assert "**Severity:** P1 (High)  \n" in registry
    assert "**Review Due:** 2023-11-17 09:50:00 UTC" in registry  # 48 h in this plan
    marketplace = render_postmortem(inc, timeline, presets["llm-marketplace"], now=T0 + HOUR)
    assert sla_rows(marketplace)["Time to acknowledge"][3] == "**breached**"
    assert "- **Response SLAs Breached**: acknowledge" in marketplace
    assert "**PIR Due**: 2023-11-18 09:50:00 UTC" in marketplace  # 3 days in this plan


def test_no_breach_says_no(presets: dict[str, RuleSet]) -> None:
    inc = incident()
    timeline = events_for(inc, T0 + 14 * MIN, T0 + 27 * MIN)
    registry = render_postmortem(inc, timeline, presets["schema-registry"], now=T0 + HOUR)
    assert "- SLA breach: No" in registry
    # Without those status updates the 39-minute silence breaches the 15-minute cadence.
    silent = render_postmortem(inc, events_for(inc), presets["schema-registry"], now=T0 + HOUR)
    assert "- SLA breach: Yes (update cadence)" in silent


def test_open_incident_is_ongoing_with_pending_slas(presets: dict[str, RuleSet]) -> None:
    inc = incident(state="triggered", acknowledged=None, resolved=None)
    markdown = render_postmortem(inc, events_for(inc), presets["llm-marketplace"], now=T0 + 4 * MIN)
    assert "**Duration**: ongoing (4m so far)" in markdown
    assert "- **Acknowledged**: not yet" in markdown
    assert "- **Resolved**: not yet" in markdown
    assert "**PIR Due**" not in markdown
    rows = sla_rows(markdown)
    assert rows["Time to detect"][3] == "met"
    assert rows["Time to acknowledge"] == ["5m", "—", "2023-11-15 09:06:00", "pending"]
    assert rows["Status update cadence (longest gap)"] == [
        "15m", "3m so far", "2023-11-15 09:16:00", "pending",
    ]  # fmt: skip
    assert rows["Time to resolve"][1:] == ["—", "2023-11-15 10:00:00", "pending"]
    assert rows["Post-incident review"] == ["1d", "—", "—", "pending"]


def test_overdue_review_and_completed_review(presets: dict[str, RuleSet]) -> None:
    inc = incident()
    rules = presets["llm-marketplace"]
    overdue = render_postmortem(inc, events_for(inc), rules, now=T0 + 2 * DAY)
    assert "**PIR Due**: 2023-11-16 09:40:00 UTC (overdue)" in overdue
    assert sla_rows(overdue)["Post-incident review"][3] == "**breached**"
    done = [*events_for(inc), ev(100, T0 + 10 * HOUR, "postmortem_done", "review held")]
    in_time = render_postmortem(inc, done, rules, now=T0 + 2 * DAY)
    assert "**PIR Due**: 2023-11-16 09:40:00 UTC (done in time)" in in_time
    assert sla_rows(in_time)["Post-incident review"] == [
        "1d", "9h 20m", "2023-11-16 09:40:00", "met",
    ]  # fmt: skip


def test_slas_the_plan_does_not_set_are_shown_as_such(presets: dict[str, RuleSet]) -> None:
    inc = incident(severity="P3", resolved=T0 + HOUR)
    rows = sla_rows(render_postmortem(inc, [], presets["llm-marketplace"], now=T0 + 2 * HOUR))
    assert rows["Post-incident review"] == ["no target in the plan", "—", "—", "not applicable"]
    inc = incident(severity="P4", resolved=T0 + HOUR)
    rows = sla_rows(render_postmortem(inc, [], presets["schema-registry"], now=T0 + 2 * HOUR))
    assert {row[0] for row in rows.values()} == {"no target in the plan"}


def test_undeclared_severity_renders_without_sla(presets: dict[str, RuleSet]) -> None:
    inc = incident(severity="SEV1")
    markdown = render_postmortem(inc, [], presets["llm-marketplace"], now=T0 + HOUR)
    assert "**Severity**: SEV1 (not a severity of the llm-marketplace plan)" in markdown
    assert "no SLA applies" in markdown
    assert "| SLA | Target |" not in markdown


# -- affected services -------------------------------------------------------


def state(fp: str, labels: dict[str, str]) -> AlertState:
    return AlertState(fp, "firing", T0, None, "P1", {"alertname": "X", **labels})


@pytest.mark.parametrize(
    ("group_labels", "alert_labels", "expected", "line"),
    [
        (
            {},
            [{"service": "publishing"}, {"service": "discovery"}, {"service": "publishing"}],
            {"service": ["discovery", "publishing"]},
            "service: discovery, publishing",
        ),
        (
            {"namespace": "llm-marketplace"},
            [
                {"service": "discovery", "component": "search", "job": "discovery-api"},
                {"component": "redis", "instance": "10.0.0.7:6379", "pod": "redis-0"},
            ],
            {
                "service": ["discovery"],
                "component": ["redis", "search"],
                "job": ["discovery-api"],
                "namespace": ["llm-marketplace"],
            },
            "service: discovery; component: redis, search; job: discovery-api; "
            "namespace: llm-marketplace",
        ),
        ({}, [{"service": ""}, {"instance": "a:1"}], {}, "[Affected services]"),
    ],
    ids=["distinct-services", "every-kind-of-label", "none-known"],
)
def test_affected_services_from_alert_labels(
    group_labels: dict[str, str],
    alert_labels: list[dict[str, str]],
    expected: dict[str, list[str]],
    line: str,
    presets: dict[str, RuleSet],
) -> None:
    alerts = [state(f"{i:016x}", labels) for i, labels in enumerate(alert_labels)]
    inc = incident(state="triggered", resolved=None, labels=group_labels, alerts=alerts)
    assert affected_services(inc) == expected
    markdown = render_postmortem(inc, [], presets["llm-marketplace"], now=T0 + HOUR)
    assert f"**Affected Services**: {line}  \n" in markdown
    assert "10.0.0.7" not in markdown.split("## Timeline")[0]


# -- timeline and escaping -----------------------------------------------------


def timeline_rows(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    start = lines.index("| Time (UTC) | Event | Source | Actor |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_timeline_table_from_real_events_in_time_order(presets: dict[str, RuleSet]) -> None:
    inc = incident(acknowledged=T0 + 3 * MIN, resolved=T0 + 40 * MIN)
    timeline = [
        ev(1, T0 + MIN, "opened", "P0 incident opened: ServiceDown", source="alertmanager"),
        ev(
            2,
            T0 + 3 * MIN,
            "acknowledged",
            "acknowledged by alice",
            source="pagerduty",
            actor="alice",
        ),
        ev(3, T0 + 20 * MIN, "status_update", "rolled back", actor="bob"),
        # Arrives after the update but happened before it (resolution is the alerts' endsAt).
        ev(5, T0 + 40 * MIN, "resolved", "all alerts resolved", source="alertmanager"),
        ev(4, T0 + 20 * MIN, "escalated", "", source="sidecar"),
    ]
    markdown = render_postmortem(inc, timeline, presets["llm-marketplace"], now=T0 + HOUR)
    assert timeline_rows(markdown) == [
        "| 09:00:00 | First alert started firing | alertmanager | — |",
        "| 09:01:00 | P0 incident opened: ServiceDown | alertmanager | — |",
        "| 09:03:00 | acknowledged by alice | pagerduty | alice |",
        "| 09:20:00 | rolled back | api | bob |",
        "| 09:20:00 | escalated | sidecar | — |",
        "| 09:40:00 | all alerts resolved | alertmanager | — |",
    ]


def test_timeline_spanning_days_shows_dates(presets: dict[str, RuleSet]) -> None:
    start = T0 + 14 * HOUR + 30 * MIN  # 23:30 UTC
    inc = incident(
        severity="P2", started=start, triggered=start + MIN, acknowledged=start + 40 * MIN,
        resolved=start + 2 * HOUR,
    )  # fmt: skip
    markdown = render_postmortem(inc, events_for(inc), presets["schema-registry"], now=start + DAY)
    rows = timeline_rows(markdown)
    assert rows[0].startswith("| 2023-11-15 23:30:00 | First alert started firing |")
    assert rows[-1].startswith("| 2023-11-16 01:30:00 | all alerts resolved |")
    assert "**Duration:** 2h  \n" in markdown
    assert "**Date:** 2023-11-15  \n" in markdown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a | b", "a \\| b"),
        ("line one\nline two", "line one<br>line two"),
        ("crlf\r\nand cr\rend", "crlf<br>and cr<br>end"),
        ("back\\slash | pipe", "back\\\\slash \\| pipe"),
        ("already \\| escaped", "already \\\\\\| escaped"),
        ("<script>alert(1)</script>", "\\<script\\>alert(1)\\</script\\>"),
        ("  padded \n", "padded"),
        ("", "—"),
    ],
)
def test_cell_escaping(text: str, expected: str) -> None:
    assert cell(text) == expected


def unescaped_pipes(line: str) -> int:
    """Pipes that delimit cells: those not preceded by an odd number of backslashes."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))


def test_hostile_text_cannot_break_the_tables_or_the_heading(presets: dict[str, RuleSet]) -> None:
    inc = incident(title="Disk | full\n# injected heading")
    hostile = "err | 500\nsecond line \\| still one cell\n| Time (UTC) | fake |"
    timeline = [
        ev(1, T0 + MIN, "opened", "opened", source="alertmanager"),
        ev(2, T0 + 10 * MIN, "status_update", hostile, actor="mallory | admin\nroot"),
    ]
    markdown = render_postmortem(inc, timeline, presets["schema-registry"], now=T0 + HOUR)
    assert markdown.splitlines()[0] == "# Post-Incident Review: Disk \\| full # injected heading"
    assert "# injected heading" not in headings(markdown)[1:]
    rows = timeline_rows(markdown)
    assert len(rows) == 3  # started, opened, the update: one line each
    assert [unescaped_pipes(row) for row in rows] == [5, 5, 5]
    assert rows[2] == (
        "| 09:10:00 | err \\| 500<br>second line \\\\\\| still one cell<br>"
        "\\| Time (UTC) \\| fake \\| | api | mallory \\| admin<br>root |"
    )


def test_links_cannot_escape_their_parentheses(presets: dict[str, RuleSet]) -> None:
    alert = AlertState(
        "00000000000000aa", "firing", T0, None, "P0", {"alertname": "X"},
        "http://prom/graph?g0.expr=rate(x[5m]) > 1",
    )  # fmt: skip
    inc = incident(state="triggered", resolved=None, alerts=[alert])
    markdown = render_postmortem(
        inc, [], presets["llm-marketplace"], now=T0 + MIN, incident_url="http://s/x) [y](z"
    )
    assert "[`0123456789abcdef`](http://s/x%29%20[y]%28z)" in markdown
    assert "[graph](http://prom/graph?g0.expr=rate%28x[5m]%29%20%3E%201)" in markdown


def test_schema_registry_review_reports_no_detection_target(
    presets: dict[str, RuleSet],
) -> None:
    """The plan sets no time to detect: a late detection is no breach, in the table or below."""
    inc = incident(
        severity="P1", triggered=T0 + 20 * MIN, acknowledged=T0 + 25 * MIN, resolved=T0 + 50 * MIN
    )
    markdown = render_postmortem(
        inc, events_for(inc, T0 + 45 * MIN), presets["schema-registry"], now=T0 + HOUR
    )
    assert sla_rows(markdown)["Time to detect"] == [
        "no target in the plan", "—", "—", "not applicable",
    ]  # fmt: skip
    assert "- SLA breach: No" in markdown


def test_review_shows_a_business_time_target_with_wall_and_business_time(
    presets: dict[str, RuleSet],
) -> None:
    """P2 acknowledged the next morning: 16h 50m on the wall clock, 50m of business hours."""
    inc = incident(
        severity="P2",
        started=T0 + 7 * HOUR + 30 * MIN,  # Wednesday 16:30 UTC
        triggered=T0 + 7 * HOUR + 30 * MIN,
        acknowledged=T0 + DAY + 20 * MIN,  # Thursday 09:20
        resolved=T0 + DAY + 30 * MIN,
    )
    timeline = events_for(inc, *(T0 + 8 * HOUR + k * HOUR for k in range(17)))
    markdown = render_postmortem(inc, timeline, presets["schema-registry"], now=T0 + 2 * DAY)
    assert sla_rows(markdown)["Time to acknowledge"] == [
        "1h of business time (business-hours)",
        "16h 50m (50m of business time)",
        "2023-11-16 09:30:00",
        "met",
    ]
    assert "- SLA breach: No" in markdown
