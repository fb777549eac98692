"""Business-time calendars: Alertmanager time intervals, holidays excluded, and arithmetic on them.

An :class:`Interval` is one entry of Alertmanager's ``time_intervals`` (its
``timeinterval.TimeInterval``), with the same meaning: an instant belongs to it
when, read on the wall clock of its ``location``, its minute of the day falls
in one of ``times`` (start inclusive, end exclusive) and its date matches
every one of ``weekdays``, ``days_of_month`` (negative days count from the end
of the month), ``months`` and ``years`` that is given (inclusive ranges); a
field left out matches everything. A :class:`Calendar` is open while any of
its active intervals holds and none of its muted ones (holidays) does, as an
Alertmanager route with ``active_time_intervals`` and ``mute_time_intervals``.

Business time is the open time of a calendar. :meth:`Calendar.elapsed`
measures it between two instants and :meth:`Calendar.add` finds the instant a
business-time duration runs out. Because the wall clock of a location jumps at
daylight-saving transitions, open spans are worked out on stretches of constant
UTC offset: an interval 00:00-06:00 lasts five hours on a spring-forward night
and seven on a fall-back one, as Alertmanager's own check would say minute by
minute. Spans are computed a week (UTC) at a time and kept, so that a hundred
thousand deadlines cost a few bisections each.

Everything here is pure: times are UTC epoch seconds.
"""

from __future__ import annotations

import bisect
import calendar as _calendar
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

Range = tuple[int, int]
"""An inclusive range of weekdays (0 is Sunday, as in Go), days, months or years."""
Span = tuple[float, float]
"""A half-open stretch of time ``[start, end)`` in epoch seconds."""

