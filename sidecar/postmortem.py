"""Post-incident reviews: the plan's review template, pre-filled.

Each SLA's verdict comes from :func:`sidecar.sla.verdict.sla_report`, the one
implementation of "was this SLA met?". :func:`render_postmortem` fills the
post-incident review template of the plan in use (the LLM-Marketplace "PIR
Template", the Schema Registry "Post-Mortem Template", or a generic one close
to both) with everything the sidecar knows: title, times, severity, affected
services, the timeline table from the real events and the SLA table. The
sections only people can write (root cause, what went well or wrong, action
items, lessons) keep the plan's headings with placeholders.

Everything here is pure: times are UTC epoch seconds and ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

from sidecar.incidents import Incident, TimelineEvent
from sidecar.rules import RuleSet, SeverityPolicy
from sidecar.sla.verdict import (
    SLA_NAMES,
    SLA_TITLES,
    SlaName,
    SlaResult,
    SlaStatus,
    sla_report,
)

Template = Literal["llm-marketplace", "schema-registry", "generic"]

_SHORT_NAMES: Mapping[SlaName, str] = {
    "detect": "detect",
    "acknowledge": "acknowledge",
    "update": "update cadence",
    "resolve": "resolve",
    "postmortem": "post-incident review",
}

AFFECTED_LABELS = ("service", "component", "job", "namespace")
"""Alert labels that name what an incident affected, in the order they are shown."""

_TEMPLATE_OF_PRESET: Mapping[str, Template] = {
    "llm-marketplace": "llm-marketplace",
    "schema-registry": "schema-registry",
}
_NOT_YET = "—"


def affected_services(incident: Incident) -> dict[str, list[str]]:
    """Distinct values of :data:`AFFECTED_LABELS` across the incident and its alerts."""
    label_sets = [incident.labels, *(a.labels for a in incident.alerts.values())]
    found: dict[str, list[str]] = {}
    for key in AFFECTED_LABELS:
        values = sorted({labels[key] for labels in label_sets if labels.get(key)})
        if values:
            found[key] = values
    return found


def render_postmortem(
    incident: Incident,
    timeline: Sequence[TimelineEvent],
    rules: RuleSet,
    *,
    template: Template | None = None,
    now: float,
    incident_url: str | None = None,
) -> str:
    """The post-incident review of ``incident`` as Markdown, in its plan's template."""
    chosen = template or _TEMPLATE_OF_PRESET.get(rules.name, "generic")
    facts = _Facts.gather(incident, timeline, rules, now, incident_url)
    if chosen == "llm-marketplace":
        lines = _marketplace(facts)
    elif chosen == "schema-registry":
        lines = _schema_registry(facts)
    else:
        lines = _generic(facts)
    return "\n".join(lines).rstrip("\n") + "\n"


# -- what the templates are filled with ------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    """Every pre-filled piece of a review, already rendered as Markdown."""

    title: str
    incident_id: str
    date: str
    duration: str
    severity: str
    team: str
    affected: str | None
    key_times: list[str]
    timeline: list[str]
    alerts: list[str]
    slas: list[str]
    breached: list[str]
    review_due: str | None

    @classmethod
    def gather(
        cls,
        inc: Incident,
        timeline: Sequence[TimelineEvent],
        rules: RuleSet,
        now: float,
        incident_url: str | None,
    ) -> _Facts:
        """Work out and render each fact once, for whichever template."""
        policy = _policy(rules, inc.severity)
        report = sla_report(inc, timeline, rules, now)
        by_name = {r.name: r for r in report}
        review = by_name.get("postmortem")
        link = None if incident_url is None else _link_target(incident_url)
        if inc.resolved_at is not None:
            duration = _duration(inc.resolved_at - inc.started_at)
        else:
            duration = f"ongoing ({_duration(now - inc.started_at)} so far)"
        affected = affected_services(inc)
        return cls(
            title=_inline(inc.title) or "[Incident Title]",
            incident_id=f"[`{inc.id}`]({link})" if link else f"`{inc.id}`",
            date=_date(inc.started_at),
            duration=duration,
            severity=(
                f"{_inline(inc.severity)} ({_inline(policy.title)})"
                if policy
                else f"{_inline(inc.severity)} (not a severity of the {_inline(rules.name)} plan)"
            ),
            team=_inline(inc.team),
            affected=(
                "; ".join(
                    f"{key}: {', '.join(_inline(v) for v in values)}"
                    for key, values in affected.items()
                )
                or None
            ),
            key_times=_key_times(inc, timeline),
            timeline=_timeline_table(inc, timeline),
            alerts=_alerts_table(inc),
            slas=_sla_table(report, policy, now),
            breached=[_SHORT_NAMES[r.name] for r in report if r.status == "breached"],
            review_due=_review_due(review),
        )


