"""Commands from people and integrations: acknowledge, resolve, update, reopen, review.

The Incident Commander's own (roles, severity, escalation) are :mod:`~sidecar.incidents.leading`'s.

Each returns the :class:`~sidecar.incidents.model.Change` it made (or None
when it changed nothing, so that repeats are idempotent), without any I/O:
the service commits it and only then publishes its effects.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar import sla
from sidecar.incidents.alerts import alert_name
from sidecar.incidents.core import planned
from sidecar.incidents.model import Change, Effect, Incident, TimelineEvent, resolution_time
from sidecar.incidents.people import check_status
from sidecar.incidents.stepping import Stepping


class Commands(Stepping):
    """Transitions an incident takes from the API, PagerDuty and silences."""

    @planned
    def acknowledge(
        self, incident_id: str, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change | None:
        """Acknowledge an open incident; None when it already was (idempotent).

        A reopening pages the on-call again while the incident stays
        acknowledged: an acknowledgment after it is recorded and goes to
        PagerDuty, but time to acknowledge was measured once, at the first.
        """
        inc = self._require_open(incident_id)
        if not inc.awaits_acknowledgment:
            return None
        undo = self._begin(inc.key, inc)
        tta: float | None = None
        default = f"acknowledged by {actor}"
        if inc.state == "acknowledged":
            inc.reacknowledged_at = now
            default += " again, after the reopening"
        else:
            inc.state = "acknowledged"
            inc.acknowledged_at = now
            inc.acknowledged_by = actor
            inc.acknowledge_source = source
            tta = sla.measured(self._target(inc.severity, "acknowledge"), inc.triggered_at, now)
        events = [self.event(inc, now, "acknowledged", source, actor, message or default)]
        self._finish(inc)
        effects = [
            Effect("acknowledged", inc.id, inc.severity, inc.team, tta, source=source, actor=actor)
        ]
        return Change(inc, events, effects, undo)

    @planned
    def resolve(
        self, incident_id: str, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change:
        """Resolve an open incident by hand (API, PagerDuty)."""
        inc = self._require_open(incident_id)
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        message = message or f"resolved by {actor}"
        self._close(inc, now, source, actor, message, now=now, events=events, effects=effects)
        self._finish(inc)
        return Change(inc, events, effects, undo)

    @planned
    def unacknowledge(
        self, incident_id: str, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change | None:
        """Return an acknowledged incident to triggered (PagerDuty un-acknowledge)."""
        inc = self._require_open(incident_id)
        if inc.state != "acknowledged":
            return None
        undo = self._begin(inc.key, inc)
        inc.state = "triggered"
        inc.acknowledged_at = inc.acknowledged_by = inc.acknowledge_source = None
        inc.reacknowledged_at = None
        events = [
            self.event(inc, now, "unacknowledged", source, actor, message or "unacknowledged")
        ]
        self._finish(inc)
        return Change(inc, events, [], undo)

    @planned
    def reopen(
        self, incident: Incident, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change | None:
        """Reopen a resolved incident (PagerDuty reopen) unless its key has another open one."""
        if incident.is_open:
            return self.unacknowledge(incident.id, actor=actor, source=source, now=now)
        if incident.key in self._open:
            return None
        incident = self._watching_ids.get(incident.id) or self._reviews.get(incident.id) or incident
        undo = self._begin(incident.key, incident)
        incident.state = "triggered"
        incident.resolved_at = incident.resolved_by = incident.resolve_source = None
        incident.watch_until = incident.closed_at = None
        incident.acknowledged_at = incident.acknowledged_by = incident.acknowledge_source = None
        events = [self.event(incident, now, "reopened", source, actor, message or "reopened")]
        self._finish(incident)
        return Change(incident, events, [], undo)

    @planned
    def resolve_alerts(
        self,
        incident_id: str,
        ended: Mapping[str, float],
        *,
        now: float,
        source: str,
        message: str,
    ) -> Change | None:
        """Mark alerts ended (``fingerprint -> endsAt``); resolve the incident if none fires."""
        inc = self._require_open(incident_id)
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        for fingerprint, ends_at in ended.items():
            st = inc.alerts.get(fingerprint)
            if st is None or st.status != "firing":
                continue
            inc.alerts[fingerprint] = st = st.ended(ends_at)
            events.append(
                self.event(
                    inc,
                    now,
                    "alert_resolved",
                    source,
                    None,
                    f"alert {alert_name(st)} resolved",
                    {"fingerprint": fingerprint, "ends_at": ends_at},
                )
            )
        if events and not inc.firing():
            ends = resolution_time(inc, now)
            self._close(inc, ends, source, None, message, now=now, events=events, effects=effects)
        self._finish(inc)
        return Change(inc, events, effects, undo) if events else None

    @planned
    def record_update(
        self,
        incident_id: str,
        *,
        actor: str,
        source: str,
        now: float,
        message: str,
        status: str | None = None,
    ) -> Change:
        """Record a status update (it resets the update-cadence clock), with the plan's status.

        Raises :class:`~sidecar.errors.InvalidRequest` listing the plan's
        statuses when ``status`` is not one of them.
        """
        inc = self._require_open(incident_id)
        if status is not None:
            check_status(status, self.classifier.statuses)
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        update = self.classifier.policy(inc.severity).clocks.update
        start = sla.update_gap_start(inc)
        deadline = None if update is None else update.deadline(start)
        if (
            deadline is not None
            and inc.update_breached_gap != start
            and sla.passed(deadline, True, now)
        ):
            # Late, and before the scheduler noticed: the gap it closes overran.
            inc.update_breached_gap = start
            self._breach(inc, "update", now, events, effects, deadline=deadline)
        inc.last_update_at = now
        data: dict[str, str | None] = {}
        if status is not None:
            data = {"status": status, "previous_status": inc.status}
            if status != inc.status:
                inc.status, inc.status_at = status, now
        text = f"[{status}] {message}" if status is not None else message
        events.append(self.event(inc, now, "status_update", source, actor, text, data))
        effects.append(Effect("status_update", inc.id, inc.severity, inc.team))
        self._finish(inc)
        return Change(inc, events, effects, undo)

    @planned
    def note(
        self,
        incident_id: str,
        *,
        kind: str,
        actor: str | None,
        source: str,
        now: float,
        message: str,
    ) -> Change:
        """Put an event on an open incident's timeline without changing its state."""
        inc = self._require_open(incident_id)
        undo = self._begin(inc.key, inc)
        events = [self.event(inc, now, kind, source, actor, message)]
        self._finish(inc)
        return Change(inc, events, [], undo)

    @planned
    def complete_review(
        self, incident: Incident, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change | None:
        """Mark the post-incident review done; None when it already was."""
        inc = self.held(incident)
        if inc.review_done_at is not None:
            return None
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        late = inc.review_due_at is not None and sla.passed(inc.review_due_at, True, now)
        if late and "postmortem" not in inc.breaches:
            self._breach(inc, "postmortem", now, events, effects, deadline=inc.review_due_at)
        inc.review_done_at = now
        inc.review_done_by = actor
        events.append(
            self.event(
                inc,
                now,
                "postmortem_done",
                source,
                actor,
                message or f"post-incident review done{' (late)' if late else ''}",
            )
        )
        self._finish(inc)
        return Change(inc, events, effects, undo)
