"""Alertmanager's routing and grouping, emulated on a simulated clock.

What a real Alertmanager 0.25 would have posted to the sidecar's webhook for
a given alert history, following its sources:

- ``dispatch/route.go``: the routing tree (depth-first, first match unless
  ``continue``), options inherited from the parent, defaults 30s / 5m / 4h,
  the route key (``{}/{team="db"}``) that starts the ``groupKey``;
- ``dispatch/dispatch.go``: one aggregation group per route and group labels;
  the first flush ``group_wait`` after the group is created (at once if the
  alert started longer ago than that), then one every ``group_interval``;
  resolved alerts leave the group after the flush that carried them, and an
  empty group is gone (a later alert starts a new one, with ``group_wait``);
- ``notify/notify.go`` (``DedupStage.needsUpdate``, with the notification
  log): a flush notifies when the group has never notified and has firing
  alerts, when a firing alert is new, when every alert resolved after a
  firing notification, when an alert resolved since (``send_resolved``, which
  the sidecar's receiver needs), or once ``repeat_interval`` has passed;
- the mute stage: silenced alerts are left out of the notification, which
  is not sent at all when every alert is silenced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sidecar.alertmanager import Notification, notification_from
from sidecar.clock import isoformat
from sidecar.durations import parse_duration
from sidecar.matchers import Matcher, parse_matcher, parse_matchers

GO_ZERO_TIME = "0001-01-01T00:00:00Z"
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEPARATOR = 0xFF


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's alert fingerprint: FNV-1a 64 of the sorted labels (``model.LabelSet``)."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ _SEPARATOR) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def label_set_string(labels: Mapping[str, str]) -> str:
    """``{a="1", b="2"}``, as Go's ``model.LabelSet.String``."""
    return "{" + ", ".join(f"{k}={_quote(labels[k])}" for k in sorted(labels)) + "}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclass(frozen=True, slots=True)
class RouteOpts:
    """A route's grouping options; ``group_by`` None means every label (``'...'``)."""

    receiver: str = ""
    group_by: frozenset[str] | None = frozenset()
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0


@dataclass(slots=True)
class Route:
    """One node of the routing tree."""

    opts: RouteOpts
    matchers: list[Matcher] = field(default_factory=list)
    continue_: bool = False
    routes: list[Route] = field(default_factory=list)
    parent: Route | None = None

    def key(self) -> str:
        """The route's key, the first part of its groups' ``groupKey``."""
        own = "{" + ",".join(str(m) for m in self.matchers) + "}"
        return own if self.parent is None else f"{self.parent.key()}/{own}"

    def match(self, labels: Mapping[str, str]) -> list[Route]:
        """The routes an alert goes to, as ``Route.Match`` finds them."""
        if not all(m.matches(labels) for m in self.matchers):
            return []
        found: list[Route] = []
        for child in self.routes:
            matches = child.match(labels)
            found += matches
            if matches and not child.continue_:
                break
        return found or [self]

    def receivers(self) -> set[str]:
        """Every receiver the tree names."""
        out = {self.opts.receiver}
        for child in self.routes:
            out |= child.receivers()
        return out


def parse_route(data: Mapping[str, Any], parent: Route | None = None) -> Route:
    """A routing tree from an Alertmanager configuration's ``route`` section; ValueError if bad."""
    opts = parent.opts if parent is not None else RouteOpts()
    changes: dict[str, Any] = {}
    if data.get("receiver"):
        changes["receiver"] = str(data["receiver"])
    if "group_by" in data and data["group_by"] is not None:
        names = [str(n) for n in data["group_by"]]
        changes["group_by"] = None if "..." in names else frozenset(names)
    for name in ("group_wait", "group_interval", "repeat_interval"):
        if data.get(name) is not None:
            changes[name] = parse_duration(data[name]).total_seconds()
    opts = RouteOpts(**{**_fields(opts), **changes})
    matchers = [
        parse_matcher(f"{k}={_quote(str(v))}") for k, v in (data.get("match") or {}).items()
    ]
    matchers += [
        parse_matcher(f"{k}=~{_quote(str(v))}") for k, v in (data.get("match_re") or {}).items()
    ]
    for line in data.get("matchers") or []:
        matchers += parse_matchers(str(line))
    matchers.sort(key=lambda m: (m.name, m.value, m.op))
    route = Route(opts, matchers, bool(data.get("continue", False)), [], parent)
    children = data.get("routes") or []
    if not isinstance(children, list) or not all(isinstance(c, Mapping) for c in children):
        raise ValueError("routes must be a list of routes")
    route.routes = [parse_route(child, route) for child in children]
    return route