def _review_due(review: SlaResult | None) -> str | None:
    if review is None or review.deadline is None:
        return None
    done = review.actual_seconds is not None
    note = {
        ("met", True): " (done in time)",
        ("breached", True): " (done late)",
        ("breached", False): " (overdue)",
    }.get((review.status, done), "")
    return _timestamp(review.deadline) + note


def _policy(rules: RuleSet, severity: str) -> SeverityPolicy | None:
    try:
        return rules.policy(severity)
    except KeyError:
        return None


def _key_times(inc: Incident, timeline: Sequence[TimelineEvent]) -> list[str]:
    missed = any(
        e.kind == "opened" and e.data.get("firing_notification_missed") is True for e in timeline
    )
    detected = (
        "unknown: the firing notification never reached the sidecar"
        if missed
        else f"{_timestamp(inc.triggered_at)} (incident declared)"
    )
    if inc.acknowledged_at is None:
        acknowledged = "not acknowledged" if inc.resolved_at is not None else "not yet"
    else:
        acknowledged = _timestamp(inc.acknowledged_at)
    return [
        f"- **Started**: {_timestamp(inc.started_at)} (first alert fired)",
        f"- **Detected**: {detected}",
        f"- **Acknowledged**: {acknowledged}",
        f"- **Acknowledged by**: {_who(inc.acknowledged_by, inc.acknowledge_source)}",
        "- **Resolved**: "
        + (_timestamp(inc.resolved_at) if inc.resolved_at is not None else "not yet"),
        f"- **Resolved by**: {_who(inc.resolved_by, inc.resolve_source)}",
    ]


def _who(actor: str | None, source: str | None) -> str:
    if actor is None and source is None:
        return _NOT_YET
    if actor is None:
        return _inline(source or "")
    return _inline(actor) + (f" ({_inline(source)})" if source else "")


def _timeline_table(inc: Incident, timeline: Sequence[TimelineEvent]) -> list[str]:
    """The real events, oldest first, led by the moment the first alert fired."""
    rows: list[tuple[float, int, str, str, str]] = [
        (inc.started_at, -1, "First alert started firing", "alertmanager", _NOT_YET)
    ]
    for e in timeline:
        rows.append((e.at, e.seq, e.message or e.kind, e.source, e.actor or _NOT_YET))
    rows.sort(key=lambda row: (row[0], row[1]))
    with_date = len({_date(row[0]) for row in rows}) > 1
    out = ["| Time (UTC) | Event | Source | Actor |", "|------------|-------|--------|-------|"]
    for at, _, message, source, actor in rows:
        time = _timestamp(at, zone=False) if with_date else _clock(at)
        out.append(f"| {time} | {cell(message)} | {cell(source)} | {cell(actor)} |")
    return out


def _alerts_table(inc: Incident) -> list[str]:
    out = [
        "| Alert | Severity | Status | Started (UTC) | Ended (UTC) | Source |",
        "|-------|----------|--------|---------------|-------------|--------|",
    ]
    for a in sorted(inc.alerts.values(), key=lambda a: (a.starts_at, a.fingerprint)):
        name = a.labels.get("alertname", a.fingerprint)
        ended = _timestamp(a.ends_at, zone=False) if a.ends_at is not None else _NOT_YET
        source = f"[graph]({_link_target(a.generator_url)})" if a.generator_url else _NOT_YET
        out.append(
            f"| {cell(name)} | {cell(a.severity)} | {a.status} "
            f"| {_timestamp(a.starts_at, zone=False)} | {ended} | {source} |"
        )
    return out


_STATUS_TEXT: Mapping[SlaStatus, str] = {
    "met": "met",
    "breached": "**breached**",
    "pending": "pending",
    "not_applicable": "not applicable",
}


