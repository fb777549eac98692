"""The rules file as written: severities with their SLAs and escalation, teams, and rules.

Field by field validation only; the cross-references between fields (a rule's
severity must be declared, names must be unique) are :mod:`sidecar.rules.checks`'.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    StrictBool,
    ValidatorFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from sidecar.durations import Duration
from sidecar.matchers import parse_matchers
from sidecar.rules.intervals import CalendarSpec, NamedTimeInterval
from sidecar.sla import Clocks
from sidecar.sla.calendar import Calendar

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

DEFAULT_RULE = "default"
"""The rule name a classification reports when no rule of a list matched."""
FLOOR_LABEL = "severity"
"""The label whose value ``severity_floor`` maps (Prometheus' convention)."""


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use letters, digits, '_', '.', ':' and '-', "
            "starting with a letter or digit"
        )
    return value


def _check_matchers(value: str) -> str:
    parse_matchers(value)
    return value


def _check_watch(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("a recovery watch must be longer than 0s: leave the key out for none")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Watch = Annotated[Duration, AfterValidator(_check_watch)]
"""A recovery watch: how long a resolved incident may still reopen (positive)."""


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


MatcherLine = Annotated[str, AfterValidator(_check_matchers)]
"""One Alertmanager ``matchers:`` entry; it may hold several comma-separated matchers."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SLA(_Strict):
    """Per-severity SLA durations; ``None`` means the plan sets no such target.

    An entry is a duration on the wall clock (``acknowledge: 1h``) or one of
    business time, naming a calendar: ``acknowledge: {target: 1h, calendar:
    business-hours}``. The fields hold the durations either way, so that
    everything reading a target reads a duration; :meth:`calendar` says
    which calendar, if any, an entry runs on.
    """

    detect: Duration | None = None
    acknowledge: Duration | None = None
    update: Duration | None = None
    resolve: Duration | None = None
    postmortem: Duration | None = None
    _calendars: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _calendar_entries(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> SLA:
        if not isinstance(data, Mapping):
            return cast("SLA", handler(data))  # an SLA already, or an error to report
        calendars: dict[str, str] = {}
        data = dict(data)
        for key, value in data.items():
            if not isinstance(value, Mapping):
                continue
            if set(value) != {"target", "calendar"} or not isinstance(value["calendar"], str):
                raise ValueError(
                    f"{key}: give a duration, or {{target: <duration>, calendar: <name>}} "
                    f"for a target in business time (got keys {', '.join(map(str, value))})"
                )
            calendars[key] = value["calendar"]
            data[key] = value["target"]
        sla = cast("SLA", handler(data))
        sla._calendars = calendars
        return sla

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key, calendar in self._calendars.items():
            data[key] = {"target": data[key], "calendar": calendar}
        return data

    def calendar(self, name: str) -> str | None:
        """The calendar the SLA ``name`` runs on; None for the wall clock."""
        return self._calendars.get(name)

    @property
    def calendars(self) -> Mapping[str, str]:
        """SLA name -> calendar name, for the entries in business time."""
        return self._calendars


class EscalationStep(_Strict):
    """Page ``tier`` once ``after`` has passed since ``triggered_at``, if ``while`` still holds.

    ``while`` is the step's condition: ``unacknowledged`` (an acknowledgment
    stops it) or ``unresolved`` (only a resolution does). It has always been
    required, so every rules file names it and none changes meaning. A
    ``record_only`` step pages nobody by design: it is written on the
    timeline, so that the plan's step shows, and needs no routing key.
    """

    after: Duration
    tier: Name
    while_: Literal["unacknowledged", "unresolved"] = Field(alias="while")
    # Strict: "yes" or 1 would pass a lax bool, and a typo here decides whether
    # anybody is woken.
    record_only: StrictBool = False
    # Counts ``after`` in this calendar's business time instead of wall time.
    calendar: Name | None = None


class SeverityPolicy(_Strict):
    """One severity of the plan: how it pages, its SLAs and its escalation ladder."""

    name: Name
    title: str
    description: str = ""
    paging: Literal["page", "notify", "ticket", "none"]
    pagerduty_severity: Literal["critical", "error", "warning", "info"]
    sla: SLA = SLA()
    escalation: list[EscalationStep] = []
    # How long a resolved incident stays watched: a re-fire of its group
    # within it reopens the same incident. None: closed at resolution.
    recovery_watch: Watch | None = None
    # The rules file's calendars, bound by RulesFile once validated.
    _calendars: Mapping[str, Calendar] = PrivateAttr(default_factory=dict)

    def calendar_named(self, name: str | None) -> Calendar | None:
        """The calendar called ``name``; None for the wall clock (or an undeclared name)."""
        return None if name is None else self._calendars.get(name)

    @functools.cached_property
    def clocks(self) -> Clocks:
        """The SLA and escalation durations in seconds (see :class:`sidecar.sla.Clocks`)."""
        return Clocks.of(self)


class NumericCondition(_Strict):
    """A bound on the number in one label or annotation, e.g. ``error_rate_percent > 10``."""

    label: str | None = None
    annotation: str | None = None
    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one_source_some_bound(self) -> NumericCondition:
        if (self.label is None) == (self.annotation is None):
            raise ValueError("give exactly one of label or annotation")
        if all(b is None for b in (self.above, self.at_least, self.below, self.at_most)):
            raise ValueError("give at least one of above, at_least, below, at_most")
        return self

    def holds(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> bool:
        """Whether the value is a number within every bound; a missing value never holds."""
        raw = labels.get(self.label) if self.label is not None else None
        if self.annotation is not None:
            raw = annotations.get(self.annotation)
        number = parse_number(raw)
        if number is None:
            return False
        return (
            (self.above is None or number > self.above)
            and (self.at_least is None or number >= self.at_least)
            and (self.below is None or number < self.below)
            and (self.at_most is None or number <= self.at_most)
        )

    def __str__(self) -> str:
        source = (
            f"label {self.label}" if self.label is not None else f"annotation {self.annotation}"
        )
        pairs = ((">", self.above), (">=", self.at_least), ("<", self.below), ("<=", self.at_most))
        bounds = [f"{op} {bound:g}" for op, bound in pairs if bound is not None]
        return f"{source} {' and '.join(bounds)}"


def parse_number(raw: str | None) -> float | None:
    """``"12.5"``, ``"12.5%"`` or ``"11x"`` as a finite float; ``None`` for anything else."""
    if raw is None:
        return None
    text = raw.strip()
    if text.endswith(("%", "x", "X")):
        text = text[:-1].rstrip()
    if not _NUMBER_RE.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


class _Rule(_Strict):
    name: str = Field(min_length=1)
    match: list[MatcherLine] = []
    when: list[NumericCondition] = []


class SeverityRule(_Rule):
    """Gives ``severity`` to alerts that match, or drops them (``drop: true``).

    The result never goes below the alert's severity floor unless ``below_floor``.
    """

    severity: str | None = None
    drop: bool = False
    below_floor: bool = False

    @model_validator(mode="after")
    def _severity_or_drop(self) -> SeverityRule:
        if (self.severity is None) != self.drop:
            raise ValueError("give either severity or drop: true")
        return self


class OwnershipRule(_Rule):
    """Gives ``team`` to alerts that match."""

    team: str


class EscalationRule(_Rule):
    """Pages ``tier`` when a firing alert of an open incident matches.

    The plan's trigger that no clock measures: "Any incident requiring
    emergency change -> Page Change Manager". ``match`` reads labels,
    ``match_annotations`` annotations (same matcher syntax), ``when`` numbers;
    every rule that matches escalates, each tier once per incident.
    """

    match_annotations: list[MatcherLine] = []
    tier: Name
    record_only: StrictBool = False

    @model_validator(mode="after")
    def _some_condition(self) -> EscalationRule:
        if not (self.match or self.match_annotations or self.when):
            raise ValueError(
                "give match, match_annotations or when: a rule without one would "
                "escalate every incident"
            )
        return self


class RulesFile(_Strict):
    """The rules file as written."""

    name: Name
    description: str = ""
    severities: list[SeverityPolicy] = Field(min_length=1)
    teams: list[Name] = Field(min_length=1)
    default_severity: str
    default_team: str
    # Keys are values of the `severity` label (Prometheus' convention), values plan severities.
    severity_floor: dict[Annotated[str, Field(min_length=1)], str] = {}
    severity_rules: list[SeverityRule] = []
    ownership_rules: list[OwnershipRule] = []
    escalation_rules: list[EscalationRule] = []
    # The plan's incident statuses, each once: the first is an incident's at opening,
    # the last a resolved incident's; a status update may carry any of them.
    statuses: Annotated[list[Name], AfterValidator(_unique)] = []
    # Alertmanager's syntax, and calendars of business time made of them.
    time_intervals: list[NamedTimeInterval] = []
    calendars: list[CalendarSpec] = []

    @model_validator(mode="after")
    def _bind_calendars(self) -> RulesFile:
        intervals = {i.name: i for i in self.time_intervals}
        calendars = {c.name: c.compile(intervals) for c in self.calendars}
        for policy in self.severities:
            policy._calendars = calendars
        return self

    def calendar_spec(self, name: str) -> CalendarSpec | None:
        """The calendar called ``name`` as written."""
        return next((c for c in self.calendars if c.name == name), None)