def _fields(opts: RouteOpts) -> dict[str, Any]:
    return {name: getattr(opts, name) for name in RouteOpts.__slots__}


def flat_route(
    *,
    receiver: str = "sidecar",
    group_by: Iterable[str] | None = (),
    group_wait: timedelta = timedelta(seconds=30),
    group_interval: timedelta = timedelta(minutes=5),
    repeat_interval: timedelta = timedelta(hours=4),
) -> Route:
    """A routing tree of one route, from flags (``group_by`` None groups by every label)."""
    return Route(
        RouteOpts(
            receiver=receiver,
            group_by=None if group_by is None else frozenset(group_by),
            group_wait=group_wait.total_seconds(),
            group_interval=group_interval.total_seconds(),
            repeat_interval=repeat_interval.total_seconds(),
        )
    )


@dataclass(slots=True)
class SimAlert:
    """One alert episode: labels, and when it fires and resolves (epoch seconds)."""

    labels: dict[str, str]
    starts_at: float
    ends_at: float | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    # When Prometheus sends it: later than it started when its rule has a `for`.
    sent_at: float | None = None
    # The labels as Alertmanager sorts alerts in a notification.
    order: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        self.fingerprint = self.fingerprint or fingerprint(self.labels)
        self.order = label_set_string(self.labels)
        if self.sent_at is None:
            self.sent_at = self.starts_at

    def resolved(self, now: float) -> bool:
        """Whether the alert has resolved by ``now``."""
        return self.ends_at is not None and self.ends_at <= now


@dataclass(slots=True)
class _LogEntry:
    """The notification log's entry of a group: what it last notified, and when."""

    firing: frozenset[str]
    resolved: frozenset[str]
    at: float


@dataclass(slots=True)
class _Group:
    key: str
    route: Route
    labels: dict[str, str]
    next_at: float
    alerts: dict[str, SimAlert] = field(default_factory=dict)
    flushed: bool = False
    # When it first flushed: its flushes tick every group_interval from then.
    phase: float = 0.0

    def tick_from(self, at: float, *, after: bool = False) -> float:
        """The group's first flush at or after ``at`` (strictly after, with ``after``)."""
        interval = self.route.opts.group_interval
        if interval <= 0:
            return at
        ticks = math.ceil((at - self.phase) / interval)
        tick = self.phase + max(ticks, 0) * interval
        return tick + interval if after and tick <= at else tick


Muted = Callable[[SimAlert, float], bool]


