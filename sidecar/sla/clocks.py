"""SLA clocks of an open incident: which deadlines are pending, and which have passed.

Deadlines follow the severity's policy as it is now (a severity raised
mid-incident brings its own, tighter clocks). An SLA is breached when its
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

if TYPE_CHECKING:
    from sidecar.incidents.model import Incident


class Targets(Protocol):
    """A severity's SLA durations (``sidecar.rules.SLA``)."""

    @property
    def acknowledge(self) -> timedelta | None: ...
    @property
    def resolve(self) -> timedelta | None: ...
    @property
    def update(self) -> timedelta | None: ...


class Step(Protocol):
    """One escalation step (``sidecar.rules.EscalationStep``)."""

    @property
    def after(self) -> timedelta: ...
    @property
    def tier(self) -> str: ...
    @property
    def while_(self) -> str: ...


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


ESCALATION = "escalation:"


@dataclass(frozen=True, slots=True)
class Clocks:
    """A severity's SLA and escalation durations in seconds, worked out once per policy.

    Every open incident's next deadline is computed at start and after each
    change: a hundred thousand of them at start, where converting durations
    and naming escalation kinds each time showed.
    """

    acknowledge: float | None
    resolve: float | None
    update: float | None
    # (kind, tier, only while unacknowledged, seconds after triggered_at)
    escalation: tuple[tuple[str, str, bool, float], ...]

    @classmethod
    def of(cls, policy: Policy) -> Clocks:
        """The clocks of ``policy``."""
        sla = policy.sla
        return cls(
            acknowledge=None if sla.acknowledge is None else sla.acknowledge.total_seconds(),
            resolve=None if sla.resolve is None else sla.resolve.total_seconds(),
            update=None if sla.update is None else sla.update.total_seconds(),
            escalation=tuple(
                (
                    ESCALATION + step.tier,
                    step.tier,
                    step.while_ == "unacknowledged",
                    step.after.total_seconds(),
                )
                for step in policy.escalation
            ),
        )


def update_gap_start(inc: Incident) -> float:
    """Start of the current update-cadence window: the last status update, or declaration."""
    return inc.last_update_at if inc.last_update_at is not None else inc.triggered_at


def pending_deadlines(inc: Incident, policy: Policy) -> list[tuple[str, float]]:
    """Deadlines still ahead of an open incident: SLA names and ``escalation:<tier>``."""
    if not inc.is_open:
        return []
    clocks = policy.clocks
    triggered = inc.state == "triggered"
    out: list[tuple[str, float]] = []
    if clocks.acknowledge is not None and triggered and "acknowledge" not in inc.breaches:
        out.append(("acknowledge", inc.triggered_at + clocks.acknowledge))
    if clocks.resolve is not None and "resolve" not in inc.breaches:
        out.append(("resolve", inc.started_at + clocks.resolve))
    if clocks.update is not None:
        start = update_gap_start(inc)
        if inc.update_breached_gap != start:
            out.append(("update", start + clocks.update))
    for kind, tier, while_unacknowledged, after in clocks.escalation:
        if tier in inc.escalated or (while_unacknowledged and not triggered):
            continue
        out.append((kind, inc.triggered_at + after))
    return out


def next_deadline(inc: Incident, policy: Policy) -> tuple[float, bool] | None:
    """The earliest pending deadline, and whether it is strict (see :func:`passed`)."""
    best: tuple[float, bool] | None = None
    for kind, at in pending_deadlines(inc, policy):
        # At one instant an escalation (not strict) comes before a breach.
        candidate = (at, is_strict(kind))
        if best is None or candidate < best:
            best = candidate
    return best


def is_strict(kind: str) -> bool:
    """An SLA's deadline is strict (breached once passed); an escalation step's is not."""
    return not kind.startswith(ESCALATION)


def passed(deadline: float, strict: bool, now: float) -> bool:
    """Whether a deadline is due: a strict one once passed, another at the deadline itself."""
    return now > deadline if strict else now >= deadline


def is_due(kind: str, deadline: float, now: float) -> bool:
    """Escalations run at their deadline; an SLA is breached only once it has passed."""
    return passed(deadline, is_strict(kind), now)
