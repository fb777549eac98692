"""The recovery watch: a resolved incident whose group fires again within its window reopens.

Plan 000: "Monitor Stability: Watch metrics for 1 hour (P0/P1)"; plan 002:
"Monitor for stability (30-60 minutes)". A severity's ``recovery_watch`` keeps
a resolved incident reopenable from its resolution (``resolved_at``, the alerts'
``endsAt``) until ``watch_until``. A new alert instance of its key that started
firing by then reopens the same incident: same id, a ``reopened`` event, its
clocks as they were (breaches, escalated tiers and the acknowledgment stay,
so nobody already paged is paged again), and a trigger to PagerDuty on the
same dedup key. When the watch ends with no re-fire, the deadline scheduler
closes it for good (:mod:`~sidecar.incidents.stepping`); a re-fire after that,
or one that started after the window, opens a new incident.

Late duplicates are told apart first, as ever, by the closed log
(:mod:`~sidecar.incidents.closed`): an instance the closed episode covered is a
copy. Within the watch the incident itself is the finer memory: an instance no
newer than the one it tracks for that fingerprint is a copy too, and reopens
nothing, unless it still fired when a person resolved the incident: sent
firing again, it reopens the incident and pages again, as Alertmanager's own
resend would have on PagerDuty.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.alertmanager import Alert, Notification
from sidecar.incidents.core import ClassificationLike
from sidecar.incidents.grouping import Grouping
from sidecar.incidents.model import Change, Effect, Incident, TimelineEvent
from sidecar.incidents.stepping import minutes


class Watching(Grouping):
    """Notifications for a key whose newest incident is resolved but still watched."""

    def watched(self, key: str) -> Incident | None:
        """The incident of ``key`` in its recovery watch, if any."""
        return self._watching.get(key)

    def _no_open_incident(
        self,
        key: str,
        alerts: list[Alert],
        classes: Mapping[str, ClassificationLike],
        n: Notification,
        now: float,
        group_resolved: bool,
    ) -> list[Change]:
        inc = self._watching.get(key)
        if inc is None or inc.watch_until is None:
            return super()._no_open_incident(key, alerts, classes, n, now, group_resolved)
        firing = [a for a in alerts if a.status == "firing"]
        new = [a for a in firing or alerts if _newer(inc, a)]
        if not new:
            return []  # instances the watched incident already tracks: a late copy
        if min(a.starts_at for a in new) > inc.watch_until:
            # Fired again after the window: that incident is over, a new one opens.
            ended = self._close_watched(inc, now)
            opened = super()._no_open_incident(key, alerts, classes, n, now, group_resolved)
            return [ended, *opened]
        change = self._reopen(inc, alerts, classes, n, now, group_resolved)
        return [change] if change else []

    def _reopen(
        self,
        inc: Incident,
        alerts: list[Alert],
        classes: Mapping[str, ClassificationLike],
        n: Notification,
        now: float,
        group_resolved: bool,
    ) -> Change | None:
        undo = self._begin(inc.key, inc)
        assert inc.resolved_at is not None and inc.watch_until is not None
        resolved_at, watch = inc.resolved_at, inc.watch_until - inc.resolved_at
        # The acknowledgment stays: it was given and measured once; PagerDuty's
        # new trigger pages the on-call again, and PagerDuty's own escalation
        # applies to it.
        inc.state = "acknowledged" if inc.acknowledged_at is not None else "triggered"
        inc.resolved_at = inc.resolved_by = inc.resolve_source = None
        inc.watch_until = inc.closed_at = None
        if inc.review_done_at is None:
            inc.review_due_at = None  # due after the final resolution
        self._reviews.pop(inc.id, None)
        inc.reopened_at = now
        inc.reopens += 1
        events: list[TimelineEvent] = [
            self.event(
                inc,
                now,
                "reopened",
                "alertmanager",
                None,
                f"fired again {minutes(round(now - resolved_at))} after it resolved, within "
                f"its {minutes(watch)} recovery watch: reopened",
                {"resolved_at": resolved_at, "reopens": inc.reopens},
            )
        ]
        effects = [Effect("reopened", inc.id, inc.severity, inc.team, source="alertmanager")]
        return self._merge(
            inc,
            alerts,
            classes,
            n,
            now,
            group_resolved=group_resolved,
            begun=(undo, events, effects),
        )

    def _close_watched(self, inc: Incident, now: float) -> Change:
        """End ``inc``'s watch now (a new episode of its key begins after the window)."""
        undo = self._begin(inc.key, inc)
        events: list[TimelineEvent] = []
        effects: list[Effect] = []
        self._end_watch(inc, now, events, effects)
        self._finish(inc)
        return Change(inc, events, effects, undo)


def _newer(inc: Incident, alert: Alert) -> bool:
    """Whether ``alert`` is news to ``inc``: a new instance, one that fired again, or
    one sent firing that still fired when a person resolved ``inc``."""
    known = inc.alerts.get(alert.fingerprint)
    if known is None or known.starts_at < alert.starts_at:
        return True
    return known.starts_at == alert.starts_at and known.status == alert.status == "firing"
