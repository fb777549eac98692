"""Who a page reaches: routing-key names, and the checks that no page or escalation reaches nobody.

PagerDuty routing keys are named ``default``, ``team:<team>`` and
``tier:<tier>`` (see ``pagerduty.*routing_key*`` in the configuration). A team's
page goes to its own key, else to the default; an escalation tier's page goes
to the tier's key only. PagerDuty is on as soon as any key is configured, and
from then on a page that would reach nobody is a configuration error, found
before the sidecar starts (``check-config``, ``serve``), not a timeline note
found after the incident. An escalation step declared ``record_only`` pages
nobody on purpose and needs no key. An escalation rule (``escalation_rules``,
paging a tier when an alert's labels or annotations match) is held to the same
checks as a ladder's step.

Everything here is pure (no logging, no I/O), so that it can run at start, in
``check-config`` and on a rules reload alike.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sidecar.config import Config, PagerDutyConfig
from sidecar.errors import ConfigProblem
from sidecar.rules import RuleSet

DEFAULT = "default"
PAGING_POLICIES = ("page", "notify")
"""The paging policies that send a trigger to the owning team."""


def team_routing(team: str) -> str:
    """The routing-key name of a team's own key."""
    return f"team:{team}"


def tier_routing(tier: str) -> str:
    """The routing-key name of an escalation tier's key."""
    return f"tier:{tier}"


def routing_names(pd: PagerDutyConfig) -> frozenset[str]:
    """The routing-key names the configuration declares (its secrets need not be read)."""
    names = {team_routing(t) for t in pd.team_routing_keys}
    names |= {tier_routing(t) for t in pd.tier_routing_keys}
    if pd.routing_key is not None or pd.routing_key_file is not None:
        names.add(DEFAULT)
    return frozenset(names)


def routing_for_team(team: str, names: Collection[str]) -> str | None:
    """The key a team's page goes to: its own, else the default, else none."""
    own = team_routing(team)
    if own in names:
        return own
    return DEFAULT if DEFAULT in names else None


def routed_tiers(names: Iterable[str]) -> frozenset[str]:
    """The escalation tiers that have a routing key."""
    prefix = tier_routing("")
    return frozenset(n.removeprefix(prefix) for n in names if n.startswith(prefix))


def routing_problems(config: Config, rules: RuleSet) -> list[ConfigProblem]:
    """Every way the configuration and the rules together would page nobody, or a key nobody uses.

    With PagerDuty configured: an escalation step or rule that pages a tier
    without a key (on the rules file, at the step's or rule's ``tier``), and a team paged by a
    ``page`` or ``notify`` severity that neither its own key nor a default key
    reaches (at the team in ``teams``). In any case: keys for undeclared teams,
    and tier keys no paging step uses (on the configuration file).
    """
    pd = config.settings.pagerduty
    names = routing_names(pd)
    problems: list[ConfigProblem] = []
    if names:
        problems += _unrouted_steps(config, rules, names)
        problems += _unrouted_teams(config, rules, names)
    problems += _unused_keys(config, rules)
    return problems


def routing_warnings(config: Config, rules: RuleSet) -> list[str]:
    """Without any PagerDuty key: one line per escalation tier that would page, saying nobody will.

    A line for the owning teams' pages comes first when a severity would page
    them. Empty when PagerDuty is configured (then :func:`routing_problems`
    refuses what would reach nobody).
    """
    if routing_names(config.settings.pagerduty):
        return []
    lines = []
    paging = [p.name for p in rules.severities if p.paging in PAGING_POLICIES]
    if paging:
        lines.append(
            f"no PagerDuty routing key is configured: incidents of {', '.join(paging)} "
            "page nobody (set pagerduty.routing_key to page the owning teams)"
        )
    by_tier: dict[str, list[str]] = {}
    for policy in rules.severities:
        for step in policy.escalation:
            if not step.record_only and policy.name not in by_tier.get(step.tier, []):
                by_tier.setdefault(step.tier, []).append(policy.name)
    for _, name, tier, record_only in _rule_tiers(rules):
        if not record_only and f"rule {name}" not in by_tier.get(tier, []):
            by_tier.setdefault(tier, []).append(f"rule {name}")
    for tier, severities in by_tier.items():
        lines.append(
            f"escalation tier {tier!r} ({', '.join(severities)}) would page, but no PagerDuty "
            f"routing key is configured: nobody will be paged for it (set "
            f"pagerduty.tier_routing_keys.{tier}, or declare its steps or rules record_only: true)"
        )
    return lines


