"""The deadline scheduler: each open incident's next SLA deadline in a priority queue.

No scan of all incidents ever happens on the clock's account: the heap holds
one entry per incident (its earliest pending deadline: an SLA, an escalation
step, a post-incident review, or the end of a recovery watch), entries are
refreshed after every committed change, and stale ones are skipped when they
surface. At start the heap is rebuilt from the incidents the service restored
from the store, so a deadline
that passed while the sidecar was down fires at once, and one already
recorded (a breach, an escalated tier) never fires again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging

from sidecar import sla
from sidecar.clock import Clock
from sidecar.errors import StoreUnavailable
from sidecar.incidents import Change, IncidentBook
from sidecar.service import IncidentService
from sidecar.tasks import BackgroundTask, wait_event

log = logging.getLogger("sidecar.sla")


class DeadlineScheduler:
    """Fires SLA breaches and escalation steps when their deadlines pass."""

    def __init__(
        self,
        book: IncidentBook,
        service: IncidentService,
        clock: Clock,
        *,
        max_sleep: float = 1.0,
        retry_after: float = 1.0,
    ) -> None:
        self.book = book
        self.service = service
        self.clock = clock
        self.max_sleep = max_sleep
        self.retry_after = retry_after
        # (deadline, strict, incident id): a strict deadline (a breach) is due once
        # passed, a non-strict one (an escalation step) at the deadline itself.
        self._heap: list[tuple[float, bool, str]] = []
        # Incident id -> its current entry of the heap (any other entry of it is
        # stale): the very tuple, not a copy of its deadline, one object less
        # per open incident.
        self._next: dict[str, tuple[float, bool, str]] = {}
        self._wake = asyncio.Event()
        self._task = BackgroundTask("sla-deadlines", self._loop)

    @property
    def tasks(self) -> tuple[BackgroundTask, ...]:
        """The loops this runs (for liveness)."""
        return (self._task,)

    def __len__(self) -> int:
        return len(self._next)

    def schedule(self, incident_id: str) -> None:
        """(Re)compute an incident's next deadline."""
        deadline = self.book.next_deadline(incident_id)
        if deadline is None:
            self._next.pop(incident_id, None)
            return
        current = self._next.get(incident_id)
        if current is not None and current[:2] == deadline:
            return
        entry = self._next[incident_id] = (*deadline, incident_id)
        heapq.heappush(self._heap, entry)
        if self._heap[0] == entry:
            self._wake.set()  # earlier than what the loop sleeps for

    def on_commit(self, changes: list[Change]) -> None:
        """Service hook: deadlines move on acknowledgment, severity change, resolution."""
        for change in changes:
            self.schedule(change.incident.id)

    def on_refresh(self, ids: set[str]) -> None:
        """Service hook: incidents re-read from the store (another replica moved them)."""
        for incident_id in ids:
            self.schedule(incident_id)

    def rebuild(self) -> None:
        """Schedule every open incident and pending review (at start)."""
        self._next = {i: (*deadline, i) for i, deadline in self.book.open_deadlines()}
        resolved = list(self.book.pending_reviews()) + list(self.book.watching())
        for inc in resolved:
            deadline = self.book.next_deadline(inc.id)
            if deadline is not None:
                self._next[inc.id] = (*deadline, inc.id)
        # One heapify instead of a push per incident: this runs at start.
        self._heap = list(self._next.values())
        heapq.heapify(self._heap)
        self._wake.set()

    def next_at(self) -> tuple[float, bool] | None:
        """The earliest scheduled deadline and whether it is strict."""
        while self._heap and self._next.get(self._heap[0][2]) is not self._heap[0]:
            heapq.heappop(self._heap)  # stale: superseded or cleared
        return self._heap[0][:2] if self._heap else None

    async def run_due(self) -> int:
        """Fire every deadline that has passed; returns how many incidents changed."""
        now = self.clock.now()
        due: list[str] = []
        while (top := self.next_at()) is not None and sla.passed(*top, now):
            _, _, incident_id = heapq.heappop(self._heap)
            del self._next[incident_id]
            due.append(incident_id)
        if not due:
            return 0

        def command(t: float) -> list[Change]:
            return [c for i in due if (c := self.book.check_deadlines(i, t)) is not None]

        try:
            changes = await self.service.submit(command, ids=due)
        finally:
            # Committed changes were rescheduled by on_commit; this covers the
            # rest (nothing due after all, or a failed commit to retry).
            for incident_id in due:
                if incident_id not in self._next:
                    self.schedule(incident_id)
        return len(changes)

    async def start(self) -> None:
        """Start firing (the heap is built by ``rebuild``, which the service calls
        after every load from the store, at start included)."""
        self._task.start()

    async def stop(self) -> None:
        """Stop firing."""
        await self._task.stop()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            top = self.next_at()
            now = self.clock.now()
            if top is None or not sla.passed(*top, now):
                delay = self.max_sleep if top is None else min(self.max_sleep, top[0] - now)
                # Never less than a millisecond: a strict deadline that is
                # exactly now is due only once the clock has moved on.
                await wait_event(self._wake, max(delay, 0.0) + 0.001)
            try:
                await self.run_due()
            except StoreUnavailable as exc:
                log.warning("deadlines postponed: store unavailable", extra={"error": str(exc)})
                await asyncio.sleep(self.retry_after)
            except Exception:
                # Never let a bug silence the SLA clocks for good.
                log.exception("deadline scheduler failed; retrying")
                await asyncio.sleep(self.retry_after)
