"""The configuration sections of the notification integrations: Slack, webhooks, Jira, reminders.

Each is off until configured. Their secrets (the Slack bot token, each
webhook's signing secret, the Jira API token) are given inline or as a mounted
file, never both, and read by :mod:`sidecar.config.secrets`. Channels, URLs and
people come only from here, never from payloads, so metric labels stay bounded.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from sidecar.durations import Duration

LifecycleEvent = Literal[
    "opened",
    "acknowledged",
    "status_update",
    "severity_raised",
    "severity_lowered",
    "roles_changed",
    "escalated",
    "breached",
    "reminder",
    "reopened",
    "resolved",
    "review_due",
    "ticket",
]
#: Every lifecycle event an outbound webhook can be sent (``events`` picks some).
LIFECYCLE_EVENTS: tuple[LifecycleEvent, ...] = get_args(LifecycleEvent)

TemplatePreset = Literal["generic", "llm-marketplace", "schema-registry"]
#: The message template sets the package ships (``templates.preset``), one per preset.
TEMPLATE_PRESETS: tuple[TemplatePreset, ...] = get_args(TemplatePreset)

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_of(model: BaseModel, name: str, *, required: bool) -> None:
    inline, file = getattr(model, name), getattr(model, f"{name}_file")
    if inline is not None and file is not None:
        raise ValueError(f"set either {name} or {name}_file, not both")
    if required and inline is None and file is None:
        raise ValueError(f"{name} (or {name}_file) is required")


class SlackChannels(_Section):
    """``slack.channels``: where an incident's thread goes, the first match winning."""

    # By owning team, then by severity, else the default (plan 000: #incidents).
    teams: dict[str, str] = Field(default_factory=dict)
    severities: dict[str, str] = Field(default_factory=dict)
    default: str | None = None
    # The plan's stakeholder channel (plan 000: #engineering for P0/P1): its own thread.
    stakeholders: str | None = None
    stakeholder_severities: list[str] = Field(default_factory=list)


class SlackConfig(_Section):
    """``slack``: one thread per incident, through Slack's Web API (``slack_sdk``)."""

    token: SecretStr | None = None
    token_file: Path | None = None
    # slack_sdk's base_url; only tests and proxies change it.
    api_url: str = "https://slack.com/api/"
    channels: SlackChannels = SlackChannels()
    # Person (as the sidecar names them: acknowledger, Incident Commander) -> Slack
    # user ID, so that messages mention them (<@U123>); unmapped people show by name.
    users: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=10)
    # Slack allows about one message a second per channel (chat.postMessage), all
    # replicas together; bursts are tolerated briefly, so keep to the rate.
    messages_per_channel: int = Field(default=1, ge=1)
    rate_window: Duration = timedelta(seconds=1)

    @model_validator(mode="after")
    def _token(self) -> SlackConfig:
        _one_of(self, "token", required=True)
        if not self.api_url.endswith("/"):
            raise ValueError("api_url must end with a slash, as slack_sdk's base_url")
        return self

    @field_validator("users")
    @classmethod
    def _user_ids(cls, users: dict[str, str]) -> dict[str, str]:
        for person, user_id in users.items():
            if not re.fullmatch(r"[UW][A-Z0-9]{2,}", user_id):
                raise ValueError(f"{person}: {user_id!r} is not a Slack user ID (U... or W...)")
        return users


class WebhookEndpoint(_Section):
    """One ``webhooks`` entry: JSON lifecycle events POSTed to a URL, signed."""

    name: str
    url: str
    secret: SecretStr | None = None
    secret_file: Path | None = None
    # Which lifecycle events it receives; all of them by default.
    events: list[LifecycleEvent] = Field(default_factory=lambda: list(LIFECYCLE_EVENTS))
    timeout: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _check(self) -> WebhookEndpoint:
        if not _NAME.fullmatch(self.name):
            raise ValueError("name: use 1-64 letters, digits, '_', '.', ':' or '-'")
        if not self.url.startswith(("https://", "http://")):
            raise ValueError("url must be http:// or https://")
        # Unsigned events could be forged by anyone who can reach the receiver.
        _one_of(self, "secret", required=True)
        return self


class JiraConfig(_Section):
    """``jira``: the ``ticket`` policy creates a Jira Cloud issue (REST API v3)."""

    url: str
    email: str
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    project: str
    issue_type: str = "Task"
    labels: list[str] = Field(default_factory=lambda: ["incident"])
    timeout: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _check(self) -> JiraConfig:
        _one_of(self, "api_token", required=True)
        if not self.url.startswith(("https://", "http://")):
            raise ValueError("url must be your site, as in https://your-domain.atlassian.net")
        return self


class RemindersConfig(_Section):
    """``reminders``: a nudge in the incident's thread before each status update is due."""

    enabled: bool = True
    # How long before the update deadline; per severity where the plan wants it.
    before: Duration = timedelta(minutes=5)
    severities: dict[str, Duration] = Field(default_factory=dict)

    def lead(self, severity: str) -> float | None:
        """Seconds before the update deadline a reminder goes, or None when off."""
        if not self.enabled:
            return None
        return self.severities.get(severity, self.before).total_seconds()


class TemplatesConfig(_Section):
    """``templates``: the messages' Jinja2 templates (see ``render-template``)."""

    # Files here replace the package's of the same name (incident.txt.j2, ...).
    directory: Path | None = None
    # The package set to start from; by default the rules' preset (else generic).
    preset: TemplatePreset | None = None

    @field_validator("directory", "preset", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # The chart writes "" for "not set".
        return None if value == "" else value


class NotificationsRetry(_Section):
    """``notifications.retry``: the one retry policy's waits, for Slack, webhooks and Jira."""

    initial: Duration = timedelta(seconds=1)
    max: Duration = timedelta(minutes=5)
    rate_limited: Duration = timedelta(seconds=30)


class NotificationsConfig(_Section):
    """``notifications``: what every integration but PagerDuty shares."""

    retry: NotificationsRetry = NotificationsRetry()
