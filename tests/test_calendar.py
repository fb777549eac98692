"""Business-time arithmetic (``sidecar.sla.calendar``): weekends, holidays, midnight, DST.

Times are written on the wall clock of a zone and checked as instants, so a
daylight-saving mistake shows as an hour off. The property tests compare the
span arithmetic with Alertmanager's own minute-by-minute membership test
(``Interval.contains``, a transcription of ``timeinterval.ContainsTime``).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.sla.calendar import Calendar, Interval

MIN = 60.0
HOUR = 3600.0
DAY = 86400.0

WEEKDAYS_9_TO_17 = ((1, 5),)  # monday:friday, Go numbering (Sunday is 0)
NINE_TO_FIVE = ((9 * 60, 17 * 60),)


def at(text: str, zone: str = "UTC") -> float:
    """``2026-11-27 16:30`` on the wall clock of ``zone`` as epoch seconds."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def office(zone: str = "UTC", *muted: Interval) -> Calendar:
    """Mon-Fri 09:00-17:00 in ``zone``, without the ``muted`` intervals."""
    hours = Interval(times=NINE_TO_FIVE, weekdays=WEEKDAYS_9_TO_17, location=zone)
    return Calendar("business-hours", (hours,), tuple(muted))


# -- the example and its neighbours -----------------------------------


@pytest.mark.parametrize(
    ("opened", "target", "due"),
    [
        # Opened Friday 16:30 with 1h: 30 minutes on Friday, 30 on Monday.
        ("2026-11-27 16:30", HOUR, "2026-11-30 09:30"),
        # Used up at closing time: in time until the calendar opens again.
        ("2026-11-27 16:30", 30 * MIN, "2026-11-30 09:00"),
        # Opened on Saturday: the clock starts on Monday morning.
        ("2026-11-28 12:00", 4 * HOUR, "2026-11-30 13:00"),
        # Opened before opening time on a weekday.
        ("2026-11-25 06:00", HOUR, "2026-11-25 10:00"),
        # Within one day.
        ("2026-11-25 10:15", HOUR, "2026-11-25 11:15"),
        # Longer than a business day: 8h a day.
        ("2026-11-25 13:00", 12 * HOUR, "2026-11-27 09:00"),  # used up Thursday at 17:00
        ("2026-11-25 13:00", 12 * HOUR + 1, "2026-11-27 09:00:01"),
    ],
)
def test_deadline_in_business_hours(opened: str, target: float, due: str) -> None:
    calendar = office()
    assert calendar.add(at(opened), target) == at(due)
    assert calendar.elapsed(at(opened), at(due)) == pytest.approx(target)


def test_an_escalation_step_falls_due_when_its_time_has_elapsed() -> None:
    """Not strict: the first instant the time is used up (Friday at closing), not Monday."""
    calendar = office()
    assert calendar.add(at("2026-11-27 16:30"), 30 * MIN, strict=False) == at("2026-11-27 17:00")
    # A step at 0s is due at once, in or out of business hours.
    assert calendar.add(at("2026-11-28 12:00"), 0, strict=False) == at("2026-11-28 12:00")
    # A zero SLA target out of hours lasts until the calendar opens.
    assert calendar.add(at("2026-11-28 12:00"), 0) == at("2026-11-30 09:00")


def test_elapsed_counts_only_open_time() -> None:
    calendar = office()
    friday_noon, monday_noon = at("2026-11-27 12:00"), at("2026-11-30 12:00")
    assert calendar.elapsed(friday_noon, monday_noon) == 8 * HOUR
    assert calendar.elapsed(monday_noon, friday_noon) == 0
    assert calendar.elapsed(at("2026-11-28 00:00"), at("2026-11-29 23:59")) == 0
    assert calendar.is_open(at("2026-11-27 16:59"))
    assert not calendar.is_open(at("2026-11-27 17:00"))  # the end is exclusive
    assert calendar.is_open(at("2026-11-30 09:00"))  # the start inclusive


# -- holidays -------------------------------------------------------------------


