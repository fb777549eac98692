"""The plan a simulation runs: rules, incident keys and routing names, from config or rules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sidecar.config import load_config
from sidecar.notify.wiring import reminder_leads
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
    )


def plan_from_rules(path: Path, routing: Iterable[str] | None = None) -> Plan:
    """The plan of a rules file; ``routing`` None means every key configured."""
    rules = load_rules(path)
    names = every_key(rules) if routing is None else frozenset(routing)
    return Plan(rules, names)
