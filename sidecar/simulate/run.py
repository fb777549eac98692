"""A response plan run on a simulated clock: Alertmanager's grouping, the book, the pager.

:class:`Simulation` feeds alert episodes through the emulated Alertmanager
(:mod:`~sidecar.simulate.alertmanager`) into the real incident book with the
real PagerDuty planner, steps every SLA deadline and escalation exactly when
the service's scheduler would (an escalation at its deadline, a breach the
moment after), runs scheduled actions (acknowledgments, updates, silences),
and commits every change to the in-memory store. Nothing sleeps: time jumps
from one event to the next.

At one instant, events run in this order: alerts reach Alertmanager, groups
flush their notifications, scheduled actions run, due deadlines are stepped,
then silences are looked at (as the silence watcher would on its next poll).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

import orjson

from sidecar.clock import FakeClock
from sidecar.incidents import Change, Incident, IncidentBook, Numbering, TimelineEvent
from sidecar.incidents.core import Planner
from sidecar.matchers import Matcher
from sidecar.notify.pagerduty import Pager
from sidecar.routing import routed_tiers
from sidecar.rules import RuleSet
from sidecar.simulate.alertmanager import Dispatcher, SimAlert
from sidecar.store.base import PAGERDUTY, WriteBatch, event_row, incident_row
from sidecar.store.memory import MemoryStore

#: A breach is due the moment after its deadline: the scheduler's millisecond.
STRICT_AFTER = 0.001


@dataclass(frozen=True, slots=True)
class Sent:
    """A notification an incident change queued in the outbox."""

    at: float
    incident_id: str
    integration: str
    action: str
    routing: str
    dedup_key: str
    severity: str | None

    @property
    def tier(self) -> str | None:
        """The escalation tier paged, for a tier's routing key."""
        return self.routing.removeprefix("tier:") if self.routing.startswith("tier:") else None


@dataclass(frozen=True, slots=True)
class Silence:
    """An Alertmanager silence: matchers, from ``starts_at`` until ``ends_at``."""

    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str = ""
    id: str = "simulated"

    def mutes(self, alert: SimAlert, now: float) -> bool:
        """Whether the silence is active at ``now`` and matches the alert."""
        return self.starts_at <= now < self.ends_at and all(
            m.matches(alert.labels) for m in self.matchers
        )


@dataclass(slots=True)
class _Scheduled:
    at: float
    seq: int
    run: Callable[[float], None] = field(compare=False)

    def __lt__(self, other: _Scheduled) -> bool:
        return (self.at, self.seq) < (other.at, other.seq)


