"""SLA clocks of an open incident: which deadlines are pending, and which have passed.

Deadlines follow the severity's policy as it is now (a severity raised
mid-incident brings its own, tighter clocks). An SLA is breached when its
deadline has passed (an acknowledgment exactly at the deadline is in time),
and each breach is recorded once on the incident, so it is counted once,
across restarts too. Escalation steps are due at their deadline, including
``after: 0s`` steps, which run with the change that opens the incident.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.incidents import Incident
    from sidecar.rules import SeverityPolicy

ESCALATION = "escalation:"


def update_gap_start(inc: Incident) -> float:
    """Start of the current update-cadence window: the last status update, or declaration."""
    return inc.last_update_at if inc.last_update_at is not None else inc.triggered_at


def pending_deadlines(inc: Incident, policy: SeverityPolicy) -> list[tuple[str, float]]:
    """Deadlines still ahead of an open incident: SLA names and ``escalation:<tier>``."""
    if not inc.is_open:
        return []
    sla = policy.sla
    out: list[tuple[str, float]] = []
    if (
        sla.acknowledge is not None
        and inc.state == "triggered"
        and "acknowledge" not in inc.breaches
    ):
        out.append(("acknowledge", inc.triggered_at + sla.acknowledge.total_seconds()))
    if sla.resolve is not None and "resolve" not in inc.breaches:
        out.append(("resolve", inc.started_at + sla.resolve.total_seconds()))
    if sla.update is not None:
        start = update_gap_start(inc)
        if inc.update_breached_gap != start:
            out.append(("update", start + sla.update.total_seconds()))
    for step in policy.escalation:
        if step.tier in inc.escalated:
            continue
        if step.while_ == "unacknowledged" and inc.state != "triggered":
            continue
        out.append((ESCALATION + step.tier, inc.triggered_at + step.after.total_seconds()))
    return out


def is_due(kind: str, deadline: float, now: float) -> bool:
    """Escalations run at their deadline; an SLA is breached only once it has passed."""
    return now >= deadline if kind.startswith(ESCALATION) else now > deadline
