"""The plan a simulation runs: rules, incident keys and routing names, from config or rules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sidecar.config import Config, load_config
from sidecar.notify import jira, slack, webhooks
from sidecar.notify.wiring import Planner, reminder_leads, templates_of
from sidecar.routing import DEFAULT, routing_names, tier_routing
from sidecar.rules import RuleSet, load_rules


@dataclass(frozen=True, slots=True)
class Plan:
    """What a simulation needs of the sidecar's configuration."""

    rules: RuleSet
    routing_names: frozenset[str]
    key_mode: Literal["group", "alert"] = "group"
    dedup_window: float = 6 * 3600.0
    # The zone whose day numbers incidents (``incidents.number_timezone``).
    number_timezone: str = "UTC"
    # Severity -> how long before an update deadline its reminder is due (only
    # with an integration that carries reminders, as the service decides).
    reminders: Mapping[str, float] = field(default_factory=dict)
    # The configuration's other integrations (Slack, webhooks, Jira), planned beside PagerDuty.
    planners: tuple[Planner, ...] = ()


def every_key(rules: RuleSet) -> frozenset[str]:
    """A default routing key and one per escalation tier: PagerDuty fully configured."""
    tiers = {step.tier for sev in rules.severities for step in sev.escalation}
    return frozenset({DEFAULT, *(tier_routing(t) for t in tiers)})


def plan_from_config(path: Path) -> Plan:
    """The plan of a sidecar configuration file (its secrets are not read); ConfigError if bad."""
    config = load_config(path, read_secrets=False)
    s = config.settings
    rules = load_rules(config.rules_file)
    return Plan(
        rules,
        routing_names(s.pagerduty),
        s.incidents.key,
        s.incidents.dedup_window.total_seconds(),
        s.incidents.number_timezone,
        reminder_leads(config, [sev.name for sev in rules.severities]),
        tuple(integration_planners(config, rules)),
    )


def integration_planners(config: Config, rules: RuleSet) -> list[Planner]:
    """The planners of the configured Slack, webhooks and Jira, in the service's order.

    The service builds them only once their secrets are read; a simulation
    sends nothing and reads none, so it plans for every integration configured.
    """
    s = config.settings
    if s.slack is None and not s.webhooks and s.jira is None:
        return []
    templates = templates_of(config, rules.name)
    url = s.server.external_url
    out: list[Planner] = []
    if s.jira is not None:
        out.append(jira.JiraPlanner(rules, s.jira, templates, external_url=url))
    if s.slack is not None:
        out.append(slack.SlackPlanner(rules, s.slack, templates, external_url=url, plan=rules.name))
    if s.webhooks:
        out.append(
            webhooks.WebhookPlanner(rules, s.webhooks, tickets=s.jira is None, external_url=url)
        )
    return out


def plan_from_rules(path: Path, routing: Iterable[str] | None = None) -> Plan:
    """The plan of a rules file; ``routing`` None means every key configured."""
    rules = load_rules(path)
    names = every_key(rules) if routing is None else frozenset(routing)
    return Plan(rules, names)
