"""The store interface: what the service, the workers and the API ask of any store.

The row types, their codec and the outbox's types live beside it (``rows``,
``codec``, ``queue``) and are named here too, as callers have always imported them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sidecar.incidents import Incident, TimelineEvent
from sidecar.store.codec import (
    event_from_row,
    event_row,
    incident_from_row,
    incident_row,
    row_alerts,
    write_batch,
)
from sidecar.store.queue import (
    Claim,
    Claimant,
    KeyPage,
    OutboxItem,
    Outcome,
    RateBudget,
    take_within_budget,
)
from sidecar.store.rows import (
    INCIDENT_COLUMNS,
    PAGERDUTY,
    DeliveryRow,
    EventRow,
    IncidentRow,
    OutboxRow,
    WriteBatch,
)

__all__ = [
    "INCIDENT_COLUMNS",
    "PAGERDUTY",
    "Claim",
    "Claimant",
    "DeliveryRow",
    "EventRow",
    "IncidentQuery",
    "IncidentRow",
    "KeyPage",
    "LockedRead",
    "LockedState",
    "OutboxItem",
    "OutboxRow",
    "Outcome",
    "RateBudget",
    "ReadsUnderLock",
    "Store",
    "Version",
    "WriteBatch",
    "event_from_row",
    "event_row",
    "incident_from_row",
    "incident_row",
    "row_alerts",
    "take_within_budget",
    "write_batch",
]


# What tells one stored version of an incident's row from another (PostgreSQL: the
# row's xmin, the id of the transaction that wrote it, and its updated_at).
Version = tuple[int, float]


@dataclass(slots=True)
class LockedRead:
    """The current rows of some keys and ids, as read while holding their locks."""

    keys: set[str]
    ids: set[str]
    incidents: list[Incident]
    recently_closed: list[Incident]
    # The version of each open row read, by incident id (empty where not kept).
    versions: dict[str, Version] = field(default_factory=dict, kw_only=True)
    # Ids of the rows read that are at the version the caller said it holds
    # (``known``): neither sent nor decoded, and not in ``incidents``; the
    # caller's incident in memory stands for each.
    unchanged: set[str] = field(default_factory=set, kw_only=True)


@dataclass(slots=True)
class LockedState(LockedRead):
    """What :meth:`Store.locked` hands the service: current rows, and how to write.

    For a shared store (several replicas) the rows are the truth the service
    refreshes its memory from before applying commands; ``write`` commits in the
    same transaction, so the keys stay locked from read to commit.
    """

    write: Callable[[WriteBatch], Awaitable[None]]
    # The last incident number given on a day (``2026-11-30``), 0 for none; with
    # replicas, the day's counter stays locked until this transaction ends, and
    # the batch's ``numbers`` move it on.
    last_number: Callable[[str], Awaitable[int]]


@runtime_checkable
class ReadsUnderLock(Protocol):
    """A shared store that can read keys' rows under their locks without a transaction."""

    async def read_locked(
        self, keys: Collection[str], closed_since: float, known: Mapping[str, Version] = {}
    ) -> LockedRead:
        """Wait for the keys' locks, read as :meth:`Store.locked` does, release them.

        One round trip. Nothing may be written on what it read: a batch that
        turns out to change something runs again under :meth:`Store.locked`.
        """
        ...


@dataclass(frozen=True, slots=True)
class IncidentQuery:
    """Filters for listing incidents; ``state`` may be ``open`` for triggered or acknowledged."""

    state: str | None = None
    severity: str | None = None
    team: str | None = None
    limit: int = 100
    # Rows to skip first, for paging (the pages' resolved incidents).
    offset: int = 0


class Store(Protocol):
    """Durable storage of incidents and their timelines.

    Every method raises :class:`sidecar.errors.StoreUnavailable` when the
    backend cannot serve it; ``write`` returns only once the batch is durable.
    ``shared`` is True when other processes write to the same store.
    """

    shared: bool

    def locked(
        self,
        keys: Collection[str],
        ids: Collection[str],
        closed_since: float,
        known: Mapping[str, Version] = {},
    ) -> AbstractAsyncContextManager[LockedState]:
        """A transaction that locks ``keys`` (and the keys of ``ids``) until it commits.

        It yields the open incidents of those keys and ids, and the latest
        incident of each key resolved since ``closed_since``; a single-process
        store may yield nothing and lock nothing, its memory being the truth.
        An open row whose version is the one ``known`` gives for its id is
        yielded as unchanged, not decoded.
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

    async def incident_id_for_number(self, number: str) -> str | None:
        """The id of the incident with that plan number (``2026-11-30-001``)."""
        ...

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        """An incident's events in order."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def due_outbox(
        self, now: float, limit: int, integration: str = PAGERDUTY
    ) -> list[OutboxItem]:
        """The oldest pending item of each dedup key, if due and not leased (per-key order)."""
        ...

    async def claim_outbox(self, now: float, limit: int, claimant: Claimant) -> Claim:
        """Like ``due_outbox``, for the claimant's integration, leased to the claimant.

        No other worker gets them while the lease lasts. With a budget, no more is
        claimed per bucket than it allows right now, counting what every worker
        claimed in the window, so that nothing claimed has to wait before it is
        sent (and no lease lapses while it waits).
        """
        ...

    async def finish_outbox(self, item_id: int, outcome: Outcome) -> None:
        """Record the outcome of a send, and end its lease."""

    async def outbox_pending(self, integration: str = PAGERDUTY) -> int:
        """How many items of the integration wait for delivery."""
        ...

    async def outbox_for_incident(self, incident_id: str) -> list[OutboxItem]:
        """An incident's notifications, every integration's, oldest first."""
        ...

    async def incident_for_dedup_key(
        self, dedup_key: str, integration: str = PAGERDUTY
    ) -> str | None:
        """The latest incident notified with ``dedup_key`` (PagerDuty's alert_key)."""
        ...

    async def latest_page(self, dedup_key: str, integration: str = PAGERDUTY) -> KeyPage | None:
        """The incident notified last with ``dedup_key``, as paged there; None if not triggered."""
        ...

    async def known_deliveries(self, source: str, since: float) -> list[str]:
        """Inbound webhook delivery ids seen since ``since`` (for deduplication)."""
        ...

    async def schema_version(self) -> int:
        """The applied schema migration version (0 for a store without a schema)."""
        ...
