"""Calendars in the rules file: Alertmanager's ``time_intervals`` syntax, and its errors by line."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from sidecar.errors import ConfigError
from sidecar.rules import SLA, SeverityPolicy, load_rules
from sidecar.rules.intervals import TimeInterval
from tests.support.binaries import require_binary
from tests.test_rules import BASE, _line_of, write

CALENDARS = """\
time_intervals:
  - name: office-hours
    time_intervals:
      - weekdays: ['monday:friday']
        times: [{start_time: '09:00', end_time: '17:00'}]
        location: Europe/Berlin
  - name: holidays
    time_intervals:
      - {months: ['december'], days_of_month: ['24:26']}
      - {years: [2027], months: [4], days_of_month: [2, '-1']}
calendars:
  - name: business-hours
    active_time_intervals: [office-hours]
    mute_time_intervals: [holidays]
"""

BUSINESS = (
    BASE.replace(
        "    sla: {acknowledge: 15m, resolve: 4h}\n",
        "    sla: {acknowledge: {target: 15m, calendar: business-hours}, resolve: 4h}\n",
    ).replace(
        "      - {after: 15m, tier: lead, while: unacknowledged}\n",
        "      - {after: 15m, tier: lead, while: unacknowledged, calendar: business-hours}\n",
    )
    + CALENDARS
)


def test_calendars_load_and_bind_to_their_targets(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, BUSINESS))
    p1 = rules.policy("P1")
    assert p1.sla.acknowledge is not None and p1.sla.acknowledge.total_seconds() == 900
    assert p1.sla.calendar("acknowledge") == "business-hours"
    assert p1.sla.calendar("resolve") is None
    ack = p1.clocks.acknowledge
    assert ack is not None and ack.calendar is not None
    assert ack.calendar.name == "business-hours"
    assert p1.clocks.resolve is not None and p1.clocks.resolve.calendar is None
    (_, _, _, lead) = rules.policy("P0").clocks.escalation[1]
    assert lead.calendar is not None
    (holidays,) = [i for i in rules.spec.time_intervals if i.name == "holidays"]
    # Numbers are read as Alertmanager reads them: as text.
    assert holidays.time_intervals[1].days_of_month == ["2", "-1"]
    assert holidays.time_intervals[1].years == ["2027"]
    # The dump writes the business-time entry back as it was written.
    sla = rules.spec.model_dump(mode="json")["severities"][1]["sla"]
    assert sla["acknowledge"] == {"target": "15m", "calendar": "business-hours"}


# (description, replacements applied to BUSINESS, expected (line text, "location: reason"))
INVALID = [
    (
        "bad weekday and reversed week",
        [("['monday:friday']", "['mon:friday', 'saturday:sunday']")],
        [
            (
                "['mon:friday'",
                "time_intervals[0].time_intervals[0].weekdays[0]: mon is not a valid weekday",
            ),
            (
                "['mon:friday'",
                "time_intervals[0].time_intervals[0].weekdays[1]: saturday:sunday: start day "
                "cannot be after end day",
            ),
        ],
    ),
    (
        "a time range across midnight",
        [("{start_time: '09:00', end_time: '17:00'}", "{start_time: '22:00', end_time: '06:00'}")],
        [
            (
                "start_time: '22:00'",
                "time_intervals[0].time_intervals[0].times[0]: start time cannot be equal or "
                "greater than end time (split a range across midnight in two",
            )
        ],
    ),
    (
        "a malformed time",
        [("start_time: '09:00'", "start_time: '9:00'")],
        [
            (
                "start_time: '9:00'",
                "time_intervals[0].time_intervals[0].times[0].start_time: couldn't parse "
                "timestamp 9:00",
            )
        ],
    ),
    (
        "an unknown time zone",
        [("location: Europe/Berlin", "location: Europe/Berlinn")],
        [
            (
                "location: Europe/Berlinn",
                "time_intervals[0].time_intervals[0].location: unknown time zone 'Europe/Berlinn'",
            )
        ],
    ),
    (
        "bad days and months",
        [("days_of_month: ['24:26']", "days_of_month: ['0', '-1:5']"), ("[4]", "[13]")],
        [
            (
                "days_of_month: ['0'",
                "time_intervals[1].time_intervals[0].days_of_month[0]: 0 is not a valid day",
            ),
            (
                "days_of_month: ['0'",
                "time_intervals[1].time_intervals[0].days_of_month[1]: end day must be negative",
            ),
            ("[13]", "time_intervals[1].time_intervals[1].months[0]: 13 is not a valid month"),
        ],
    ),
    (
        "undeclared interval and calendars",
        [
            ("mute_time_intervals: [holidays]", "mute_time_intervals: [holidayz]"),
            ("calendar: business-hours}, resolve", "calendar: office}, resolve"),
            ("calendar: business-hours}\n", "calendar: weekdays}\n"),
        ],
        [
            (
                "calendar: weekdays",
                "severities[0].escalation[1].calendar: calendar 'weekdays' is not declared",
            ),
            (
                "calendar: office",
                "severities[1].sla.acknowledge.calendar: calendar 'office' is not declared",
            ),
            (
                "[holidayz]",
                "calendars[0].mute_time_intervals[0]: time interval 'holidayz' is not declared "
                "in time_intervals",
            ),
        ],
    ),
    (
        "a business-time entry without its target",
        [("{target: 15m, calendar: business-hours}", "{after: 15m, calendar: business-hours}")],
        [
            (
                "sla: {acknowledge",
                "severities[1].sla: acknowledge: give a duration, or {target: <duration>, "
                "calendar: <name>}",
            )
        ],
    ),
    (
        "a bad target in business time",
        [("{target: 15m,", "{target: 15 min,")],
        [("sla: {acknowledge", "severities[1].sla.acknowledge: invalid duration '15 min'")],
    ),
    (
        "duplicate names",
        [("  - name: holidays\n", "  - name: office-hours\n")],
        [
            (
                "name: office-hours\n    time_intervals:\n      - {months",
                "time_intervals[1].name: duplicate name 'office-hours', first at time_intervals[0]",
            ),
            (
                "[holidays]",
                "calendars[0].mute_time_intervals[0]: time interval 'holidays' is not declared",
            ),
        ],
    ),
]


@pytest.mark.parametrize(
    ("replacements", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_calendars_report_file_line_and_reason(
    tmp_path: Path, replacements: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    text = BUSINESS
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    problems = info.value.problems
    got = [(p.line, f"{p.location}: {p.reason}") for p in problems]
    want = [(_line_of(text, needle), message) for needle, message in expected]
    assert len(got) == len(want), got
    pairs = zip(got, want, strict=True)
    assert [(line, message[: len(w)]) for (line, message), (_, w) in pairs] == want, got
    for problem in problems:
        assert str(problem).startswith(f"{path}:{problem.line}:")


def test_an_sla_passed_as_a_model_keeps_its_calendars() -> None:
    sla = SLA.model_validate({"acknowledge": {"target": "1h", "calendar": "office"}})
    policy = SeverityPolicy(
        name="P1", title="High", paging="page", pagerduty_severity="error", sla=sla
    )
    assert policy.sla.calendar("acknowledge") == "office"
    # No calendar of that name is bound: the target runs on the wall clock.
    assert policy.clocks.acknowledge is not None and policy.clocks.acknowledge.calendar is None


# Entries of Alertmanager's `time_intervals` and whether they are valid: the
# sidecar must agree with Alertmanager's own check (amtool check-config).
AM_ENTRIES = [
    ({"weekdays": ["monday:friday"], "times": [{"start_time": "09:00", "end_time": "17:00"}],
      "location": "Europe/Berlin"}, True),
    ({"days_of_month": ["-3:-1"]}, True),
    ({"days_of_month": [1, "5:10"], "months": ["january:march", 12], "years": ["2026:2027"]}, True),
    ({"times": [{"start_time": "22:00", "end_time": "24:00"},
                {"start_time": "00:00", "end_time": "06:00"}]}, True),
    ({"weekdays": ["Monday", "SATURDAY"]}, True),
    ({"weekdays": ["saturday:sunday"]}, False),
    ({"weekdays": ["mon"]}, False),
    ({"times": [{"start_time": "22:00", "end_time": "06:00"}]}, False),
    ({"times": [{"start_time": "9:00", "end_time": "17:00"}]}, False),
    ({"times": [{"start_time": "09:00"}]}, False),
    ({"days_of_month": ["-1:5"]}, False),
    ({"days_of_month": ["0"]}, False),
    ({"days_of_month": ["32"]}, False),
    ({"months": ["march:january"]}, False),
    ({"years": ["2027:2026"]}, False),
    ({"location": "Europe/Berlinn"}, False),
]  # fmt: skip


def _amtool_accepts(amtool: Path, tmp_path: Path, entry: dict[str, Any]) -> bool:
    config = {
        "route": {"receiver": "default"},
        "receivers": [{"name": "default"}],
        "time_intervals": [{"name": "t", "time_intervals": [entry]}],
    }
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [str(amtool), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def test_time_intervals_are_valid_exactly_when_alertmanager_says_so(tmp_path: Path) -> None:
    amtool = require_binary("amtool")
    for entry, valid in AM_ENTRIES:
        assert _amtool_accepts(amtool, tmp_path, entry) == valid, ("amtool", entry)
        try:
            TimeInterval.model_validate(entry)
        except ValidationError:
            accepted = False
        else:
            accepted = True
        assert accepted == valid, ("sidecar", entry)
