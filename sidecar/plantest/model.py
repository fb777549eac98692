"""The plan test file, field by field, in the spirit of ``promtool test rules``.

A file names the plan under test (``rules:`` or ``config:``, relative to the
test file), Alertmanager's grouping, the PagerDuty routing keys that exist,
and its tests. Each test gives alert episodes over simulated time, actions at
given times, and expectations at evaluation times. Times are durations after
``start``. Unknown keys are refused, naming the file and line.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from sidecar.durations import Duration
from sidecar.incidents.people import ROLES
from sidecar.matchers import parse_matchers
from sidecar.rules import MatcherLine


def _check_matchers(value: list[str]) -> list[str]:
    for line in value:
        parse_matchers(line)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Grouping(_Strict):
    """Alertmanager's route for the sidecar's receiver (Alertmanager's defaults when left out)."""

    group_by: list[str] = ["alertname"]
    group_wait: Duration = timedelta(seconds=30)
    group_interval: Duration = timedelta(minutes=5)
    repeat_interval: Duration = timedelta(hours=4)


class PagerDuty(_Strict):
    """The routing-key names configured: ``default``, ``team:<team>``, ``tier:<tier>``.

    Left out, a default key and every escalation tier's key: PagerDuty fully on.
    ``routing: []`` is PagerDuty off (nothing is sent, escalations are unrouted).
    """

    routing: list[str] | None = None

    @model_validator(mode="after")
    def _names(self) -> PagerDuty:
        for name in self.routing or []:
            kind, sep, rest = name.partition(":")
            if name != "default" and not (sep and rest and kind in ("team", "tier")):
                raise ValueError(
                    f"invalid routing-key name {name!r}: use default, team:<team> or tier:<tier>"
                )
        return self


class Firing(_Strict):
    """One episode of an alert: firing from ``from`` until ``to`` (still firing without)."""

    from_: Duration = Field(alias="from")
    to: Duration | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Firing:
        if self.to is not None and self.to <= self.from_:
            raise ValueError("to must be after from")
        return self


class InputAlert(_Strict):
    """An alert as Prometheus sends it, over simulated time.

    ``for`` is its rule's: the alert starts (``startsAt``) at ``from`` but
    reaches Alertmanager only ``for`` later, which is what detection measures.
    """

    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = {}
    firing: list[Firing] = Field(min_length=1)
    for_: Duration = Field(default=timedelta(0), alias="for")

    @model_validator(mode="after")
    def _apart(self) -> InputAlert:
        episodes = sorted(self.firing, key=lambda f: f.from_)
        for before, after in itertools.pairwise(episodes):
            if before.to is None or before.to > after.from_:
                raise ValueError("firing episodes of one alert must not overlap")
        return self


class Acknowledge(_Strict):
    """Acknowledge the incident (as the API would)."""

    actor: str = "responder"
    message: str = ""


class Resolve(Acknowledge):
    """Resolve the incident by hand."""


class StatusUpdate(_Strict):
    """A status update, with one of the plan's statuses (``statuses`` in the rules) if given."""

    actor: str = "responder"
    message: str = Field(min_length=1)
    status: str | None = None


class AssignRole(_Strict):
    """Give a role (``incident_commander``, ``smes``, ...) to a person, or to several for smes."""

    role: str
    person: str | list[str]
    actor: str = "incident-commander"

    @model_validator(mode="after")
    def _known(self) -> AssignRole:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; the roles are {', '.join(ROLES)}")
        return self


class ChangeSeverity(_Strict):
    """The Incident Commander sets the severity, up or down, with a reason."""

    severity: str
    reason: str = Field(min_length=1)
    actor: str = "incident-commander"


class Escalate(_Strict):
    """The Incident Commander escalates to a tier by hand."""

    tier: str
    reason: str = ""
    actor: str = "incident-commander"


class SilenceAction(_Strict):
    """An Alertmanager silence from the action's time for ``duration``."""

    matchers: Annotated[list[MatcherLine], AfterValidator(_check_matchers)] = Field(min_length=1)
    duration: Duration = timedelta(hours=1)
    created_by: str = "responder"
    comment: str = ""


ACTIONS = (
    "acknowledge",
    "resolve",
    "status_update",
    "assign_role",
    "change_severity",
    "escalate",
    "silence",
)


class Action(_Strict):
    """One action at ``at``, on the incident ``incident`` selects (by labels; the only open one
    when left out)."""

    at: Duration
    incident: dict[str, str] = {}
    acknowledge: Acknowledge | None = None
    resolve: Resolve | None = None
    status_update: StatusUpdate | None = None
    assign_role: AssignRole | None = None
    change_severity: ChangeSeverity | None = None
    escalate: Escalate | None = None
    silence: SilenceAction | None = None

    @model_validator(mode="after")
    def _one(self) -> Action:
        given = [name for name in ACTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(ACTIONS)}")
        return self


SLAName = Literal["detect", "acknowledge", "update", "resolve", "postmortem"]


class ExpectedIncident(_Strict):
    """An incident as it is at the evaluation time; only the fields given are compared."""

    severity: str | None = None
    team: str | None = None
    state: Literal["triggered", "acknowledged", "resolved"] | None = None
    breaches: list[SLAName] | None = None
    escalations: list[str] | None = None
    status: str | None = None
    number: str | None = None
    roles: dict[str, str | list[str]] | None = None
    # Update reminders so far: only with a `config:` whose Slack or webhooks carry them.
    reminders: int | None = None


class ExpectedNotification(_Strict):
    """A notification queued by then; only the fields given are compared."""

    at: Duration | None = None
    integration: str | None = None
    # PagerDuty's trigger, acknowledge, resolve; the other integrations' own
    # (a webhook's opened, status_update, reminder...).
    action: str
    routing: str | None = None
    tier: str | None = None
    severity: Literal["critical", "error", "warning", "info"] | None = None


class Expectation(_Strict):
    """What holds at ``at``: every incident opened by then, in opening order, and every
    notification queued by then, in order. A list left out is not compared."""

    at: Duration
    incidents: list[ExpectedIncident] | None = None
    notifications: list[ExpectedNotification] | None = None


class PlanTest(_Strict):
    """One scenario."""

    name: str = Field(min_length=1)
    # The file's grouping unless the scenario needs its own.
    alertmanager: Grouping | None = None
    alerts: list[InputAlert] = []
    actions: list[Action] = []
    expect: list[Expectation] = Field(min_length=1)


class TestFile(_Strict):
    """A plan test file."""

    __test__ = False  # not a pytest class

    rules: str | None = None
    config: str | None = None
    start: datetime = datetime.fromisoformat("2026-01-05T09:00:00+00:00")
    alertmanager: Grouping = Grouping()
    pagerduty: PagerDuty = PagerDuty()
    tests: list[PlanTest] = Field(min_length=1)

    @model_validator(mode="after")
    def _plan(self) -> TestFile:
        if (self.rules is None) == (self.config is None):
            raise ValueError("name the plan under test: give exactly one of rules or config")
        if self.start.tzinfo is None:
            raise ValueError("start needs a time zone, as in 2026-01-05T09:00:00Z")
        return self
