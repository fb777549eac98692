"""Delivers the PagerDuty outbox: in order per dedup key, rate limited per routing key.

Events reach the outbox in the same transaction as the incident change that
causes them. This worker sends the oldest pending event of each dedup key
(a resolve must never overtake its trigger: after a resolve, a trigger with
the same key opens a new PagerDuty incident), records each outcome durably
before sending that key's next event, and backs off with the one retry policy
of :mod:`sidecar.retry`. A 400 is dead-lettered: kept, logged with
PagerDuty's message, counted, and shown on the incident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from sidecar.clock import Clock
from sidecar.errors import StoreUnavailable
from sidecar.metrics import Metrics
from sidecar.pagerduty.client import EventsClient, SendResult
from sidecar.retry import RetryPolicy
from sidecar.store.base import OutboxItem, Store
from sidecar.tasks import BackgroundTask

log = logging.getLogger("sidecar.pagerduty")


class RateLimiter:
    """A token bucket per routing key (PagerDuty allows about 120 events a minute per key)."""

    def __init__(self, per_minute: int, *, burst: int = 10) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, min(burst, per_minute)))
        self._buckets: dict[str, tuple[float, float]] = {}

    def reserve(self, key: str, now: float) -> float:
        """Take a token for ``key``; returns how long to wait before using it."""
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate) - 1.0
        self._buckets[key] = (tokens, now)
        return 0.0 if tokens >= 0 else -tokens / self.rate


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
        self.limiter = RateLimiter(rate_limit_per_minute)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.pending = 0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task = BackgroundTask("pagerduty-outbox", self._loop)
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
        self.pending = await self.store.outbox_pending()
        self._task.start()

    async def stop(self) -> None:
        """Stop delivering; pending events stay in the store for the next start."""
        await self._task.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self) -> None:
        while True:
            try:
                sent = await self.run_once()
                self.pending = await self.store.outbox_pending()
            except StoreUnavailable as exc:
                log.warning("outbox paused: store unavailable", extra={"error": str(exc)})
                sent = 0
            except Exception:
                # A bug must not silently stop paging: log it and keep going.
                log.exception("outbox delivery loop failed; retrying")
                sent = 0
            if sent:
                continue  # more may be due right away
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def run_once(self, limit: int = 200) -> int:
        """Send every due head-of-queue event once; returns how many were attempted."""
        assert self._session is not None, "start() first"
        # Leased, so that with several replicas only one sends each event; a
        # lease outlives a send's worst case and lapses if this replica dies.
        lease = max(60.0, 3 * self.timeout)
        items = await self.store.claim_outbox(self.clock.now(), limit, lease, self.owner)
        if not items:
            return 0
        client = EventsClient(self._session, self.events_url, timeout=self.timeout)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: OutboxItem) -> None:
            async with gate:
                await self._deliver(client, item)

        await asyncio.gather(*(one(item) for item in items))
        return len(items)

    async def _deliver(self, client: EventsClient, item: OutboxItem) -> None:
        key = self.routing_keys.get(item.routing)
        now = self.clock.now()
        if key is None:
            # The routing key was removed from the configuration since.
            await self._finish(item, "dead", f"no routing key named {item.routing!r} configured")
            self.metrics.pagerduty_events_total.labels(item.action, "rejected").inc()
            return
        wait = self.limiter.reserve(item.routing, time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        body: dict[str, Any] = orjson.loads(item.body)
        result: SendResult = await client.send(body, key)
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
            delay = self.retry.delay(attempts, rate_limited=result.outcome == "rate_limited")
            await self.store.finish_outbox(
                item.id,
                state="pending",
                attempts=attempts,
                next_attempt_at=now + delay,
                error=f"{result.status or 'no answer'}: {result.message}"[:1000],
                now=now,
            )
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
        await self.store.finish_outbox(
            item.id,
            state=state,
            attempts=item.attempts if attempts is None else attempts,
            next_attempt_at=now,
            error=error[:1000] if error else None,
            now=now,
        )
