"""Delivers the outbox: in order per dedup key, within the integration's rate, one retry policy.

Notifications reach the outbox in the same transaction as the incident change
that causes them, each tagged with its integration. One worker per
integration sends the oldest pending item of each dedup key (a resolve must
never overtake its trigger: after a resolve, a trigger with the same key opens
a new PagerDuty incident), records each outcome durably before sending that
key's next item, and backs off with the one retry policy of
:mod:`sidecar.notify.retry`. The integration's :class:`Sender` only builds the
request of one item and classifies the answer (accepted, retry, rate limited,
rejected); a rejected item is dead-lettered: kept, logged with the service's
own message, counted, and shown on the incident.

Services limit their rate (PagerDuty: about 120 events a minute per routing
key, over a rolling minute, the rest dropped with a 429). The budget is kept
in the store and shared by every replica: a claim takes only what the budget
allows right now, and only as many items as this worker has free sending
slots, so that every item claimed goes out at once, long before its lease
could lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Protocol

from sidecar.clock import Clock
from sidecar.errors import StoreUnavailable
from sidecar.notify.result import SendResult
from sidecar.notify.retry import RetryPolicy
from sidecar.store.base import Claimant, OutboxItem, Outcome, RateBudget, Store
from sidecar.tasks import BackgroundTask, wait_event

log = logging.getLogger("sidecar.notify")


class Sender(Protocol):
    """An integration's sending side: one item's request, and its answer classified."""

    name: str
    """The integration, as the outbox rows name it."""
    timeout: float
    """Seconds a send may take at most (a lease outlasts it)."""
    budget: RateBudget | None
    """The service's rate, shared by replicas through the store."""

    async def open(self) -> None:
        """Get ready to send (an HTTP session)."""

    async def close(self) -> None:
        """Release what ``open`` took."""

    async def send(self, item: OutboxItem) -> SendResult:
        """Send one item; never raises for the service's or the network's failures."""
        ...

    def count(self, action: str, result: str) -> None:
        """Count a send's result (``accepted``, ``retried``, ``rejected``) in the metrics."""


