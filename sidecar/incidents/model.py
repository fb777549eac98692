"""The incident model: an incident, its alerts, its timeline events, and what a command changes.

Data only, and its storage form (the indexed columns and JSON documents a
store writes): the lifecycle that moves an incident lives in
:mod:`sidecar.incidents.book` and the modules it is made of.

Identity of an alert *instance* is ``(fingerprint, startsAt)``: Alertmanager
gives a re-firing alert a new ``startsAt``. This is what lets a late duplicate
of an old notification (HA peers, retries) be told apart from a group that
fires again after it resolved. An alert's own state is :mod:`~sidecar.incidents.alerts`'
(named here too); the plan's number, status and roles are fields of the incident
(see :mod:`~sidecar.incidents.numbers` and :mod:`~sidecar.incidents.people`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from sys import intern
from types import MappingProxyType, MemberDescriptorType
from typing import TYPE_CHECKING, Any, Literal, cast

import orjson

from sidecar.incidents.alerts import AlertState as AlertState
from sidecar.incidents.alerts import decode_alerts as decode_alerts
from sidecar.incidents.alerts import decoded_alerts, shared
from sidecar.incidents.alerts import interned as interned
from sidecar.incidents.closed import ClosedEpisode

if TYPE_CHECKING:
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
NO_ANNOTATIONS: Mapping[str, str] = MappingProxyType({})


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
    # Start of the update window whose reminder went out (one reminder per window).
    update_reminded_gap: float | None = None
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
    # The plan's incident number (``2026-11-30-001``), given when the open is committed.
    number: str | None = None
    # The plan's status (Investigating, Identified...) and when it last changed.
    status: str | None = None
    status_at: float | None = None
    # Role -> who holds it (``smes`` holds a list): see ``sidecar.incidents.people``.
    roles: Mapping[str, Any] = field(default_factory=lambda: NOTHING)
    # Who last set the severity by hand: alerts already known no longer raise it.
    severity_set_by: str | None = None
    # The annotations the incident opened with (impact, summary, runbook): what
    # the notifications quote. Never changed in place, so most share one empty mapping.
    annotations: Mapping[str, str] = field(default_factory=lambda: NO_ANNOTATIONS)
    # Recovery watch: a re-fire until ``watch_until`` reopens the resolved
    # incident; ``closed_at``: closed for good (see sidecar.incidents.watch).
    watch_until: float | None = None
    closed_at: float | None = None
    reopened_at: float | None = None
    reopens: int = 0
    # The last acknowledgment given after a reopening: the reopen's trigger pages
    # the on-call again, and acknowledging that page must reach PagerDuty, while
    # ``acknowledged_at`` keeps the first one (time to acknowledge counts once).
    reacknowledged_at: float | None = None
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

    @property
    def awaits_acknowledgment(self) -> bool:
        """Open and not acknowledged since it (re)opened: an acknowledgment now counts."""
        if self.state == "triggered":
            return True
        if self.state != "acknowledged" or self.reopened_at is None:
            return False
        last = max(self.acknowledged_at or 0.0, self.reacknowledged_at or 0.0)
        return self.reopened_at > last

    @property
    def is_watching(self) -> bool:
        """Resolved, and still in its recovery watch: a re-fire reopens it."""
        return self.state == "resolved" and self.watch_until is not None and self.closed_at is None

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
        # Only once set, as escalation_outcomes: every row written pays for every key.
        for name in ("status", "status_at", "severity_set_by"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.roles:
            data["roles"] = dict(self.roles)
        if self.escalation_outcomes:
            # Only once there is one: most incidents never escalate, and every
            # row written pays for every key.
            data["escalation_outcomes"] = dict(self.escalation_outcomes)
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        if self.update_reminded_gap is not None:
            data["update_reminded_gap"] = self.update_reminded_gap
        # The same for the recovery watch: open incidents have none of these.
        for name in ("watch_until", "closed_at", "reopened_at", "reopens", "reacknowledged_at"):
            if value := getattr(self, name):
                data[name] = value
        return data

    @classmethod
    def from_columns(
        cls,
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
        number: str | None = None,
        alerts_doc: bytes | None = None,
    ) -> Incident:
        """Rebuild an incident from its stored columns and JSON documents (``data`` is taken over).

        ``alerts_doc`` is decoded when the alerts are first read. Rows written
        before the alerts had their own column carry them in ``data``.
        """
        # Positional, no copies (test_store_codec sets every field): halves decoding at restart.
        get = data.get
        legacy = get("alerts")
        group_key = get("group_key", "")
        inc = cls(
            id,
            key,
            # In group mode the two are equal: hold one string, not two.
            key if group_key == key else group_key,
            intern(get("receiver", "")),
            intern(state),  # type: ignore[arg-type]
            intern(severity),
            intern(team),
            intern(get("title", "")),
            interned(get("labels") or {}),
            intern(get("external_url", "")),
            started_at,
            triggered_at,
            acknowledged_at,
            get("acknowledged_by"),
            get("acknowledge_source"),
            resolved_at,
            get("resolved_by"),
            get("resolve_source"),
            get("last_update_at"),
            {} if legacy is None else decoded_alerts(legacy),
            get("seq", 0),
            get("paged_dedup_key"),
            get("breaches") or NOTHING,
            get("update_breached_gap"),
            get("update_reminded_gap"),
            get("escalated") or NOTHING,
            _outcomes(get("escalation_outcomes")),
            review_due_at,
            review_done_at,
            get("review_done_by"),
            number,
            # A handful of values shared by every restored incident: one string each.
            intern(status) if (status := get("status")) else None,
            # Set when the incident opened, mostly: then one float for both.
            triggered_at if (status_at := get("status_at")) == triggered_at else status_at,
            get("roles") or NOTHING,
            get("severity_set_by"),
            shared(annotations) if (annotations := get("annotations")) else NO_ANNOTATIONS,
            get("watch_until"),
            get("closed_at"),
            get("reopened_at"),
            get("reopens", 0),
            get("reacknowledged_at"),
        )
        if legacy is None and alerts_doc is not None:
            del inc.alerts  # shelved, as shelve_alerts does
            inc.alerts_doc = alerts_doc
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

    ``kind`` is ``opened``, ``acknowledged``, ``resolved``, ``reopened`` (a
    re-fire within the recovery watch), ``closed`` (the watch ended: closed for
    good), ``severity_raised``,
    ``status_update``, ``breach`` (``detail`` is the SLA), ``escalated``
    (``detail`` is the tier, ``outcome`` what came of it) or ``unmatched``
    (``count`` new alert instances of ``team`` that no rule of ``detail``,
    ``severity`` or ``ownership``, matched); ``seconds`` is the measured
    interval (time to detect, acknowledge, resolve; the last once, on
    ``resolved``, or on ``closed`` after a recovery watch).
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
class Undo:
    """What a change replaced, to put back if its commit fails."""

    key: str
    before: Incident | None
    closed_before: ClosedEpisode | None


@dataclass(slots=True)
class Change:
    """The result of one command on one incident, ready to commit."""

    incident: Incident
    events: list[TimelineEvent]
    effects: list[Effect]
    undo: Undo
    # Outbox rows this change causes, planned right after the command, while
    # the incident is as the command left it (a later command of the same
    # batch may resolve it): see ``sidecar.incidents.core.planned``.
    outbox: list[OutboxRow] = field(default_factory=list)


def timeline_event(
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
