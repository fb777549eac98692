"""A store that can be told to fail, wrapping a real one: the database "goes away" on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager

from sidecar.errors import StoreUnavailable
from sidecar.incidents import Incident, TimelineEvent
from sidecar.store.base import (
    PAGERDUTY,
    Claim,
    Claimant,
    IncidentQuery,
    KeyPage,
    LockedState,
    OutboxItem,
    Outcome,
    Store,
    Version,
    WriteBatch,
)


class FlakyStore:
    """Delegates to a real store unless ``down`` (everything fails) or ``fail_writes``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.shared = inner.shared
        self.down = False
        self.fail_writes = False
        self.writes = 0
        self._through: Callable[[WriteBatch], Awaitable[None]] | None = None

    def _check(self, write: bool = False) -> None:
        if self.down or (write and self.fail_writes):
            raise StoreUnavailable("database is unavailable (injected)")

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, batch: WriteBatch) -> None:
        self._check(write=True)
        await (self._through or self.inner.write)(batch)
        self.writes += 1

    @asynccontextmanager
    async def locked(
        self,
        keys: Collection[str],
        ids: Collection[str],
        closed_since: float,
        known: Mapping[str, Version] = {},
    ) -> AsyncIterator[LockedState]:
        self._check()
        async with self.inner.locked(keys, ids, closed_since, known) as state:
            if not self.inner.shared:
                # Writes go through this fake's write (and a subclass's override),
                # and then the locked state's own (which also keeps the numbers).
                through = state.write

                async def write_through(batch: WriteBatch) -> None:
                    self._through = through
                    try:
                        await self.write(batch)
                    finally:
                        self._through = None

                state.write = write_through
            else:
                inner_write = state.write

                async def write(batch: WriteBatch) -> None:
                    self._check(write=True)
                    await inner_write(batch)
                    self.writes += 1

                state.write = write
            yield state

    async def load_open(self) -> list[Incident]:
        self._check()
        return await self.inner.load_open()

    async def load_pending_reviews(self) -> list[Incident]:
        self._check()
        return await self.inner.load_pending_reviews()

    async def load_closed_since(self, since: float) -> list[Incident]:
        self._check()
        return await self.inner.load_closed_since(since)

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        self._check()
        return await self.inner.list_incidents(query)

    async def get_incident(self, incident_id: str) -> Incident | None:
        self._check()
        return await self.inner.get_incident(incident_id)

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        self._check()
        return await self.inner.timeline(incident_id)

    async def ping(self) -> None:
        self._check()
        await self.inner.ping()

    async def schema_version(self) -> int:
        return await self.inner.schema_version()

    async def due_outbox(
        self, now: float, limit: int, integration: str = PAGERDUTY
    ) -> list[OutboxItem]:
        self._check()
        return await self.inner.due_outbox(now, limit, integration)

    async def claim_outbox(self, now: float, limit: int, claimant: Claimant) -> Claim:
        self._check()
        return await self.inner.claim_outbox(now, limit, claimant)

    async def finish_outbox(self, item_id: int, outcome: Outcome) -> None:
        self._check(write=True)
        await self.inner.finish_outbox(item_id, outcome)

    async def outbox_pending(self, integration: str = PAGERDUTY) -> int:
        self._check()
        return await self.inner.outbox_pending(integration)

    async def outbox_for_incident(self, incident_id: str) -> list[OutboxItem]:
        self._check()
        return await self.inner.outbox_for_incident(incident_id)

    async def incident_for_dedup_key(
        self, dedup_key: str, integration: str = PAGERDUTY
    ) -> str | None:
        self._check()
        return await self.inner.incident_for_dedup_key(dedup_key, integration)

    async def latest_page(self, dedup_key: str, integration: str = PAGERDUTY) -> KeyPage | None:
        self._check()
        return await self.inner.latest_page(dedup_key, integration)

    async def known_deliveries(self, source: str, since: float) -> list[str]:
        self._check()
        return await self.inner.known_deliveries(source, since)
