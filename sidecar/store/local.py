"""What a store that one process owns keeps in that process: no locks, leases, the budget.

SQLite (one process per file) and the in-memory store share it. Nobody else
writes, so the service's memory is the truth and nothing needs locking; the
outbox leases and the sends counted against each budget live in memory, and a
restart ends both with the process that held them.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager

from sidecar.store.base import LockedState, Version
from sidecar.store.queue import Claim, Claimant, OutboxItem, take_within_budget
from sidecar.store.rows import WriteBatch


class OneProcess(ABC):
    """Outbox claims and ``locked`` for a store with no other writer."""

    # Nobody else writes: the service trusts its memory (see Store.locked).
    shared = False

    def __init__(self) -> None:
        # Item id -> lease end, and per (integration, bucket) the times of the sends
        # counted against its budget, oldest first.
        self._leases: dict[int, float] = {}
        self._sends: dict[tuple[str, str], deque[float]] = {}
        self._claiming = asyncio.Lock()
        # Day -> the last incident number given on it, read from the rows the first
        # time a day is asked for, so that a restart never gives a number again.
        self._numbers: dict[str, int] = {}

    @abstractmethod
    async def write(self, batch: WriteBatch) -> None:
        """Write the batch in one durable transaction."""

    @abstractmethod
    async def _heads(self, integration: str, now: float, per_routing: int) -> list[OutboxItem]:
        """The integration's due heads, leased or not: the oldest ``per_routing`` per routing."""

    @abstractmethod
    async def _max_number(self, day: str) -> int:
        """The highest incident number stored for ``day``, 0 for none."""

    @asynccontextmanager
    async def locked(
        self,
        keys: Collection[str],
        ids: Collection[str],
        closed_since: float,
        known: Mapping[str, Version] = {},
    ) -> AsyncIterator[LockedState]:
        """No locks and no rows: writes go through :meth:`write` (see Store.locked)."""
        yield LockedState(set(keys), set(ids), [], [], self._write_numbered, self._last_number)

    async def _last_number(self, day: str) -> int:
        if day not in self._numbers:
            self._numbers[day] = await self._max_number(day)
        return self._numbers[day]

    async def _write_numbered(self, batch: WriteBatch) -> None:
        await self.write(batch)
        # Only once committed: numbers of a batch that failed were never stored,
        # and the next batch gives them again.
        for day, last in batch.numbers.items():
            self._numbers[day] = max(last, self._numbers.get(day, 0))

    async def claim_outbox(self, now: float, limit: int, claimant: Claimant) -> Claim:
        """Lease due heads within the budget (see Store.claim_outbox).

        A leased head is still its key's head, so the key's next item waits for it.
        """
        async with self._claiming:
            leased = self._leased(now)
            # Enough of each routing name that leased heads cannot crowd out free ones.
            heads = await self._heads(claimant.integration, now, limit + len(leased))
            free = [h for h in heads if h.id not in leased]
            budget = claimant.budget
            claim = take_within_budget(free, limit, budget, self._sent(claimant, now), now)
            for item in claim.items:
                self._leases[item.id] = now + claimant.lease_seconds
                bucket = budget.buckets.get(item.routing) if budget is not None else None
                if bucket is not None:
                    self._sends.setdefault((claimant.integration, bucket), deque()).append(now)
            return claim

    def _sent(self, claimant: Claimant, now: float) -> dict[str, list[float]]:
        """The claimant's sends still in its budget's window, per bucket."""
        budget = claimant.budget
        sent: dict[str, list[float]] = {}
        if budget is None:
            return sent
        for (integration, bucket), times in self._sends.items():
            if integration == claimant.integration:
                while times and times[0] <= now - budget.window:
                    times.popleft()
                sent[bucket] = list(times)
        return sent

    def _leased(self, now: float) -> set[int]:
        """Items under a live lease."""
        for item_id in [i for i, until in self._leases.items() if until <= now]:
            del self._leases[item_id]
        return set(self._leases)

    def _released(self, item_id: int) -> None:
        """End the item's lease (its outcome is recorded)."""
        self._leases.pop(item_id, None)
