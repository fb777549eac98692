"""A committed change's effects, as metrics and log lines, and its incidents' shelved alerts.

Called by the service after the commit, never before: a metric or a log line
says what the store holds.
"""

from __future__ import annotations

import logging

from sidecar.incidents import Change, Effect, war_room
from sidecar.metrics import Metrics
from sidecar.store.rows import WriteBatch

# The service's logger: incident lines have always been written under this name.
log = logging.getLogger("sidecar.incidents")


def publish_all(m: Metrics, changes: list[Change]) -> None:
    """Publish every effect of the committed changes."""
    for change in changes:
        for effect in change.effects:
            publish(m, effect, change.incident.number)


def shelve(changes: list[Change], write: WriteBatch) -> None:
    """Hold each changed incident's alerts as the document committed (see shelve_alerts)."""
    # Committed: each changed incident's alerts are in the store as written.
    docs = {row.id: row.alerts for row in write.incidents}
    for change in changes:
        change.incident.shelve_alerts(docs[change.incident.id])


def publish(m: Metrics, effect: Effect, number: str | None = None) -> None:
    """Count a committed effect in the metrics and log it (INFO)."""
    labels = (effect.severity, effect.team)
    if effect.kind == "opened":
        m.child(m.incidents_total, *labels).inc()
        if effect.seconds is not None:
            m.child(m.time_to_detect, *labels).observe(effect.seconds)
    elif effect.kind == "acknowledged":
        # None: acknowledged again after a reopening; measured once, at the first.
        if effect.seconds is not None:
            m.child(m.time_to_acknowledge, *labels).observe(effect.seconds)
    elif effect.kind in ("resolved", "closed"):
        # Once per incident: at resolution, or at the end of its recovery
        # watch (then the resolution carries no time).
        if effect.seconds is not None:
            m.child(m.time_to_resolve, *labels).observe(effect.seconds)
    elif effect.kind == "reopened":
        m.child(m.reopened_total, *labels).inc()
    elif effect.kind == "breach" and effect.detail is not None:
        m.child(m.breaches_total, *labels, effect.detail).inc()
    elif effect.kind == "escalated" and effect.detail is not None:
        m.child(m.escalations_total, effect.severity, effect.detail).inc()
        if effect.outcome is not None:
            m.child(
                m.escalation_outcomes_total, effect.severity, effect.detail, effect.outcome
            ).inc()
    elif effect.kind == "unmatched":
        # A count for the metric, not a transition of the incident: no log line.
        if effect.detail is not None:
            m.child(m.alerts_unmatched_total, effect.detail, effect.team).inc(effect.count)
        return
    if not log.isEnabledFor(logging.INFO):
        return
    log.info(
        f"incident {effect.kind}",
        extra={
            "event": f"incident_{effect.kind}",
            "incident_id": effect.incident_id,
            "incident_number": number,
            "war_room": war_room(number),
            "severity": effect.severity,
            "team": effect.team,
            "seconds": effect.seconds,
            "previous_severity": effect.previous_severity,
            "source": effect.source,
            "actor": effect.actor,
            "detail": effect.detail,
            "count": effect.count,
            "outcome": effect.outcome,
        },
    )