class Simulation:
    """The plan's rules, book and pager on a simulated clock, fed by an emulated Alertmanager."""

    def __init__(
        self,
        rules: RuleSet,
        dispatcher: Dispatcher,
        *,
        start: float,
        routing_names: Collection[str],
        key_mode: Literal["group", "alert"] = "group",
        dedup_window: float = 6 * 3600.0,
        number_timezone: str = "UTC",
        reminders: Mapping[str, float] | None = None,
        planners: Sequence[Planner] = (),
    ) -> None:
        self.rules = rules
        self.dispatcher = dispatcher
        self.clock = FakeClock(start)
        self.pager = Pager(rules, key_mode=key_mode, routing_names=routing_names)
        self.book = IncidentBook(
            rules,
            key_mode=key_mode,
            dedup_window=dedup_window,
            routed_tiers=routed_tiers(routing_names),
            planners=[self.pager, *planners],
            numbering=Numbering(ZoneInfo(number_timezone)),
            reminders=reminders,
        )
        # Each day's last incident number, as the store's counter keeps it.
        self._numbers: dict[str, int] = {}
        self.store = MemoryStore()
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self.store.open())
        # Every incident ever opened, in opening order; what each change queued.
        self.incidents: dict[str, Incident] = {}
        self.sent: list[Sent] = []
        self.changes: list[tuple[float, Change]] = []
        self.on_change: list[Callable[[Change], None]] = []
        self.silences: list[Silence] = []
        self._alerts: list[tuple[float, int, SimAlert]] = []
        self._current: dict[str, SimAlert] = {}
        self._scheduled: list[_Scheduled] = []
        self._deadlines: list[tuple[float, str]] = []
        self._next: dict[str, float] = {}
        self._silenced: set[str] = set()
        self._seq = 0
        self._batch = WriteBatch()
        self._rows: dict[str, Incident] = {}

    @property
    def now(self) -> float:
        """The simulated time."""
        return self.clock.now()

    def close(self) -> None:
        """Release the event loop the store runs on."""
        self._loop.close()

    # -- input ------------------------------------------------------------

    def add_alerts(self, alerts: Iterable[SimAlert]) -> None:
        """Alert episodes that reach Alertmanager when Prometheus sends them."""
        for alert in alerts:
            self._seq += 1
            heapq.heappush(self._alerts, (alert.sent_at or alert.starts_at, self._seq, alert))
            if alert.ends_at is not None:
                # The silence watcher notices an alert that ended under a silence.
                self.schedule(alert.ends_at, lambda _t: None)

    def add_silence(self, silence: Silence) -> None:
        """A silence, looked at from its start (and again at its end)."""
        self.silences.append(silence)
        self.schedule(silence.starts_at, lambda _t: None)
        self.schedule(silence.ends_at, lambda _t: None)

    def schedule(self, at: float, run: Callable[[float], None]) -> None:
        """Run ``run(now)`` at ``at`` (after that instant's notifications)."""
        self._seq += 1
        heapq.heappush(self._scheduled, _Scheduled(at, self._seq, run))

    def commit(self, changes: Change | Iterable[Change | None] | None) -> list[Change]:
        """Record the changes of a book command for the store, and move their deadlines."""
        if changes is None:
            return []
        done = [changes] if isinstance(changes, Change) else [c for c in changes if c]
        if not done:
            return []
        now = self.now
        batch = self._batch
        for change in done:
            inc = change.incident
            self.incidents.setdefault(inc.id, inc)
            # An incident changed twice before the write is written once, as it is now.
            self._rows[inc.id] = inc
            batch.events.extend(event_row(e) for e in change.events)
            batch.outbox.extend(change.outbox)
            for row in change.outbox:
                severity = None
                if row.integration == PAGERDUTY:
                    severity = (orjson.loads(row.body).get("payload") or {}).get("severity")
                self.sent.append(
                    Sent(
                        now,
                        row.incident_id,
                        row.integration,
                        row.action,
                        row.routing,
                        row.dedup_key,
                        severity,
                    )
                )
            self.changes.append((now, change))
            for hook in self.on_change:
                hook(change)
        for change in done:
            self._reschedule(change.incident.id)
        return done

    # -- running ----------------------------------------------------------

    def run_until(self, until: float) -> None:
        """Run every event up to and including ``until``; the clock ends there.

        The changes are written to the store once, at the end: one transaction
        of the service's group commit, not one per change.
        """
        while (at := self._next_event()) is not None and at <= until:
            self.clock.set(max(at, self.now))
            self._step(self.now)
        self.clock.set(max(until, self.now))
        self._write()

    def _write(self) -> None:
        batch = self._batch
        batch.incidents = [incident_row(inc, self.now) for inc in self._rows.values()]
        if batch:
            self._loop.run_until_complete(self.store.write(batch))
        self._batch, self._rows = WriteBatch(), {}

    def _next_event(self) -> float | None:
        candidates = [
            self._alerts[0][0] if self._alerts else None,
            self.dispatcher.next_flush(),
            self._scheduled[0].at if self._scheduled else None,
            self._next_deadline(),
        ]
        return min((c for c in candidates if c is not None), default=None)

    def _step(self, now: float) -> None:
        while self._alerts and self._alerts[0][0] <= now:
            _, _, alert = heapq.heappop(self._alerts)
            self._current[alert.fingerprint] = alert
            self.dispatcher.insert(alert, now)
        muted = self._muted if self.silences else None
        notifications = self.dispatcher.flush_due(now, muted)
        if notifications:
            # Opened incidents take the day's next numbers, as in the service's batch.
            numbering = self.book.numbering
            day = numbering.day(now)
            numbering.begin(day, self._numbers.get(day, 0))
            try:
                for notification in notifications:
                    self.commit(self.book.apply_notification(notification, now))
            finally:
                if (given := numbering.end()) is not None:
                    self._numbers[given[0]] = given[1]
        while self._scheduled and self._scheduled[0].at <= now:
            heapq.heappop(self._scheduled).run(now)
        while (due := self._next_deadline()) is not None and due <= now:
            _, incident_id = heapq.heappop(self._deadlines)
            del self._next[incident_id]
            self.commit(self.book.check_deadlines(incident_id, now))
            if incident_id not in self._next:
                self._reschedule(incident_id)
        if self.silences:
            self._watch_silences(now)

    def _muted(self, alert: SimAlert, now: float) -> bool:
        return any(s.mutes(alert, now) for s in self.silences)

    def _next_deadline(self) -> float | None:
        while self._deadlines and self._next.get(self._deadlines[0][1]) != self._deadlines[0][0]:
            heapq.heappop(self._deadlines)  # superseded
        return self._deadlines[0][0] if self._deadlines else None

    def _reschedule(self, incident_id: str) -> None:
        deadline = self.book.next_deadline(incident_id)
        if deadline is None:
            self._next.pop(incident_id, None)
            return
        at, strict = deadline
        due = at + STRICT_AFTER if strict else at
        if self._next.get(incident_id) != due:
            self._next[incident_id] = due
            heapq.heappush(self._deadlines, (due, incident_id))

    def _watch_silences(self, now: float) -> None:
        """What :class:`sidecar.silences.SilenceWatcher` decides on its next poll."""
        seen: set[str] = set()
        for inc in list(self.book.open_incidents()):
            firing = inc.firing()
            if not firing:
                continue
            ended: dict[str, float] = {}
            silencers: list[Silence] = []
            for st in firing:
                alert = self._current.get(st.fingerprint)
                if alert is None or alert.resolved(now):
                    if st.fingerprint in self._silenced:
                        ended[st.fingerprint] = alert.ends_at if alert and alert.ends_at else now
                    continue
                active = [s for s in self.silences if s.mutes(alert, now)]
                if active:
                    seen.add(st.fingerprint)
                    silencers.append(active[0])
            if ended:
                self.commit(
                    self.book.resolve_alerts(
                        inc.id,
                        ended,
                        now=now,
                        source="silence",
                        message="alerts ended while silenced (no resolved notification is sent)",
                    )
                )
            elif len(silencers) == len(firing) and inc.state == "triggered":
                silence = silencers[0]
                message = (
                    f"silenced in Alertmanager by {silence.created_by} "
                    f"(silence {silence.id}): {silence.comment}"
                )
                self.commit(
                    self.book.acknowledge(
                        inc.id, actor=silence.created_by, source="silence", now=now, message=message
                    )
                )
        self._silenced = seen

    # -- reading ----------------------------------------------------------

    def timeline(self, incident_id: str) -> list[TimelineEvent]:
        """The incident's timeline as the store holds it."""
        self._write()
        return self._loop.run_until_complete(self.store.timeline(incident_id))
