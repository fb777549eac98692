"""Incidents and timeline events to the rows that store them, and back.

Every store writes and reads through these, so an incident read back from any of
them is the incident that was written.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter
from typing import Any

import orjson

from sidecar.incidents import Change, Incident, TimelineEvent
from sidecar.incidents.stored import restore
from sidecar.store.rows import DeliveryRow, EventRow, IncidentRow, WriteBatch

# The columns an incident holds as attributes of the same names (id to
# review_done_at), read in one call: one row is built per changed incident per
# commit, on the ingest path, so rows are made as the tuples they are (what
# ``_make`` does, less its length check: these lengths are fixed here).
_OWN_COLUMNS = attrgetter(*IncidentRow._fields[: IncidentRow._fields.index("updated_at")])
# A timeline event's fields are its row's, in the same order; only data is encoded.
_EVENT_FIELDS = attrgetter(*EventRow._fields[:-1])
_new = tuple.__new__


def incident_row(inc: Incident, now: float) -> IncidentRow:
    """The row that stores ``inc`` as of ``now``."""
    data = orjson.dumps(inc.data_json())
    return _new(IncidentRow, (*_OWN_COLUMNS(inc), now, data, inc.alerts_json()))


def row_alerts(row: IncidentRow) -> bytes:
    """The alerts document of an incident row."""
    return row.alerts


def incident_from_row(row: Iterable[Any]) -> Incident:
    """The incident a row of :class:`IncidentRow`'s columns, in order, stores."""
    # Unpacked, not wrapped in an IncidentRow, and passed on positionally (in
    # restore's order, not the row's): a restart decodes every open incident.
    # The data document goes as its bytes: restore decodes what it must of it.
    (
        id_,
        key,
        state,
        severity,
        team,
        started_at,
        triggered_at,
        acknowledged_at,
        resolved_at,
        review_due_at,
        review_done_at,
        number,
        _updated_at,
        data,
        alerts,
    ) = row
    return restore(
        Incident,
        id_,
        key,
        state,
        severity,
        team,
        started_at,
        triggered_at,
        acknowledged_at,
        resolved_at,
        review_due_at,
        review_done_at,
        number,
        data,
        alerts,
    )


def event_row(ev: TimelineEvent) -> EventRow:
    """The row that stores one timeline event."""
    return _new(EventRow, (*_EVENT_FIELDS(ev), orjson.dumps(dict(ev.data))))


def event_from_row(row: Iterable[Any]) -> TimelineEvent:
    """The timeline event a row of :class:`EventRow`'s columns, in order, stores."""
    r = EventRow._make(row)
    return TimelineEvent(*r[:-1], data=orjson.loads(r.data))


def write_batch(changes: list[Change], deliveries: list[DeliveryRow], now: float) -> WriteBatch:
    """What a batch of changes writes: each changed incident once, its events, its outbox."""
    write = WriteBatch(deliveries=deliveries)
    seen: dict[str, int] = {}
    for change in changes:
        write.outbox.extend(change.outbox)
        # An incident changed twice in one batch is written once, in its
        # final state, at its first position (open-before-reopen order).
        row = incident_row(change.incident, now)
        if change.incident.id in seen:
            write.incidents[seen[change.incident.id]] = row
        else:
            seen[change.incident.id] = len(write.incidents)
            write.incidents.append(row)
        write.events.extend(event_row(e) for e in change.events)
    return write
