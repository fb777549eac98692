"""Tests of sidecar.routing: which configurations would page nobody, table-driven."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import Config, load_config
from sidecar.routing import routing_for_team, routing_names, routing_problems, routing_warnings
from sidecar.rules import RuleSet, RulesFile, load_rules
from tests.conftest import write_config

RULES = """\
name: routing
severities:
  - name: P0
    title: Critical
    paging: page
    pagerduty_severity: critical
    escalation:
      - {after: 0s, tier: vp, while: unresolved}
      - {after: 10m, tier: scribe, while: unresolved, record_only: true}
  - name: P1
    title: High
    paging: notify
    pagerduty_severity: warning
    escalation:
      - {after: 1h, tier: vp, while: unacknowledged}
  - name: P2
    title: Low
    paging: ticket
    pagerduty_severity: info
teams: [sre, db]
default_severity: P2
default_team: sre
"""

KEY = {"key": "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY00"}

# (description, pagerduty section, expected problems as (file: "rules" or
# "config", location, text the reason contains)).
CASES: list[tuple[str, dict[str, Any], list[tuple[str, str, str]]]] = [
    ("no PagerDuty: warned, not refused", {}, []),
    (
        "a default key alone leaves the paging steps unrouted",
        {"routing_key": KEY["key"]},
        [
            ("rules", "severities[0].escalation[0].tier", "severity P0 escalates to tier 'vp'"),
            ("rules", "severities[1].escalation[0].tier", "severity P1 escalates to tier 'vp'"),
        ],
    ),
    (
        "every paging tier routed; the record_only one needs no key",
        {"routing_key": KEY["key"], "tier_routing_keys": {"vp": KEY}},
        [],
    ),
    (
        "a key for a tier only record_only steps use",
        {"routing_key": KEY["key"], "tier_routing_keys": {"vp": KEY, "scribe": KEY}},
        [("config", "pagerduty.tier_routing_keys.scribe", "only used by record_only")],
    ),
    (
        "tier keys but none for the teams",
        {"tier_routing_keys": {"vp": KEY}},
        [
            ("rules", "teams[0]", "team 'sre' is paged by P0 (page), P1 (notify)"),
            ("rules", "teams[1]", "team 'db' is paged by P0 (page), P1 (notify)"),
        ],
    ),
    (
        "a team key without a default leaves the other team unrouted",
        {"team_routing_keys": {"sre": KEY}, "tier_routing_keys": {"vp": KEY}},
        [("rules", "teams[1]", "add pagerduty.team_routing_keys.db or a default")],
    ),
    (
        "keys for an undeclared team and an unused tier",
        {
            "routing_key": KEY["key"],
            "team_routing_keys": {"ops": KEY},
            "tier_routing_keys": {"vp": KEY, "cto": KEY},
        },
        [
            ("config", "pagerduty.team_routing_keys.ops", "team 'ops' is not declared"),
            ("config", "pagerduty.tier_routing_keys.cto", "not used by any escalation step"),
        ],
    ),
]


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    """The rules above, where ``write_config`` picks them up."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.mark.parametrize(
    ("pagerduty", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_routing_problems(
    config_factory: Callable[..., Config],
    rules_file: Path,
    pagerduty: dict[str, Any],
    expected: list[tuple[str, str, str]],
) -> None:
    config = config_factory({"pagerduty": pagerduty})
    rules = load_rules(rules_file)
    problems = routing_problems(config, rules)
    files = {"rules": str(rules_file), "config": str(config.path)}
    assert [(p.file, p.location) for p in problems] == [
        (files[file], location) for file, location, _ in expected
    ]
    for problem, (_, _, text) in zip(problems, expected, strict=True):
        assert text in problem.reason


def test_an_unrouted_step_points_at_its_line_and_says_how_to_fix_it(
    config_factory: Callable[..., Config], rules_file: Path
) -> None:
    config = config_factory({"pagerduty": {"routing_key": KEY["key"]}})
    first = routing_problems(config, load_rules(rules_file))[0]
    line = RULES.splitlines().index("      - {after: 0s, tier: vp, while: unresolved}") + 1
    assert str(first).startswith(f"{rules_file}:{line}:")
    assert f"add pagerduty.tier_routing_keys.vp to {config.path}" in first.reason.lower()
    assert "record_only: true" in first.reason


def test_without_pagerduty_one_warning_per_tier_that_would_page(
    config_factory: Callable[..., Config], rules_file: Path
) -> None:
    warnings = routing_warnings(config_factory(), load_rules(rules_file))
    assert len(warnings) == 2
    assert warnings[0].startswith("no PagerDuty routing key is configured: incidents of P0, P1")
    # vp is on two ladders: one line naming both; scribe is record_only: none.
    assert warnings[1].startswith("escalation tier 'vp' (P0, P1) would page")
    assert "nobody will be paged for it" in warnings[1]


def test_no_warning_once_pagerduty_is_configured(
    config_factory: Callable[..., Config], rules_file: Path
) -> None:
    config = config_factory({"pagerduty": {"routing_key": KEY["key"]}})
    assert routing_warnings(config, load_rules(rules_file)) == []


def test_problems_need_no_secrets_read(tmp_path: Path, rules_file: Path) -> None:
    # Key files that do not exist: the names the configuration declares decide.
    pagerduty = {
        "routing_key_file": "secrets/absent",
        "tier_routing_keys": {"vp": {"file": "secrets/absent-too"}},
    }
    config = load_config(write_config(tmp_path, {"pagerduty": pagerduty}), read_secrets=False)
    assert routing_names(config.settings.pagerduty) == {"default", "tier:vp"}
    assert routing_problems(config, load_rules(rules_file)) == []


@pytest.mark.parametrize(
    ("team", "names", "expected"),
    [
        ("db", {"team:db", "default"}, "team:db"),
        ("db", {"team:sre", "default"}, "default"),
        ("db", {"team:sre", "tier:vp"}, None),
        ("db", set(), None),
    ],
)
def test_routing_for_team(team: str, names: set[str], expected: str | None) -> None:
    assert routing_for_team(team, names) == expected


def test_rules_without_a_source_still_report(config_factory: Callable[..., Config]) -> None:
    rules = RuleSet(RulesFile.model_validate(yaml.safe_load(RULES)))
    config = config_factory({"pagerduty": {"routing_key": KEY["key"]}})
    problem = routing_problems(config, rules)[0]
    assert (problem.file, problem.line) == ("<rules>", None)


# Escalation rules (plan 000: "Any incident requiring emergency change -> Page
# Change Manager") are held to the same checks as ladder steps.
RULE_TIERS = """\
escalation_rules:
  - {name: emergency-change, match: ['change="emergency"'], tier: change-manager}
  - {name: customers, match_annotations: ['impact="customers"'], tier: comms, record_only: true}
"""

RULE_CASES: list[tuple[str, dict[str, Any], list[tuple[str, str, str]]]] = [
    (
        "a rule's tier without a key is refused at its line",
        {"routing_key": KEY["key"], "tier_routing_keys": {"vp": KEY}},
        [
            (
                "rules",
                "escalation_rules[0].tier",
                "escalation rule 'emergency-change' pages tier 'change-manager'",
            )
        ],
    ),
    (
        "a key for a rule's tier is used; the record_only rule needs none",
        {"routing_key": KEY["key"], "tier_routing_keys": {"vp": KEY, "change-manager": KEY}},
        [],
    ),
    (
        "a key for a tier only a record_only rule uses",
        {
            "routing_key": KEY["key"],
            "tier_routing_keys": {"vp": KEY, "change-manager": KEY, "comms": KEY},
        },
        [("config", "pagerduty.tier_routing_keys.comms", "only used by record_only")],
    ),
]


@pytest.mark.parametrize(
    ("pagerduty", "expected"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES]
)
def test_routing_problems_of_escalation_rules(
    config_factory: Callable[..., Config],
    rules_file: Path,
    pagerduty: dict[str, Any],
    expected: list[tuple[str, str, str]],
) -> None:
    rules_file.write_text(RULES + RULE_TIERS)
    config = config_factory({"pagerduty": pagerduty})
    problems = routing_problems(config, load_rules(rules_file))
    files = {"rules": str(rules_file), "config": str(config.path)}
    assert [(p.file, p.location) for p in problems] == [
        (files[file], location) for file, location, _ in expected
    ]
    for problem, (_, _, text) in zip(problems, expected, strict=True):
        assert text in problem.reason
    if expected and expected[0][0] == "rules":
        line = (RULES + RULE_TIERS).splitlines().index(RULE_TIERS.splitlines()[1]) + 1
        assert problems[0].line == line


def test_without_pagerduty_a_rule_that_would_page_is_warned(
    config_factory: Callable[..., Config], rules_file: Path
) -> None:
    rules_file.write_text(RULES + RULE_TIERS)
    warnings = routing_warnings(config_factory(), load_rules(rules_file))
    assert warnings[-1].startswith(
        "escalation tier 'change-manager' (rule emergency-change) would page"
    )
    assert not any("'comms'" in w for w in warnings)  # record_only
