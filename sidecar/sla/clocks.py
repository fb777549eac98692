"""SLA clocks of an open incident: which deadlines are pending, and which have passed.

Deadlines follow the severity's policy as it is now (a severity raised
mid-incident brings its own, tighter clocks). A target may run on a calendar
(:mod:`sidecar.sla.calendar`): its deadline is then where its business time
runs out, and what it measures is the business time elapsed. An SLA is breached when its
deadline has passed (an acknowledgment exactly at the deadline is in time),
and each breach is recorded once on the incident, so it is counted once,
across restarts too. Escalation steps are due at their deadline, including
``after: 0s`` steps, which run with the change that opens the incident.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from sidecar.sla.calendar import Calendar

if TYPE_CHECKING:
    from sidecar.incidents.model import Incident

SLA_KINDS = ("detect", "acknowledge", "update", "resolve", "postmortem")


class Targets(Protocol):
    """A severity's SLA durations (``sidecar.rules.SLA``)."""

    @property
    def acknowledge(self) -> timedelta | None: ...
    @property
    def resolve(self) -> timedelta | None: ...
    @property
    def update(self) -> timedelta | None: ...
    def calendar(self, name: str) -> str | None: ...


class Step(Protocol):
    """One escalation step (``sidecar.rules.EscalationStep``)."""

    @property
    def after(self) -> timedelta: ...
    @property
    def tier(self) -> str: ...
    @property
    def while_(self) -> str: ...
    @property
    def calendar(self) -> str | None: ...


class Policy(Protocol):
    """What the clocks read of a severity's policy (``sidecar.rules.SeverityPolicy``).

    A protocol, so that the rules depend on the clocks and never the reverse.
    """

    @property
    def sla(self) -> Targets: ...
    @property
    def escalation(self) -> Sequence[Step]: ...
    @property
    def clocks(self) -> Clocks: ...
    def calendar_named(self, name: str | None) -> Calendar | None: ...


ESCALATION = "escalation:"
#: The nudge before an update deadline (``reminders``): due at its time, like a step.
REMINDER = "update_reminder"


@dataclass(frozen=True, slots=True)
class Target:
    """A duration on the wall clock, or in a calendar's business time."""

    seconds: float
    calendar: Calendar | None = None

    def deadline(self, start: float, *, strict: bool = True) -> float | None:
        """When the target runs out, counted from ``start``; None if the calendar never opens.

        Strict for an SLA (the last instant still within it), not for an
        escalation step (the first instant it has fully elapsed); on the wall
        clock the two are the same instant.
        """
        if self.calendar is None:
            return start + self.seconds
        return self.calendar.add(start, self.seconds, strict=strict)

    def elapsed(self, start: float, end: float) -> float:
        """The time from ``start`` to ``end`` this target counts (business time on a calendar)."""
        if self.calendar is None:
            return max(0.0, end - start)
        return self.calendar.elapsed(start, end)


@dataclass(frozen=True, slots=True)
class Clocks:
    """A severity's SLA targets and escalation steps, each with its calendar, worked out once.

    Every open incident's next deadline is computed at start and after each
    change: a hundred thousand of them at start, where converting durations
    and naming escalation kinds each time showed.
    """

    detect: Target | None
    acknowledge: Target | None
    resolve: Target | None
    update: Target | None
    postmortem: Target | None
    # (kind, tier, only while unacknowledged, time after triggered_at)
    escalation: tuple[tuple[str, str, bool, Target], ...]

    @classmethod
    def of(cls, policy: Policy) -> Clocks:
        """The clocks of ``policy``."""
        sla = policy.sla

        def target(name: str) -> Target | None:
            value: timedelta | None = getattr(sla, name, None)
            if value is None:
                return None
            return Target(value.total_seconds(), policy.calendar_named(sla.calendar(name)))

        return cls(
            detect=target("detect"),
            acknowledge=target("acknowledge"),
            resolve=target("resolve"),
            update=target("update"),
            postmortem=target("postmortem"),
            escalation=tuple(
                (
                    ESCALATION + step.tier,
                    step.tier,
                    step.while_ == "unacknowledged",
                    Target(step.after.total_seconds(), policy.calendar_named(step.calendar)),
                )
                for step in policy.escalation
            ),
        )

    def target(self, name: str) -> Target | None:
        """The target of the SLA ``name`` (one of :data:`SLA_KINDS`)."""
        value: Target | None = getattr(self, name)
        return value