WEEK = 7 * 86400.0
DAY = 86400
HORIZON_WEEKS = 2 * 53
"""How far ahead a deadline is looked for: a calendar with no open time within
two years (a typo'd ``years``) gives no deadline rather than a loop."""
_PROBE = 6 * 3600
"""Offsets are sampled this often to find a daylight-saving transition: zones
change offset at most a few times a year, never twice within six hours."""
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Interval:
    """One Alertmanager time interval, compiled; an empty field matches everything."""

    times: tuple[Range, ...] = ()
    """Minutes of the day ``[start, end)``, e.g. ``(540, 1020)`` for 09:00-17:00."""
    weekdays: tuple[Range, ...] = ()
    days_of_month: tuple[Range, ...] = ()
    months: tuple[Range, ...] = ()
    years: tuple[Range, ...] = ()
    location: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        """The time zone the fields are read in."""
        return ZoneInfo(self.location)

    def contains_date(self, day: dt.date) -> bool:
        """Whether every date field matches ``day`` (a date on the location's wall clock)."""
        if self.years and not _within(day.year, self.years):
            return False
        if self.months and not _within(day.month, self.months):
            return False
        if self.weekdays and not _within((day.weekday() + 1) % 7, self.weekdays):
            return False
        if self.days_of_month:
            length = _calendar.monthrange(day.year, day.month)[1]
            if not any(_day_matches(day.day, length, r) for r in self.days_of_month):
                return False
        return True

    def contains(self, at: float) -> bool:
        """Alertmanager's ``ContainsTime``: the instant read on the location's wall clock."""
        local = dt.datetime.fromtimestamp(at, self.zone)
        minute = local.hour * 60 + local.minute
        if self.times and not any(start <= minute < end for start, end in self.times):
            return False
        return self.contains_date(local.date())

    def spans(self, start: float, end: float) -> list[Span]:
        """The stretches of ``[start, end)`` this interval holds, in order."""
        zone = self.zone
        times = self.times or ((0, 1440),)
        out: list[Span] = []
        for seg_start, seg_end, offset in _constant_offsets(zone, start, end):
            wall_start, wall_end = seg_start + offset, seg_end + offset
            for day in range(int(wall_start // DAY), int(-(-wall_end // DAY))):
                if not self.contains_date(_EPOCH + dt.timedelta(days=day)):
                    continue
                for first, last in times:
                    low = max(wall_start, day * DAY + first * 60.0)
                    high = min(wall_end, day * DAY + last * 60.0)
                    if low < high:
                        out.append((low - offset, high - offset))
        return out


@dataclass(frozen=True, slots=True)
class _Week:
    spans: tuple[Span, ...]
    starts: tuple[float, ...]
    before: tuple[float, ...]  # open seconds of the week before each span
    after: tuple[float, ...]  # ... and once it ends
    total: float


@dataclass(frozen=True)
class Calendar:
    """Open while an ``active`` interval holds (always, when none is given) and no ``muted`` one."""

    name: str
    active: tuple[Interval, ...] = ()
    muted: tuple[Interval, ...] = ()
    _weeks: dict[int, _Week] = field(default_factory=dict, compare=False, repr=False)

    def is_open(self, at: float) -> bool:
        """Whether ``at`` is business time."""
        active = not self.active or any(i.contains(at) for i in self.active)
        return active and not any(i.contains(at) for i in self.muted)

    def open_spans(self, start: float, end: float) -> list[Span]:
        """The business time within ``[start, end)``, as ordered, disjoint spans."""
        out: list[Span] = []
        for week in range(_week_of(start), _week_of(end) + 1):
            for a, b in self._week(week).spans:
                low, high = max(a, start), min(b, end)
                if low < high:
                    out.append((low, high))
        return _merge(out)

    def elapsed(self, start: float, end: float) -> float:
        """Business seconds from ``start`` to ``end`` (0 when ``end`` is not later)."""
        if end <= start:
            return 0.0
        first, last = _week_of(start), _week_of(end)
        if first == last:
            return self._upto(first, end) - self._upto(first, start)
        total = self._week(first).total - self._upto(first, start)
        total += sum(self._week(k).total for k in range(first + 1, last))
        return total + self._upto(last, end)

    def add(self, start: float, seconds: float, *, strict: bool = True) -> float | None:
        """The instant ``seconds`` of business time after ``start``; None beyond the horizon.

        Strict (an SLA): the last instant at which no more than ``seconds`` have
        elapsed, so a target used up at closing time is still met until the
        calendar opens again. Not strict (an escalation step): the first instant
        at which ``seconds`` have elapsed.
        """
        if seconds <= 0 and not strict:
            return start
        week = _week_of(start)
        position = self._upto(week, start) + max(seconds, 0.0)
        for k in range(week, week + HORIZON_WEEKS):
            data = self._week(k)
            # The first span whose end goes beyond (strict) or reaches the position.
            find = bisect.bisect_right if strict else bisect.bisect_left
            index = find(data.after, position)
            if index < len(data.spans):
                a, _ = data.spans[index]
                return max(start, a + position - data.before[index])
            position -= data.total
        return None

    def _upto(self, week: int, at: float) -> float:
        """Business seconds of ``week`` before ``at``."""
        data = self._week(week)
        index = bisect.bisect_right(data.starts, at) - 1
        if index < 0:
            return 0.0
        a, b = data.spans[index]
        return data.before[index] + min(at, b) - a

    def _week(self, week: int) -> _Week:
        cached = self._weeks.get(week)
        if cached is not None:
            return cached
        start, end = week * WEEK, (week + 1) * WEEK
        if self.active:
            opened = _merge(s for i in self.active for s in i.spans(start, end))
        else:
            opened = [(start, end)]
        closed = _merge(s for i in self.muted for s in i.spans(start, end))
        spans = tuple(_subtract(opened, closed))
        before: list[float] = []
        after: list[float] = []
        total = 0.0
        for a, b in spans:
            before.append(total)
            total += b - a
            after.append(total)
        data = _Week(spans, tuple(a for a, _ in spans), tuple(before), tuple(after), total)
        if len(self._weeks) > 4096:  # about 80 years of weeks: a bound, never reached in use
            self._weeks.clear()
        self._weeks[week] = data
        return data


def _week_of(at: float) -> int:
    return int(at // WEEK)


def _within(value: int, ranges: Iterable[Range]) -> bool:
    return any(first <= value <= last for first, last in ranges)


def _day_matches(day: int, length: int, days: Range) -> bool:
    """Alertmanager's day-of-month test: negative days count back from the month's end."""
    first = length + days[0] + 1 if days[0] < 0 else days[0]
    last = length + days[1] + 1 if days[1] < 0 else days[1]
    if first > length:
        return False
    return first <= day <= min(last, length)


def _offset(zone: ZoneInfo, at: float) -> float:
    offset = dt.datetime.fromtimestamp(at, zone).utcoffset()
    return 0.0 if offset is None else offset.total_seconds()


def _constant_offsets(zone: ZoneInfo, start: float, end: float) -> list[tuple[float, float, float]]:
    """``[start, end)`` cut where the zone's UTC offset changes: ``(from, to, offset)``."""
    out: list[tuple[float, float, float]] = []
    low = start
    offset = _offset(zone, low)
    probe = low
    while probe < end:
        nxt = min(end, probe + _PROBE)
        if nxt < end and _offset(zone, nxt) == offset:
            probe = nxt
            continue
        if nxt == end and _offset(zone, end - 1e-3) == offset:
            break
        # The offset changes within (probe, nxt]: find the first second it does.
        a, b = int(probe), int(nxt) + 1
        while b - a > 1:
            mid = (a + b) // 2
            if _offset(zone, mid) == offset:
                a = mid
            else:
                b = mid
        cut = min(max(float(b), low), end)
        out.append((low, cut, offset))
        low, offset, probe = cut, _offset(zone, cut), cut
    if low < end:
        out.append((low, end, offset))
    return out


def _merge(spans: Iterable[Span]) -> list[Span]:
    out: list[Span] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _subtract(spans: Sequence[Span], holes: Sequence[Span]) -> list[Span]:
    out: list[Span] = []
    for a, b in spans:
        low = a
        for c, d in holes:
            if d <= low or c >= b:
                continue
            if c > low:
                out.append((low, c))
            low = max(low, d)
        if low < b:
            out.append((low, b))
    return out