def _sla_table(report: Iterable[SlaResult], policy: SeverityPolicy | None, now: float) -> list[str]:
    if policy is None:
        return ["The rules in use do not declare this severity, so no SLA applies."]
    by_name = {r.name: r for r in report}
    out = [
        "| SLA | Target | Actual | Deadline (UTC) | Status |",
        "|-----|--------|--------|----------------|--------|",
    ]
    for name in SLA_NAMES:
        result = by_name.get(name)
        if result is None:
            out.append(
                f"| {SLA_TITLES[name]} | no target in the plan | {_NOT_YET} | {_NOT_YET} "
                "| not applicable |"
            )
            continue
        actual = _NOT_YET if result.actual_seconds is None else _duration(result.actual_seconds)
        if name == "update" and result.status == "pending":
            actual += " so far"
        deadline = _NOT_YET if result.deadline is None else _timestamp(result.deadline, zone=False)
        out.append(
            f"| {SLA_TITLES[name]} | {_duration(result.target_seconds)} | {actual} "
            f"| {deadline} | {_STATUS_TEXT[result.status]} |"
        )
    return out


# -- the templates ------------------------------------------------------------


def _response_section(f: _Facts, heading: str) -> list[str]:
    """Times, SLAs and alerts: what the sidecar measured, under one extra heading."""
    return [
        heading,
        "",
        *f.key_times,
        "",
        *f.slas,
        "",
        "### Alerts",
        "",
        *f.alerts,
        "",
    ]


def _opening(f: _Facts, fields: list[str], summary: str, placeholder: str) -> list[str]:
    """What every template starts with: title, fields, summary, the timeline and the SLAs."""
    return [
        f"# Post-Incident Review: {f.title}",
        "",
        *_hard_breaks(fields),
        "",
        summary,
        "",
        placeholder,
        "",
        "## Timeline",
        "",
        *f.timeline,
        "",
        *_response_section(f, "## Response Times and SLAs"),
    ]


def _marketplace(f: _Facts) -> list[str]:
    """The LLM-Marketplace plan's "PIR Template"."""
    fields = [
        f"**Incident ID**: {f.incident_id}",
        f"**Date**: {f.date}",
        f"**Duration**: {f.duration}",
        f"**Severity**: {f.severity}",
        "**Impact**: [User impact description]",
        f"**Affected Services**: {f.affected or '[Affected services]'}",
        f"**Owning Team**: {f.team}",
        "**PIR Owner**: [Name]",
        "**Attendees**: [List]",
    ]
    if f.review_due:
        fields.append(f"**PIR Due**: {f.review_due}")
    return [
        *_opening(f, fields, "## Executive Summary", "[2-3 sentence summary for leadership]"),
        "## Root Cause Analysis",
        "",
        "### What Happened",
        "[Detailed description]",
        "",
        "### Why It Happened",
        "[Technical root cause]",
        "",
        "### Why We Didn't Catch It",
        "[Detection gap analysis]",
        "",
        "## Impact Assessment",
        "",
        "- **Users Affected**: X,XXX users (Y%)",
        f"- **Duration**: {f.duration}",
        "- **Failed Requests**: X,XXX",
        "- **Revenue Impact**: $X,XXX",
        "- **SLA Impact**: X minutes against monthly budget",
        f"- **Response SLAs Breached**: {', '.join(f.breached) or 'none'}",
        "",
        "## What Went Well",
        "",
        "- [Positive aspect 1]",
        "- [Positive aspect 2]",
        "",
        "## What Went Wrong",
        "",
        "- [Problem 1]",
        "- [Problem 2]",
        "",
        "## Action Items",
        "",
        "| # | Action | Owner | Due Date | Priority |",
        "|---|--------|-------|----------|----------|",
        "| 1 | [Action] | @owner | YYYY-MM-DD | [High/Medium/Low] |",
        "",
        "## Lessons Learned",
        "",
        "[Key takeaways]",
    ]


