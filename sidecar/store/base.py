"""The store interface and the row shapes every implementation writes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from sidecar.incidents import Incident, TimelineEvent

IncidentRow = tuple[
    str,
    str,
    str,
    str,
    str,
    float,
    float,
    float | None,
    float | None,
    float,
    bytes,
    float | None,
    float | None,
    bytes,
]
EventRow = tuple[str, int, float, str, str, str | None, str, bytes]

INCIDENT_COLUMNS = (
    "id, key, state, severity, team, started_at, triggered_at, acknowledged_at, resolved_at, "
    "updated_at, data, review_due_at, review_done_at, alerts"
)


def incident_row(inc: Incident, now: float) -> IncidentRow:
    """The row that stores ``inc`` (indexed columns plus a JSON document)."""
    return (
        inc.id,
        inc.key,
        inc.state,
        inc.severity,
        inc.team,
        inc.started_at,
        inc.triggered_at,
        inc.acknowledged_at,
        inc.resolved_at,
        now,
        orjson.dumps(inc.data_json()),
        inc.review_due_at,
        inc.review_done_at,
        inc.alerts_json(),
    )


def row_alerts(row: IncidentRow) -> bytes:
    """The alerts document of an incident row."""
    return row[13]


def event_row(ev: TimelineEvent) -> EventRow:
    """The row that stores one timeline event."""
    return (
        ev.incident_id,
        ev.seq,
        ev.at,
        ev.kind,
        ev.source,
        ev.actor,
        ev.message,
        orjson.dumps(dict(ev.data)),
    )


def incident_from_row(row: tuple[Any, ...]) -> Incident:
    """Inverse of :func:`incident_row` (columns in ``INCIDENT_COLUMNS`` order)."""
    return Incident.from_columns(
        id=row[0],
        key=row[1],
        state=row[2],
        severity=row[3],
        team=row[4],
        started_at=row[5],
        triggered_at=row[6],
        acknowledged_at=row[7],
        resolved_at=row[8],
        data=orjson.loads(row[10]),
        review_due_at=row[11],
        review_done_at=row[12],
        alerts_doc=row[13],
    )


def event_from_row(row: tuple[Any, ...]) -> TimelineEvent:
    """Inverse of :func:`event_row`."""
    return TimelineEvent(
        incident_id=row[0],
        seq=row[1],
        at=row[2],
        kind=row[3],
        source=row[4],
        actor=row[5],
        message=row[6],
        data=orjson.loads(row[7]),
    )


# (incident_id, dedup_key, routing, action, body, created_at)
OutboxRow = tuple[str, str, str, str, bytes, float]
# (delivery id, source, received_at)
DeliveryRow = tuple[str, str, float]


@dataclass(slots=True)
class WriteBatch:
    """Everything one group commit writes, in order, in one transaction."""

    incidents: list[IncidentRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.incidents or self.events or self.outbox or self.deliveries)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A PagerDuty event waiting in (or done with) the outbox.

    ``routing`` names the routing key (``default``, ``team:x``, ``tier:y``);
    the key itself is looked up at send time and never stored.
    """

    id: int
    incident_id: str
    dedup_key: str
    routing: str
    action: str
    body: bytes
    created_at: float
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    done_at: float | None
    # 5xx, timeouts and network errors met so far (429s not counted): the
    # exponent of the backoff, so that a 429 does not lengthen a later one.
    server_failures: int = 0


