"""Replicas follow each other: what another replica committed reaches this one's memory.

Every replica keeps the open incidents in memory (deadlines, gauges, the API's
reads), while several write to one PostgreSQL. Each transaction that writes
incidents numbers their ids in commit order in a change feed and notifies the
listeners (:mod:`sidecar.store.postgres`). The :class:`ReplicaFollower` wakes
on a notification (or every ``poll_interval``, should one be missed), reads the
changes after the last number it read and has the service re-read just those
incidents from the store in its commit loop (:meth:`IncidentService.refresh`):
the work is proportional to what changed, never to what is open.

A notification lost while the listening connection was down costs nothing: the
next read starts from the last number read. Only a replica cut off for longer
than the feed keeps changes reloads everything, as at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from sidecar.errors import StoreUnavailable
from sidecar.service import IncidentService
from sidecar.tasks import BackgroundTask, wait_event

log = logging.getLogger("sidecar.replicas")


class Listening(Protocol):
    """A connection that calls back on each committed change."""

    def is_closed(self) -> bool: ...

    async def close(self) -> None: ...


@runtime_checkable
class ChangeFeed(Protocol):
    """The changes every replica commits, in commit order (PostgreSQL's ``changes``)."""

    origin: str

    async def change_position(self) -> int:
        """The number of the last committed change."""
        ...

    async def changes_since(self, position: int, limit: int) -> list[tuple[int, str, str]]:
        """(number, incident id, origin) of the changes after ``position``, in order."""
        ...

    async def prune_changes(self, older_than: float) -> None:
        """Forget changes older than ``older_than`` seconds."""

    async def listen(self, heard: Callable[[], None], lost: Callable[[], None]) -> Listening:
        """Call ``heard`` on every committed change, ``lost`` when the connection is lost."""
        ...


class ReplicaFollower:
    """Keeps the book in step with what other replicas commit."""

    def __init__(
        self,
        feed: ChangeFeed,
        service: IncidentService,
        *,
        poll_interval: float = 5.0,
        coalesce: float = 0.05,
        retention: float = 3600.0,
        batch: int = 1000,
        retry_after: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self.service = service
        self.poll_interval = poll_interval
        # Reads at most this often: a burst of commits is one read, not one each.
        self.coalesce = coalesce
        self.retention = retention
        self.batch = batch
        self.retry_after = retry_after
        self._monotonic = monotonic
        self.position = 0
        # How many incidents were refreshed because another replica changed them.
        self.refreshed = 0
        self._caught_up = monotonic()
        self._pruned = 0.0
        self._wake = asyncio.Event()
        # Wake-ups counted, and the count the last complete read started from:
        # equal while nothing was notified since (see ``current``).
        self._woken = 0
        self._read_through = -1
        # A change found by polling that no notification announced: notifications
        # are not arriving (a half-open connection, a pooler that drops them), so
        # memory is not vouched for until one is heard again.
        self._deaf = False
        self._listening: Listening | None = None
        self._task = BackgroundTask("replica-follow", self._loop)

    @property
    def tasks(self) -> tuple[BackgroundTask, ...]:
        """The loop this runs (for liveness)."""
        return (self._task,)

    def current(self) -> bool:
        """True while every change another replica was known to commit is read and
        re-read into memory: it listens, and nothing was notified since its last read.

        What it cannot know is a change whose notification is still on its way;
        :mod:`sidecar.early` says why answering a repeat meanwhile is safe.
        """
        listening = self._listening
        return (
            listening is not None
            and not listening.is_closed()
            and not self._deaf
            and self._read_through == self._woken
        )

    def _notified(self) -> None:
        self._woken += 1
        self._wake.set()

    def _heard(self) -> None:
        self._deaf = False
        self._notified()

    async def prime(self) -> None:
        """Take the feed's position; call right before the service loads the store.

        What commits during the load is read again afterwards: a refresh is
        idempotent, a missed change is not.
        """
        self.position = await self.feed.change_position()
        self._caught_up = self._monotonic()

    async def start(self) -> None:
        """Start following."""
        self._task.start()

    async def stop(self) -> None:
        """Stop following and close the listening connection."""
        await self._task.stop()
        await self._unlisten()

    async def catch_up(self) -> int:
        """Refresh every incident another replica changed since the last read; how many."""
        if self._monotonic() - self._caught_up > self.retention / 2:
            # Cut off for so long that the feed may have lost changes: reload all,
            # numbering from before the reload as at start.
            log.warning("replica fell behind the change feed; reloading every incident")
            position = await self.feed.change_position()
            await self.service.reload()
            self.position, self._caught_up = position, self._monotonic()
            return 0
        refreshed = 0
        while True:
            rows = await self.feed.changes_since(self.position, self.batch)
            ids = {incident_id for _, incident_id, origin in rows if origin != self.feed.origin}
            if ids:
                await self.service.refresh(ids)
                refreshed += len(ids)
            if rows:
                self.position = rows[-1][0]
            if len(rows) < self.batch:
                break
        self._caught_up = self._monotonic()
        self.refreshed += refreshed
        return refreshed

    async def _loop(self) -> None:
        while True:
            try:
                if self._listening is None or self._listening.is_closed():
                    await self._unlisten()
                    self._listening = await self.feed.listen(self._heard, self._notified)
                    self._notified()  # whatever was notified while nobody listened
                await wait_event(self._wake, self.poll_interval)
                self._wake.clear()
                reading = self._woken
                told = reading != self._read_through
                try:
                    found = await self.catch_up()
                except BaseException:
                    self._read_through = -1
                    raise
                # Found by polling with nothing heard before or during the read (a
                # notification that came while it read was that change's, late).
                if found and not told and self._woken == reading and not self._deaf:
                    self._deaf = True
                    log.warning(
                        "another replica's change was found by polling, not notified: "
                        "listening again; resends go through the store until a "
                        "notification arrives"
                    )
                    # A half-open connection never says so: a new one may hear.
                    await self._unlisten()
                self._read_through = reading
                await self._prune()
                await asyncio.sleep(self.coalesce)
            except StoreUnavailable as exc:
                log.warning("cannot follow replicas: store unavailable", extra={"error": str(exc)})
                await self._unlisten()
                await asyncio.sleep(self.retry_after)

    async def _prune(self) -> None:
        now = self._monotonic()
        if now - self._pruned >= 60.0:
            self._pruned = now
            await self.feed.prune_changes(self.retention)

    async def _unlisten(self) -> None:
        listening, self._listening = self._listening, None
        if listening is not None and not listening.is_closed():
            with contextlib.suppress(Exception):
                await listening.close()
