"""A response plan on a simulated clock, for ``test-plan`` and ``backtest``.

- :mod:`~sidecar.simulate.alertmanager`: Alertmanager's routing and grouping,
  emulated: which notifications a given alert history would have caused;
- :mod:`~sidecar.simulate.run`: :class:`Simulation`, the real rules, incident
  book and PagerDuty planner stepped through simulated time, on the
  in-memory store;
- :mod:`~sidecar.simulate.plan`: the rules and routing a simulation runs.

Nothing here sleeps or opens a socket: time jumps from event to event.
"""

from sidecar.simulate.alertmanager import Dispatcher, Route, SimAlert, flat_route, parse_route
from sidecar.simulate.plan import Plan, plan_from_config, plan_from_rules
from sidecar.simulate.run import Sent, Silence, Simulation

__all__ = [
    "Dispatcher",
    "Plan",
    "Route",
    "Sent",
    "Silence",
    "SimAlert",
    "Simulation",
    "flat_route",
    "parse_route",
    "plan_from_config",
    "plan_from_rules",
]
