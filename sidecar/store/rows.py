"""The rows every store writes: one named type per table, its fields the table's columns.

The SQL of :mod:`sidecar.store.sql` is written from these fields, and a row is a
tuple (but for the outbox's), so it goes to a driver as it is. Nothing here imports the rest of the
sidecar: the domain can name a row type without depending on a store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import NamedTuple

#: The first integration, and the one a caller means when it names none.
PAGERDUTY = "pagerduty"
#: The other integrations' names, as their outbox rows and metrics carry them.
SLACK = "slack"
WEBHOOK = "webhook"
JIRA = "jira"


class IncidentRow(NamedTuple):
    """An incident: its indexed columns, then its JSON documents."""

    id: str
    key: str
    state: str
    severity: str
    team: str
    started_at: float
    triggered_at: float
    acknowledged_at: float | None
    resolved_at: float | None
    review_due_at: float | None
    review_done_at: float | None
    # The plan's incident number, unique (``2026-11-30-001``); None on rows from before.
    number: str | None
    updated_at: float
    # Every other field of the incident.
    data: bytes
    # Apart from data: a restored incident holds them undecoded until first read.
    alerts: bytes


class EventRow(NamedTuple):
    """One timeline event (the fields of ``TimelineEvent``, its data as JSON)."""

    incident_id: str
    seq: int
    at: float
    kind: str
    source: str
    actor: str | None
    message: str
    data: bytes


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A notification queued by the change that causes it, for one integration to deliver.

    ``routing`` names where the integration sends it (for PagerDuty ``default``,
    ``team:x`` or ``tier:y``, a routing key looked up at send time and never stored).
    A dataclass rather than a tuple, so that a queued item can be one (see
    ``OutboxItem``); few are written, one per notification.
    """

    integration: str
    incident_id: str
    dedup_key: str
    routing: str
    action: str
    body: bytes
    created_at: float


class DeliveryRow(NamedTuple):
    """An inbound webhook delivery, kept to recognise its redelivery."""

    id: str
    source: str
    received_at: float


INCIDENT_COLUMNS = ", ".join(IncidentRow._fields)
OUTBOX_COLUMNS = tuple(f.name for f in fields(OutboxRow))
#: An outbox row's values in column order, as a driver takes them.
outbox_values = attrgetter(*OUTBOX_COLUMNS)


@dataclass(slots=True)
class WriteBatch:
    """Everything one group commit writes, in order, in one transaction."""

    incidents: list[IncidentRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)
    # Day -> the last incident number given on it, when this batch gave any.
    numbers: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.incidents or self.events or self.outbox or self.deliveries)
