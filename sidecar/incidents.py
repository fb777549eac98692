"""Incidents: their lifecycle, times and timeline, computed without any I/O.

An :class:`IncidentBook` holds every open incident in memory (restored from the
store at start) and turns commands (an Alertmanager notification, an
acknowledgment, a resolution) into :class:`Change` objects: the rows to upsert,
the timeline events to append and the effects to publish once the change is
committed. Nothing here writes anywhere; the service commits changes and only
then publishes their effects, or undoes them when the commit fails.

Identity of an alert *instance* is ``(fingerprint, startsAt)``: Alertmanager
gives a re-firing alert a new ``startsAt``. This is what lets a late duplicate
of an old notification (HA peers, retries) be told apart from a group that
fires again after it resolved.

Alerts the rules drop (``severity="none"``: Watchdog, InfoInhibitor) are left
out of every notification before anything else: they never open or join an
incident, and do not keep a group's incident open.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from sys import intern
from types import MappingProxyType, MemberDescriptorType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import orjson

from sidecar import sla
from sidecar.alertmanager import Alert, Notification
from sidecar.errors import IncidentNotFound

if TYPE_CHECKING:
    from sidecar.rules import SeverityPolicy
    from sidecar.store.rows import OutboxRow

NOTHING: Mapping[str, float] = MappingProxyType({})

State = Literal["triggered", "acknowledged", "resolved"]

EscalationOutcome = Literal["paged", "recorded", "unrouted"]
ESCALATION_OUTCOMES: tuple[EscalationOutcome, ...] = ("paged", "recorded", "unrouted")
"""What a due escalation step did: paged its tier's routing key; was recorded
only, as its ``record_only`` step declares; or reached nobody, the tier having
no routing key (only possible without any PagerDuty configuration: with one,
such a step is refused at start, see :mod:`sidecar.routing`)."""
NO_OUTCOMES: Mapping[str, EscalationOutcome] = MappingProxyType({})


class ClassificationLike(Protocol):
    """What the incident book needs from a rule match."""

    @property
    def severity(self) -> str: ...
    @property
    def team(self) -> str: ...
    @property
    def dropped(self) -> bool: ...
    @property
    def unmatched(self) -> tuple[str, ...]: ...


class Classifier(Protocol):
    """Maps an alert's labels and annotations to a severity and team (see ``sidecar.rules``)."""

    def classify(
        self, labels: Mapping[str, str], annotations: Mapping[str, str]
    ) -> ClassificationLike: ...

    def rank(self, severity: str) -> int: ...

    def policy(self, severity: str) -> SeverityPolicy: ...


