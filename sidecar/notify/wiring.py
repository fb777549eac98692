"""The notification integrations a configuration asks for: their planners and outbox workers.

PagerDuty's are built by :mod:`sidecar.runtime` as before; Slack, outbound
webhooks and Jira are built here, each only when its section is configured.
Every worker is the one :class:`~sidecar.notify.outbox.OutboxWorker`, with
the one retry policy; only the sender differs.

Each integration's module (and slack_sdk, Jinja2 with it) is imported when its
section is configured, not with this module: serve imports this, and a restart
spent a quarter of its import time on integrations most configurations lack.
Checking the templates still happens at start, whenever they are used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.errors import ConfigProblem
from sidecar.incidents import Change
from sidecar.metrics import Metrics
from sidecar.notify.outbox import OutboxWorker, Sender
from sidecar.notify.pagerduty import Policies
from sidecar.notify.retry import RetryPolicy
from sidecar.store.base import Store
from sidecar.store.rows import JIRA, PAGERDUTY, SLACK, WEBHOOK

if TYPE_CHECKING:
    from sidecar.notify.templates import MessageTemplates


class Planner(Protocol):
    """A planner that follows rules reloads."""

    def plan(self, change: Change, now: float) -> None: ...
    def set_rules(self, rules: Policies) -> None: ...


@dataclass(slots=True)
class Integrations:
    """The planners (in the order they run) and the outbox workers of the integrations."""

    planners: list[Planner] = field(default_factory=list)
    workers: list[OutboxWorker] = field(default_factory=list)
    # (integration, action): the series of notifications_total.
    actions: list[tuple[str, str]] = field(default_factory=list)


def templates_of(config: Config, preset: str) -> MessageTemplates:
    """The message templates: the configured preset (else the rules'), with overrides."""
    from sidecar.notify.templates import MessageTemplates

    t = config.settings.templates
    directory = config.resolve(t.directory) if t.directory is not None else None
    return MessageTemplates(t.preset or preset, directory)


def notification_actions(config: Config) -> list[tuple[str, str]]:
    """Every (integration, action) pair the configuration can send."""
    s = config.settings
    pairs = [(PAGERDUTY, a) for a in ("trigger", "acknowledge", "resolve")]
    if s.slack is not None:
        from sidecar.notify import slack

        pairs += [(SLACK, a) for a in slack.ACTIONS]
    if s.webhooks:
        pairs += [(WEBHOOK, e) for e in sorted({e for w in s.webhooks for e in w.events})]
    if s.jira is not None:
        from sidecar.notify import jira

        pairs += [(JIRA, a) for a in jira.ACTIONS]
    return pairs


def build_integrations(
    config: Config,
    rules: Policies,
    preset: str,
    store: Store,
    metrics: Metrics,
    clock: Clock,
) -> Integrations:
    """Planners and workers of Slack, webhooks and Jira, as configured; raise ConfigError."""
    s = config.settings
    secrets = config.secrets
    out = Integrations(actions=notification_actions(config))
    if s.slack is None and not s.webhooks and s.jira is None:
        return out
    templates = templates_of(config, preset)
    r = s.notifications.retry
    retry = RetryPolicy(
        initial=r.initial.total_seconds(),
        maximum=r.max.total_seconds(),
        rate_limited=r.rate_limited.total_seconds(),
    )
    url = s.server.external_url

    def worker(sender: Sender) -> OutboxWorker:
        return OutboxWorker(store, clock, sender, retry=retry)

    if s.jira is not None and secrets.jira_api_token is not None:
        from sidecar.notify import jira

        out.planners.append(jira.JiraPlanner(rules, s.jira, templates, external_url=url))
        out.workers.append(
            worker(jira.JiraSender(metrics, clock, config=s.jira, api_token=secrets.jira_api_token))
        )
    if s.slack is not None and secrets.slack_token is not None:
        from sidecar.notify import slack

        out.planners.append(
            slack.SlackPlanner(rules, s.slack, templates, external_url=url, plan=preset)
        )
        sender = slack.SlackSender(
            store,
            metrics,
            clock,
            token=secrets.slack_token,
            api_url=s.slack.api_url,
            channels=slack.slack_channels(s.slack),
            timeout=s.slack.timeout.total_seconds(),
            messages_per_channel=s.slack.messages_per_channel,
            rate_window=s.slack.rate_window.total_seconds(),
        )
        out.workers.append(worker(sender))
    if s.webhooks:
        from sidecar.notify import webhooks

        out.planners.append(
            webhooks.WebhookPlanner(rules, s.webhooks, tickets=s.jira is None, external_url=url)
        )
        out.workers.append(
            worker(
                webhooks.WebhookSender(
                    metrics, clock, endpoints=s.webhooks, secrets=secrets.outbound_secrets
                )
            )
        )
    return out


def integration_problems(
    config: Config, preset: str, severities: Sequence[str], teams: Sequence[str]
) -> list[ConfigProblem]:
    """What the integrations' configuration says that the rules or templates contradict."""
    s = config.settings
    file = str(config.path)
    problems = [
        ConfigProblem(file, f"reminders.severities.{name}", "no such severity in the rules")
        for name in sorted(set(s.reminders.severities) - set(severities))
    ]
    if s.slack is not None:
        c = s.slack.channels
        problems += [
            ConfigProblem(file, f"slack.channels.severities.{name}", "no such severity")
            for name in sorted(set(c.severities) - set(severities))
        ]
        problems += [
            ConfigProblem(
                file, f"slack.channels.stakeholder_severities: {name}", "no such severity"
            )
            for name in sorted(set(c.stakeholder_severities) - set(severities))
        ]
        problems += [
            ConfigProblem(file, f"slack.channels.teams.{name}", "no such team in the rules")
            for name in sorted(set(c.teams) - set(teams))
        ]
    if s.slack is not None or s.webhooks or s.jira is not None or s.templates.directory:
        problems += templates_of(config, preset).check(file)
    return problems


def reminder_leads(config: Config, severities: Sequence[str]) -> dict[str, float]:
    """Severity -> seconds before an update deadline its reminder is due.

    Empty unless an integration can carry a reminder (Slack, webhooks): a
    reminder nobody hears would only fill the timeline.
    """
    s = config.settings
    if s.slack is None and not s.webhooks:
        return {}
    leads = {name: s.reminders.lead(name) for name in severities}
    return {name: lead for name, lead in leads.items() if lead is not None}


def wake_all(workers: list[OutboxWorker]) -> Callable[[], None]:
    """Wake every worker: a commit wrote rows, for one integration or several."""

    def wake() -> None:
        for w in workers:
            w.wake()

    return wake