def _schema_registry(f: _Facts) -> list[str]:
    """The Schema Registry plan's "Post-Mortem Template"."""
    fields = [
        f"**Incident ID:** {f.incident_id}",
        f"**Date:** {f.date}",
        f"**Severity:** {f.severity}",
        f"**Duration:** {f.duration}",
        "**Impact:** [Description]",
        f"**Affected Services:** {f.affected or '[Affected services]'}",
        f"**Owning Team:** {f.team}",
    ]
    if f.review_due:
        fields.append(f"**Review Due:** {f.review_due}")
    sla_breach = f"Yes ({', '.join(f.breached)})" if f.breached else "No"
    return [
        *_opening(f, fields, "## Summary", "[2-3 sentence summary of incident]"),
        "## Root Cause",
        "",
        "[Detailed explanation of root cause]",
        "",
        "**Contributing Factors:**",
        "- [Factor 1]",
        "- [Factor 2]",
        "",
        "## Impact Assessment",
        "",
        "**User Impact:**",
        "- Affected users: [Number/Percentage]",
        "- Affected requests: [Number]",
        "- Error rate: [Percentage]",
        "",
        "**Business Impact:**",
        "- Revenue impact: [Amount or N/A]",
        f"- SLA breach: {sla_breach}",
        "- Customer escalations: [Number]",
        "",
        "## What Went Well",
        "",
        "- [What went well]",
        "",
        "## What Went Wrong",
        "",
        "- [What went wrong]",
        "",
        "## Action Items",
        "",
        "| Item | Owner | Due Date | Priority |",
        "|------|-------|----------|----------|",
        "| [Action] | @owner | YYYY-MM-DD | [P0-P4] |",
        "",
        "## Lessons Learned",
        "",
        "- [Lesson 1]",
        "- [Lesson 2]",
        "",
        "## Appendices",
        "",
        "### Relevant Logs",
        "[Link to log snippets]",
        "",
        "### Metrics Screenshots",
        "[Link to Grafana screenshots]",
        "",
        "### Communication Log",
        "[Link to Slack thread]",
    ]


def _generic(f: _Facts) -> list[str]:
    """A template close to both plans, for rules of any other plan."""
    fields = [
        f"**Incident ID:** {f.incident_id}",
        f"**Date:** {f.date}",
        f"**Severity:** {f.severity}",
        f"**Duration:** {f.duration}",
        "**Impact:** [User impact description]",
        f"**Affected Services:** {f.affected or '[Affected services]'}",
        f"**Owning Team:** {f.team}",
        "**Review Owner:** [Name]",
    ]
    if f.review_due:
        fields.append(f"**Review Due:** {f.review_due}")
    return [
        *_opening(f, fields, "## Summary", "[2-3 sentence summary of incident]"),
        "## Root Cause",
        "",
        "[Detailed explanation of root cause]",
        "",
        "**Contributing Factors:**",
        "- [Factor 1]",
        "",
        "## Impact Assessment",
        "",
        "- Affected users: [Number/Percentage]",
        f"- Duration: {f.duration}",
        f"- Response SLAs breached: {', '.join(f.breached) or 'none'}",
        "",
        "## What Went Well",
        "",
        "- [What went well]",
        "",
        "## What Went Wrong",
        "",
        "- [What went wrong]",
        "",
        "## Action Items",
        "",
        "| Item | Owner | Due Date | Priority |",
        "|------|-------|----------|----------|",
        "| [Action] | @owner | YYYY-MM-DD | [Priority] |",
        "",
        "## Lessons Learned",
        "",
        "- [Lesson 1]",
    ]


# -- Markdown and time helpers ------------------------------------------------


def cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: pipes escaped, line breaks as ``<br>``."""
    lines = _escape(text).replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    return "<br>".join(line.strip() for line in lines) or _NOT_YET


def _inline(text: str) -> str:
    """``text`` safe in running Markdown on one line (headings, fields)."""
    return " ".join(_escape(text).split())


def _escape(text: str) -> str:
    # Backslashes first, so an escaped pipe cannot be un-escaped by the text's own
    # backslash; angle brackets so that payload text never becomes raw HTML.
    for char in ("\\", "|", "<", ">"):
        text = text.replace(char, "\\" + char)
    return text


def _link_target(url: str) -> str:
    """A URL percent-encoded so it cannot end a Markdown link or autolink early."""
    return quote(url.strip(), safe=":/?#[]@!$&'*+,;=%~")


def _hard_breaks(lines: list[str]) -> list[str]:
    """Consecutive field lines, each ending in a Markdown hard line break but the last."""
    return [line + "  " for line in lines[:-1]] + lines[-1:]


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _date(epoch: float) -> str:
    return _dt(epoch).strftime("%Y-%m-%d")


def _clock(epoch: float) -> str:
    return _dt(epoch).strftime("%H:%M:%S")


def _timestamp(epoch: float, *, zone: bool = True) -> str:
    return _dt(epoch).strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if zone else "")


def _duration(seconds: float) -> str:
    """``3725`` as ``1h 2m 5s``; whole seconds, largest units first, zero parts left out."""
    total = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts) or "0s"
