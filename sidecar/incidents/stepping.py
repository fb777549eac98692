"""SLA stepping: what a passing deadline, or a close that overran one, records on an incident.

Deadlines themselves are worked out by :mod:`sidecar.sla`; here they become
timeline events and effects: a breach, once per SLA (once per window for the
update cadence), and an escalation step with its outcome (paged, recorded or
unrouted), decided with the change rather than later by the pager. A close
that overran a deadline the scheduler had not reached yet records that
breach with it, so that the metric, the API and the review give one answer.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from sidecar import sla
from sidecar.incidents.core import BookCore, planned
from sidecar.incidents.model import (
    Change,
    Effect,
    EscalationOutcome,
    Incident,
    TimelineEvent,
    escalation_outcome,
)

if TYPE_CHECKING:
    from sidecar.rules import SeverityPolicy


class Stepping(BookCore):
    """Deadlines of open incidents and pending reviews, and what they record."""

    def next_deadline(self, incident_id: str) -> tuple[float, bool] | None:
        """The earliest pending deadline of an open incident or a pending review.

        The flag is True for a breach, which is due only once the deadline has
        passed, and False for an escalation step, due at the deadline itself.
        """
        inc = self._by_id.get(incident_id)
        if inc is not None:
            policy = self.classifier.policy(inc.severity)
            return sla.next_deadline(inc, policy, self.reminders.get(inc.severity))
        review = self._reviews.get(incident_id)
        if review is None or review.review_due_at is None or "postmortem" in review.breaches:
            return None
        return (review.review_due_at, True)

    @planned
    def check_deadlines(self, incident_id: str, now: float) -> Change | None:
        """Record every breach and escalation that is due; None when nothing was."""
        inc = self._by_id.get(incident_id)
        if inc is None:
            return self._check_review(incident_id, now)
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        self._settle(inc, now, events, effects)
        self._finish(inc)
        return Change(inc, events, effects, undo) if events else None

    def _check_review(self, incident_id: str, now: float) -> Change | None:
        inc = self._reviews.get(incident_id)
        if inc is None or inc.review_due_at is None or "postmortem" in inc.breaches:
            return None
        if not sla.passed(inc.review_due_at, True, now):
            return None
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        self._breach(inc, "postmortem", now, events, effects)
        self._finish(inc)
        return Change(inc, events, effects, undo)

    def breached_counts(self) -> Counter[tuple[str, str]]:
        """Open incidents (and pending reviews) in breach, by severity and SLA."""
        counts: Counter[tuple[str, str]] = Counter()
        for inc in self._breached.values():
            for kind in inc.breaches:
                if kind == "update" and inc.update_breached_gap != sla.update_gap_start(inc):
                    continue  # an update has been given since: no longer in breach
                counts[(inc.severity, kind)] += 1
        for inc in self._reviews.values():
            if "postmortem" in inc.breaches:
                counts[(inc.severity, "postmortem")] += 1
        return counts

    def _target(self, severity: str, name: str) -> sla.Target | None:
        """The target of SLA ``name`` of ``severity`` (with its calendar, if any)."""
        return self.classifier.policy(severity).clocks.target(name)

    def _settle(
        self, inc: Incident, now: float, events: list[TimelineEvent], effects: list[Effect]
    ) -> None:
        """Record what is due on an open incident: breaches, then escalation steps."""
        policy = self.classifier.policy(inc.severity)
        remind = self.reminders.get(inc.severity)
        for kind, deadline in sla.pending_deadlines(inc, policy, remind):
            if not sla.is_due(kind, deadline, now):
                continue
            if kind == sla.REMINDER:
                self._remind(inc, deadline + (remind or 0.0), now, events)
            elif kind.startswith(sla.ESCALATION):
                self._escalate(inc, policy, kind.removeprefix(sla.ESCALATION), now, events, effects)
            else:
                if kind == "update":
                    inc.update_breached_gap = sla.update_gap_start(inc)
                self._breach(inc, kind, now, events, effects, deadline=deadline)

    def _escalate(
        self,
        inc: Incident,
        policy: SeverityPolicy,
        tier: str,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
    ) -> None:
        outcome = self._escalation_outcome(policy, tier)
        inc.escalated = {**inc.escalated, tier: now}
        inc.escalation_outcomes = {**inc.escalation_outcomes, tier: outcome}
        ladder = f"{inc.severity} ladder"
        if outcome == "paged":
            message = f"escalated to {tier}: paged ({ladder})"
        elif outcome == "recorded":
            message = (
                f"escalated to {tier}: recorded only, nobody paged (record_only step, {ladder})"
            )
        else:
            message = (
                f"escalation to {tier} due: nobody routed (no PagerDuty routing key "
                f"for tier {tier}; {ladder})"
            )
        events.append(
            self.event(
                inc, now, "escalated", "sidecar", None, message, {"tier": tier, "outcome": outcome}
            )
        )
        effects.append(
            Effect("escalated", inc.id, inc.severity, inc.team, detail=tier, outcome=outcome)
        )

    def _remind(
        self, inc: Incident, due_at: float, now: float, events: list[TimelineEvent]
    ) -> None:
        """Record the reminder of the current update window; integrations carry it."""
        inc.update_reminded_gap = sla.update_gap_start(inc)
        events.append(
            self.event(
                inc,
                now,
                "update_reminder",
                "sidecar",
                None,
                f"status update due in {max(0.0, due_at - now):.0f}s",
                {"due_at": due_at},
            )
        )

    def _escalation_outcome(self, policy: SeverityPolicy, tier: str) -> EscalationOutcome:
        record_only = any(step.record_only for step in policy.escalation if step.tier == tier)
        return escalation_outcome(record_only, tier in self.routed_tiers)

    def _breach(
        self,
        inc: Incident,
        kind: str,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
        *,
        deadline: float | None = None,
    ) -> None:
        inc.breaches = {**inc.breaches, kind: now}
        notes = [] if deadline is None else [f"deadline passed {now - deadline:.0f}s ago"]
        data: dict[str, object] = {"sla": kind, "deadline": deadline}
        target = self._target(inc.severity, kind)
        if target is not None and target.calendar is not None:
            # Said on the timeline, or a breach days after opening reads as a mistake.
            notes.append(f"business time of calendar {target.calendar.name}")
            data["calendar"] = target.calendar.name
        late = f" ({'; '.join(notes)})" if notes else ""
        events.append(
            self.event(
                inc,
                now,
                "sla_breached",
                "sidecar",
                None,
                f"{kind} SLA of {inc.severity} breached{late}",
                data,
            )
        )
        effects.append(Effect("breach", inc.id, inc.severity, inc.team, detail=kind))

    def _close(
        self,
        inc: Incident,
        resolved_at: float,
        source: str,
        actor: str | None,
        message: str,
        *,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
    ) -> None:
        """Resolve ``inc`` at ``resolved_at``, first recording what the resolution overran.

        The scheduler records a breach at its deadline; a resolution that
        arrives before it ran (Alertmanager batches resolved notifications)
        still overran, and the breach is counted now, once, as the review
        will report it.
        """
        clocks = self.classifier.policy(inc.severity).clocks
        overran: list[tuple[str, float | None]] = []
        if inc.state == "triggered" and clocks.acknowledge is not None:
            overran.append(("acknowledge", clocks.acknowledge.deadline(inc.triggered_at)))
        if clocks.resolve is not None:
            overran.append(("resolve", clocks.resolve.deadline(inc.started_at)))
        if clocks.update is not None and inc.update_breached_gap != sla.update_gap_start(inc):
            overran.append(("update", clocks.update.deadline(sla.update_gap_start(inc))))
        for kind, deadline in overran:
            if deadline is None or kind in inc.breaches:
                continue
            if sla.passed(deadline, True, resolved_at):
                self._breach(inc, kind, now, events, effects, deadline=deadline)
        inc.state = "resolved"
        inc.resolved_at = resolved_at
        statuses = self.classifier.statuses
        if statuses and inc.status != statuses[-1]:
            # The plan's last status (Resolved) is a resolved incident's.
            inc.status, inc.status_at = statuses[-1], resolved_at
        inc.resolved_by = actor
        inc.resolve_source = source
        review = clocks.postmortem
        if review is not None and inc.review_done_at is None:
            inc.review_due_at = review.deadline(resolved_at)
        events.append(
            self.event(
                inc, resolved_at, "resolved", source, actor, message, {"resolved_at": resolved_at}
            )
        )
        ttr = sla.measured(clocks.resolve, inc.started_at, resolved_at)
        effects.append(
            Effect("resolved", inc.id, inc.severity, inc.team, ttr, source=source, actor=actor)
        )

    def _close_by_alertmanager(
        self,
        inc: Incident,
        resolved_at: float,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
    ) -> None:
        message = "all alerts resolved"
        self._close(
            inc, resolved_at, "alertmanager", None, message, now=now, events=events, effects=effects
        )