class Dispatcher:
    """Aggregation groups of the sidecar's receiver and the notifications they flush."""

    def __init__(
        self, route: Route, *, receiver: str | None = None, external_url: str = ""
    ) -> None:
        self.route = route
        self.receiver = receiver
        self.external_url = external_url
        self._groups: dict[str, _Group] = {}
        self._log: dict[str, _LogEntry] = {}

    def insert(self, alert: SimAlert, now: float) -> None:
        """Alertmanager receives ``alert`` at ``now`` (a new one replaces the same labels')."""
        for route in self.route.match(alert.labels):
            if self.receiver is not None and route.opts.receiver != self.receiver:
                continue
            by = route.opts.group_by
            labels = {k: v for k, v in alert.labels.items() if by is None or k in by}
            key = f"{route.key()}:{label_set_string(labels)}"
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(key, route, labels, now + route.opts.group_wait)
            group.alerts[alert.fingerprint] = alert
            if not group.flushed and alert.starts_at + route.opts.group_wait < now:
                group.next_at = now
            elif group.flushed:
                # Idle flushes may have been skipped: the next tick takes it.
                group.next_at = min(group.next_at, group.tick_from(now))

    def next_flush(self) -> float | None:
        """When the next group flushes, if any group is left and will."""
        at = min((g.next_at for g in self._groups.values()), default=math.inf)
        return None if at == math.inf else at

    def flush_due(self, now: float, muted: Muted | None = None) -> list[Notification]:
        """Flush every group due by ``now``; returns the notifications sent, in time order."""
        if (first := self.next_flush()) is None or first > now:
            return []
        due = sorted(
            (g for g in self._groups.values() if g.next_at <= now), key=lambda g: (g.next_at, g.key)
        )
        out = []
        for group in due:
            at = group.next_at
            if not group.flushed:
                group.flushed, group.phase = True, at
            group.next_at = at + group.route.opts.group_interval
            notification = self._flush(group, at, muted)
            if notification is not None:
                out.append(notification)
            if not group.alerts:
                del self._groups[group.key]
            elif muted is None:
                group.next_at = max(group.next_at, self._next_change(group))
        return out

    def _next_change(self, group: _Group) -> float:
        """The first flush that can notify, when only time passes (no new alert, no silence).

        Flushes in between find the same firing alerts, none newly resolved,
        and the repeat interval not yet passed: Alertmanager sends nothing at
        them, and skipping them keeps a month's replay quick.
        """
        ends = [a.ends_at for a in group.alerts.values() if a.ends_at is not None]
        candidates = [group.tick_from(min(ends))] if ends else []
        entry = self._log.get(group.key)
        if entry is not None and entry.firing:
            repeat_at = entry.at + group.route.opts.repeat_interval
            candidates.append(group.tick_from(repeat_at, after=True))
        return min(candidates, default=math.inf)

    def _flush(self, group: _Group, now: float, muted: Muted | None) -> Notification | None:
        alerts = list(group.alerts.values())
        resolved_now = [a for a in alerts if a.resolved(now)]
        visible = [a for a in alerts if muted is None or not muted(a, now)]
        notification = None
        if visible:
            firing = frozenset(a.fingerprint for a in visible if not a.resolved(now))
            resolved = frozenset(a.fingerprint for a in visible if a.resolved(now))
            entry = self._log.get(group.key)
            if _needs_update(entry, firing, resolved, group.route.opts.repeat_interval, now):
                self._log[group.key] = _LogEntry(firing, resolved, now)
                visible.sort(key=lambda a: a.order)
                notification = self._notification(group, visible, now)
        # The pipeline succeeded (sent, deduplicated or muted): the resolved
        # alerts it saw leave the group.
        for alert in resolved_now:
            if group.alerts.get(alert.fingerprint) is alert:
                del group.alerts[alert.fingerprint]
        return notification

    def _notification(self, group: _Group, alerts: list[SimAlert], now: float) -> Notification:
        common = dict(alerts[0].labels)
        annotations = dict(alerts[0].annotations)
        for alert in alerts[1:]:
            common = {k: v for k, v in common.items() if alert.labels.get(k) == v}
            annotations = {k: v for k, v in annotations.items() if alert.annotations.get(k) == v}
        firing = any(not a.resolved(now) for a in alerts)
        return notification_from(
            {
                "version": "4",
                "groupKey": group.key,
                "truncatedAlerts": 0,
                "status": "firing" if firing else "resolved",
                "receiver": group.route.opts.receiver,
                "groupLabels": group.labels,
                "commonLabels": common,
                "commonAnnotations": annotations,
                "externalURL": self.external_url,
                "alerts": [
                    {
                        "status": "resolved" if a.resolved(now) else "firing",
                        "labels": a.labels,
                        "annotations": a.annotations,
                        "startsAt": isoformat(a.starts_at),
                        "endsAt": isoformat(a.ends_at) if a.resolved(now) else GO_ZERO_TIME,
                        "generatorURL": "",
                        "fingerprint": a.fingerprint,
                    }
                    for a in alerts
                ],
            }
        )


def _needs_update(
    entry: _LogEntry | None,
    firing: frozenset[str],
    resolved: frozenset[str],
    repeat: float,
    now: float,
) -> bool:
    """``DedupStage.needsUpdate`` of Alertmanager 0.25, for a receiver with ``send_resolved``."""
    if entry is None:
        return bool(firing)
    if not firing <= entry.firing:
        return True
    if not firing:
        return bool(entry.firing)
    if not resolved <= entry.resolved:
        return True
    return entry.at < now - repeat
