"""What a new incident is made of: its alert states, the alert that sets its
severity, and its title.

Opening is the one step of a notification that touches every alert of it
(merging into an open incident mostly finds them known), so these are written
for a body of hundreds of alerts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from operator import attrgetter

from sidecar.alertmanager import Alert, Notification
from sidecar.incidents.core import ClassificationLike
from sidecar.incidents.model import AlertState


def opening_states(
    alerts: list[Alert],
    classes: Mapping[str, ClassificationLike],
    unmatched: Counter[tuple[str, str]],
) -> dict[str, AlertState]:
    """The alert states of a new incident; the last copy of a repeated fingerprint stands.

    What ``Grouping._alert_state`` makes for an alert joining an incident, in
    one loop over what may be hundreds of alerts, and with the labels as
    parsed rather than interned: once committed, the service holds a new
    incident's alerts as the stored document (``Incident.shelve_alerts``),
    interned when next decoded, so these states live only until the commit
    and interning them was wasted work.
    """
    states: dict[str, AlertState] = {}
    for a in alerts:
        fingerprint = a.fingerprint
        cls = classes[fingerprint]  # _keep classified every new instance
        if cls.unmatched:
            for rules in cls.unmatched:
                unmatched[(rules, cls.team)] += 1
        states[fingerprint] = AlertState(
            fingerprint,
            a.status,
            a.starts_at,
            a.ends_at,
            cls.severity,
            a.labels,
            a.generator_url,
        )
    return states


def top_state(
    states: Mapping[str, AlertState], rank: Callable[[str], int], *, firing_only: bool
) -> AlertState:
    """``Grouping._top`` of a new incident's states: each severity ranked once, not
    each alert's (the alerts of a group mostly share one)."""
    every = list(states.values())
    if len(every) == 1:
        return every[0]  # a group of one alert: it is the top one either way
    # A body may repeat a fingerprint, firing then resolved: the last copy
    # stands, so "some alert fires" can leave no firing state to choose from.
    pool = [s for s in every if s.status == "firing"] if firing_only else every
    pool = pool or every
    best = min({s.severity for s in pool}, key=rank)
    # The earliest of the highest severity; the first of them on a tie, as _top.
    return min((s for s in pool if s.severity == best), key=_starts_at)


_starts_at = attrgetter("starts_at")


def annotations_of(alerts: list[Alert], fingerprint: str) -> Mapping[str, str]:
    """The annotations of the first alert of ``fingerprint`` (none if it is not there)."""
    for a in alerts:
        if a.fingerprint == fingerprint:
            return a.annotations
    return {}


def title(n: Notification, alerts: list[Alert]) -> str:
    """The incident's title: the alert name and summary, else the group's labels."""
    first = alerts[0]
    summary = (
        n.common_annotations.get("summary")
        or first.annotations.get("summary")
        or first.annotations.get("description", "")
    )
    name = n.common_labels.get("alertname") or first.labels.get("alertname", "alert")
    text = f"{name}: {summary}" if summary else name
    extra = ", ".join(f"{k}={v}" for k, v in sorted(n.group_labels.items()) if k != "alertname")
    if extra and not summary:
        text = f"{text} ({extra})"
    return text[:1024]
