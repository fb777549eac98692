"""The log of closed incidents, against late duplicates (the way Alertmanager's nflog works).

Alertmanager delivers at least once and its HA peers send duplicates by
design, some of them long after the group resolved. Each incident key keeps
its newest resolved episode (the alert instances it covered) for the dedup
window: a notification whose alert instances that episode already covered is
a late copy, and opens nothing. Alertmanager closes an episode only once each
of its instances was reported resolved, none inferred from an alert being left
out of a resolved notification (see :mod:`~sidecar.incidents.grouping`): an
alert still firing is never taken for a copy of itself. Only the newest
episode matters, since a late copy can only repeat what was sent last;
finishing an older one (its review done, or restored after the newer one)
never replaces it. The log is asked first, also for a key whose incident is
in its recovery watch: a copy of what the incident covered never reopens it
(see :mod:`~sidecar.incidents.watch`, which also treats an instance older
than the one it tracks as a copy).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClosedEpisode:
    """One resolved incident of a key: its alert instances and when it opened and closed."""

    instances: frozenset[tuple[str, float]]
    closed_at: float
    opened_at: float


class ClosedLog:
    """The newest resolved episode of each incident key, for ``retention`` seconds."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._episodes: dict[str, ClosedEpisode] = {}

    def remember(self, key: str, episode: ClosedEpisode) -> None:
        """Keep ``episode`` for ``key`` unless a newer one is kept already.

        The same incident closed again (reopened in its recovery watch) keeps
        the instances of each of its closes: a copy of its first episode is
        still a copy, though the incident now tracks a newer instance.
        """
        known = self._episodes.get(key)
        if known is not None and episode.opened_at == known.opened_at:
            episode = ClosedEpisode(
                known.instances | episode.instances, episode.closed_at, episode.opened_at
            )
        if known is None or episode.opened_at >= known.opened_at:
            self._episodes[key] = episode

    def covers(self, key: str, instances: Collection[tuple[str, float]]) -> bool:
        """Whether the newest closed episode of ``key`` covered all these alert instances.

        An instance older than one the episode covered of the same alert is
        covered too: Alertmanager never fires an alert again with an earlier
        start, so it is a copy of an episode before the newest (a late retry
        of a notification sent hours ago must not open an incident now).
        """
        known = self._episodes.get(key)
        if known is None:
            return False
        newest: dict[str, float] = {}
        for fingerprint, starts in known.instances:
            if starts > newest.get(fingerprint, starts - 1):
                newest[fingerprint] = starts
        return all(
            instance in known.instances or instance[1] < newest.get(instance[0], instance[1])
            for instance in instances
        )

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