class OutboxWorker:
    """Background delivery of one integration's pending items."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        sender: Sender,
        *,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sender = sender
        self.retry = retry or RetryPolicy()
        # Every claimed item is sent at once, so a lease needs to outlast one send
        # and the write of its outcome; it lapses only if this replica dies.
        self.lease = max(60.0, 3 * sender.timeout)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.pending = 0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.claimant = Claimant(self.owner, self.lease, sender.budget, sender.name)
        self._wake = asyncio.Event()
        self._task = BackgroundTask(f"{sender.name}-outbox", self._loop)
        self._sending: set[asyncio.Task[None]] = set()
        # Ids of the items this worker is sending right now.
        self._in_flight: set[int] = set()

    @property
    def budget(self) -> RateBudget | None:
        """The sender's rate budget."""
        return self.sender.budget

    @property
    def tasks(self) -> tuple[BackgroundTask, ...]:
        """The loops this runs (for liveness)."""
        return (self._task,)

    def wake(self) -> None:
        """New events were committed: look now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Open the sender and start delivering."""
        await self.sender.open()
        self.pending = await self.store.outbox_pending(self.sender.name)
        self._task.start()

    async def stop(self) -> None:
        """Stop claiming, let sends in flight record their outcome, then close.

        Pending events stay in the store for the next start (or another replica).
        A send still unanswered after its timeout is cancelled; its lease lapses.
        """
        await self._task.stop()
        if self._sending:
            await asyncio.wait(self._sending, timeout=self.sender.timeout + 1.0)
        for task in list(self._sending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sender.close()

    async def _loop(self) -> None:
        while True:
            held_until = None
            try:
                held_until = await self.fill()
                self.pending = await self.store.outbox_pending(self.sender.name)
            except StoreUnavailable as exc:
                log.warning("outbox paused: store unavailable", extra={"error": str(exc)})
            except Exception:
                # A bug must not silently stop paging: log it and keep going.
                log.exception("outbox delivery loop failed; retrying")
            # Woken by new events and by every finished send (a free slot); else
            # look again at the next poll, or when the spent budget frees.
            wait = self.poll_interval
            if held_until is not None:
                wait = min(wait, max(0.01, held_until - self.clock.now()))
            await wait_event(self._wake, wait)
            self._wake.clear()

    async def fill(self) -> float | None:
        """Claim what the free sending slots and the budget allow, and start sending it.

        Returns when the spent budget of some routing key lets more go, if it held any back.
        """
        free = self.concurrency - len(self._sending)
        if free <= 0:
            return None
        claim = await self.store.claim_outbox(self.clock.now(), free, self.claimant)
        for item in claim.items:
            if item.id in self._in_flight:
                # Its lease lapsed while this worker still sends it (a stalled
                # loop, a jump of the clock): claimed again, but not sent twice.
                continue
            self._in_flight.add(item.id)
            name = f"{self.sender.name}-send-{item.id}"
            task = asyncio.create_task(self._send(item), name=name)
            self._sending.add(task)
            task.add_done_callback(self._sent)
        return claim.held_until

    async def idle(self) -> None:
        """Wait until every send in flight has recorded its outcome."""
        while self._sending:
            await asyncio.wait(set(self._sending))

    async def drain(self) -> None:
        """Send everything due now that the budget allows, and wait for every outcome.

        Once it returns, nothing claimable is on its way to the service: what a
        test asserts about the service then is final, not a guess after a sleep.
        """
        await self.idle()
        while True:
            await self.fill()
            if not self._sending:
                break
            await self.idle()
        self.pending = await self.store.outbox_pending(self.sender.name)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wake.set()

    async def _send(self, item: OutboxItem) -> None:
        try:
            await self._deliver(item)
        except StoreUnavailable as exc:
            # Sent, but the outcome is not recorded: the lease lapses and the event
            # goes again (at least once; PagerDuty deduplicates by dedup_key).
            log.warning(
                f"{self.sender.name} outcome not recorded: store unavailable",
                extra={"incident_id": item.incident_id, "error": str(exc)},
            )
        except Exception:
            log.exception(
                f"{self.sender.name} delivery failed", extra={"incident_id": item.incident_id}
            )
        finally:
            self._in_flight.discard(item.id)

    async def _deliver(self, item: OutboxItem) -> None:
        result = await self.sender.send(item)
        # The wait counts from the answer, not from the start of a send that timed out.
        now = self.clock.now()
        attempts = item.attempts + 1
        if result.outcome == "accepted":
            await self._finish(item, "delivered", None, attempts=attempts, receipt=result.receipt)
            self.sender.count(item.action, "accepted")
            log.info(
                f"{self.sender.name} event delivered",
                extra={
                    "incident_id": item.incident_id,
                    "action": item.action,
                    "attempts": attempts,
                },
            )
        elif result.outcome == "rejected":
            await self._finish(item, "dead", result.message, attempts=attempts)
            self.sender.count(item.action, "rejected")
            log.error(
                f"{self.sender.name} rejected an event; dead-lettered",
                extra={
                    "incident_id": item.incident_id,
                    "action": item.action,
                    "status": result.status,
                    "service_message": result.message,
                },
            )
        else:
            failures = item.server_failures
            if result.outcome == "rate_limited":
                # "Not now", whatever failed before: PagerDuty's advice, else a fixed pause.
                delay = self.retry.delay(attempts, "rate_limited", result.retry_after)
            else:
                failures += 1
                delay = self.retry.delay(failures, "retry")
            error = f"{result.status or 'no answer'}: {result.message}"[:1000]
            outcome = Outcome("pending", attempts, now + delay, error, now, failures)
            await self.store.finish_outbox(item.id, outcome)
            self.sender.count(item.action, "retried")
            log.warning(
                f"{self.sender.name} send failed; will retry",
                extra={
                    "incident_id": item.incident_id,
                    "action": item.action,
                    "status": result.status,
                    "retry_in_seconds": round(delay, 1),
                    "attempts": attempts,
                },
            )

    async def _finish(
        self,
        item: OutboxItem,
        state: str,
        error: str | None,
        *,
        attempts: int | None = None,
        receipt: str | None = None,
    ) -> None:
        now = self.clock.now()
        outcome = Outcome(
            state,
            attempts=item.attempts if attempts is None else attempts,
            next_attempt_at=now,
            # A service's own words: PostgreSQL text cannot hold a NUL in them,
            # and a record that fails to be written is a send repeated for ever.
            error=error[:1000].replace("\x00", "\ufffd") if error else None,
            at=now,
            server_failures=item.server_failures,
            receipt=receipt.replace("\x00", "\ufffd") if receipt else receipt,
        )
        await self.store.finish_outbox(item.id, outcome)
