"""Calendars as written: Alertmanager ``time_intervals``, and calendars made of them.

``time_intervals`` has the syntax and meaning of Alertmanager's own (its
``timeinterval`` package), so that a team copies its business hours and
holidays from its Alertmanager configuration as they are::

    time_intervals:
      - name: office-hours
        time_intervals:
          - weekdays: ['monday:friday']
            times: [{start_time: '09:00', end_time: '17:00'}]
            location: Europe/Berlin
    calendars:
      - name: business-hours
        active_time_intervals: [office-hours]
        mute_time_intervals: [public-holidays]

A calendar is open while one of its active intervals holds (always, when it
names none) and none of its muted ones does, as an Alertmanager route with
``active_time_intervals`` and ``mute_time_intervals``. The arithmetic is
:mod:`sidecar.sla.calendar`'s.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from sidecar.sla.calendar import Calendar, Interval, Range

_TIME_RE = re.compile(r"^(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")
WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _text(value: Any) -> Any:
    """YAML reads ``days_of_month: [1]`` and ``years: [2026]`` as numbers: take them as text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def parse_range(value: str, member: Callable[[str], int]) -> Range:
    """``monday:friday`` or ``monday`` as an inclusive range, after Alertmanager."""
    parts = value.lower().split(":")
    if len(parts) > 2:
        raise ValueError(f"couldn't parse range {value}, invalid format")
    return member(parts[0]), member(parts[-1])


def weekday(text: str) -> int:
    """A weekday name as Go numbers it (Sunday is 0)."""
    if text not in WEEKDAYS:
        raise ValueError(f"{text} is not a valid weekday")
    return WEEKDAYS.index(text)


def month(text: str) -> int:
    """A month name or number, 1 to 12."""
    if text in MONTHS:
        return MONTHS.index(text) + 1
    if text.isdigit() and 1 <= int(text) <= 12:
        return int(text)
    raise ValueError(f"{text} is not a valid month")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text} is not a number") from None


def _weekdays(value: str) -> str:
    first, last = parse_range(value, weekday)
    if first > last:
        raise ValueError(f"{value}: start day cannot be after end day (the week starts on sunday)")
    return value


def _days(value: str) -> str:
    first, last = parse_range(value, _integer)
    for day in (first, last):
        if day == 0 or not -31 <= day <= 31:
            raise ValueError(f"{day} is not a valid day of the month: out of range")
    if first < 0 < last:
        raise ValueError("end day must be negative if start day is negative")
    # As Alertmanager: with negative days, check against the shortest month (28 days).
    if (28 + first if first < 0 else first) > (28 + last if last < 0 else last):
        raise ValueError(f"end day {last} is always before start day {first}")
    return value


def _months(value: str) -> str:
    first, last = parse_range(value, month)
    if first > last:
        raise ValueError(f"end month {MONTHS[last - 1]} is before start month {MONTHS[first - 1]}")
    return value


def _years(value: str) -> str:
    first, last = parse_range(value, _integer)
    if first <= 0:
        raise ValueError(f"{first} is not a valid year")
    if first > last:
        raise ValueError(f"end year {last} is before start year {first}")
    return value


def _location(value: str) -> str:
    if value == "Local":
        raise ValueError(
            "Local depends on the machine: name an IANA time zone such as Europe/Berlin"
        )
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}: use an IANA name such as UTC") from None
    return value


def minutes(text: str) -> int:
    """``09:30`` as minutes of the day; ``24:00`` is the end of the day."""
    if not _TIME_RE.fullmatch(text):
        raise ValueError(f"couldn't parse timestamp {text}, invalid format (use HH:MM)")
    hours, mins = text.split(":")
    return int(hours) * 60 + int(mins)


