"""A store in memory, for tests: the whole Store interface, with SQLite's semantics.

It holds the rows the SQL stores write (:mod:`sidecar.store.codec` both ways), so
an incident read back is a new object, decoded as after a restart; it keeps one
open incident per key, refusing a batch that breaks the rule as a whole, and its
outbox keeps per-key order, leases and the send budget as SQLite does
(:mod:`sidecar.store.local`). The rows live in :class:`Tables`, which outlive a
store: a new store on the same tables is a restart on the same database.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sidecar.errors import StoreUnavailable
from sidecar.incidents import Incident, TimelineEvent
from sidecar.store.base import IncidentQuery
from sidecar.store.codec import event_from_row, incident_from_row
from sidecar.store.local import OneProcess
from sidecar.store.queue import KeyPage, OutboxItem, Outcome
from sidecar.store.rows import PAGERDUTY, EventRow, IncidentRow, WriteBatch


@dataclass(slots=True)
class Tables:
    """The rows of one in-memory database."""

    incidents: dict[str, IncidentRow] = field(default_factory=dict)
    # key -> id of its open incident
    open_keys: dict[str, str] = field(default_factory=dict)
    events: dict[str, dict[int, EventRow]] = field(default_factory=dict)
    outbox: dict[int, OutboxItem] = field(default_factory=dict)
    last_outbox_id: int = 0
    deliveries: dict[tuple[str, str], float] = field(default_factory=dict)


class MemoryStore(OneProcess):
    """The :class:`~sidecar.store.base.Store` interface over :class:`Tables`."""

    def __init__(self, tables: Tables | None = None) -> None:
        super().__init__()
        self.tables = Tables() if tables is None else tables
        self._opened = False
        self._closed = False

    def _t(self) -> Tables:
        if self._closed:
            raise StoreUnavailable("store is closed")
        if not self._opened:
            raise StoreUnavailable("store is not open")
        return self.tables

    async def open(self) -> None:
        """Nothing to connect to or migrate."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        self._opened = True

    async def close(self) -> None:
        """Refuse every call from now on; the tables stay."""
        self._closed = True

    async def ping(self) -> None:
        """Answers while open."""
        self._t()

    async def schema_version(self) -> int:
        """0: there is no schema to migrate."""
        self._t()
        return 0

    # -- writes -----------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        """Apply the batch, all of it or (when it breaks a rule) none of it."""
        t = self._t()
        incidents, open_keys = _upserted(t, batch.incidents)
        t.incidents.update(incidents)
        for key, holder in open_keys.items():
            if holder is None:
                t.open_keys.pop(key, None)
            else:
                t.open_keys[key] = holder
        for ev in batch.events:
            t.events.setdefault(ev.incident_id, {}).setdefault(ev.seq, ev)
        for row in batch.outbox:
            t.last_outbox_id += 1
            n = t.last_outbox_id
            # Due as soon as it is queued.
            t.outbox[n] = OutboxItem(
                **dataclasses.asdict(row),
                id=n,
                state="pending",
                attempts=0,
                next_attempt_at=row.created_at,
                last_error=None,
                done_at=None,
            )
        for d in batch.deliveries:
            t.deliveries.setdefault((d.source, d.id), d.received_at)

    # -- reads ------------------------------------------------------------

    def _incidents(self, rows: Iterable[IncidentRow]) -> list[Incident]:
        return [incident_from_row(r) for r in rows]

    async def load_open(self) -> list[Incident]:
        """Every open incident."""
        return self._incidents(r for r in self._t().incidents.values() if r.state != "resolved")

    async def load_pending_reviews(self) -> list[Incident]:
        """Resolved incidents whose post-incident review is not done."""
        rows = self._t().incidents.values()
        return self._incidents(
            r
            for r in rows
            if r.state == "resolved" and r.review_due_at is not None and r.review_done_at is None
        )

    async def load_closed_since(self, since: float) -> list[Incident]:
        """Incidents resolved since ``since``, oldest first (so the latest of a key wins)."""
        rows = self._t().incidents.values()
        closed = [r for r in rows if r.state == "resolved" and (r.resolved_at or 0.0) >= since]
        return self._incidents(sorted(closed, key=lambda r: (r.resolved_at or 0.0, r.id)))

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        """Incidents matching the filters, newest first (ties by id)."""
        rows = list(self._t().incidents.values())
        if query.state == "open":
            rows = [r for r in rows if r.state != "resolved"]
        elif query.state:
            rows = [r for r in rows if r.state == query.state]
        rows = [r for r in rows if query.severity in (None, "", r.severity)]
        rows = [r for r in rows if query.team in (None, "", r.team)]
        rows.sort(key=lambda r: r.id)
        rows.sort(key=lambda r: r.triggered_at, reverse=True)
        return self._incidents(rows[query.offset : query.offset + query.limit])

    async def get_incident(self, incident_id: str) -> Incident | None:
        """One incident by id."""
        row = self._t().incidents.get(incident_id)
        return None if row is None else incident_from_row(row)

    async def incident_id_for_number(self, number: str) -> str | None:
        """The id of the incident with that plan number."""
        rows = self._t().incidents.values()
        return next((r.id for r in rows if r.number == number), None)

    async def _max_number(self, day: str) -> int:
        rows = self._t().incidents.values()
        prefix = f"{day}-"
        numbers = (r.number or "" for r in rows)
        return max((int(n[len(prefix) :]) for n in numbers if n.startswith(prefix)), default=0)

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        """The incident's events in sequence order."""
        events = self._t().events.get(incident_id, {})
        return [event_from_row(events[seq]) for seq in sorted(events)]

    async def known_deliveries(self, source: str, since: float) -> list[str]:
        """Delivery ids of ``source`` received since ``since``."""
        seen = self._t().deliveries.items()
        return [d for (s, d), at in seen if s == source and at >= since]

    # -- outbox -----------------------------------------------------------

    def _due(self, integration: str, now: float) -> list[OutboxItem]:
        """The integration's due heads (the oldest pending item of each dedup key)."""
        keys: set[str] = set()
        heads = []
        for item in self._t().outbox.values():
            if item.state == "pending" and item.integration == integration:
                if item.dedup_key not in keys and item.next_attempt_at <= now:
                    heads.append(item)
                keys.add(item.dedup_key)
        return heads

    async def _heads(self, integration: str, now: float, per_routing: int) -> list[OutboxItem]:
        taken: Counter[str] = Counter()
        heads = []
        for item in self._due(integration, now):
            taken[item.routing] += 1
            if taken[item.routing] <= per_routing:
                heads.append(item)
        return heads

    async def due_outbox(
        self, now: float, limit: int, integration: str = PAGERDUTY
    ) -> list[OutboxItem]:
        """Heads of the integration's per-dedup-key queues that are due and not leased."""
        leased = self._leased(now)
        return [h for h in self._due(integration, now) if h.id not in leased][:limit]

    async def finish_outbox(self, item_id: int, outcome: Outcome) -> None:
        """Record the outcome of a send, then end its lease."""
        t = self._t()
        if item_id in t.outbox:
            t.outbox[item_id] = dataclasses.replace(
                t.outbox[item_id],
                state=outcome.state,
                attempts=outcome.attempts,
                next_attempt_at=outcome.next_attempt_at,
                last_error=outcome.error,
                done_at=outcome.done_at,
                server_failures=outcome.server_failures,
                receipt=outcome.receipt,
            )
        self._released(item_id)

    async def outbox_pending(self, integration: str = PAGERDUTY) -> int:
        """Count of the integration's undelivered items."""
        items = self._t().outbox.values()
        return sum(1 for i in items if i.state == "pending" and i.integration == integration)

    async def outbox_for_incident(self, incident_id: str) -> list[OutboxItem]:
        """Every notification of the incident."""
        return [i for i in self._t().outbox.values() if i.incident_id == incident_id]

    async def incident_for_dedup_key(
        self, dedup_key: str, integration: str = PAGERDUTY
    ) -> str | None:
        """The latest incident notified with ``dedup_key``."""
        for item in reversed(self._t().outbox.values()):
            if item.dedup_key == dedup_key and item.integration == integration:
                return item.incident_id
        return None

    async def latest_page(self, dedup_key: str, integration: str = PAGERDUTY) -> KeyPage | None:
        """The incident notified last with ``dedup_key``, as paged there."""
        items = [
            i
            for i in self._t().outbox.values()
            if i.dedup_key == dedup_key and i.integration == integration
        ]
        if not items:
            return None
        latest = max(items, key=lambda i: i.id).incident_id
        triggers = [i for i in items if i.action == "trigger" and i.incident_id == latest]
        if not triggers:
            return None
        first = min(triggers, key=lambda i: i.id)
        before = [i for i in items if i.id < first.id]
        done = [i.done_at for i in before if i.done_at is not None]
        waiting = any(i.state == "pending" for i in before)
        follows = any(i.action == "trigger" and i.incident_id != latest for i in before)
        sent_from = math.inf if waiting else max([first.created_at, *done])
        return KeyPage(latest, sent_from, follows)


def _upserted(
    t: Tables, rows: Iterable[IncidentRow]
) -> tuple[dict[str, IncidentRow], dict[str, str | None]]:
    """The rows as an upsert leaves them, and the keys whose open incident they change.

    A key maps to its new open incident, or to None when its open incident closed.

    Raises StoreUnavailable, as a refused transaction does, when a row would open
    a second incident for a key; nothing is applied then.
    """
    staged: dict[str, IncidentRow] = {}
    keys: dict[str, str | None] = {}
    for row in rows:
        old = staged.get(row.id) or t.incidents.get(row.id)
        if old is not None:
            # An upsert keeps the key and trigger time of the first write.
            row = row._replace(key=old.key, triggered_at=old.triggered_at)
        holder = keys[row.key] if row.key in keys else t.open_keys.get(row.key)
        if row.state != "resolved":
            if holder not in (None, row.id):
                raise StoreUnavailable(f"incident {row.id}: key {row.key!r} has an open incident")
            keys[row.key] = row.id
        elif holder == row.id:
            keys[row.key] = None
        staged[row.id] = row
    return staged, keys
