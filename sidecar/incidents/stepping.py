"""SLA stepping: what a passing deadline, or a close that overran one, records on an incident.

Deadlines themselves are worked out by :mod:`sidecar.sla`; here they become
timeline events and effects: a breach, once per SLA (once per window for the
update cadence), and an escalation step with its outcome (paged, recorded or
unrouted), decided with the change rather than later by the pager; an
escalation rule's tier is paged the same way. A close that overran a
deadline the scheduler had not reached yet records that breach with it, so
that the metric, the API and the review give one answer. A close starts the
severity's recovery watch, and the end of the watch closes the incident for
good (see :mod:`~sidecar.incidents.watch`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING

from sidecar import sla
from sidecar.durations import format_duration
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
        due: list[tuple[float, bool]] = []
        watched = self._watching_ids.get(incident_id)
        if watched is not None and watched.watch_until is not None:
            # Strict: a re-fire at the very end of the watch still reopens.
            due.append((watched.watch_until, True))
        review = self._reviews.get(incident_id)
        if (
            review is not None
            and review.review_due_at is not None
            and ("postmortem" not in review.breaches)
        ):
            due.append((review.review_due_at, True))
        return min(due, default=None)

    def open_deadlines(self) -> Iterator[tuple[str, tuple[float, bool]]]:
        """Each open incident's id and next deadline (:meth:`next_deadline`), if it has one.

        One pass over the open incidents, for the scheduler at start: a hundred
        thousand lookups by id and of the same few policies showed in restart time.
        """
        policies: dict[str, SeverityPolicy] = {}
        remind = self.reminders.get
        for inc in self._by_id.values():
            severity = inc.severity
            policy = policies.get(severity)
            if policy is None:
                policy = policies[severity] = self.classifier.policy(severity)
            deadline = sla.next_deadline(inc, policy, remind(severity))
            if deadline is not None:
                yield inc.id, deadline

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
        """A resolved incident: the end of its recovery watch, and its review's deadline."""
        inc = self._watching_ids.get(incident_id) or self._reviews.get(incident_id)
        if inc is None:
            return None
        watch_ends = inc.is_watching and sla.passed(inc.watch_until or 0.0, True, now)
        review_late = (
            inc.review_due_at is not None
            and inc.review_done_at is None
            and "postmortem" not in inc.breaches
            and sla.passed(inc.review_due_at, True, now)
        )
        if not (watch_ends or review_late):
            return None
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        if watch_ends:
            self._end_watch(inc, now, events, effects)
        if review_late:
            self._breach(inc, "postmortem", now, events, effects)
        self._finish(inc)
        return Change(inc, events, effects, undo)

    def _end_watch(
        self, inc: Incident, now: float, events: list[TimelineEvent], effects: list[Effect]
    ) -> None:
        """Close ``inc`` for good: its watch ended. Time to resolve is measured now, once."""
        assert inc.watch_until is not None and inc.resolved_at is not None
        inc.closed_at = inc.watch_until
        watched = inc.watch_until - inc.resolved_at
        again = (
            f", reopened {inc.reopens} time{'s' if inc.reopens > 1 else ''}" if inc.reopens else ""
        )
        events.append(
            self.event(
                inc,
                now,
                "closed",
                "sidecar",
                None,
                f"recovery watch of {minutes(watched)} ended without a re-fire: closed{again}",
                {"watch_until": inc.watch_until, "resolved_at": inc.resolved_at},
            )
        )
        resolve = self.classifier.policy(inc.severity).clocks.resolve
        ttr = sla.measured(resolve, inc.started_at, inc.resolved_at)
        effects.append(Effect("closed", inc.id, inc.severity, inc.team, ttr))

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
                tier = kind.removeprefix(sla.ESCALATION)
                outcome = self._escalation_outcome(policy, tier)
                why = f"{inc.severity} ladder"
                self._escalate(inc, tier, now, events, effects, outcome=outcome, why=why)
            else:
                if kind == "update":
                    inc.update_breached_gap = sla.update_gap_start(inc)
                self._breach(inc, kind, now, events, effects, deadline=deadline)

    def _escalate_by_rules(
        self,
        inc: Incident,
        alerts: Iterable[tuple[Mapping[str, str], Mapping[str, str]]],
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
    ) -> None:
        """Page the tier of each escalation rule a new firing alert matches.

        ``alerts`` are the new firing alerts' labels and annotations.
        """
        # Alerts that the rules read alike are asked about once: a second one
        # would find every tier it matches escalated already by the first.
        for hits in self.classifier.escalations_each(alerts):
            for hit in hits:
                if hit.tier in inc.escalated:
                    continue  # each tier once per incident, by ladder or by rule
                outcome = escalation_outcome(hit.record_only, hit.tier in self.routed_tiers)
                self._escalate(
                    inc, hit.tier, now, events, effects, outcome=outcome, why=f"rule {hit.rule}"
                )

    def _escalate(
        self,
        inc: Incident,
        tier: str,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
        *,
        outcome: EscalationOutcome,
        why: str,
    ) -> None:
        inc.escalated = {**inc.escalated, tier: now}
        inc.escalation_outcomes = {**inc.escalation_outcomes, tier: outcome}
        ladder = why
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
        watch = self.classifier.recovery_watch(inc.severity)
        data: dict[str, float] = {"resolved_at": resolved_at}
        if watch is None:
            inc.watch_until, inc.closed_at = None, resolved_at
        else:
            inc.watch_until, inc.closed_at = resolved_at + watch, None
            data["watch_until"] = inc.watch_until
            message += f" (recovery watch of {minutes(watch)}: a re-fire reopens it)"
        events.append(self.event(inc, resolved_at, "resolved", source, actor, message, data))
        # Measured once, to the final resolution: at the end of the watch if any.
        ttr = (
            None if watch is not None else sla.measured(clocks.resolve, inc.started_at, resolved_at)
        )
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


def minutes(seconds: float) -> str:
    """``1h``, ``30m`` or ``20m34s``: a span as the rules file writes durations."""
    return format_duration(timedelta(seconds=round(seconds)))
