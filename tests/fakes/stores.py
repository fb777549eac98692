"""A store that can be told to fail, wrapping a real one: the database "goes away" on demand."""

from __future__ import annotations

from sidecar.errors import StoreUnavailable
from sidecar.incidents import Incident, TimelineEvent
from sidecar.store.base import IncidentQuery, Store, WriteBatch


class FlakyStore:
    """Delegates to a real store unless ``down`` (everything fails) or ``fail_writes``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False
        self.fail_writes = False
        self.writes = 0

    def _check(self, write: bool = False) -> None:
        if self.down or (write and self.fail_writes):
            raise StoreUnavailable("database is unavailable (injected)")

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, batch: WriteBatch) -> None:
        self._check(write=True)
        await self.inner.write(batch)
        self.writes += 1

    async def load_open(self) -> list[Incident]:
        self._check()
        return await self.inner.load_open()

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
