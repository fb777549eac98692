"""What a change means to the people following an incident: lifecycle events and message data.

Pure, like the planners that use it. :func:`lifecycle_events` reads a change's
timeline events (what the command recorded, with its actor and message) as the
lifecycle events every integration speaks of: ``opened``, ``acknowledged``,
``status_update``, ``severity_raised``, ``severity_lowered``, ``roles_changed``,
``escalated``, ``breached``, ``reminder``, ``reopened``, ``resolved``,
``review_due`` (the review's deadline passed) and ``ticket``.
:func:`incident_data` is the data model of every message template and of the
outbound webhooks' ``incident`` object; README "Templates" documents it field
by field. Times are ISO 8601 UTC strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sidecar.incidents import Change, Incident, TimelineEvent, war_room
from sidecar.incidents.people import ROLES
from sidecar.sla import Target, update_gap_start

#: Timeline event kinds -> the lifecycle event they are (a breach is looked at apart).
_KINDS: Mapping[str, str] = {
    "opened": "opened",
    "acknowledged": "acknowledged",
    "status_update": "status_update",
    "severity_raised": "severity_raised",
    "escalated": "escalated",
    "update_reminder": "reminder",
    "severity_lowered": "severity_lowered",
    "role_assigned": "roles_changed",
    "role_cleared": "roles_changed",
    "reopened": "reopened",
    "resolved": "resolved",
    "ticket": "ticket",
}
#: Where the impact and the component are read from, first found wins.
IMPACT_ANNOTATIONS = ("impact", "summary", "description")
COMPONENT_LABELS = ("component", "service", "app", "job")


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """One lifecycle event of an incident, from the timeline event that recorded it."""

    kind: str
    at: float
    source: str
    actor: str | None
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as the outbound webhooks and the templates see it."""
        return {
            "kind": self.kind,
            "at": isoformat(self.at),
            "source": self.source,
            "actor": self.actor,
            "message": self.message,
            "data": dict(self.data),
        }


def lifecycle_events(change: Change) -> list[Lifecycle]:
    """The change's lifecycle events, in the order the command recorded them."""
    return [e for e in map(lifecycle_of, change.events) if e is not None]


def lifecycle_of(event: TimelineEvent) -> Lifecycle | None:
    """The lifecycle event a timeline event is, if any (paging notes are none)."""
    if event.kind == "sla_breached":
        kind = "review_due" if event.data.get("sla") == "postmortem" else "breached"
    else:
        found = _KINDS.get(event.kind)
        if found is None:
            return None
        kind = found
    return Lifecycle(kind, event.at, event.source, event.actor, event.message, event.data)


def isoformat(at: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2026-11-30T14:05:00Z``)."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def readable_time(at: float | None) -> str | None:
    """Epoch seconds as people read them in a message (``2026-11-30 14:05 UTC``)."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration_text(seconds: float | None) -> str | None:
    """``3725`` as ``1h 2m``; whole minutes once past one, largest units first."""
    if seconds is None:
        return None
    total = max(0, round(seconds))
    sizes = (("d", 86400), ("h", 3600), ("m", 60)) if total >= 60 else (("s", 1),)
    parts = []
    for unit, size in sizes:
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts) or "0s"


def cadence_text(seconds: float | None) -> str | None:
    """An update cadence as the plans write it: ``Every 30 minutes``, ``Every 2 hours``."""
    if seconds is None:
        return None
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"Every {unit}" if n == 1 else f"Every {n} {unit}s"
    return f"Every {duration_text(seconds)}"


def _first(mapping: Mapping[str, str], keys: Sequence[str]) -> str | None:
    return next((mapping[k] for k in keys if mapping.get(k)), None)


def incident_data(
    inc: Incident,
    *,
    update: Target | None = None,
    incident_url: str | None = None,
    people: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The incident as templates and webhooks see it (documented in the README).

    ``people`` maps names to how a message should mention them (a Slack
    ``<@U123>``); others show by name.
    """
    mention = people or {}

    def who(name: str) -> str:
        return mention.get(name, name)

    roles = dict(inc.roles)
    # The Incident Commander: the role, else whoever took the incident.
    named = roles.get("incident_commander")
    commander = named if isinstance(named, str) else inc.acknowledged_by
    labels = dict(inc.labels)
    for alert in inc.alerts.values():
        for k, v in alert.labels.items():
            labels.setdefault(k, v)
    # The update cadence, and when the current window's update is due (a
    # business-time target's deadline is its calendar's).
    update_every = None if update is None else update.seconds
    next_update = None
    if update is not None and inc.is_open:
        next_update = update.deadline(update_gap_start(inc))
    end = inc.resolved_at
    return {
        "id": inc.id,
        "number": inc.number,
        "war_room": war_room(inc.number),
        "roles": roles,
        # Each role's holder as a message mentions them, in the plan's order, by title.
        "role_mentions": {
            ROLES[role]: (
                ", ".join(who(n) for n in value) if isinstance(value, list) else who(value)
            )
            for role, value in sorted(roles.items(), key=lambda r: list(ROLES).index(r[0]))
            if role in ROLES and value
        },
        "title": inc.title,
        "severity": inc.severity,
        "team": inc.team,
        "state": inc.state,
        # The plan's status; rules without statuses: the state, as the plans word it.
        "status": inc.status or ("Resolved" if not inc.is_open else "Investigating"),
        "component": _first(labels, COMPONENT_LABELS),
        "impact": _first(inc.annotations, IMPACT_ANNOTATIONS),
        "annotations": dict(inc.annotations),
        "labels": dict(inc.labels),
        "started_at": isoformat(inc.started_at),
        "triggered_at": isoformat(inc.triggered_at),
        "acknowledged_at": isoformat(inc.acknowledged_at),
        "acknowledged_by": inc.acknowledged_by,
        "resolved_at": isoformat(end),
        "resolved_by": inc.resolved_by,
        "started": readable_time(inc.started_at),
        "duration": None if end is None else duration_text(end - inc.started_at),
        "commander": commander,
        "commander_mention": None if commander is None else who(commander),
        "update_every": cadence_text(update_every),
        "next_update": readable_time(next_update),
        "review_due": readable_time(inc.review_due_at),
        "escalated": sorted(inc.escalated),
        "breaches": sorted(inc.breaches),
        "url": incident_url,
        "alertmanager_url": inc.external_url or None,
        "timeline": _timeline(inc),
    }


def _timeline(inc: Incident) -> list[dict[str, str]]:
    """The incident's own times, in order: what a resolved message lists."""
    rows: list[tuple[float, str]] = [(inc.started_at, "Incident detected (first alert)")]
    rows.append((inc.triggered_at, f"Incident declared ({inc.severity})"))
    if inc.acknowledged_at is not None:
        who = f" by {inc.acknowledged_by}" if inc.acknowledged_by else ""
        rows.append((inc.acknowledged_at, f"Acknowledged{who}"))
    rows += [(at, f"Escalated to {tier}") for tier, at in inc.escalated.items()]
    rows += [(at, f"{name} SLA breached") for name, at in inc.breaches.items()]
    if inc.last_update_at is not None:
        rows.append((inc.last_update_at, "Last status update"))
    if inc.resolved_at is not None:
        rows.append((inc.resolved_at, "Service restored (resolved)"))
    return [{"at": readable_time(at) or "", "what": what} for at, what in sorted(rows)]
