"""Delivers the PagerDuty outbox: in order per dedup key, within PagerDuty's rate per key.

Events reach the outbox in the same transaction as the incident change that
causes them. This worker sends the oldest pending event of each dedup key
(a resolve must never overtake its trigger: after a resolve, a trigger with
the same key opens a new PagerDuty incident), records each outcome durably
before sending that key's next event, and backs off with the one retry policy
of :mod:`sidecar.notify.retry`. A 400 is dead-lettered: kept, logged with
PagerDuty's message, counted, and shown on the incident.

PagerDuty ingests about 120 events a minute per routing key, counted over a
rolling minute, and drops the rest with a 429. The budget is kept in the store
and shared by every replica: a claim takes only what the budget allows right
now, and only as many events as this worker has free sending slots, so that
every event claimed goes out at once, long before its lease could lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from sidecar.clock import Clock
from sidecar.errors import StoreUnavailable
from sidecar.metrics import Metrics
from sidecar.notify.retry import RetryPolicy
from sidecar.pagerduty.client import EventsClient, SendResult
from sidecar.store.base import Claimant, OutboxItem, Outcome, RateBudget, Store
from sidecar.tasks import BackgroundTask

log = logging.getLogger("sidecar.pagerduty")

#: The budget counts sends over PagerDuty's window plus this, so that a send which
#: arrives a moment after its claim still falls inside the count that allowed it.
RATE_WINDOW_MARGIN = 1.0


def rate_buckets(routing_keys: Mapping[str, str]) -> dict[str, str]:
    """The budget of each routing name: names that hold the same key share one.

    PagerDuty limits per routing key; the bucket is named after the first of its
    names (never the key itself, which is a secret and stays out of the store).
    """
    first: dict[str, str] = {}
    for name in sorted(routing_keys):
        first.setdefault(routing_keys[name], name)
    return {name: first[key] for name, key in routing_keys.items()}


class OutboxWorker:
    """Background delivery of pending PagerDuty events."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        clock: Clock,
        *,
        events_url: str,
        routing_keys: Mapping[str, str],
        timeout: float = 10.0,
        rate_limit_per_minute: int = 120,
        rate_limit_window: float = 60.0,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.events_url = events_url
        self.routing_keys = routing_keys
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.budget = RateBudget(
            per_window=max(1, int(rate_limit_per_minute * rate_limit_window / 60.0)),
            window=rate_limit_window + RATE_WINDOW_MARGIN,
            buckets=rate_buckets(routing_keys),
        )
        # Every claimed event is sent at once, so a lease needs to outlast one send
        # and the write of its outcome; it lapses only if this replica dies.
        self.lease = max(60.0, 3 * timeout)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.pending = 0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.claimant = Claimant(self.owner, self.lease, self.budget)
        self._wake = asyncio.Event()
        self._task = BackgroundTask("pagerduty-outbox", self._loop)
        self._sending: set[asyncio.Task[None]] = set()
        self._client: EventsClient | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def tasks(self) -> tuple[BackgroundTask, ...]:
        """The loops this runs (for liveness)."""
        return (self._task,)

    def wake(self) -> None:
        """New events were committed: look now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Open the HTTP session and start delivering."""
        self._session = aiohttp.ClientSession()
        self._client = EventsClient(
            self._session, self.events_url, timeout=self.timeout, clock=self.clock
        )
        self.pending = await self.store.outbox_pending()
        self._task.start()

    async def stop(self) -> None:
        """Stop claiming, let sends in flight record their outcome, then close.

        Pending events stay in the store for the next start (or another replica).
        A send still unanswered after its timeout is cancelled; its lease lapses.
        """
        await self._task.stop()
        if self._sending:
            await asyncio.wait(self._sending, timeout=self.timeout + 1.0)
        for task in list(self._sending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self) -> None:
        while True:
            held_until = None
            try:
                held_until = await self.fill()
                self.pending = await self.store.outbox_pending()
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
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
            task = asyncio.create_task(self._send(item), name=f"pagerduty-send-{item.id}")
            self._sending.add(task)
            task.add_done_callback(self._sent)
        return claim.held_until

    async def idle(self) -> None:
        """Wait until every send in flight has recorded its outcome."""
        while self._sending:
            await asyncio.wait(set(self._sending))

    async def drain(self) -> None:
        """Send everything due now that the budget allows, and wait for every outcome.

        Once it returns, nothing claimable is on its way to PagerDuty: what a
        test asserts about PagerDuty then is final, not a guess after a sleep.
        """
        await self.idle()
        while True:
            await self.fill()
            if not self._sending:
                return
            await self.idle()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wake.set()

    async def _send(self, item: OutboxItem) -> None:
        assert self._client is not None, "start() first"
        try:
            await self._deliver(self._client, item)
        except StoreUnavailable as exc:
            # Sent, but the outcome is not recorded: the lease lapses and the event
            # goes again (at least once; PagerDuty deduplicates by dedup_key).
            log.warning(
                "pagerduty outcome not recorded: store unavailable",
                extra={"incident_id": item.incident_id, "error": str(exc)},
            )
        except Exception:
            log.exception("pagerduty delivery failed", extra={"incident_id": item.incident_id})

    async def _deliver(self, client: EventsClient, item: OutboxItem) -> None:
        key = self.routing_keys.get(item.routing)
        if key is None:
            # The routing key was removed from the configuration since.
            await self._finish(item, "dead", f"no routing key named {item.routing!r} configured")
            self.metrics.pagerduty_events_total.labels(item.action, "rejected").inc()
            return
        body: dict[str, Any] = orjson.loads(item.body)
        result: SendResult = await client.send(body, key)
        # The wait counts from the answer, not from the start of a send that timed out.
        now = self.clock.now()
        attempts = item.attempts + 1
        if result.outcome == "accepted":
            await self._finish(item, "delivered", None, attempts=attempts)
            self.metrics.pagerduty_events_total.labels(item.action, "accepted").inc()
            log.info(
                "pagerduty event delivered",
                extra={
                    "incident_id": item.incident_id,
                    "action": item.action,
                    "attempts": attempts,
                },
            )
        elif result.outcome == "rejected":
            await self._finish(item, "dead", result.message, attempts=attempts)
            self.metrics.pagerduty_events_total.labels(item.action, "rejected").inc()
            log.error(
                "pagerduty rejected an event; dead-lettered",
                extra={
                    "incident_id": item.incident_id,
                    "action": item.action,
                    "status": result.status,
                    "pagerduty_message": result.message,
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
            self.metrics.pagerduty_events_total.labels(item.action, "retried").inc()
            log.warning(
                "pagerduty send failed; will retry",
                extra={
                    "incident_id": item.incident_id,
                    "action": item.action,
                    "status": result.status,
                    "retry_in_seconds": round(delay, 1),
                    "attempts": attempts,
                },
            )

    async def _finish(
        self, item: OutboxItem, state: str, error: str | None, *, attempts: int | None = None
    ) -> None:
        now = self.clock.now()
        outcome = Outcome(
            state,
            attempts=item.attempts if attempts is None else attempts,
            next_attempt_at=now,
            error=error[:1000] if error else None,
            at=now,
            server_failures=item.server_failures,
        )
        await self.store.finish_outbox(item.id, outcome)