@dataclass(slots=True)
class AlertState:
    """One alert instance within an incident, as last reported."""

    fingerprint: str
    status: Literal["firing", "resolved"]
    starts_at: float
    ends_at: float | None
    severity: str
    labels: dict[str, str]
    generator_url: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain form for storage and the API."""
        return {
            "fingerprint": self.fingerprint,
            "status": self.status,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "severity": self.severity,
            "labels": self.labels,
            "generator_url": self.generator_url,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertState:
        """Inverse of :meth:`to_json`."""
        return cls(
            fingerprint=data["fingerprint"],
            status=intern(data["status"]),  # type: ignore[arg-type]
            starts_at=data["starts_at"],
            ends_at=data["ends_at"],
            severity=intern(data["severity"]),
            labels=interned(data["labels"]),
            # One Prometheus rule gives all its alerts the same generatorURL.
            generator_url=intern(data.get("generator_url", "")),
        )


@dataclass(slots=True)
class Incident:
    """An incident and its times (UTC epoch seconds)."""

    id: str
    key: str
    group_key: str
    receiver: str
    state: State
    severity: str
    team: str
    title: str
    labels: dict[str, str]
    external_url: str
    started_at: float
    triggered_at: float
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    acknowledge_source: str | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None
    resolve_source: str | None = None
    last_update_at: float | None = None
    alerts: dict[str, AlertState] = field(default_factory=dict)
    seq: int = 0
    # The PagerDuty dedup key once a trigger was queued for this incident.
    paged_dedup_key: str | None = None
    # SLA name -> when its breach was recorded (each SLA breaches once).
    # Never changed in place (replaced on write), so most incidents share one
    # empty mapping instead of holding two empty dicts each.
    breaches: Mapping[str, float] = field(default_factory=lambda: NOTHING)
    # Start of the update window whose deadline was missed (one breach per window).
    update_breached_gap: float | None = None
    # Escalation tier -> when its step came due (each tier once per incident).
    escalated: Mapping[str, float] = field(default_factory=lambda: NOTHING)
    # Escalation tier -> its outcome. Kept apart from ``escalated``, whose
    # stored shape replicas of the previous version still read; rows written
    # before outcomes were kept have none.
    escalation_outcomes: Mapping[str, EscalationOutcome] = field(
        default_factory=lambda: NO_OUTCOMES
    )
    review_due_at: float | None = None
    review_done_at: float | None = None
    review_done_by: str | None = None
    # The stored alerts document of a restored or committed incident, until
    # ``alerts`` is next read (see ``shelve_alerts`` and ``__getattr__``).
    alerts_doc: bytes | None = field(default=None, repr=False, compare=False)

    if not TYPE_CHECKING:  # keeps mypy from taking every attribute as valid

        def __getattr__(self, name: str) -> Any:
            # Only reached for an unset slot. A restored or committed incident
            # leaves ``alerts`` unset and keeps its stored document: at start a
            # hundred thousand incidents are restored, most are never touched
            # before they resolve, and their alerts are most of what decoding
            # them costs, in time and in memory. The next read decodes them.
            if name != "alerts" or self.alerts_doc is None:
                raise AttributeError(name)
            self.alerts = decode_alerts(self.alerts_doc)
            self.alerts_doc = None
            return self.alerts

    def shelve_alerts(self, doc: bytes) -> None:
        """Hold the alerts as ``doc``, the document just committed, until next read.

        A restored incident starts this way; a committed change ends this way.
        Open incidents mostly wait for their next change without reading their
        alerts, and as objects a 50-alert incident is some fifty more for the
        cyclic garbage collector: with thousands open, one full collection
        took a quarter of a second, a stall of every request in flight.
        """
        with contextlib.suppress(AttributeError):  # already shelved
            del self.alerts
        self.alerts_doc = doc

    @property
    def is_open(self) -> bool:
        """True until the incident resolves."""
        return self.state != "resolved"

    def instances(self) -> frozenset[tuple[str, float]]:
        """The alert instances this incident covers."""
        return frozenset((a.fingerprint, a.starts_at) for a in self.alerts.values())

    def firing(self) -> list[AlertState]:
        """Alerts still firing."""
        return [a for a in self.alerts.values() if a.status == "firing"]

    def alerts_json(self) -> bytes:
        """The alerts as the JSON document stored beside the others."""
        try:
            # Unset means still as stored: write back the very bytes read.
            alerts = _ALERTS_SLOT.__get__(self, Incident)
        except AttributeError:
            if self.alerts_doc is not None:
                return self.alerts_doc
            raise
        return orjson.dumps([a.to_json() for a in alerts.values()])

    def data_json(self) -> dict[str, Any]:
        """The fields stored as a JSON document beside the indexed columns and the alerts."""
        data: dict[str, Any] = {
            "group_key": self.group_key,
            "receiver": self.receiver,
            "title": self.title,
            "labels": self.labels,
            "external_url": self.external_url,
            "acknowledged_by": self.acknowledged_by,
            "acknowledge_source": self.acknowledge_source,
            "resolved_by": self.resolved_by,
            "resolve_source": self.resolve_source,
            "last_update_at": self.last_update_at,
            "seq": self.seq,
            "paged_dedup_key": self.paged_dedup_key,
            "breaches": dict(self.breaches),
            "update_breached_gap": self.update_breached_gap,
            "escalated": dict(self.escalated),
            "review_done_by": self.review_done_by,
        }
        if self.escalation_outcomes:
            # Only once there is one: most incidents never escalate, and every
            # row written pays for every key.
            data["escalation_outcomes"] = dict(self.escalation_outcomes)
        return data

    @classmethod
    def from_columns(
        cls,
        *,
        id: str,
        key: str,
        state: State,
        severity: str,
        team: str,
        started_at: float,
        triggered_at: float,
        acknowledged_at: float | None,
        resolved_at: float | None,
        data: Mapping[str, Any],
        review_due_at: float | None = None,
        review_done_at: float | None = None,
        alerts_doc: bytes | None = None,
    ) -> Incident:
        """Rebuild an incident from its stored columns and JSON documents.

        ``alerts_doc`` is decoded when the alerts are first read. Rows written
        before the alerts had their own column carry them in ``data``.
        """
        legacy = data.get("alerts")
        group_key = data.get("group_key", "")
        inc = cls(
            id=id,
            key=key,
            # In group mode the two are equal: hold one string, not two.
            group_key=key if group_key == key else group_key,
            receiver=intern(data.get("receiver", "")),
            state=intern(state),  # type: ignore[arg-type]
            severity=intern(severity),
            team=intern(team),
            title=intern(data.get("title", "")),
            labels=interned(data.get("labels", {})),
            external_url=intern(data.get("external_url", "")),
            started_at=started_at,
            triggered_at=triggered_at,
            acknowledged_at=acknowledged_at,
            acknowledged_by=data.get("acknowledged_by"),
            acknowledge_source=data.get("acknowledge_source"),
            resolved_at=resolved_at,
            resolved_by=data.get("resolved_by"),
            resolve_source=data.get("resolve_source"),
            last_update_at=data.get("last_update_at"),
            alerts=_decoded(legacy),
            seq=data.get("seq", 0),
            paged_dedup_key=data.get("paged_dedup_key"),
            breaches=dict(data["breaches"]) if data.get("breaches") else NOTHING,
            update_breached_gap=data.get("update_breached_gap"),
            escalated=dict(data["escalated"]) if data.get("escalated") else NOTHING,
            escalation_outcomes=_outcomes(data.get("escalation_outcomes")),
            review_due_at=review_due_at,
            review_done_at=review_done_at,
            review_done_by=data.get("review_done_by"),
        )
        if legacy is None and alerts_doc is not None:
            inc.shelve_alerts(alerts_doc)
        return inc


def escalation_outcome(record_only: bool, routed: bool) -> EscalationOutcome:
    """A due step's outcome: recorded when record_only, else paged if its tier is routed."""
    if record_only:
        return "recorded"
    return "paged" if routed else "unrouted"


def _outcomes(stored: Mapping[str, str] | None) -> Mapping[str, EscalationOutcome]:
    if not stored:
        return NO_OUTCOMES
    return {tier: cast("EscalationOutcome", intern(o)) for tier, o in stored.items()}


