"""SLA clocks and verdicts: when each deadline of an incident falls due, and whether it was met.

- :mod:`~sidecar.sla.clocks`: a severity's durations, the pending deadlines
  of an open incident, and when one counts as passed;
- :mod:`~sidecar.sla.calendar`: business time, after Alertmanager's time
  intervals: when a target in business time runs out, and how much elapsed;
- :mod:`~sidecar.sla.verdict`: the one verdict per SLA that the API, the
  review and (through the breaches the book records) the metrics share.

Recording what a due deadline does to an incident (a breach, an escalation)
is the incident book's (:mod:`sidecar.incidents.stepping`): the clocks here
are pure, so the incidents depend on them and never the reverse.
"""

from sidecar.sla.clocks import (
    ESCALATION,
    REMINDER,
    SLA_KINDS,
    Clocks,
    Policy,
    Target,
    is_due,
    is_strict,
    measured,
    next_deadline,
    passed,
    pending_deadlines,
    update_gap_start,
)

__all__ = [
    "ESCALATION",
    "REMINDER",
    "SLA_KINDS",
    "Clocks",
    "Policy",
    "Target",
    "is_due",
    "is_strict",
    "measured",
    "next_deadline",
    "passed",
    "pending_deadlines",
    "update_gap_start",
]