_Text = BeforeValidator(_text)
WeekdayRange = Annotated[str, _Text, AfterValidator(_weekdays)]
DayRange = Annotated[str, _Text, AfterValidator(_days)]
MonthRange = Annotated[str, _Text, AfterValidator(_months)]
YearRange = Annotated[str, _Text, AfterValidator(_years)]
Location = Annotated[str, AfterValidator(_location)]
_IntervalName = Annotated[str, Field(min_length=1)]


def _clock_time(value: str) -> str:
    minutes(value)
    return value


_ClockTime = Annotated[str, AfterValidator(_clock_time)]


class TimeRange(_Strict):
    """``{start_time: '09:00', end_time: '17:00'}``: start inclusive, end exclusive."""

    start_time: _ClockTime
    end_time: _ClockTime

    def minutes(self) -> Range:
        """Start and end as minutes of the day."""
        return minutes(self.start_time), minutes(self.end_time)

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        start, end = self.minutes()
        if start >= end:
            # Alertmanager's rule: a range across midnight is two ranges,
            # 22:00-24:00 and 00:00-06:00.
            raise ValueError(
                "start time cannot be equal or greater than end time "
                "(split a range across midnight in two, ending at 24:00 and starting at 00:00)"
            )
        return self


class TimeInterval(_Strict):
    """One entry of a named interval; every field given must match, one left out matches all."""

    times: list[TimeRange] = []
    weekdays: list[WeekdayRange] = []
    days_of_month: list[DayRange] = []
    months: list[MonthRange] = []
    years: list[YearRange] = []
    location: Location = "UTC"

    def compile(self) -> Interval:
        """The interval :mod:`sidecar.sla.calendar` computes with."""
        return Interval(
            times=tuple(t.minutes() for t in self.times),
            weekdays=tuple(parse_range(w, weekday) for w in self.weekdays),
            days_of_month=tuple(parse_range(d, int) for d in self.days_of_month),
            months=tuple(parse_range(m, month) for m in self.months),
            years=tuple(parse_range(y, int) for y in self.years),
            location=self.location,
        )


class NamedTimeInterval(_Strict):
    """A name and its intervals (Alertmanager's ``time_intervals`` entry)."""

    name: _IntervalName
    time_intervals: list[TimeInterval] = Field(min_length=1)


class CalendarSpec(_Strict):
    """Business time: while an active interval holds (always, if none is named), no muted one."""

    name: _IntervalName
    description: str = ""
    active_time_intervals: list[_IntervalName] = []
    mute_time_intervals: list[_IntervalName] = []

    def compile(self, intervals: Mapping[str, NamedTimeInterval]) -> Calendar:
        """The calendar; undeclared interval names are skipped (the checks report them)."""

        def entries(names: list[str]) -> tuple[Interval, ...]:
            return tuple(
                entry.compile()
                for name in names
                if name in intervals
                for entry in intervals[name].time_intervals
            )

        return Calendar(
            self.name, entries(self.active_time_intervals), entries(self.mute_time_intervals)
        )


def describe(spec: CalendarSpec, intervals: Mapping[str, NamedTimeInterval]) -> list[str]:
    """Lines for ``test-rules``: the calendar, then each interval it is made of."""
    active = ", ".join(spec.active_time_intervals) or "always"
    muted = ", ".join(spec.mute_time_intervals)
    lines = [f"{spec.name}: open during {active}" + (f", except {muted}" if muted else "")]
    for name in [*spec.active_time_intervals, *spec.mute_time_intervals]:
        named = intervals.get(name)
        for entry in named.time_intervals if named is not None else ():
            lines.append(f"{name}: {_entry_text(entry)}")
    return lines


def _entry_text(entry: TimeInterval) -> str:
    parts = [f"times {', '.join(f'{t.start_time}-{t.end_time}' for t in entry.times)}"]
    for key in ("weekdays", "days_of_month", "months", "years"):
        values: list[str] = getattr(entry, key)
        if values:
            parts.append(f"{key} {', '.join(values)}")
    if not entry.times:
        parts[0] = "all day"
    return "; ".join([*parts, f"location {entry.location}"])
