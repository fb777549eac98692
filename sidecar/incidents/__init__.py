"""Incidents: the model, the book that moves them through their lifecycle, and its parts.

- :mod:`~sidecar.incidents.model`: the data (incident, alerts, timeline events, changes);
- :mod:`~sidecar.incidents.book`: :class:`IncidentBook`, made of
  :mod:`~sidecar.incidents.core`, :mod:`~sidecar.incidents.stepping`,
  :mod:`~sidecar.incidents.grouping` and :mod:`~sidecar.incidents.commands`;
- :mod:`~sidecar.incidents.closed`: the log of closed episodes against late duplicates;
- :mod:`~sidecar.incidents.ids`: incident ids; :mod:`~sidecar.incidents.numbers`: the plan's
  incident numbers (``2026-11-30-001``);
- :mod:`~sidecar.incidents.people`: the plan's roles and statuses.
"""

from sidecar.incidents.book import IncidentBook
from sidecar.incidents.core import ClassificationLike, Classifier
from sidecar.incidents.ids import new_incident_id
from sidecar.incidents.model import (
    ESCALATION_OUTCOMES,
    NO_OUTCOMES,
    NOTHING,
    AlertState,
    Change,
    Effect,
    EscalationOutcome,
    Incident,
    State,
    TimelineEvent,
    decode_alerts,
    escalation_outcome,
    interned,
)
from sidecar.incidents.numbers import Numbering, is_number, war_room

__all__ = [
    "ESCALATION_OUTCOMES",
    "NOTHING",
    "NO_OUTCOMES",
    "AlertState",
    "Change",
    "ClassificationLike",
    "Classifier",
    "Effect",
    "EscalationOutcome",
    "Incident",
    "IncidentBook",
    "Numbering",
    "State",
    "TimelineEvent",
    "decode_alerts",
    "escalation_outcome",
    "interned",
    "is_number",
    "new_incident_id",
    "war_room",
]
