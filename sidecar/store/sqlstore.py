"""What the SQL stores do alike: every read, and recording what a send came to.

A backend brings its statements (:class:`~sidecar.store.sql.Statements` in its
dialect) and three ways to run one on its own connections; it keeps its
connections, its locking, its writes and its migrations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar, TypeVar

from sidecar.incidents import Incident, TimelineEvent
from sidecar.store.base import IncidentQuery
from sidecar.store.codec import event_from_row, incident_from_row
from sidecar.store.queue import KeyPage, OutboxItem, Outcome, outbox_item
from sidecar.store.rows import PAGERDUTY
from sidecar.store.sql import Statements

T = TypeVar("T")


class SQLStore(ABC):
    """The reads and outbox outcomes of :class:`~sidecar.store.base.Store`, in SQL."""

    sql: ClassVar[Statements]

    @abstractmethod
    async def _rows(self, sql: str, params: Sequence[Any], convert: Callable[[Any], T]) -> list[T]:
        """Run a query; each row, converted, in order."""

    @abstractmethod
    async def _value(self, sql: str, params: Sequence[Any]) -> Any:
        """Run a query; the first column of its first row, None without a row."""

    @abstractmethod
    async def _update(self, sql: str, params: Sequence[Any]) -> None:
        """Run a statement that writes, and commit it durably."""

    def _leased(self, now: float) -> Collection[int]:
        """Outbox items leased in this process's memory (none where the table holds leases)."""
        return ()

    def _released(self, item_id: int) -> None:
        """The item's outcome is recorded: a lease held in memory ends (see ``_leased``)."""
        # Here there is none: recording the outcome cleared the lease in the table.
        return

    async def load_open(self) -> list[Incident]:
        """Every open incident."""
        return await self._rows(self.sql.load_open, (), incident_from_row)

    async def load_pending_reviews(self) -> list[Incident]:
        """Resolved incidents whose post-incident review is not done."""
        return await self._rows(self.sql.load_pending_reviews, (), incident_from_row)

    async def load_closed_since(self, since: float) -> list[Incident]:
        """Incidents resolved since ``since``, oldest first (so the latest of a key wins)."""
        return await self._rows(self.sql.load_closed_since, (since,), incident_from_row)

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        """Incidents matching the filters, newest first."""
        sql, params = self.sql.list_incidents(query)
        return await self._rows(sql, params, incident_from_row)

    async def get_incident(self, incident_id: str) -> Incident | None:
        """One incident by id."""
        rows = await self._rows(self.sql.get_incident, (incident_id,), incident_from_row)
        return rows[0] if rows else None

    async def incident_id_for_number(self, number: str) -> str | None:
        """The id of the incident with that plan number."""
        value = await self._value(self.sql.incident_id_for_number, (number,))
        return None if value is None else str(value)

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        """The incident's events in sequence order."""
        return await self._rows(self.sql.timeline, (incident_id,), event_from_row)

    async def ping(self) -> None:
        """A trivial query."""
        await self._value("SELECT 1", ())

    async def schema_version(self) -> int:
        """Highest applied migration."""
        return int(await self._value(self.sql.schema_version, ()))

    async def due_outbox(
        self, now: float, limit: int, integration: str = PAGERDUTY
    ) -> list[OutboxItem]:
        """Heads of the integration's per-dedup-key queues that are due and not leased."""
        leased = self._leased(now)
        params = (integration, now, limit + len(leased))
        heads = await self._rows(self.sql.due_heads, params, outbox_item)
        return [h for h in heads if h.id not in leased][:limit]

    async def finish_outbox(self, item_id: int, outcome: Outcome) -> None:
        """Record the outcome of a send, durably, then end its lease."""
        o = outcome
        params = (
            o.state,
            o.attempts,
            o.next_attempt_at,
            o.error,
            o.done_at,
            o.server_failures,
            o.receipt,
        )
        await self._update(self.sql.finish_outbox, (*params, item_id))
        self._released(item_id)

    async def outbox_pending(self, integration: str = PAGERDUTY) -> int:
        """Count of the integration's undelivered items."""
        return int(await self._value(self.sql.outbox_pending, (integration,)))

    async def outbox_for_incident(self, incident_id: str) -> list[OutboxItem]:
        """Every notification of the incident."""
        return await self._rows(self.sql.outbox_for_incident, (incident_id,), outbox_item)

    async def incident_for_dedup_key(
        self, dedup_key: str, integration: str = PAGERDUTY
    ) -> str | None:
        """The latest incident notified with ``dedup_key``."""
        value = await self._value(self.sql.incident_for_dedup_key, (dedup_key, integration))
        return None if value is None else str(value)

    async def latest_page(self, dedup_key: str, integration: str = PAGERDUTY) -> KeyPage | None:
        """The incident notified last with ``dedup_key``, as paged there."""
        rows = await self._rows(self.sql.latest_page, (dedup_key, integration), _key_page)
        return rows[0] if rows else None

    async def known_deliveries(self, source: str, since: float) -> list[str]:
        """Delivery ids of ``source`` received since ``since``."""
        return await self._rows(self.sql.known_deliveries, (source, since), _first)


def _first(row: Sequence[Any]) -> str:
    return str(row[0])


def _key_page(row: Sequence[Any]) -> KeyPage:
    incident_id, queued, earlier_done, waiting, follows = row
    sent_from = float(queued) if earlier_done is None else max(float(queued), float(earlier_done))
    return KeyPage(str(incident_id), math.inf if waiting else sent_from, bool(follows))