# The slot's own descriptor: reading through it never decodes.
_ALERTS_SLOT: MemberDescriptorType = vars(Incident)["alerts"]


def _decoded(alerts: Iterable[Mapping[str, Any]] | None) -> dict[str, AlertState]:
    states = (AlertState.from_json(a) for a in alerts or ())
    return {a.fingerprint: a for a in states}


def decode_alerts(doc: bytes) -> dict[str, AlertState]:
    """The alerts of an incident from their stored JSON document."""
    return _decoded(orjson.loads(doc))


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One entry of an incident's timeline."""

    incident_id: str
    seq: int
    at: float
    kind: str
    source: str
    actor: str | None
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Effect:
    """Something to publish (metric, log line) once the change is committed.

    ``kind`` is ``opened``, ``acknowledged``, ``resolved``, ``severity_raised``,
    ``status_update``, ``breach`` (``detail`` is the SLA), ``escalated``
    (``detail`` is the tier, ``outcome`` what came of it) or ``unmatched``
    (``count`` new alert instances of ``team`` that no rule of ``detail``,
    ``severity`` or ``ownership``, matched); ``seconds`` is the measured
    interval (time to detect, acknowledge, resolve).
    """

    kind: str
    incident_id: str
    severity: str
    team: str
    seconds: float | None = None
    previous_severity: str | None = None
    source: str | None = None
    actor: str | None = None
    detail: str | None = None
    count: int = 1
    outcome: EscalationOutcome | None = None


@dataclass(slots=True)
class _Undo:
    key: str
    before: Incident | None
    closed_before: _Closed | None


@dataclass(frozen=True, slots=True)
class _Closed:
    instances: frozenset[tuple[str, float]]
    closed_at: float
    opened_at: float


@dataclass(slots=True)
class Change:
    """The result of one command on one incident, ready to commit."""

    incident: Incident
    events: list[TimelineEvent]
    effects: list[Effect]
    undo: _Undo
    # Outbox rows this change causes, planned right after the command, while
    # the incident is as the command left it (a later command of the same
    # batch may resolve it): see ``IncidentService``.
    outbox: list[OutboxRow] = field(default_factory=list)


