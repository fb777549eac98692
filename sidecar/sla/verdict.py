"""The one verdict on each SLA of an incident: met, breached, pending or not applicable.

:func:`sla_report` is the one implementation of "was this SLA met?": the API's
incident view and the post-incident review both use it, and it counts every
breach the incident book recorded (and so the metrics counted) as breached.
A breach is counted the moment its deadline passes and it stands, even when a
later resolution's ``endsAt`` falls inside the target.

Everything here is pure: times are UTC epoch seconds and ``now`` is passed in.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sidecar.clock import isoformat
from sidecar.incidents.model import Incident, TimelineEvent
from sidecar.sla.clocks import Clocks, Target

SlaName = Literal["detect", "acknowledge", "update", "resolve", "postmortem"]
SlaStatus = Literal["met", "breached", "pending", "not_applicable"]

SLA_NAMES: tuple[SlaName, ...] = ("detect", "acknowledge", "update", "resolve", "postmortem")
"""Every SLA a severity may set, in the order the plans list them."""

STATUS_UPDATE_KIND = "status_update"
"""Timeline event kind of a status update (what the update-cadence SLA measures)."""

REVIEW_DONE_KIND = "postmortem_done"
"""Timeline event kind that marks the post-incident review as done."""

SLA_TITLES: Mapping[SlaName, str] = {
    "detect": "Time to detect",
    "acknowledge": "Time to acknowledge",
    "update": "Status update cadence (longest gap)",
    "resolve": "Time to resolve",
    "postmortem": "Post-incident review",
}


class _Policy(Protocol):
    @property
    def clocks(self) -> Clocks: ...


class Policies(Protocol):
    """The severities' policies (``sidecar.rules.RuleSet``)."""

    def policy(self, severity: str) -> _Policy: ...


