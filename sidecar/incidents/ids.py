"""Incident ids: URL-safe, ordered by creation time, never repeated."""

from __future__ import annotations

import secrets


class _IdSource:
    """Incident ids that sort by creation time and never repeat.

    Twelve hex digits of the creation time in milliseconds, then eight of a
    counter that starts at a random value in each process. Ids made one
    after the other land next to each other in the store's indexes (the
    incidents' primary key, the timeline's), where random ids put every new
    row on a page of its own. The counter keeps ids unique within a process
    whatever the clock does; its random start keeps replicas, and restarts
    after the clock was set back, apart.
    """

    def __init__(self) -> None:
        self._count = secrets.randbits(32)

    def next(self, now: float) -> str:
        self._count = (self._count + 1) & 0xFFFF_FFFF
        return f"{int(now * 1000) & 0xFFFF_FFFF_FFFF:012x}{self._count:08x}"


_IDS = _IdSource()


def new_incident_id(now: float) -> str:
    """A new URL-safe incident id, ordered by ``now`` (epoch seconds)."""
    return _IDS.next(now)