def _rule_tiers(rules: RuleSet) -> list[tuple[int, str, str, bool]]:
    """(index, rule name, tier, record_only) of each escalation rule."""
    return [(i, r.name, r.tier, r.record_only) for i, r in enumerate(rules.spec.escalation_rules)]


def _unrouted_steps(config: Config, rules: RuleSet, names: Collection[str]) -> list[ConfigProblem]:
    problems = []
    for s, policy in enumerate(rules.severities):
        for e, step in enumerate(policy.escalation):
            if step.record_only or tier_routing(step.tier) in names:
                continue
            problems.append(
                rules.problem(
                    ("severities", s, "escalation", e, "tier"),
                    f"severity {policy.name} escalates to tier {step.tier!r}, which has no "
                    f"PagerDuty routing key: the step would page nobody. Add "
                    f"pagerduty.tier_routing_keys.{step.tier} to {config.path}, or declare "
                    "the step record_only: true",
                )
            )
    for i, name, tier, record_only in _rule_tiers(rules):
        if record_only or tier_routing(tier) in names:
            continue
        problems.append(
            rules.problem(
                ("escalation_rules", i, "tier"),
                f"escalation rule {name!r} pages tier {tier!r}, which has no PagerDuty "
                f"routing key: the rule would page nobody. Add "
                f"pagerduty.tier_routing_keys.{tier} to {config.path}, or declare the "
                "rule record_only: true",
            )
        )
    return problems


def _unrouted_teams(config: Config, rules: RuleSet, names: Collection[str]) -> list[ConfigProblem]:
    paging = [f"{p.name} ({p.paging})" for p in rules.severities if p.paging in PAGING_POLICIES]
    if not paging:
        return []
    return [
        rules.problem(
            ("teams", index),
            f"team {team!r} is paged by {', '.join(paging)} but no PagerDuty routing key "
            f"reaches it: add pagerduty.team_routing_keys.{team} or a default "
            f"pagerduty.routing_key to {config.path}",
        )
        for index, team in enumerate(rules.teams)
        if routing_for_team(team, names) is None
    ]


def _unused_keys(config: Config, rules: RuleSet) -> list[ConfigProblem]:
    pd = config.settings.pagerduty
    paging_tiers = {s.tier for p in rules.severities for s in p.escalation if not s.record_only}
    all_tiers = {s.tier for p in rules.severities for s in p.escalation}
    paging_tiers |= {tier for _, _, tier, record_only in _rule_tiers(rules) if not record_only}
    all_tiers |= {tier for _, _, tier, _ in _rule_tiers(rules)}
    problems = [
        ConfigProblem(
            str(config.path),
            f"pagerduty.team_routing_keys.{team}",
            f"team {team!r} is not declared in {rules.source}",
        )
        for team in pd.team_routing_keys
        if team not in rules.teams
    ]
    for tier in pd.tier_routing_keys:
        if tier in paging_tiers:
            continue
        reason = (
            f"tier {tier!r} is only used by record_only escalation steps or rules in "
            f"{rules.source}: remove the key, or drop record_only from a step that should page"
            if tier in all_tiers
            else f"tier {tier!r} is not used by any escalation step or rule in {rules.source}"
        )
        problems.append(
            ConfigProblem(str(config.path), f"pagerduty.tier_routing_keys.{tier}", reason)
        )
    return problems