@dataclass(frozen=True, slots=True)
class SlaResult:
    """One SLA of an incident: its target, what was measured and the verdict.

    ``actual_seconds`` is the wall time measured, ``None`` until the measured
    moment happens (for the update cadence it is the longest gap so far, the
    current one included). ``deadline`` is when the SLA is or was due, on the
    wall clock: for a breach, the moment it was first missed; ``None`` when no
    deadline runs (a review of an open incident, the cadence of a resolved one,
    a calendar that never opens). ``calendar`` names the calendar a target in
    business time runs on; ``target_seconds`` is then business time, and
    ``elapsed_seconds`` the business time counted against it (until the
    measured moment, or now while pending). On the wall clock ``elapsed_seconds``
    is wall time, so that a client reads one field either way.
    """

    name: SlaName
    target_seconds: float
    actual_seconds: float | None
    deadline: float | None
    status: SlaStatus
    elapsed_seconds: float | None = None
    calendar: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain form for the API, times as RFC 3339."""
        return {
            "target_seconds": self.target_seconds,
            "actual_seconds": self.actual_seconds,
            "elapsed_seconds": self.elapsed_seconds,
            "calendar": self.calendar,
            "deadline": isoformat(self.deadline),
            "status": self.status,
        }


def sla_report(
    incident: Incident,
    timeline: Sequence[TimelineEvent],
    rules: Policies,
    now: float,
    *,
    reviewed_at: float | None = None,
) -> list[SlaResult]:
    """Each SLA the incident's severity sets, in :data:`SLA_NAMES` order, with its verdict.

    The review counts as done at ``reviewed_at`` or, when not given, at the first
    :data:`REVIEW_DONE_KIND` event of ``timeline``. Without a timeline the update
    cadence sees only ``incident.last_update_at``, so only the current gap.
    An incident whose severity the rules no longer declare has no SLA.
    """
    try:
        clocks = rules.policy(incident.severity).clocks
    except KeyError:
        return []
    if reviewed_at is None:
        reviewed_at = min((e.at for e in timeline if e.kind == REVIEW_DONE_KIND), default=None)
    results: list[SlaResult] = []
    for name in SLA_NAMES:
        target = clocks.target(name)
        if target is None:
            continue
        if name == "detect":
            results.append(_detect(incident, timeline, target))
        elif name == "acknowledge":
            results.append(_acknowledge(incident, target, now))
        elif name == "update":
            results.append(_update_cadence(incident, timeline, target, now))
        elif name == "resolve":
            results.append(_span(name, incident.started_at, incident.resolved_at, target, now))
        else:
            results.append(_review(incident, reviewed_at, target, now))
    # A breach the book recorded was counted in the metrics when its deadline
    # passed; it stands even when a later resolution's endsAt falls inside the
    # target, so that the metric, the API and the review give one answer.
    return [
        dataclasses.replace(r, status="breached") if r.name in incident.breaches else r
        for r in results
    ]


def _result(
    name: SlaName,
    target: Target,
    actual: float | None,
    deadline: float | None,
    status: SlaStatus,
    elapsed: float | None,
) -> SlaResult:
    calendar = None if target.calendar is None else target.calendar.name
    return SlaResult(name, target.seconds, actual, deadline, status, elapsed, calendar)


def _late(at: float, deadline: float | None) -> bool:
    return deadline is not None and at > deadline


def _span(name: SlaName, start: float, end: float | None, target: Target, now: float) -> SlaResult:
    """An SLA on one interval: met or breached once it ends, breached as soon as it overruns."""
    deadline = target.deadline(start)
    if end is not None:
        status: SlaStatus = "breached" if _late(end, deadline) else "met"
        return _result(name, target, end - start, deadline, status, target.elapsed(start, end))
    status = "breached" if _late(now, deadline) else "pending"
    return _result(name, target, None, deadline, status, target.elapsed(start, now))


def _detect(incident: Incident, timeline: Sequence[TimelineEvent], target: Target) -> SlaResult:
    """Detection; unknown when the firing notification never reached the sidecar."""
    missed = any(
        e.kind == "opened" and e.data.get("firing_notification_missed") is True for e in timeline
    )
    if missed:
        deadline = target.deadline(incident.started_at)
        return _result("detect", target, None, deadline, "not_applicable", None)
    return _span(
        "detect", incident.started_at, incident.triggered_at, target, incident.triggered_at
    )


def _acknowledge(incident: Incident, target: Target, now: float) -> SlaResult:
    """Acknowledgment; resolved unacknowledged, it breached only if it outlived the deadline."""
    if incident.acknowledged_at is not None or incident.resolved_at is None:
        return _span("acknowledge", incident.triggered_at, incident.acknowledged_at, target, now)
    deadline = target.deadline(incident.triggered_at)
    # Resolved without acknowledgment: the clock stopped at resolution.
    status: SlaStatus = "breached" if _late(incident.resolved_at, deadline) else "not_applicable"
    elapsed = target.elapsed(incident.triggered_at, incident.resolved_at)
    return _result("acknowledge", target, None, deadline, status, elapsed)


def _update_cadence(
    incident: Incident, timeline: Sequence[TimelineEvent], target: Target, now: float
) -> SlaResult:
    """The longest gap between status updates, from declaration to resolution (or now)."""
    start = incident.triggered_at
    end = max(start, incident.resolved_at if incident.resolved_at is not None else now)
    updates = {e.at for e in timeline if e.kind == STATUS_UPDATE_KIND}
    if incident.last_update_at is not None:
        updates.add(incident.last_update_at)
    # Between a resolution and a reopening (the recovery watch) no update is owed.
    paused = _paused(timeline)
    within = {t for t in updates if start <= t <= end}
    within |= {t for span in paused for t in span if start <= t <= end}
    points = sorted({start, end} | within)
    # (wall gap, gap on the target's clock, its start)
    gaps = [
        (b - a, target.elapsed(a, b), a)
        for a, b in itertools.pairwise(points)
        if (a, b) not in paused
    ]
    longest = max((gap for gap, _, _ in gaps), default=0.0)
    counted = max((gap for _, gap, _ in gaps), default=0.0)
    missed = next((begin for _, gap, begin in gaps if gap > target.seconds), None)
    if missed is not None:
        deadline = target.deadline(missed)
        return _result("update", target, longest, deadline, "breached", counted)
    if incident.is_open:
        last = max(within, default=start)
        return _result("update", target, longest, target.deadline(last), "pending", counted)
    return _result("update", target, longest, None, "met", counted)


def _paused(timeline: Sequence[TimelineEvent]) -> set[tuple[float, float]]:
    """(resolved, reopened) times of each resolution a reopening undid."""
    spans = set()
    resolved: float | None = None
    for e in timeline:
        if e.kind == "resolved":
            resolved = e.at
        elif e.kind == "reopened" and resolved is not None:
            spans.add((resolved, e.at))
            resolved = None
    return spans


def _review(incident: Incident, reviewed_at: float | None, target: Target, now: float) -> SlaResult:
    """The post-incident review, due ``target`` after resolution."""
    if incident.resolved_at is None:
        return _result("postmortem", target, None, None, "pending", None)
    return _span("postmortem", incident.resolved_at, reviewed_at, target, now)
