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
from types import MemberDescriptorType
from typing import TYPE_CHECKING, Any, Literal

from sidecar.incidents.alerts import AlertState as AlertState
from sidecar.incidents.alerts import alerts_document
from sidecar.incidents.alerts import decode_alerts as decode_alerts
from sidecar.incidents.alerts import interned as interned
from sidecar.incidents.closed import NONE as NO_INSTANCES
from sidecar.incidents.closed import ClosedEpisode
from sidecar.incidents.stored import COLD, NO_ANNOTATIONS, restore, unshelve
from sidecar.incidents.stored import NO_OUTCOMES as _NO_OUTCOMES
from sidecar.incidents.stored import NOTHING as NOTHING

if TYPE_CHECKING:
    from sidecar.store.rows import OutboxRow

State = Literal["triggered", "acknowledged", "resolved"]

EscalationOutcome = Literal["paged", "recorded", "unrouted"]
ESCALATION_OUTCOMES: tuple[EscalationOutcome, ...] = ("paged", "recorded", "unrouted")
NO_OUTCOMES: Mapping[str, EscalationOutcome] = _NO_OUTCOMES
"""What a due escalation step did: paged its tier's routing key; was recorded
only, as its ``record_only`` step declares; or reached nobody, the tier having
no routing key (only possible without any PagerDuty configuration: with one,
such a step is refused at start, see :mod:`sidecar.routing`)."""


# The data document's fields written only when not None (see ``Incident.data_json``).
_UNLESS_NONE = (
    "acknowledged_by",
    "acknowledge_source",
    "resolved_by",
    "resolve_source",
    "paged_dedup_key",
    "review_done_by",
    "status",
    "status_at",
    "severity_set_by",
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
    # The stored data document of a restored incident, until one of its cold
    # fields (``stored.COLD``) is first read (see ``sidecar.incidents.stored``).
    data_doc: bytes | None = field(default=None, repr=False, compare=False)

    if not TYPE_CHECKING:  # keeps mypy from taking every attribute as valid

        def __getattr__(self, name: str) -> Any:
            # Only reached for an unset slot. A restored or committed incident
            # leaves ``alerts`` unset and keeps its stored document: at start a
            # hundred thousand incidents are restored, most are never touched
            # before they resolve, and their alerts are most of what decoding
            # them costs, in time and in memory. The next read decodes them.
            if name in COLD and self.data_doc is not None:
                unshelve(self, self.data_doc)  # the same for the data's cold fields
                return getattr(self, name)
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

    def firing_instances(self) -> frozenset[tuple[str, float]]:
        """The alert instances still firing (resolved by hand); nearly always the shared none."""
        firing = [
            (a.fingerprint, a.starts_at) for a in self.alerts.values() if a.status == "firing"
        ]
        return frozenset(firing) if firing else NO_INSTANCES

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
        return alerts_document(alerts.values())

    def data_json(self) -> dict[str, Any]:
        """The fields stored as a JSON document beside the indexed columns and the alerts."""
        data: dict[str, Any] = {}
        # What a restart reads of every open incident first, and only once set:
        # a document that starts with ``seq`` names none of it, and restoring
        # keeps the rest undecoded until read (sidecar.incidents.stored).
        if self.breaches:
            data["breaches"] = dict(self.breaches)
        if self.escalated:
            data["escalated"] = dict(self.escalated)
        for name in ("last_update_at", "update_breached_gap", "update_reminded_gap"):
            if (value := getattr(self, name)) is not None:
                data[name] = value
        if self.reopened_at:
            data["reopened_at"] = self.reopened_at
        data["seq"] = self.seq
        data["group_key"] = self.group_key
        data["receiver"] = self.receiver
        data["title"] = self.title
        data["labels"] = self.labels
        data["external_url"] = self.external_url
        # The rest only once set too: every row written pays for every key.
        # Readers default what is left out.
        for name in _UNLESS_NONE:
            if (value := getattr(self, name)) is not None:
                data[name] = value
        if self.roles:
            data["roles"] = dict(self.roles)
        if self.escalation_outcomes:
            data["escalation_outcomes"] = dict(self.escalation_outcomes)
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        # The same for the recovery watch: open incidents have none of these.
        for name in ("watch_until", "closed_at", "reopens", "reacknowledged_at"):
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
        data: Mapping[str, Any] | bytes,
        review_due_at: float | None = None,
        review_done_at: float | None = None,
        number: str | None = None,
        alerts_doc: bytes | None = None,
    ) -> Incident:
        """Rebuild an incident from its stored columns and JSON documents (``data`` is taken over).

        ``alerts_doc`` is decoded when the alerts are first read, and so is a
        ``data`` document's cold part, given as bytes (see :mod:`~sidecar.incidents.stored`).
        Rows written before the alerts had their own column carry them in ``data``.
        """
        return restore(
            cls,
            id,
            key,
            state,
            severity,
            team,
            started_at,
            triggered_at,
            acknowledged_at,
            resolved_at,
            review_due_at,
            review_done_at,
            number,
            data,
            alerts_doc,
        )


def escalation_outcome(record_only: bool, routed: bool) -> EscalationOutcome:
    """A due step's outcome: recorded when record_only, else paged if its tier is routed."""
    if record_only:
        return "recorded"
    return "paged" if routed else "unrouted"


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


def resolution_time(inc: Incident, now: float) -> float:
    """Resolution time: the latest ``endsAt`` of the alerts, not the notification's arrival."""
    ends = [a.ends_at for a in inc.alerts.values() if a.ends_at is not None]
    return max(ends) if ends else now
