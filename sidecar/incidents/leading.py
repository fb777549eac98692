"""What the Incident Commander does: assign roles, set the status, change severity, escalate.

Plan 000's Incident Commander "assigns roles (SME, Scribe, Comms)", "assesses
severity" and escalates when the ladder is too slow; both plans post a status
with every update. Each command returns the change it made (None when it
changed nothing), without I/O, like :mod:`~sidecar.incidents.commands`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.errors import InvalidRequest, InvalidTransition
from sidecar.incidents.core import planned
from sidecar.incidents.model import Change, Effect, Incident, TimelineEvent, escalation_outcome
from sidecar.incidents.people import ROLES, describe, holder
from sidecar.incidents.stepping import Stepping


class Leading(Stepping):
    """The Incident Commander's commands."""

    @planned
    def assign_roles(
        self, incident: Incident, roles: Mapping[str, Any], *, actor: str, source: str, now: float
    ) -> Change | None:
        """Give (or, with None, take back) roles; open or resolved (the PIR owner comes late).

        ``roles`` maps role names (:data:`~sidecar.incidents.people.ROLES`) to a
        name, a list of names for ``smes``, or None. Raises
        :class:`~sidecar.errors.InvalidRequest` for an unknown role or a bad name.
        """
        inc = self.held(incident)
        wanted = {role: holder(role, value) for role, value in roles.items()}
        changed = {r: v for r, v in wanted.items() if inc.roles.get(r) != v}
        if not changed:
            return None
        undo = self._begin(inc.key, inc)
        current = dict(inc.roles)
        for role, value in changed.items():
            if value is None:
                current.pop(role, None)
            else:
                current[role] = value
        inc.roles = current
        events = [
            self.event(
                inc,
                now,
                "role_assigned" if value is not None else "role_cleared",
                source,
                actor,
                describe(role, value),
                {"role": role, "holder": value},
            )
            for role, value in sorted(changed.items(), key=lambda item: list(ROLES).index(item[0]))
        ]
        self._finish(inc)
        return Change(inc, events, [], undo)

    @planned
    def change_severity(
        self, incident_id: str, severity: str, *, actor: str, source: str, now: float, reason: str
    ) -> Change | None:
        """Set an open incident's severity by hand, up or down; None when it already has it.

        The new severity's clocks apply at once: what they make due already (a
        tighter acknowledgment deadline, an escalation step) is recorded with
        the change. Alerts already known no longer raise it (see ``grouping``).
        """
        inc = self._require_open(incident_id)
        try:
            new_rank = self.classifier.rank(severity)
        except KeyError:
            raise InvalidRequest(f"unknown severity {severity!r}") from None
        if not reason.strip():
            raise InvalidRequest("a severity change needs a reason")
        if severity == inc.severity:
            return None
        undo = self._begin(inc.key, inc)
        previous = inc.severity
        raised = new_rank < self.classifier.rank(previous)
        kind = "severity_raised" if raised else "severity_lowered"
        inc.severity = severity
        inc.severity_set_by = actor
        verb = "raised" if raised else "lowered"
        events: list[TimelineEvent] = [
            self.event(
                inc,
                now,
                kind,
                source,
                actor,
                f"severity {verb} from {previous} to {severity} by {actor}: {reason}",
                {"from": previous, "to": severity, "reason": reason},
            )
        ]
        effects = [
            Effect(
                kind,
                inc.id,
                severity,
                inc.team,
                previous_severity=previous,
                source=source,
                actor=actor,
                detail=reason,
            )
        ]
        self._settle(inc, now, events, effects)
        self._finish(inc)
        return Change(inc, events, effects, undo)

    @planned
    def escalate_to(
        self, incident_id: str, tier: str, *, actor: str, source: str, now: float, reason: str = ""
    ) -> Change:
        """Escalate an open incident to ``tier`` by hand: it pages the tier when routed.

        The tier is then escalated for this incident, as if its ladder step had
        come due: the step does not page it again. Raises
        :class:`~sidecar.errors.InvalidTransition` when it was escalated already.
        """
        inc = self._require_open(incident_id)
        if tier in inc.escalated:
            raise InvalidTransition(f"incident {inc.id} was escalated to {tier} already")
        undo = self._begin(inc.key, inc)
        outcome = escalation_outcome(False, tier in self.routed_tiers)
        inc.escalated = {**inc.escalated, tier: now}
        inc.escalation_outcomes = {**inc.escalation_outcomes, tier: outcome}
        what = "paged" if outcome == "paged" else "nobody routed (no PagerDuty routing key)"
        because = f": {reason}" if reason else ""
        events = [
            self.event(
                inc,
                now,
                "escalated",
                source,
                actor,
                f"escalated to {tier} by {actor}: {what}{because}",
                {"tier": tier, "outcome": outcome, "manual": True, "reason": reason},
            )
        ]
        effects = [
            Effect(
                "escalated",
                inc.id,
                inc.severity,
                inc.team,
                detail=tier,
                outcome=outcome,
                source=source,
                actor=actor,
            )
        ]
        self._finish(inc)
        return Change(inc, events, effects, undo)