def measured(target: Target | None, start: float, end: float) -> float:
    """What the metrics observe for an SLA: the time its target counts, business time on a
    calendar (so that a histogram's ``le="<target>"`` bucket counts exactly those within
    it), else the wall time."""
    return target.elapsed(start, end) if target is not None else max(0.0, end - start)


def update_gap_start(inc: Incident) -> float:
    """Start of the current update-cadence window: the last status update, or declaration.

    A reopening starts a new window: nobody owed updates while it was resolved.
    """
    start = inc.last_update_at if inc.last_update_at is not None else inc.triggered_at
    if inc.reopened_at is not None and inc.reopened_at > start:
        return inc.reopened_at
    return start


def pending_deadlines(
    inc: Incident, policy: Policy, remind_before: float | None = None
) -> list[tuple[str, float]]:
    """Deadlines still ahead of an open incident: SLA names, ``escalation:<tier>``, reminders.

    With ``remind_before``, the update window's reminder falls that long before
    its deadline, once per window (none when the window is shorter than that).
    """
    return [(kind, at) for at, _, kind in _pending(inc, policy, remind_before)]


def next_deadline(
    inc: Incident, policy: Policy, remind_before: float | None = None
) -> tuple[float, bool] | None:
    """The earliest pending deadline, and whether it is strict (see :func:`passed`)."""
    pending = _pending(inc, policy, remind_before)
    if not pending:
        return None
    # At one instant an escalation (not strict: False) comes before a breach.
    at, strict, _ = min(pending)
    return at, strict


def _pending(
    inc: Incident, policy: Policy, remind_before: float | None
) -> list[tuple[float, bool, str]]:
    """(deadline, strict, kind) of :func:`pending_deadlines`, in its order.

    Strictness is known where each deadline is made (see :func:`is_strict`):
    the scheduler asks every open incident's next deadline at start, where
    naming and then classifying each kind showed.
    """
    if not inc.is_open:
        return []
    clocks = policy.clocks
    triggered = inc.state == "triggered"
    breaches = inc.breaches
    out: list[tuple[float, bool, str]] = []
    # A calendar that never opens again sets no deadline (None): none is added.
    target = clocks.acknowledge
    if (
        target is not None
        and triggered
        and "acknowledge" not in breaches
        and (at := target.deadline(inc.triggered_at)) is not None
    ):
        out.append((at, True, "acknowledge"))
    target = clocks.resolve
    if (
        target is not None
        and "resolve" not in breaches
        and (at := target.deadline(inc.started_at)) is not None
    ):
        out.append((at, True, "resolve"))
    target = clocks.update
    if target is not None:
        start = update_gap_start(inc)
        if inc.update_breached_gap != start and (at := target.deadline(start)) is not None:
            out.append((at, True, "update"))
            # The reminder, that long before the deadline (on the wall clock, also
            # for a business-time target), unless the window is shorter than that.
            if (
                remind_before is not None
                and remind_before > 0
                and at - remind_before > start
                and inc.update_reminded_gap != start
            ):
                out.append((at - remind_before, False, REMINDER))
    for kind, tier, while_unacknowledged, after in clocks.escalation:
        if tier in inc.escalated or (while_unacknowledged and not triggered):
            continue
        if (at := after.deadline(inc.triggered_at, strict=False)) is not None:
            out.append((at, False, kind))
    return out


def is_strict(kind: str) -> bool:
    """An SLA's deadline is strict (breached once passed); a step's or a reminder's is not."""
    return not kind.startswith(ESCALATION) and kind != REMINDER


def passed(deadline: float, strict: bool, now: float) -> bool:
    """Whether a deadline is due: a strict one once passed, another at the deadline itself."""
    return now > deadline if strict else now >= deadline


def is_due(kind: str, deadline: float, now: float) -> bool:
    """Escalations run at their deadline; an SLA is breached only once it has passed."""
    return passed(deadline, is_strict(kind), now)
