"""Replaying an alert history through the plan: what it would have done, on a simulated clock.

The episodes read from Prometheus go through the emulated Alertmanager of
the given routing tree into the real rules, book and PagerDuty planner
(:class:`~sidecar.simulate.run.Simulation`). Nobody's acknowledgment is in
Prometheus, so it is an assumption: each incident is acknowledged a given
time after it was declared (per severity if asked), or never.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from sidecar.durations import format_duration
from sidecar.incidents import Change
from sidecar.simulate.alertmanager import Dispatcher, Route, SimAlert
from sidecar.simulate.plan import Plan
from sidecar.simulate.run import Simulation

ACK_ACTOR = "backtest (assumed)"


@dataclass(frozen=True, slots=True)
class AckAssumption:
    """How long after its declaration an incident is acknowledged; None: never."""

    default: float | None = None
    by_severity: Mapping[str, float | None] = field(default_factory=dict)

    def delay(self, severity: str) -> float | None:
        """The delay for an incident of ``severity``."""
        return self.by_severity.get(severity, self.default)

    def describe(self) -> str:
        """The assumption in words, for the report."""

        def one(value: float | None) -> str:
            if value is None:
                return "never"
            return f"{format_duration(timedelta(seconds=value))} after declaration"

        parts = [f"{one(self.default)}"]
        parts += [f"{sev}: {one(v)}" for sev, v in sorted(self.by_severity.items())]
        return "; ".join(parts)


def replay(
    plan: Plan,
    route: Route,
    alerts: list[SimAlert],
    *,
    start: float,
    end: float,
    receiver: str | None,
    ack: AckAssumption,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    slices: int = 100,
) -> Simulation:
    """Run the history from ``start`` to ``end``; the simulation holds what happened."""
    sim = Simulation(
        plan.rules,
        Dispatcher(route, receiver=receiver),
        start=start,
        routing_names=plan.routing_names,
        key_mode=plan.key_mode,
        dedup_window=plan.dedup_window,
        number_timezone=plan.number_timezone,
        reminders=plan.reminders,
        planners=plan.planners,
    )
    sim.add_alerts(alerts)

    def acknowledge_later(change: Change) -> None:
        inc = change.incident
        if not any(e.kind == "opened" for e in change.effects) or not inc.is_open:
            return
        delay = ack.delay(inc.severity)
        if delay is None:
            return

        def run(now: float) -> None:
            current = sim.book.get_open(inc.id)
            if current is not None and current.state == "triggered":
                sim.commit(sim.book.acknowledge(inc.id, actor=ACK_ACTOR, source="api", now=now))

        sim.schedule(inc.triggered_at + delay, run)

    sim.on_change.append(acknowledge_later)
    span = max(end - start, 1.0)
    count = max(1, min(slices, math.ceil(span / 60.0)))
    try:
        for i in range(1, count + 1):
            sim.run_until(start + span * i / count if i < count else end)
            progress(i, count)
    finally:
        sim.close()
    return sim