def test_holidays_are_muted() -> None:
    christmas = Interval(months=((12, 12),), days_of_month=((24, 26),))
    calendar = office("UTC", christmas)
    # Wednesday 23 December 2026, 16:00; Thursday to Saturday are holidays, then Sunday.
    assert calendar.add(at("2026-12-23 16:00"), 2 * HOUR) == at("2026-12-28 10:00")
    assert calendar.elapsed(at("2026-12-23 16:00"), at("2026-12-28 10:00")) == 2 * HOUR


def test_a_holiday_in_another_zone_mutes_the_hours_it_covers() -> None:
    """A Berlin holiday mutes 23:00-23:00 UTC: the UTC office closes an hour early the eve."""
    new_year = Interval(months=((1, 1),), days_of_month=((1, 1),), location="Europe/Berlin")
    hours = Interval(times=((0, 24 * 60),), location="UTC")
    calendar = Calendar("c", (hours,), (new_year,))
    assert not calendar.is_open(at("2026-12-31 23:30"))
    assert calendar.is_open(at("2026-12-31 22:59"))
    assert calendar.elapsed(at("2026-12-31 12:00"), at("2027-01-02 12:00")) == 24 * HOUR


def test_last_days_of_the_month_count_back_from_its_end() -> None:
    """days_of_month -3:-1: the last three days, whatever the month's length."""
    closing = Interval(days_of_month=((-3, -1),))
    calendar = Calendar("month-end", (), (closing,))
    assert not calendar.is_open(at("2026-02-26 12:00"))  # 28 days: 26-28
    assert calendar.is_open(at("2026-02-25 12:00"))
    assert not calendar.is_open(at("2028-02-27 12:00"))  # leap year: 27-29
    assert calendar.is_open(at("2028-02-26 12:00"))
    assert calendar.elapsed(at("2026-01-01 00:00"), at("2026-02-01 00:00")) == 28 * DAY


def test_a_day_beyond_the_month_never_matches() -> None:
    """As Alertmanager: day 31 does not exist in November, nor clamps into it."""
    interval = Interval(days_of_month=((31, 31),))
    assert not interval.contains(at("2026-11-30 12:00"))
    assert interval.contains(at("2026-12-31 12:00"))


def test_a_calendar_that_never_opens_again_has_no_deadline() -> None:
    past = Interval(years=((2020, 2020),))
    assert Calendar("gone", (past,)).add(at("2026-11-27 12:00"), HOUR) is None


# -- across midnight --------------------------------------------------------------


def test_a_night_shift_is_two_ranges_across_midnight() -> None:
    """Alertmanager has no range across midnight: 22:00-24:00 and 00:00-06:00."""
    night = Interval(times=((22 * 60, 24 * 60), (0, 6 * 60)))
    calendar = Calendar("night", (night,))
    assert calendar.add(at("2026-11-25 23:00"), 3 * HOUR) == at("2026-11-26 02:00")
    assert calendar.add(at("2026-11-26 05:00"), 2 * HOUR) == at("2026-11-26 23:00")
    assert calendar.open_spans(at("2026-11-25 12:00"), at("2026-11-26 12:00")) == [
        (at("2026-11-25 22:00"), at("2026-11-26 06:00"))
    ]


# -- daylight saving ------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "opened", "due", "wall_hours"),
    [
        # Berlin springs forward on Sunday 29 March 2026: Friday 16:30 CET to
        # Monday 09:30 CEST is 64 hours, not 65.
        ("Europe/Berlin", "2026-03-27 16:30", "2026-03-30 09:30", 64),
        # and falls back on Sunday 25 October 2026: 66 hours.
        ("Europe/Berlin", "2026-10-23 16:30", "2026-10-26 09:30", 66),
        # New York springs forward on Sunday 8 March 2026 and falls back on 1 November.
        ("America/New_York", "2026-03-06 16:30", "2026-03-09 09:30", 64),
        ("America/New_York", "2026-10-30 16:30", "2026-11-02 09:30", 66),
    ],
)
def test_business_hours_follow_the_local_clock_across_dst(
    zone: str, opened: str, due: str, wall_hours: int
) -> None:
    calendar = office(zone)
    deadline = calendar.add(at(opened, zone), HOUR)
    assert deadline == at(due, zone)
    assert deadline is not None and deadline - at(opened, zone) == wall_hours * HOUR