@dataclass(frozen=True, slots=True)
class RateBudget:
    """How many events each routing key may send per rolling window, all replicas together.

    ``buckets`` maps a routing name to the budget it draws from: names that hold
    the same routing key share one, since PagerDuty limits per key. An event of
    a name missing from it (no longer configured) draws from none.
    """

    per_window: int
    window: float
    buckets: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`Store.claim_outbox` leased, and when a spent budget lets more go."""

    items: list[OutboxItem]
    # The earliest time a head held back by a spent budget may be claimed; None
    # when the budget held nothing back.
    held_until: float | None = None


def take_within_budget(
    heads: Sequence[OutboxItem],
    limit: int,
    budget: RateBudget | None,
    sent: Mapping[str, Sequence[float]],
    now: float,
) -> Claim:
    """The oldest ``heads`` (at most ``limit``) that each bucket's budget lets go now.

    ``sent`` holds, per bucket, the times (ascending) of the sends counted in the
    window ending at ``now``; each head taken counts as a send at ``now``. Both
    stores pick through this, so they share one rule.
    """
    taken: list[OutboxItem] = []
    counted = {bucket: sorted(times) for bucket, times in sent.items()}
    held: set[str] = set()
    for item in sorted(heads, key=lambda i: i.id):
        if len(taken) >= limit:
            break
        bucket = budget.buckets.get(item.routing) if budget is not None else None
        if bucket is None:
            taken.append(item)
            continue
        assert budget is not None
        times = counted.setdefault(bucket, [])
        if len(times) >= budget.per_window:
            held.add(bucket)
            continue
        times.append(now)
        taken.append(item)
    held_until = None
    if held and budget is not None:
        # A bucket frees once enough of its sends leave the window.
        held_until = min(
            counted[b][len(counted[b]) - budget.per_window] + budget.window for b in held
        )
    return Claim(taken, held_until)


@dataclass(slots=True)
class LockedState:
    """What :meth:`Store.locked` hands the service: current rows, and how to write.

    For a shared store (several replicas) the rows are the truth the service
    refreshes its memory from before applying commands; ``write`` commits in the
    same transaction, so the keys stay locked from read to commit.
    """

    keys: set[str]
    ids: set[str]
    incidents: list[Incident]
    recently_closed: list[Incident]
    write: Callable[[WriteBatch], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class IncidentQuery:
    """Filters for listing incidents; ``state`` may be ``open`` for triggered or acknowledged."""

    state: str | None = None
    severity: str | None = None
    team: str | None = None
    limit: int = 100


# Predicates both stores share, in SQL both dialects read the same way.
OPEN = "state <> 'resolved'"
REVIEW_PENDING = "review_due_at IS NOT NULL AND review_done_at IS NULL AND state = 'resolved'"


def query_filters(query: IncidentQuery, placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its parameters for ``query``, in either SQL dialect.

    ``placeholder(n)`` renders the n-th parameter (``?`` or ``$n``); the limit is
    the last parameter, for the caller's ``LIMIT``.
    """
    where: list[str] = []
    params: list[Any] = []
    if query.state == "open":
        where.append(OPEN)
    for column, value in (
        ("state", None if query.state == "open" else query.state),
        ("severity", query.severity),
        ("team", query.team),
    ):
        if value:
            params.append(value)
            where.append(f"{column} = {placeholder(len(params))}")
    params.append(query.limit)
    return (" WHERE " + " AND ".join(where) if where else ""), params


class Store(Protocol):
    """Durable storage of incidents and their timelines.

    Every method raises :class:`sidecar.errors.StoreUnavailable` when the
    backend cannot serve it; ``write`` returns only once the batch is durable.
    ``shared`` is True when other processes write to the same store.
    """

    shared: bool

    def locked(
        self, keys: Collection[str], ids: Collection[str], closed_since: float
    ) -> AbstractAsyncContextManager[LockedState]:
        """A transaction that locks ``keys`` (and the keys of ``ids``) until it commits.

        It yields the open incidents of those keys and ids, and the latest
        incident of each key resolved since ``closed_since``; a single-process
        store may yield nothing and lock nothing, its memory being the truth.
        """
        ...

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None:
        """Release connections."""

    async def write(self, batch: WriteBatch) -> None:
        """Upsert incidents and append events in one durable transaction."""

    async def load_open(self) -> list[Incident]:
        """Every open incident (at start)."""
        ...

    async def load_pending_reviews(self) -> list[Incident]:
        """Resolved incidents whose post-incident review is not done (at start)."""
        ...

    async def load_closed_since(self, since: float) -> list[Incident]:
        """The latest resolved incident of each key resolved after ``since``."""
        ...

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        """Incidents matching ``query``, newest first."""
        ...

    async def get_incident(self, incident_id: str) -> Incident | None:
        """One incident, open or not."""
        ...

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        """An incident's events in order."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def due_outbox(self, now: float, limit: int) -> list[OutboxItem]:
        """The oldest pending event of each dedup key, if due (per-key order is kept)."""
        ...

    async def claim_outbox(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        owner: str,
        budget: RateBudget | None = None,
    ) -> Claim:
        """Like ``due_outbox``, leased to ``owner`` so no other worker sends them meanwhile.

        With a ``budget``, no more is claimed per bucket than its budget allows
        right now, counting what every worker claimed in the window, so that
        nothing claimed has to wait before it is sent (and no lease lapses while
        it waits). A lease lasts until ``finish_outbox`` or ``now + lease_seconds``.
        """
        ...

    async def finish_outbox(
        self,
        item_id: int,
        *,
        state: str,
        attempts: int,
        next_attempt_at: float,
        error: str | None,
        now: float,
        server_failures: int = 0,
    ) -> None:
        """Record a send's outcome (``delivered``, ``dead`` or still ``pending``); end its lease."""

    async def outbox_pending(self) -> int:
        """How many events wait for delivery."""
        ...

    async def outbox_for_incident(self, incident_id: str) -> list[OutboxItem]:
        """An incident's PagerDuty events, oldest first."""
        ...

    async def incident_for_dedup_key(self, dedup_key: str) -> str | None:
        """The latest incident paged with ``dedup_key`` (PagerDuty's alert_key)."""
        ...

    async def known_deliveries(self, source: str, since: float) -> list[str]:
        """Inbound webhook delivery ids seen since ``since`` (for deduplication)."""
        ...

    async def schema_version(self) -> int:
        """The applied schema migration version."""
        ...