def interned(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels with their names and values interned.

    A hundred thousand open incidents repeat the same few label names and
    values (alertname, service, job...): one string each instead of one per
    incident is most of what an open incident costs in memory.
    """
    return dict(zip(map(intern, labels.keys()), map(intern, labels.values()), strict=True))


class _IdSource:
    """Incident ids that sort by creation time and never repeat.

    Twelve hex digits of the creation time in milliseconds, then eight of a
    counter that starts at a random value in each process. Ids made one
    after the other land next to each other in the store's indexes (the
    incidents' primary key, the timeline's), where random ids put every new
    row on a page of its own. The counter keeps ids unique within a process
    whatever the clock does; its random start keeps replicas, and restarts
    after the clock was set back, apart.
    """

    def __init__(self) -> None:
        self._count = secrets.randbits(32)

    def next(self, now: float) -> str:
        self._count = (self._count + 1) & 0xFFFF_FFFF
        return f"{int(now * 1000) & 0xFFFF_FFFF_FFFF:012x}{self._count:08x}"


_IDS = _IdSource()


def new_incident_id(now: float) -> str:
    """A new URL-safe incident id, ordered by ``now`` (epoch seconds)."""
    return _IDS.next(now)


class IncidentBook:
    """Every open incident, and the rules that move them through their lifecycle."""

    def __init__(
        self,
        classifier: Classifier,
        *,
        key_mode: Literal["group", "alert"] = "group",
        dedup_window: float = 6 * 3600.0,
        routed_tiers: Collection[str] = frozenset(),
    ) -> None:
        self.classifier = classifier
        self.key_mode = key_mode
        self.dedup_window = dedup_window
        # Escalation tiers with a PagerDuty routing key: a due step's outcome
        # is decided here, with the change, not guessed later by the pager.
        self.routed_tiers = frozenset(routed_tiers)
        self._open: dict[str, Incident] = {}
        self._by_id: dict[str, Incident] = {}
        self._closed: dict[str, _Closed] = {}
        self.open_counts: Counter[tuple[str, str]] = Counter()
        # Open incidents with a recorded breach, and resolved ones whose review
        # is still to do: small sets, so the gauges never scan every incident.
        self._breached: dict[str, Incident] = {}
        self._reviews: dict[str, Incident] = {}

    # -- state access -----------------------------------------------------

    def open_incidents(self) -> Iterable[Incident]:
        """Every open incident."""
        return self._by_id.values()

    def get_open(self, incident_id: str) -> Incident | None:
        """The open incident with that id, if any."""
        return self._by_id.get(incident_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def restore(
        self,
        open_incidents: Iterable[Incident],
        closed: Iterable[Incident],
        reviews: Iterable[Incident] = (),
    ) -> None:
        """Load state from the store at start."""
        for inc in closed:
            self._remember_closed(inc)
        for inc in open_incidents:
            self._index(inc)
        for inc in reviews:
            self._finish(inc)

    def reset(
        self,
        open_incidents: Iterable[Incident],
        closed: Iterable[Incident],
        reviews: Iterable[Incident] = (),
    ) -> None:
        """Forget everything and load this state (a reload from a shared store)."""
        self._open.clear()
        self._by_id.clear()
        self._closed.clear()
        self._breached.clear()
        self._reviews.clear()
        self.open_counts.clear()
        self.restore(open_incidents, closed, reviews)

    def refresh(
        self,
        keys: Iterable[str],
        ids: Iterable[str],
        incidents: Iterable[Incident],
        recently_closed: Iterable[Incident],
    ) -> None:
        """Replace what is known of these keys and ids by the store's rows (replicas).

        Called under the keys' locks, right before commands on them: another
        replica may have opened, changed or closed these incidents since.
        """
        for key in keys:
            cached = self._open.get(key)
            if cached is not None:
                self._unindex(cached)
            self._closed.pop(key, None)
        for incident_id in ids:
            cached = self._by_id.get(incident_id)
            if cached is not None:
                self._unindex(cached)
            self._reviews.pop(incident_id, None)
        for inc in recently_closed:
            self._remember_closed(inc)
        for inc in incidents:
            current = self._open.get(inc.key)
            if inc.is_open and current is not None and current.id != inc.id:
                self._unindex(current)
            self._finish(inc)

    def keys_of(self, notification: Notification) -> list[str]:
        """The incident keys a notification touches (its group, or each alert)."""
        if self.key_mode == "group":
            return [notification.group_key]
        return [a.fingerprint for a in notification.alerts]

    def pending_reviews(self) -> Iterable[Incident]:
        """Resolved incidents whose post-incident review is not done yet."""
        return self._reviews.values()

    def get_review(self, incident_id: str) -> Incident | None:
        """A resolved incident with its review still to do."""
        return self._reviews.get(incident_id)

    def set_classifier(self, classifier: Classifier) -> None:
        """Swap the rules (reload); open incidents keep the severity they have."""
        self.classifier = classifier

    def _index(self, inc: Incident) -> None:
        self._open[inc.key] = inc
        self._by_id[inc.id] = inc
        self.open_counts[(inc.severity, inc.state)] += 1
        if inc.breaches:
            self._breached[inc.id] = inc

    def _unindex(self, inc: Incident) -> None:
        self._open.pop(inc.key, None)
        self._by_id.pop(inc.id, None)
        self.open_counts[(inc.severity, inc.state)] -= 1
        self._breached.pop(inc.id, None)

    # -- undo -------------------------------------------------------------

    def _begin(self, key: str, inc: Incident | None) -> _Undo:
        before = None
        if inc is not None:
            before = copy.copy(inc)
            # Mutable parts are changed in place: copy them too.
            before.alerts = {fp: copy.copy(st) for fp, st in inc.alerts.items()}
            before.labels = dict(inc.labels)
            if inc.is_open:
                self._unindex(inc)
        return _Undo(key, before, self._closed.get(key))

    def _finish(self, inc: Incident) -> None:
        if inc.is_open:
            self._index(inc)
            return
        self._remember_closed(inc)
        if inc.review_due_at is not None and inc.review_done_at is None:
            self._reviews[inc.id] = inc
        else:
            self._reviews.pop(inc.id, None)

    def _remember_closed(self, inc: Incident) -> None:
        """Remember a resolved incident against late duplicates, unless a newer one is.

        Only the newest episode of a key matters: a late HA duplicate can only
        repeat what was sent last. Finishing an older episode (its review done,
        or restored after the newer one) must not make the newer one forgettable.
        """
        if inc.resolved_at is None:
            return
        known = self._closed.get(inc.key)
        if known is None or inc.triggered_at >= known.opened_at:
            self._closed[inc.key] = _Closed(inc.instances(), inc.resolved_at, inc.triggered_at)

    def undo(self, change: Change) -> None:
        """Revert a change that could not be committed (apply in reverse order)."""
        current = self._open.get(change.undo.key)
        if current is not None and current.id == change.incident.id:
            self._unindex(current)
        before = change.undo.before
        self._reviews.pop(change.incident.id, None)
        if before is not None:
            if before.is_open:
                self._index(before)
            elif before.review_due_at is not None and before.review_done_at is None:
                self._reviews[before.id] = before
        if change.undo.closed_before is None:
            self._closed.pop(change.undo.key, None)
        else:
            self._closed[change.undo.key] = change.undo.closed_before

    def expire_closed(self, now: float) -> int:
        """Forget resolved incidents older than the dedup window; returns how many."""
        horizon = now - self.dedup_window
        stale = [k for k, c in self._closed.items() if c.closed_at < horizon]
        for k in stale:
            del self._closed[k]
        return len(stale)

    # -- commands ---------------------------------------------------------

    def apply_notification(self, n: Notification, now: float) -> list[Change]:
        """Apply an Alertmanager notification; returns the changes (empty for a duplicate)."""
        if self.key_mode == "group":
            change = self._apply(
                n.group_key, n.alerts, n, now, group_resolved=n.status == "resolved"
            )
            return [change] if change else []
        changes = []
        for alert in n.alerts:
            change = self._apply(
                alert.fingerprint, [alert], n, now, group_resolved=alert.status == "resolved"
            )
            if change:
                changes.append(change)
        return changes

    def acknowledge(
        self, incident_id: str, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change | None:
        """Acknowledge an open incident; None when it already was (idempotent)."""
        inc = self._require_open(incident_id)
        if inc.state == "acknowledged":
            return None
        undo = self._begin(inc.key, inc)
        inc.state = "acknowledged"
        inc.acknowledged_at = now
        inc.acknowledged_by = actor
        inc.acknowledge_source = source
        tta = max(0.0, now - inc.triggered_at)
        events = [
            self.event(
                inc, now, "acknowledged", source, actor, message or f"acknowledged by {actor}"
            )
        ]
        self._finish(inc)
        effects = [
            Effect("acknowledged", inc.id, inc.severity, inc.team, tta, source=source, actor=actor)
        ]
        return Change(inc, events, effects, undo)

    def resolve(
        self, incident_id: str, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change:
        """Resolve an open incident by hand (API, PagerDuty)."""
        inc = self._require_open(incident_id)
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        message = message or f"resolved by {actor}"
        self._close(inc, now, source, actor, message, now=now, events=events, effects=effects)
        self._finish(inc)
        return Change(inc, events, effects, undo)

    def unacknowledge(
        self, incident_id: str, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change | None:
        """Return an acknowledged incident to triggered (PagerDuty un-acknowledge)."""
        inc = self._require_open(incident_id)
        if inc.state != "acknowledged":
            return None
        undo = self._begin(inc.key, inc)
        inc.state = "triggered"
        inc.acknowledged_at = inc.acknowledged_by = inc.acknowledge_source = None
        events = [
            self.event(inc, now, "unacknowledged", source, actor, message or "unacknowledged")
        ]
        self._finish(inc)
        return Change(inc, events, [], undo)

    def reopen(
        self, incident: Incident, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change | None:
        """Reopen a resolved incident (PagerDuty reopen) unless its key has another open one."""
        if incident.is_open:
            return self.unacknowledge(incident.id, actor=actor, source=source, now=now)
        if incident.key in self._open:
            return None
        undo = self._begin(incident.key, None)
        incident.state = "triggered"
        incident.resolved_at = incident.resolved_by = incident.resolve_source = None
        incident.acknowledged_at = incident.acknowledged_by = incident.acknowledge_source = None
        events = [self.event(incident, now, "reopened", source, actor, message or "reopened")]
        self._finish(incident)
        return Change(incident, events, [], undo)

    def resolve_alerts(
        self,
        incident_id: str,
        ended: Mapping[str, float],
        *,
        now: float,
        source: str,
        message: str,
    ) -> Change | None:
        """Mark alerts ended (``fingerprint -> endsAt``); resolve the incident if none fires."""
        inc = self._require_open(incident_id)
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        for fingerprint, ends_at in ended.items():
            st = inc.alerts.get(fingerprint)
            if st is None or st.status != "firing":
                continue
            st.status = "resolved"
            st.ends_at = ends_at
            events.append(
                self.event(
                    inc,
                    now,
                    "alert_resolved",
                    source,
                    None,
                    f"alert {_name(st)} resolved",
                    {"fingerprint": fingerprint, "ends_at": ends_at},
                )
            )
        if events and not inc.firing():
            ends = _ends(inc, now)
            self._close(inc, ends, source, None, message, now=now, events=events, effects=effects)
        self._finish(inc)
        return Change(inc, events, effects, undo) if events else None

    def record_update(
        self, incident_id: str, *, actor: str, source: str, now: float, message: str
    ) -> Change:
        """Record a status update (it resets the update-cadence clock)."""
        inc = self._require_open(incident_id)
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        update = self.classifier.policy(inc.severity).clocks.update
        start = sla.update_gap_start(inc)
        if (
            update is not None
            and inc.update_breached_gap != start
            and sla.passed(start + update, True, now)
        ):
            # Late, and before the scheduler noticed: the gap it closes overran.
            inc.update_breached_gap = start
            self._breach(inc, "update", now, events, effects, deadline=start + update)
        inc.last_update_at = now
        events.append(self.event(inc, now, "status_update", source, actor, message))
        effects.append(Effect("status_update", inc.id, inc.severity, inc.team))
        self._finish(inc)
        return Change(inc, events, effects, undo)

    def note(
        self,
        incident_id: str,
        *,
        kind: str,
        actor: str | None,
        source: str,
        now: float,
        message: str,
    ) -> Change:
        """Put an event on an open incident's timeline without changing its state."""
        inc = self._require_open(incident_id)
        undo = self._begin(inc.key, inc)
        events = [self.event(inc, now, kind, source, actor, message)]
        self._finish(inc)
        return Change(inc, events, [], undo)

    # -- SLA clocks -------------------------------------------------------

    def next_deadline(self, incident_id: str) -> tuple[float, bool] | None:
        """The earliest pending deadline of an open incident or a pending review.

        The flag is True for a breach, which is due only once the deadline has
        passed, and False for an escalation step, due at the deadline itself.
        """
        inc = self._by_id.get(incident_id)
        if inc is not None:
            return sla.next_deadline(inc, self.classifier.policy(inc.severity))
        review = self._reviews.get(incident_id)
        if review is None or review.review_due_at is None or "postmortem" in review.breaches:
            return None
        return (review.review_due_at, True)

    def check_deadlines(self, incident_id: str, now: float) -> Change | None:
        """Record every breach and escalation that is due; None when nothing was."""
        inc = self._by_id.get(incident_id)
        if inc is None:
            return self._check_review(incident_id, now)
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        self._settle(inc, now, events, effects)
        self._finish(inc)
        return Change(inc, events, effects, undo) if events else None

    def _check_review(self, incident_id: str, now: float) -> Change | None:
        inc = self._reviews.get(incident_id)
        if inc is None or inc.review_due_at is None or "postmortem" in inc.breaches:
            return None
        if not sla.passed(inc.review_due_at, True, now):
            return None
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        self._breach(inc, "postmortem", now, events, effects)
        self._finish(inc)
        return Change(inc, events, effects, undo)

    def complete_review(
        self, incident: Incident, *, actor: str, source: str, now: float, message: str = ""
    ) -> Change | None:
        """Mark the post-incident review done; None when it already was."""
        inc = self._reviews.get(incident.id) or self._by_id.get(incident.id) or incident
        if inc.review_done_at is not None:
            return None
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        late = inc.review_due_at is not None and sla.passed(inc.review_due_at, True, now)
        if late and "postmortem" not in inc.breaches:
            self._breach(inc, "postmortem", now, events, effects, deadline=inc.review_due_at)
        inc.review_done_at = now
        inc.review_done_by = actor
        events.append(
            self.event(
                inc,
                now,
                "postmortem_done",
                source,
                actor,
                message or f"post-incident review done{' (late)' if late else ''}",
            )
        )
        self._finish(inc)
        return Change(inc, events, effects, undo)

    def breached_counts(self) -> Counter[tuple[str, str]]:
        """Open incidents (and pending reviews) in breach, by severity and SLA."""
        counts: Counter[tuple[str, str]] = Counter()
        for inc in self._breached.values():
            for kind in inc.breaches:
                if kind == "update" and inc.update_breached_gap != sla.update_gap_start(inc):
                    continue  # an update has been given since: no longer in breach
                counts[(inc.severity, kind)] += 1
        for inc in self._reviews.values():
            if "postmortem" in inc.breaches:
                counts[(inc.severity, "postmortem")] += 1
        return counts

    def _policy_sla(self, severity: str, name: str) -> float | None:
        target = getattr(self.classifier.policy(severity).sla, name)
        return None if target is None else float(target.total_seconds())

    def _settle(
        self, inc: Incident, now: float, events: list[TimelineEvent], effects: list[Effect]
    ) -> None:
        """Record what is due on an open incident: breaches, then escalation steps."""
        policy = self.classifier.policy(inc.severity)
        for kind, deadline in sla.pending_deadlines(inc, policy):
            if not sla.is_due(kind, deadline, now):
                continue
            if kind.startswith(sla.ESCALATION):
                self._escalate(inc, policy, kind.removeprefix(sla.ESCALATION), now, events, effects)
            else:
                if kind == "update":
                    inc.update_breached_gap = sla.update_gap_start(inc)
                self._breach(inc, kind, now, events, effects, deadline=deadline)

    def _escalate(
        self,
        inc: Incident,
        policy: SeverityPolicy,
        tier: str,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
    ) -> None:
        outcome = self._escalation_outcome(policy, tier)
        inc.escalated = {**inc.escalated, tier: now}
        inc.escalation_outcomes = {**inc.escalation_outcomes, tier: outcome}
        ladder = f"{inc.severity} ladder"
        if outcome == "paged":
            message = f"escalated to {tier}: paged ({ladder})"
        elif outcome == "recorded":
            message = (
                f"escalated to {tier}: recorded only, nobody paged (record_only step, {ladder})"
            )
        else:
            message = (
                f"escalation to {tier} due: nobody routed (no PagerDuty routing key "
                f"for tier {tier}; {ladder})"
            )
        events.append(
            self.event(
                inc, now, "escalated", "sidecar", None, message, {"tier": tier, "outcome": outcome}
            )
        )
        effects.append(
            Effect("escalated", inc.id, inc.severity, inc.team, detail=tier, outcome=outcome)
        )

    def _escalation_outcome(self, policy: SeverityPolicy, tier: str) -> EscalationOutcome:
        record_only = any(step.record_only for step in policy.escalation if step.tier == tier)
        return escalation_outcome(record_only, tier in self.routed_tiers)

    def _breach(
        self,
        inc: Incident,
        kind: str,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
        *,
        deadline: float | None = None,
    ) -> None:
        inc.breaches = {**inc.breaches, kind: now}
        late = "" if deadline is None else f" (deadline passed {now - deadline:.0f}s ago)"
        events.append(
            self.event(
                inc,
                now,
                "sla_breached",
                "sidecar",
                None,
                f"{kind} SLA of {inc.severity} breached{late}",
                {"sla": kind, "deadline": deadline},
            )
        )
        effects.append(Effect("breach", inc.id, inc.severity, inc.team, detail=kind))

    def _require_open(self, incident_id: str) -> Incident:
        inc = self._by_id.get(incident_id)
        if inc is None:
            raise IncidentNotFound(incident_id)
        return inc

    # -- notification logic ----------------------------------------------

    def _apply(
        self,
        key: str,
        alerts: list[Alert],
        n: Notification,
        now: float,
        *,
        group_resolved: bool,
    ) -> Change | None:
        inc = self._open.get(key)
        kept, classes = self._keep(alerts, inc)
        if not kept:
            return None  # only dropped alerts, firing or resolved: no incident to touch
        if len(kept) < len(alerts) and not group_resolved and not n.truncated_alerts:
            # Alertmanager's status counts the dropped alerts too: a Watchdog
            # in the same group would keep the others' incident open for ever.
            group_resolved = all(a.status == "resolved" for a in kept)
        if inc is None:
            return self._open_new(key, kept, classes, n, now, group_resolved=group_resolved)
        return self._merge(inc, kept, classes, n, now, group_resolved=group_resolved)

    def _keep(
        self, alerts: list[Alert], inc: Incident | None
    ) -> tuple[list[Alert], dict[str, ClassificationLike]]:
        """The alerts the rules do not drop, and the classification of each new instance.

        An instance the incident already tracks is kept without asking: it
        joined under the rules of the time, and must stay to resolve the
        incident even if reloaded rules now drop it.
        """
        known = inc.alerts if inc is not None else {}
        kept = []
        classes: dict[str, ClassificationLike] = {}
        for alert in alerts:
            tracked = known.get(alert.fingerprint)
            if tracked is None or tracked.starts_at != alert.starts_at.timestamp():
                cls = classes[alert.fingerprint] = self.classifier.classify(
                    alert.labels, alert.annotations
                )
                if cls.dropped:
                    continue
            kept.append(alert)
        return kept, classes

    def _open_new(
        self,
        key: str,
        alerts: list[Alert],
        classes: Mapping[str, ClassificationLike],
        n: Notification,
        now: float,
        *,
        group_resolved: bool,
    ) -> Change | None:
        closed = self._closed.get(key)
        firing = [a for a in alerts if a.status == "firing"]
        relevant = firing or alerts
        if closed is not None and {_instance(a) for a in relevant} <= closed.instances:
            # A late duplicate of a notification for an incident already closed.
            return None
        undo = self._begin(key, None)
        unmatched: Counter[tuple[str, str]] = Counter()
        states = {a.fingerprint: self._alert_state(a, classes, unmatched) for a in alerts}
        top = self._top(states.values(), firing_only=bool(firing))
        cls = self.classifier.classify(top.labels, _annotations(alerts, top.fingerprint))
        inc = Incident(
            id=new_incident_id(now),
            key=key,
            group_key=n.group_key,
            receiver=intern(n.receiver),
            state="triggered",
            severity=top.severity,
            team=cls.team,
            title=intern(_title(n, alerts)),
            labels=interned(n.group_labels or n.common_labels),
            external_url=intern(n.external_url),
            started_at=min(a.starts_at for a in states.values()),
            triggered_at=now,
            alerts=states,
        )
        # No firing alert: the firing notification never reached us (sidecar
        # down, or the group resolved within group_wait). Keep the incident,
        # already resolved, rather than lose it; its detection time is unknown.
        missed = group_resolved or not firing
        what = "recorded from a resolved notification" if missed else "opened"
        events = [
            self.event(
                inc,
                now,
                "opened",
                "alertmanager",
                None,
                f"{inc.severity} incident {what}: {inc.title}",
                {"alerts": sorted(states), "firing_notification_missed": missed},
            )
        ]
        ttd = None if missed else max(0.0, now - inc.started_at)
        effects = [Effect("opened", inc.id, inc.severity, inc.team, ttd)]
        detect = self._policy_sla(inc.severity, "detect")
        if ttd is not None and detect is not None and ttd > detect:
            self._breach(inc, "detect", now, events, effects)
        if not missed:
            self._settle(inc, now, events, effects)
        if missed:
            for st in inc.alerts.values():
                if st.status == "firing":
                    st.status = "resolved"
                    st.ends_at = st.ends_at or now
            self._close_by_alertmanager(inc, _ends(inc, now), now, events, effects)
        effects += _unmatched_effects(inc, unmatched)
        self._finish(inc)
        return Change(inc, events, effects, undo)

    def _merge(
        self,
        inc: Incident,
        alerts: list[Alert],
        classes: Mapping[str, ClassificationLike],
        n: Notification,
        now: float,
        *,
        group_resolved: bool,
    ) -> Change | None:
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        unmatched: Counter[tuple[str, str]] = Counter()
        for alert in alerts:
            starts = alert.starts_at.timestamp()
            known = inc.alerts.get(alert.fingerprint)
            if known is None or known.starts_at < starts:
                inc.alerts[alert.fingerprint] = st = self._alert_state(alert, classes, unmatched)
                what = "joined" if known is None else "fired again"
                events.append(
                    self.event(
                        inc,
                        now,
                        "alert_added",
                        "alertmanager",
                        None,
                        f"alert {_name(st)} {what} ({st.status}, {st.severity})",
                        {"fingerprint": st.fingerprint, "status": st.status},
                    )
                )
            elif known.starts_at > starts:
                continue  # an older instance than the one we track: stale
            elif known.status == "firing" and alert.status == "resolved":
                known.status = "resolved"
                known.ends_at = alert.ends_at.timestamp() if alert.ends_at else now
                events.append(
                    self.event(
                        inc,
                        now,
                        "alert_resolved",
                        "alertmanager",
                        None,
                        f"alert {_name(known)} resolved",
                        {"fingerprint": known.fingerprint, "ends_at": known.ends_at},
                    )
                )
            # Same instance, same status (a repeat), or firing after resolved
            # (an out-of-order duplicate): resolution of an instance is final.
        firing = inc.firing()
        if firing:
            top = self._top(firing, firing_only=True)
            if self.classifier.rank(top.severity) < self.classifier.rank(inc.severity):
                previous = inc.severity
                inc.severity = top.severity
                events.append(
                    self.event(
                        inc,
                        now,
                        "severity_raised",
                        "alertmanager",
                        None,
                        f"severity raised from {previous} to {inc.severity}",
                        {"from": previous, "to": inc.severity},
                    )
                )
                effects.append(
                    Effect(
                        "severity_raised",
                        inc.id,
                        inc.severity,
                        inc.team,
                        previous_severity=previous,
                    )
                )
        if group_resolved and (self.key_mode == "alert" or not firing or n.status == "resolved"):
            ends = _ends(inc, now)
            for st in firing:
                # Alertmanager says the whole group resolved; alerts we track but
                # that were truncated out of this payload resolved with it.
                st.status = "resolved"
                st.ends_at = st.ends_at or ends
            self._close_by_alertmanager(inc, ends, now, events, effects)
        if inc.is_open and events:
            self._settle(inc, now, events, effects)
        effects += _unmatched_effects(inc, unmatched)
        if not events:
            self._finish(inc)
            return None  # a duplicate or a repeat: nothing changed
        self._finish(inc)
        return Change(inc, events, effects, undo)

    def _close(
        self,
        inc: Incident,
        resolved_at: float,
        source: str,
        actor: str | None,
        message: str,
        *,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
    ) -> None:
        """Resolve ``inc`` at ``resolved_at``, first recording what the resolution overran.

        The scheduler records a breach at its deadline; a resolution that
        arrives before it ran (Alertmanager batches resolved notifications)
        still overran, and the breach is counted now, once, as the review
        will report it.
        """
        clocks = self.classifier.policy(inc.severity).clocks
        overran: list[tuple[str, float]] = []
        if inc.state == "triggered" and clocks.acknowledge is not None:
            overran.append(("acknowledge", inc.triggered_at + clocks.acknowledge))
        if clocks.resolve is not None:
            overran.append(("resolve", inc.started_at + clocks.resolve))
        if clocks.update is not None and inc.update_breached_gap != sla.update_gap_start(inc):
            overran.append(("update", sla.update_gap_start(inc) + clocks.update))
        for kind, deadline in overran:
            if kind not in inc.breaches and sla.passed(deadline, True, resolved_at):
                self._breach(inc, kind, now, events, effects, deadline=deadline)
        inc.state = "resolved"
        inc.resolved_at = resolved_at
        inc.resolved_by = actor
        inc.resolve_source = source
        review = self._policy_sla(inc.severity, "postmortem")
        if review is not None and inc.review_done_at is None:
            inc.review_due_at = resolved_at + review
        events.append(
            self.event(
                inc, resolved_at, "resolved", source, actor, message, {"resolved_at": resolved_at}
            )
        )
        ttr = max(0.0, resolved_at - inc.started_at)
        effects.append(
            Effect("resolved", inc.id, inc.severity, inc.team, ttr, source=source, actor=actor)
        )

    def _close_by_alertmanager(
        self,
        inc: Incident,
        resolved_at: float,
        now: float,
        events: list[TimelineEvent],
        effects: list[Effect],
    ) -> None:
        message = "all alerts resolved"
        self._close(
            inc, resolved_at, "alertmanager", None, message, now=now, events=events, effects=effects
        )

    def _alert_state(
        self,
        alert: Alert,
        classes: Mapping[str, ClassificationLike],
        unmatched: Counter[tuple[str, str]],
    ) -> AlertState:
        """A new alert instance of an incident; counts it in ``unmatched`` if no rule matched."""
        cls = classes[alert.fingerprint]  # _keep classified every new instance
        for rules in cls.unmatched:
            unmatched[(rules, cls.team)] += 1
        return AlertState(
            fingerprint=alert.fingerprint,
            status=alert.status,
            starts_at=alert.starts_at.timestamp(),
            ends_at=alert.ends_at.timestamp() if alert.ends_at else None,
            severity=cls.severity,
            labels=interned(alert.labels),
            generator_url=intern(alert.generator_url),
        )

    def _top(self, states: Iterable[AlertState], *, firing_only: bool) -> AlertState:
        pool = [s for s in states if s.status == "firing" or not firing_only]
        return min(pool, key=lambda s: (self.classifier.rank(s.severity), s.starts_at))

    def event(
        self,
        inc: Incident,
        at: float,
        kind: str,
        source: str,
        actor: str | None,
        message: str,
        data: Mapping[str, Any] | None = None,
    ) -> TimelineEvent:
        """A new timeline event of ``inc``, numbered after its last one."""
        inc.seq += 1
        return TimelineEvent(inc.id, inc.seq, at, kind, source, actor, message, data or {})