@pytest.mark.parametrize(
    ("night", "hours"),
    [("2026-03-29", 5), ("2026-10-25", 7), ("2026-06-14", 6)],
)
def test_a_night_interval_lasts_what_the_local_clock_shows(night: str, hours: int) -> None:
    """00:00-06:00 in Berlin: five hours on the spring-forward night, seven on fall-back."""
    interval = Interval(times=((0, 6 * 60),), location="Europe/Berlin")
    calendar = Calendar("night", (interval,))
    start = at(f"{night} 00:00", "Europe/Berlin")
    assert calendar.elapsed(start - HOUR, start + DAY - 2 * HOUR) == hours * HOUR


def test_the_repeated_hour_of_a_fall_back_night_counts_twice() -> None:
    """02:00-03:00 happens twice in Berlin on 25 October 2026: both are business time."""
    interval = Interval(times=((2 * 60, 3 * 60),), location="Europe/Berlin")
    calendar = Calendar("c", (interval,))
    day = at("2026-10-25 00:00", "Europe/Berlin")
    spans = calendar.open_spans(day, day + DAY)
    # 00:00-01:00 UTC (CEST) then 01:00-02:00 UTC (CET): one two-hour span.
    assert spans == [(at("2026-10-25 00:00"), at("2026-10-25 02:00"))]


def test_the_skipped_hour_of_a_spring_forward_night_is_no_time() -> None:
    interval = Interval(times=((2 * 60, 3 * 60),), location="Europe/Berlin")
    day = at("2026-03-29 00:00", "Europe/Berlin")
    assert Calendar("c", (interval,)).elapsed(day, day + DAY) == 0


# -- properties: spans agree with Alertmanager's minute test ----------------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")
# 2020 to 2030, on whole minutes: Alertmanager decides minute by minute.
instants = st.integers(1_577_836_800 // 60, 1_893_456_000 // 60).map(lambda m: m * 60.0)


@st.composite
def intervals(draw: st.DrawFn) -> Interval:
    times: tuple[tuple[int, int], ...] = ()
    if draw(st.booleans()):
        start = draw(st.integers(0, 1439))
        times = ((start, draw(st.integers(start + 1, 1440))),)
    weekdays: tuple[tuple[int, int], ...] = ()
    if draw(st.booleans()):
        first = draw(st.integers(0, 6))
        weekdays = ((first, draw(st.integers(first, 6))),)
    days: tuple[tuple[int, int], ...] = ()
    if draw(st.booleans()):
        days = (draw(st.sampled_from([(1, 10), (-3, -1), (15, 31), (29, 31), (-31, -20)])),)
    return Interval(times, weekdays, days, location=draw(st.sampled_from(ZONES)))


@settings(max_examples=60, deadline=None)
@given(active=intervals(), muted=st.lists(intervals(), max_size=1), start=instants)
def test_open_spans_agree_with_alertmanagers_minute_test(
    active: Interval, muted: list[Interval], start: float
) -> None:
    calendar = Calendar("c", (active,), tuple(muted))
    spans = calendar.open_spans(start, start + 3 * DAY)
    inside = {m for a, b in spans for m in range(int(a // 60), int(-(-b // 60)))}
    for minute in range(int(start // 60), int((start + 3 * DAY) // 60), 7):
        assert (minute in inside) == calendar.is_open(minute * 60.0), minute


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    start=instants,
    target=st.integers(0, 40 * 3600).map(float),
)
def test_the_deadline_is_where_the_elapsed_business_time_reaches_the_target(
    zone: str, start: float, target: float
) -> None:
    calendar = office(zone)
    due = calendar.add(start, target)
    assert due is not None
    assert calendar.elapsed(start, due) == pytest.approx(target, abs=1e-6)
    # Strict: one second later it is over; the first instant it is used up is no later.
    assert calendar.elapsed(start, due + 1) > target
    reached = calendar.add(start, target, strict=False)
    assert reached is not None and start <= reached <= due
