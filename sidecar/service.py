"""The incident service: commands in, group-committed changes out, effects after commit.

Every command (a notification, an acknowledgment, a resolution) is queued. One
loop takes everything queued, applies it to the in-memory :class:`IncidentBook`,
writes all resulting changes in one transaction and only then answers the
callers and publishes metrics and logs. When the commit fails, the changes are
undone in reverse order and every caller in the batch gets StoreUnavailable
(503, so Alertmanager retries); when the store refused a value of the batch, its
commands run again one by one, so that only the one it refuses fails. One batch
is in flight at a time, so changes never interleave with an uncommitted one, and
requests that arrive during a commit form the next batch: durability costs one
fsync per batch, not per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sidecar.clock import Clock
from sidecar.early import EarlyAnswers
from sidecar.effects import publish_all, shelve
from sidecar.errors import StoreRefused, StoreUnavailable
from sidecar.held import HeldVersions
from sidecar.incidents import Change, IncidentBook
from sidecar.metrics import Metrics
from sidecar.readonly import ReadOnlyFirst
from sidecar.store.base import (
    DeliveryRow,
    ReadsUnderLock,
    Store,
    WriteBatch,
    write_batch,
)
from sidecar.tasks import BackgroundTask

log = logging.getLogger("sidecar.incidents")

Command = Callable[[float], list[Change]]


@dataclass(slots=True)
class _Pending:
    command: Command
    deliveries: tuple[DeliveryRow, ...] = ()
    # What the command touches: locked and re-read first when replicas share the store.
    keys: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    # Reload every open incident from the store before this batch (a replica that
    # fell behind the change feed: see sidecar.follow).
    sync: bool = False
    future: asyncio.Future[list[Change]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _nothing(_now: float) -> list[Change]:
    """A command that changes nothing: its batch only reads (refresh, reload)."""
    return []


class _BuildError(Exception):
    """Building the write batch failed (a bug, not the store)."""


class IncidentService:
    """Serialises commands on the incident book and commits them in groups."""

    def __init__(
        self,
        book: IncidentBook,
        store: Store,
        metrics: Metrics,
        clock: Clock,
        *,
        max_batch: int = 1000,
    ) -> None:
        self.book = book
        # Called after a commit that queued PagerDuty events (wakes the worker).
        self.on_outbox: Callable[[], None] = lambda: None
        # Called with every committed batch's changes (the deadline scheduler).
        self.on_commit: list[Callable[[list[Change]], None]] = []
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task = BackgroundTask("incident-commit-loop", self._loop)
        # Called after the book was reloaded from the store (the scheduler rebuilds).
        self.on_restore: list[Callable[[], None]] = []
        # Called with the ids of incidents re-read from a shared store, changed or
        # not by this batch (the scheduler moves their deadlines).
        self.on_refresh: list[Callable[[set[str]], None]] = []
        self._inflight: asyncio.Future[None] | None = None
        self.batches_committed = 0
        # Replicas: the row versions the incidents in memory were read from.
        self.held = HeldVersions()
        # Replicas: notification batches that change nothing skip the transaction.
        self.read_only_first = (
            ReadOnlyFirst(store) if store.shared and isinstance(store, ReadsUnderLock) else None
        )
        self._last_expiry = 0.0
        # Notifications that change nothing skip the batch: alone on the store at
        # once; with replicas, gated by the follower (sidecar.runtime).
        self.early: EarlyAnswers | None = None if store.shared else EarlyAnswers()

    async def start(self) -> None:
        """Restore open incidents from the store and start the commit loop."""
        count = await self._reload()
        log.info("restored incidents from the store", extra={"open_incidents": count})
        self._task.start()

    async def _reload(self) -> int:
        """Replace the book with what the store holds (at start, and to follow replicas)."""
        now = self.clock.now()
        open_incidents = await self.store.load_open()
        closed = await self.store.load_closed_since(now - self.book.retention)
        reviews = await self.store.load_pending_reviews()
        self.book.reset(open_incidents, closed, reviews)
        self.held.clear()
        for hook in self.on_restore:
            hook()
        return len(open_incidents)

    async def refresh(self, ids: Iterable[str]) -> None:
        """Re-read these incidents from the store in the next batch (another replica
        changed them: see :mod:`sidecar.follow`)."""
        await self.submit(_nothing, ids=ids)

    async def reload(self) -> None:
        """Reload every incident from the store in the next batch."""
        await self.submit(_nothing, sync=True)

    async def stop(self) -> None:
        """Finish the batch in flight, then stop."""
        await self._task.stop()
        if self._inflight is not None and not self._inflight.done():
            await self._inflight
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(StoreUnavailable("shutting down"))

    async def settled(self) -> None:
        """Wait until no batch is between being applied in memory and committed.

        The book changes in memory before its batch is durable, and a failed
        write undoes it: a reader that looks at the book while a batch is in
        flight could show a state the store never held (acknowledged, but no
        acknowledgment on the timeline yet). Readers call this first.
        """
        # A new batch can start (and apply) before this coroutine resumes, so
        # look again; bounded, so that a steady stream of batches cannot starve a read.
        for _ in range(8):
            inflight = self._inflight
            if inflight is None or inflight.done():
                return
            await asyncio.shield(inflight)

    @property
    def running(self) -> bool:
        """True while the commit loop runs."""
        return self._task.running

    async def submit(
        self,
        command: Command,
        *,
        keys: Iterable[str] = (),
        ids: Iterable[str] = (),
        deliveries: tuple[DeliveryRow, ...] = (),
        sync: bool = False,
        unchanged: Callable[[], bool] | None = None,
    ) -> list[Change]:
        """Run ``command`` in the next batch; returns its changes once durably committed.

        ``deliveries`` are inbound webhook delivery ids committed with the change,
        so a redelivery is recognised even across restarts. ``unchanged`` says the
        command would change nothing: no batch then, when that may be trusted
        (see :mod:`sidecar.early`).
        """
        if not self._task.running:
            raise StoreUnavailable("incident service is not running")
        keys = tuple(keys)
        early = self.early
        if early is not None and unchanged is not None and early.unchanged(keys, unchanged):
            return []
        pending = _Pending(command, deliveries, keys, tuple(ids), sync)
        if early is not None:
            early.hold(keys, bool(pending.ids), pending.future)
        self._queue.put_nowait(pending)
        # Shielded: a caller cancelled (a handler at shutdown) leaves its command
        # in the batch, answered and counted there, committed or undone.
        return await asyncio.shield(pending.future)

    async def _loop(self) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                # Shielded: stopping the loop must not abandon a commit and its callers.
                self._inflight = asyncio.ensure_future(self._commit(batch))
                await asyncio.shield(self._inflight)
        except Exception as exc:
            # A bug in the loop itself: nobody may wait forever for an answer
            # (a 503 makes Alertmanager retry elsewhere or later), and the task
            # ends as died, which fails liveness so that the pod is restarted.
            log.critical("incident commit loop died", exc_info=True)
            error = StoreUnavailable(f"incident commit loop died: {exc}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(error)
            raise

    @property
    def tasks(self) -> tuple[BackgroundTask, ...]:
        """The loops this service runs (for liveness)."""
        return (self._task,)

    async def _commit(self, batch: list[_Pending]) -> None:
        now = self.clock.now()
        if now - self._last_expiry > 60:
            self.book.expire_closed(now)
            self._last_expiry = now
        keys = {k for p in batch for k in p.keys}
        twice = len(keys) < sum(len(p.keys) for p in batch)  # a key in two commands
        ids = {i for p in batch for i in p.ids}
        try:
            if await self._read_only(batch, keys, now):
                return
        except Exception:  # a bug in the try must not stop the loop: the batch runs as ever
            log.exception("a read-only try failed; the batch runs under the lock")
        applied: list[tuple[_Pending, list[Change]]] = []
        all_changes: list[Change] = []
        refreshed: set[str] = set()
        written = False
        try:
            if any(p.sync for p in batch):
                await self._reload()
            known = self.held.known(self.book, keys, ids)
            async with self.store.locked(keys, ids, now - self.book.retention, known) as state:
                if self.store.shared:
                    refreshed = self.held.refresh(self.book, state)
                    self._trust(keys)
                numbering = self.book.numbering
                if any(not self.book.has_open(k) for k in keys) or (keys and ids) or twice:
                    # The batch may open incidents: number them after the day's last
                    # (with replicas, its counter stays locked until this commit).
                    # With ids too, or two commands on a key, one may close a key's
                    # incident before a notification in the batch opens a new one there.
                    day = numbering.day(now)
                    numbering.begin(day, await state.last_number(day))
                try:
                    applied = self._apply(batch, now)
                finally:
                    numbered = numbering.end()
                all_changes = [c for _, changes in applied for c in changes]
                self.held.forget(all_changes)
                deliveries = [d for pending, _ in applied for d in pending.deliveries]
                if all_changes or deliveries:
                    try:
                        write = write_batch(all_changes, deliveries, now)
                    except Exception as exc:
                        raise _BuildError(exc) from exc
                    if numbered is not None:
                        write.numbers[numbered[0]] = numbered[1]
                    await state.write(write)
                    written = True
        except _BuildError as exc:
            # A bug in building the batch must not stop the loop: this batch
            # fails (5xx, so Alertmanager retries) and the next one runs.
            log.exception("could not build a batch; rejected")
            self._reject(batch, all_changes, RuntimeError(f"internal error: {exc.__cause__}"))
            self._refreshed(refreshed)
            return
        except Exception as exc:  # whatever failed, nothing of this batch is committed
            if isinstance(exc, StoreRefused) and len(batch) > 1:
                # The store refused a value: this batch would fail again as it is, but
                # not each of its commands. Each runs again alone, so that the one it
                # refuses fails, and none other.
                log.warning("batch refused; its commands run alone", extra={"error": str(exc)})
                self._reject([], all_changes, exc)
                self._refreshed(refreshed)
                for pending in batch:
                    if not pending.future.done():
                        await self._commit([pending])
                return
            log.error("store write failed; batch rejected", extra={"error": str(exc)})
            self._reject(batch, all_changes, StoreUnavailable(str(exc)))
            self._refreshed(refreshed)
            if self.store.shared and self.early is not None:
                # Unless the COMMIT went through and only its answer was lost.
                self.early.doubt(keys | {i.key for i in map(self.book.get_open, ids) if i})
            return
        self._refreshed(refreshed)
        if written:
            self.batches_committed += 1
            if all_changes:
                # Committed: callers get their answer whatever a metric, log or hook does.
                self._after_commit(all_changes, write)
        for pending, changes in applied:
            if not pending.future.done():
                pending.future.set_result(changes)

    async def _read_only(self, batch: list[_Pending], keys: set[str], now: float) -> bool:
        """Answer a batch of notifications that changes nothing from one locked read;
        False when it is to run under the locks' transaction (see sidecar.readonly)."""
        tries = self.read_only_first
        if tries is None or not keys or not tries.worth_trying():
            return False
        if any(p.ids or p.deliveries or p.sync for p in batch):
            return False
        try:
            known = self.held.known(self.book, keys, ())
            read = await tries.store.read_locked(keys, now - self.book.retention, known)
        except StoreUnavailable:
            return False  # the transaction will fail as well, and answer for it
        self._refreshed(self.held.refresh(self.book, read))
        self._trust(keys)
        if any(not self.book.has_open(k) for k in keys):
            return False  # it may open an incident: numbers are given under the lock
        outcomes = [(pending, self._run(pending, now)) for pending in batch]
        changes = [c for _, r in outcomes if not isinstance(r, Exception) for c in r]
        tries.record(not changes)
        if changes:
            self.held.forget(changes)
            for change in reversed(changes):
                self.book.undo(change)
            return False
        for pending, result in outcomes:
            if pending.future.done():
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)  # the caller's, since this is the answer
            else:
                pending.future.set_result(result)
        return True

    def _trust(self, keys: set[str]) -> None:
        if self.early is not None:
            self.early.trust(keys)

    def _refreshed(self, ids: set[str]) -> None:
        # What was re-read is the store's truth whether or not this batch committed.
        if not ids:
            return
        for hook in self.on_refresh:
            try:
                hook(ids)
            except Exception:
                log.exception("a step after a refresh failed")

    def _apply(self, batch: list[_Pending], now: float) -> list[tuple[_Pending, list[Change]]]:
        applied = []
        for pending in batch:
            result = self._run(pending, now)
            if isinstance(result, Exception):
                pending.future.set_exception(result)  # a domain error belongs to its caller alone
            else:
                applied.append((pending, result))
        return applied

    def _run(self, pending: _Pending, now: float) -> list[Change] | Exception:
        """The command's changes, or what it raised."""
        try:
            with self.book.all_or_nothing():  # what it began is put back if it raises
                return pending.command(now)
        except Exception as exc:
            self.held.clear()  # and the rows held are read again, should anything be amiss
            return exc

    def _after_commit(self, changes: list[Change], write: WriteBatch) -> None:
        # Each step on its own: a failing one must not skip the others (a
        # broken metric must not keep the scheduler from the new deadlines).
        steps: list[Callable[[], None]] = [functools.partial(shelve, changes, write)]
        if write.outbox:
            steps.append(self.on_outbox)
        steps.append(lambda: publish_all(self.metrics, changes))
        steps += [functools.partial(hook, changes) for hook in self.on_commit]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("a step after the commit failed; the batch stays committed")

    def _reject(self, batch: list[_Pending], changes: list[Change], error: Exception) -> None:
        for change in reversed(changes):
            self.book.undo(change)
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)