def _unmatched_effects(inc: Incident, unmatched: Counter[tuple[str, str]]) -> list[Effect]:
    return [
        Effect("unmatched", inc.id, inc.severity, team, detail=rules, count=count)
        for (rules, team), count in sorted(unmatched.items())
    ]


def _instance(alert: Alert) -> tuple[str, float]:
    return (alert.fingerprint, alert.starts_at.timestamp())


def _ends(inc: Incident, now: float) -> float:
    """Resolution time: the latest ``endsAt`` of the alerts, not the notification's arrival."""
    ends = [a.ends_at for a in inc.alerts.values() if a.ends_at is not None]
    return max(ends) if ends else now


def _name(st: AlertState) -> str:
    return st.labels.get("alertname", st.fingerprint)


def _annotations(alerts: list[Alert], fingerprint: str) -> Mapping[str, str]:
    for a in alerts:
        if a.fingerprint == fingerprint:
            return a.annotations
    return {}


def _title(n: Notification, alerts: list[Alert]) -> str:
    first = alerts[0]
    summary = (
        n.common_annotations.get("summary")
        or first.annotations.get("summary")
        or first.annotations.get("description", "")
    )
    name = n.common_labels.get("alertname") or first.labels.get("alertname", "alert")
    title = f"{name}: {summary}" if summary else name
    extra = ", ".join(f"{k}={v}" for k, v in sorted(n.group_labels.items()) if k != "alertname")
    if extra and not summary:
        title = f"{title} ({extra})"
    return title[:1024]
