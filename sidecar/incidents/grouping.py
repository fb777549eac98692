"""Grouping: how an Alertmanager notification opens, merges into or resolves an incident.

By default one incident is one alert group episode (``groupKey``, hashed when
over-long: see :func:`~sidecar.alertmanager.incident_key`);
``incidents.key: alert`` makes one per alert fingerprint. An incident
resolves when every alert instance it tracks has resolved: a resolved
notification resolves the alerts it lists and no others, since Alertmanager
leaves silenced, inhibited and truncated (``max_alerts``) alerts out of it,
still firing or not, and computes its status from the rest. A notification
whose alert instances a closed episode of its key already covered is a late
copy and opens nothing (see :mod:`~sidecar.incidents.closed`: one still firing
when a person resolved it pages again). Alerts the rules drop (``severity="none"``:
Watchdog, InfoInhibitor) are left out of every notification before anything
else: they never open or join an incident, and do not keep a group's incident
open.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from sys import intern

from sidecar import sla
from sidecar.alertmanager import Alert, Notification
from sidecar.incidents.alerts import alert_name, quoted, repeats
from sidecar.incidents.core import ClassificationLike, planned
from sidecar.incidents.ids import new_incident_id
from sidecar.incidents.model import (
    AlertState,
    Change,
    Effect,
    Incident,
    TimelineEvent,
    Undo,
    interned,
    resolution_time,
)
from sidecar.incidents.numbers import war_room
from sidecar.incidents.opening import annotations_of, opening_states, title, top_state
from sidecar.incidents.stepping import Stepping


class Grouping(Stepping):
    """Alertmanager notifications applied to the book."""

    def keys_of(self, notification: Notification) -> list[str]:
        """The incident keys a notification touches (its group, or each alert)."""
        if self.key_mode == "group":
            return [notification.incident_key]
        return [a.fingerprint for a in notification.alerts]

    def repeats_open(self, n: Notification) -> bool:
        """Whether applying ``n`` would change nothing, as it only repeats what the open
        incidents of its keys hold (the first test of applying it, for each key)."""
        if self.key_mode == "group":
            inc = self._open.get(n.incident_key)
            return inc is not None and n.status == "firing" and repeats(inc.alerts, n.alerts)
        for alert in n.alerts:
            inc = self._open.get(alert.fingerprint)
            if inc is None or alert.status != "firing" or not repeats(inc.alerts, (alert,)):
                return False
        return True

    @planned
    def apply_notification(self, n: Notification, now: float) -> list[Change]:
        """Apply an Alertmanager notification; returns the changes (empty for a duplicate)."""
        if self.key_mode == "group":
            return self._apply(
                n.incident_key, n.alerts, n, now, group_resolved=n.status == "resolved"
            )
        changes: list[Change] = []
        try:
            for alert in n.alerts:
                changes += self._apply(
                    alert.fingerprint, [alert], n, now, group_resolved=alert.status == "resolved"
                )
        except Exception:
            # One notification, one answer: the alerts applied before the one
            # that failed must not stay in memory, never written nor undone.
            for change in reversed(changes):
                self.undo(change)
            raise
        return changes

    def _apply(
        self,
        key: str,
        alerts: list[Alert],
        n: Notification,
        now: float,
        *,
        group_resolved: bool,
    ) -> list[Change]:
        inc = self._open.get(key)
        if inc is not None and not group_resolved and repeats(inc.alerts, alerts):
            # A resend of what the incident holds (repeat_interval, an HA peer,
            # refreshed annotations): what the steps below would conclude, in
            # one pass and without the undo copy. Most of what Alertmanager
            # sends for an open group is this.
            return []
        kept, classes = self._keep(alerts, inc)
        if not kept:
            return []  # only dropped alerts, firing or resolved: no incident to touch
        if len(kept) < len(alerts) and not group_resolved:
            # Alertmanager's status counts the dropped alerts too: a Watchdog
            # in the same group would keep the others' incident open for ever.
            # Alerts truncated out of the payload do not count in it (it is
            # computed from the alerts listed), so truncation changes nothing.
            group_resolved = all(a.status == "resolved" for a in kept)
        if inc is None:
            # Only a key with a closed episode can have a late copy: most new
            # groups have none, and the list of instances is then not built.
            firing = [a for a in kept if a.status == "firing"]
            listed = [_instance(a) for a in firing or kept] if self.closed.get(key) else []
            if listed and self.closed.covers(key, listed, firing=bool(firing)):
                return []  # a late duplicate of a notification for an incident already closed
            return self._no_open_incident(key, kept, classes, n, now, group_resolved)
        change = self._merge(inc, kept, classes, n, now, group_resolved=group_resolved)
        return [change] if change else []

    def _no_open_incident(
        self,
        key: str,
        alerts: list[Alert],
        classes: Mapping[str, ClassificationLike],
        n: Notification,
        now: float,
        group_resolved: bool,
    ) -> list[Change]:
        """What alerts of a key with no open incident do: open one (the watch may reopen one)."""
        change = self._open_new(key, alerts, classes, n, now)
        return [change] if change else []

    def _keep(
        self, alerts: list[Alert], inc: Incident | None
    ) -> tuple[list[Alert], dict[str, ClassificationLike]]:
        """The alerts the rules do not drop, and the classification of each new instance.

        An instance the incident already tracks is kept without asking: it
        joined under the rules of the time, and must stay to resolve the
        incident even if reloaded rules now drop it.
        """
        kept = []
        classes: dict[str, ClassificationLike] = {}
        classify = self.classifier.classify
        if inc is None:
            # A new incident: every alert is a new instance (the usual case of
            # a notification that classifies at all, with fifty alerts or more).
            for alert in alerts:
                cls = classes[alert.fingerprint] = classify(alert.labels, alert.annotations)
                if not cls.dropped:
                    kept.append(alert)
            return kept, classes
        known = inc.alerts
        for alert in alerts:
            tracked = known.get(alert.fingerprint)
            if tracked is None or tracked.starts_at != alert.starts_at:
                cls = classes[alert.fingerprint] = classify(alert.labels, alert.annotations)
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
    ) -> Change | None:
        firing = [a for a in alerts if a.status == "firing"]
        undo = self._begin(key, None)
        unmatched: Counter[tuple[str, str]] = Counter()
        states = opening_states(alerts, classes, unmatched)
        top = top_state(states, self.classifier.rank, firing_only=bool(firing))
        cls = self.classifier.classify(top.labels, annotations_of(alerts, top.fingerprint))
        inc = Incident(
            id=new_incident_id(now),
            key=key,
            group_key=n.group_key,
            receiver=intern(n.receiver),
            state="triggered",
            severity=top.severity,
            team=cls.team,
            title=intern(title(n, alerts)),
            labels=interned(n.group_labels or n.common_labels),
            annotations=quoted(n.common_annotations or annotations_of(alerts, top.fingerprint)),
            external_url=intern(n.external_url),
            started_at=min(a.starts_at for a in states.values()),
            triggered_at=now,
            alerts=states,
            number=self.numbering.take(now),
        )
        statuses = self.classifier.statuses
        if statuses:
            inc.status, inc.status_at = statuses[0], now
        # No firing alert: the firing notification never reached us (sidecar
        # down, or the group resolved within group_wait). Keep the incident,
        # already resolved, rather than lose it; its detection time is unknown.
        # Decided by the alerts, not the group's status: a listed alert that
        # fires is never taken as resolved (see ``_merge``).
        missed = all(st.status == "resolved" for st in states.values())
        what = "recorded from a resolved notification" if missed else "opened"
        events = [
            self.event(
                inc,
                now,
                "opened",
                "alertmanager",
                None,
                f"{inc.severity} incident {what}: {inc.title}",
                {
                    "alerts": sorted(states),
                    "firing_notification_missed": missed,
                    "number": inc.number,
                    "war_room": war_room(inc.number),
                },
            )
        ]
        detect = self._target(inc.severity, "detect")
        ttd = None if missed else sla.measured(detect, inc.started_at, now)
        effects = [Effect("opened", inc.id, inc.severity, inc.team, ttd)]
        if ttd is not None and detect is not None and ttd > detect.seconds:
            self._breach(inc, "detect", now, events, effects)
        if not missed:
            self._escalate_by_rules(inc, _firing_pairs(firing), now, events, effects)
            self._settle(inc, now, events, effects)
        if missed:
            self._close_by_alertmanager(inc, resolution_time(inc, now), now, events, effects)
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
        begun: tuple[Undo, list[TimelineEvent], list[Effect]] | None = None,
    ) -> Change | None:
        """Merge alerts into ``inc``; ``begun``: a command that already began it (a reopen)."""
        undo, events, effects = begun or (self._begin(inc.key, inc), [], [])
        unmatched: Counter[tuple[str, str]] = Counter()
        added: list[AlertState] = []
        new_firing: list[Alert] = []
        stale = 0
        new = [
            (_instance(a), a.status == "firing") for a in alerts if a.fingerprint not in inc.alerts
        ]
        copies = self.closed.copies(inc.key, new) if new else ()
        for alert in alerts:
            starts = alert.starts_at
            known = inc.alerts.get(alert.fingerprint)
            if known is None and copies and _instance(alert) in copies:
                stale += 1
                continue  # the closed episode's, late (an HA peer's copy): not this one's
            if known is None or known.starts_at < starts:
                if alert.status == "firing":
                    new_firing.append(alert)
                inc.alerts[alert.fingerprint] = st = self._alert_state(alert, classes, unmatched)
                added.append(st)
                what = "joined" if known is None else "fired again"
                events.append(
                    self.event(
                        inc,
                        now,
                        "alert_added",
                        "alertmanager",
                        None,
                        f"alert {alert_name(st)} {what} ({st.status}, {st.severity})",
                        {"fingerprint": st.fingerprint, "status": st.status},
                    )
                )
            elif known.starts_at > starts:
                stale += 1
                continue  # an older instance than the one we track: stale
            elif known.status == "firing" and alert.status == "resolved":
                ends_at = alert.ends_at if alert.ends_at is not None else now
                inc.alerts[alert.fingerprint] = known = known.ended(ends_at)
                events.append(
                    self.event(
                        inc,
                        now,
                        "alert_resolved",
                        "alertmanager",
                        None,
                        f"alert {alert_name(known)} resolved",
                        {"fingerprint": known.fingerprint, "ends_at": known.ends_at},
                    )
                )
            # Same instance, same status (a repeat), or firing after resolved
            # (an out-of-order duplicate): resolution of an instance is final.
        firing = inc.firing()
        # Only an alert that joined (or fired again) can raise the severity; once the
        # Incident Commander set it, only one that joined since: the ones known were
        # weighed when it was set.
        raising: list[AlertState] = []
        if added:
            raising = (
                firing
                if inc.severity_set_by is None
                else [a for a in added if a.status == "firing"]
            )
        if raising:
            top = self._top(raising, firing_only=True)
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
        # A late copy of an earlier episode's resolved notification (every
        # instance older than the one tracked, or the closed episode's) says
        # nothing about this one.
        late_copy = stale == len(alerts)
        if group_resolved and not late_copy and not firing:
            # Every alert tracked has resolved. A resolved notification is no
            # word on the alerts it does not list: Alertmanager computes its
            # status from the alerts left after truncating to max_alerts, and
            # its mute stage leaves silenced and inhibited alerts out before
            # that, so a tracked alert missing from it may well still fire.
            ends = resolution_time(inc, now)
            self._close_by_alertmanager(inc, ends, now, events, effects)
        if inc.is_open and events:
            self._escalate_by_rules(inc, _firing_pairs(new_firing), now, events, effects)
            self._settle(inc, now, events, effects)
        effects += _unmatched_effects(inc, unmatched)
        if not events:
            self._finish(inc)
            return None  # a duplicate or a repeat: nothing changed
        self._finish(inc)
        return Change(inc, events, effects, undo)

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
            starts_at=alert.starts_at,
            ends_at=alert.ends_at,
            severity=cls.severity,
            labels=interned(alert.labels),
            generator_url=intern(alert.generator_url),
        )

    def _top(self, states: Iterable[AlertState], *, firing_only: bool) -> AlertState:
        every = list(states)
        # A body may repeat a fingerprint, firing then resolved: the last copy
        # stands, so "some alert fires" can leave no firing state to choose from.
        pool = [s for s in every if s.status == "firing"] if firing_only else every
        return min(pool or every, key=lambda s: (self.classifier.rank(s.severity), s.starts_at))


def _firing_pairs(alerts: Iterable[Alert]) -> list[tuple[Mapping[str, str], Mapping[str, str]]]:
    """(labels, annotations) of the firing alerts, as escalation rules read them."""
    return [(a.labels, a.annotations) for a in alerts if a.status == "firing"]


def _unmatched_effects(inc: Incident, unmatched: Counter[tuple[str, str]]) -> list[Effect]:
    return [
        Effect("unmatched", inc.id, inc.severity, team, detail=rules, count=count)
        for (rules, team), count in sorted(unmatched.items())
    ]


def _instance(alert: Alert) -> tuple[str, float]:
    return (alert.fingerprint, alert.starts_at)
