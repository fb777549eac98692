"""Incident numbers in the plan's format, ``2026-11-30-001``, and the war room they name.

Plan 000 numbers incidents by the day they are declared (``#incident-YYYY-MM-DD-NNN``
is the war room's Slack channel). The day is taken in a configured time zone
(``incidents.number_timezone``), so a team in Berlin does not see an incident of
its morning numbered on the day before. Numbers are unique: the service reads the
day's last number from the store in the transaction of the batch that may open
incidents (with replicas, that locks the day's counter until the commit), the
book gives the next ones through :class:`Numbering`, and the batch stores the
last one given with the incidents.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo

NUMBER_RE = re.compile(r"\d{4}-\d{2}-\d{2}-\d{3,}")
"""What an incident number looks like (three digits at least; a busy day gets more)."""


def format_number(day: str, n: int) -> str:
    """The ``n``-th number of ``day`` (``2026-11-30``): ``2026-11-30-001``."""
    return f"{day}-{n:03d}"


def is_number(text: str) -> bool:
    """Whether ``text`` is an incident number rather than an incident id."""
    return NUMBER_RE.fullmatch(text) is not None


def war_room(number: str | None) -> str | None:
    """The war room's channel name the plan derives from the number."""
    return None if number is None else f"#incident-{number}"


class Numbering:
    """The numbers a batch of commands gives, after the day's last one.

    Between :meth:`begin` and :meth:`end` (one batch, one ``now``), each
    :meth:`take` gives the next number of the day; outside a batch, or for
    another day, it gives none, so an incident is never numbered from a guess.
    """

    def __init__(self, zone: tzinfo = UTC) -> None:
        self.zone = zone
        self._day: str | None = None
        self._last = 0
        self._given = 0
        # The last instant asked about and its day: a batch asks once per
        # incident it opens, all at its one ``now``, and the zone's conversion
        # was a visible part of opening one.
        self._asked: tuple[float, str] | None = None

    def day(self, now: float) -> str:
        """The day ``now`` (epoch seconds) falls on, in the numbering's time zone."""
        asked = self._asked
        if asked is not None and asked[0] == now:
            return asked[1]
        day = datetime.fromtimestamp(now, self.zone).date().isoformat()
        self._asked = (now, day)
        return day

    def begin(self, day: str, last: int) -> None:
        """Start a batch on ``day``, whose last number given so far is ``last``."""
        self._day, self._last, self._given = day, last, 0

    def take(self, now: float) -> str | None:
        """The next number, or None outside a batch of ``now``'s day."""
        if self._day is None or self.day(now) != self._day:
            return None
        self._last += 1
        self._given += 1
        return format_number(self._day, self._last)

    def end(self) -> tuple[str, int] | None:
        """End the batch: its day and last number given, or None when it gave none."""
        day, given = self._day, self._given
        self._day, self._given = None, 0
        return (day, self._last) if day is not None and given else None
