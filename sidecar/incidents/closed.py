"""The log of closed incidents, against late duplicates (the way Alertmanager's nflog works).

Alertmanager delivers at least once and its HA peers send duplicates by
design, some of them long after the group resolved. Each incident key keeps
its newest resolved episode (the alert instances it covered) for the dedup
window: a notification whose alert instances that episode already covered is
a late copy, and opens nothing. Alertmanager closes an episode only once each
of its instances was reported resolved, none inferred from an alert being left
out of a resolved notification (see :mod:`~sidecar.incidents.grouping`): an
alert still firing is never taken for a copy of itself.

A person may resolve an incident while its alerts still fire (the API, or in
PagerDuty). Alertmanager's own ``pagerduty_configs`` then pages again: its next
notification of the group triggers on the same dedup key, and PagerDuty opens a
new incident. So an episode also keeps which of its instances still fired when
it closed (almost always none): they cover only resolved notifications, which
are that episode's end and open nothing, while a firing one of them opens a
new incident (or reopens the one in its recovery watch), as Alertmanager's
resend would page.

Only the newest episode matters, since a late copy can only repeat what was
sent last; finishing an older one (its review done, or restored after the
newer one) never replaces it. The log is asked first, also for a key whose
incident is in its recovery watch: a copy of what the incident covered never
reopens it (see :mod:`~sidecar.incidents.watch`, which also treats an instance
older than the one it tracks as a copy).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

# No instance: what nearly every episode has still firing at its close, shared by all.
NONE: frozenset[tuple[str, float]] = frozenset()


@dataclass(frozen=True, slots=True)
class ClosedEpisode:
    """One resolved incident of a key: its alert instances and when it opened and closed.

    ``firing``: those of ``instances`` still firing when it closed (resolved by hand).
    """

    instances: frozenset[tuple[str, float]]
    closed_at: float
    opened_at: float
    firing: frozenset[tuple[str, float]] = NONE


class ClosedLog:
    """The newest resolved episode of each incident key, for ``retention`` seconds."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._episodes: dict[str, ClosedEpisode] = {}
        # How many episodes were remembered with instances still firing: a body
        # applied before (a byte-identical resend) may open an incident now.
        self.closed_firing = 0

    def remember(self, key: str, episode: ClosedEpisode) -> None:
        """Keep ``episode`` for ``key`` unless a newer one is kept already.

        The same incident closed again (reopened in its recovery watch) keeps
        the instances of each of its closes: a copy of its first episode is
        still a copy, though the incident now tracks a newer instance. What
        the newer close saw resolved is resolved.
        """
        if episode.firing:
            self.closed_firing += 1
        known = self._episodes.get(key)
        if known is not None and episode.opened_at == known.opened_at:
            firing = (known.firing - episode.instances) | episode.firing
            episode = ClosedEpisode(
                known.instances | episode.instances,
                episode.closed_at,
                episode.opened_at,
                firing or NONE,
            )
        if known is None or episode.opened_at >= known.opened_at:
            self._episodes[key] = episode

    def covers(self, key: str, instances: Collection[tuple[str, float]], *, firing: bool) -> bool:
        """Whether the newest closed episode of ``key`` covered all these alert instances.

        ``firing``: whether they are sent firing (see :meth:`copies`).
        """
        copies = self.copies(key, [(instance, firing) for instance in instances])
        return len(copies) == len(set(instances))

    def copies(
        self, key: str, instances: Iterable[tuple[tuple[str, float], bool]]
    ) -> set[tuple[str, float]]:
        """Which of these alert instances (each sent firing or not) the newest closed
        episode of ``key`` covered: late copies of it.

        An instance the episode tracked covers a resolved one, but a firing one
        only if the episode saw it resolved: one still firing when a person
        resolved the incident is sent again by Alertmanager, and pages again,
        as PagerDuty would page for Alertmanager's own trigger. An instance
        older than one the episode covered of the same alert is covered too:
        Alertmanager never fires an alert again with an earlier start, so it
        is a copy of an episode before the newest (a late retry of a
        notification sent hours ago must not open an incident now).
        """
        known = self._episodes.get(key)
        if known is None:
            return set()
        seen = known.instances - known.firing if known.firing else known.instances
        newest: dict[str, float] = {}
        for fingerprint, starts in known.instances:
            if starts > newest.get(fingerprint, starts - 1):
                newest[fingerprint] = starts
        return {
            instance
            for instance, firing in instances
            if instance in (seen if firing else known.instances)
            or instance[1] < newest.get(instance[0], instance[1])
        }

    def get(self, key: str) -> ClosedEpisode | None:
        """What is kept for ``key`` (to put back on undo)."""
        return self._episodes.get(key)

    def put_back(self, key: str, episode: ClosedEpisode | None) -> None:
        """Restore what :meth:`get` returned before a change that is undone."""
        if episode is None:
            self._episodes.pop(key, None)
        else:
            self._episodes[key] = episode

    def forget(self, key: str) -> None:
        """Drop what is kept for ``key`` (the store's rows replace it)."""
        self._episodes.pop(key, None)

    def clear(self) -> None:
        """Forget every key."""
        self._episodes.clear()

    def expire(self, now: float) -> int:
        """Forget episodes closed longer than the retention ago; returns how many."""
        horizon = now - self.retention
        stale = [k for k, e in self._episodes.items() if e.closed_at < horizon]
        for k in stale:
            del self._episodes[k]
        return len(stale)
