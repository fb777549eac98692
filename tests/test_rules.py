"""Tests of sidecar.rules: loading, classification, the severity floor, every bad file."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from sidecar.errors import ConfigError
from sidecar.rules import (
    DROP,
    Classification,
    RuleSet,
    RulesFile,
    load_rules,
    parse_number,
)

BASE = """\
name: test
description: a small plan
severities:
  - name: P0
    title: Critical
    paging: page
    pagerduty_severity: critical
    sla: {detect: 5m, acknowledge: 5m, update: 15m, resolve: 1h, postmortem: 24h}
    escalation:
      - {after: 0s, tier: vp, while: unresolved}
      - {after: 15m, tier: lead, while: unacknowledged}
  - name: P1
    title: High
    paging: page
    pagerduty_severity: error
    sla: {acknowledge: 15m, resolve: 4h}
  - name: P2
    title: Medium
    paging: notify
    pagerduty_severity: warning
teams: [api, db, ops]
default_severity: P2
default_team: ops
severity_rules:
  - name: outage
    match: ['alertname="ServiceDown"', 'scope="total"']
    severity: P0
  - name: errors-high
    when: [{annotation: error_rate_percent, above: 10}]
    severity: P1
  - name: errors-band
    match: ['{alertname=~"High.*", env!="dev"}']
    when: [{label: bucket, at_least: 5, below: 10}]
    severity: P1
  - name: any-critical
    match: ['severity="critical"']
    severity: P0
ownership_rules:
  - name: api
    match: ['service=~"api|gateway"']
    team: api
  - name: db
    match: ['service="postgres"']
    team: db
"""


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    return load_rules(write(tmp_path, BASE))


def test_loads_the_plan(rules: RuleSet) -> None:
    assert rules.name == "test"
    assert rules.description == "a small plan"
    assert [p.name for p in rules.severities] == ["P0", "P1", "P2"]
    assert rules.teams == ("api", "db", "ops")
    assert (rules.default_severity, rules.default_team) == ("P2", "ops")
    p0 = rules.policy("P0")
    assert p0.title == "Critical"
    assert p0.paging == "page"
    assert p0.pagerduty_severity == "critical"
    assert p0.sla.resolve == timedelta(hours=1)
    assert [(s.after, s.tier, s.while_) for s in p0.escalation] == [
        (timedelta(0), "vp", "unresolved"),
        (timedelta(minutes=15), "lead", "unacknowledged"),
    ]
    assert not any(s.record_only for s in p0.escalation)  # a step pages unless declared
    p1 = rules.policy("P1")
    assert (p1.sla.detect, p1.sla.update, p1.sla.postmortem) == (None, None, None)
    assert rules.policy("P2").escalation == []


def test_rank_and_policy(rules: RuleSet) -> None:
    assert [rules.rank(s) for s in ("P0", "P1", "P2")] == [0, 1, 2]
    with pytest.raises(KeyError):
        rules.rank("P9")
    with pytest.raises(KeyError):
        rules.policy("P9")


def test_sla_thresholds_are_sorted_unique_seconds(rules: RuleSet) -> None:
    assert rules.sla_thresholds() == [300.0, 900.0, 3600.0, 14400.0, 86400.0]


# (labels, annotations, expected classification)
CLASSIFY = [
    ({}, {}, Classification("P2", "ops", "default", "default")),
    (
        {"alertname": "ServiceDown", "scope": "total", "service": "api"},
        {},
        Classification("P0", "api", "outage", "api"),
    ),
    (
        {"alertname": "ServiceDown", "scope": "partial"},
        {},
        Classification("P2", "ops", "default", "default"),
    ),
    # First match wins: an outage that is also critical stays on the first rule.
    (
        {"alertname": "ServiceDown", "scope": "total", "severity": "critical"},
        {},
        Classification("P0", "ops", "outage", "default"),
    ),
    (
        {"alertname": "HighErrors", "severity": "critical", "service": "gateway"},
        {"error_rate_percent": "12%"},
        Classification("P1", "api", "errors-high", "api"),
    ),
    (
        {"alertname": "HighErrors", "severity": "critical"},
        {"error_rate_percent": "10"},
        Classification("P0", "ops", "any-critical", "default"),
    ),
    # Numeric condition on a label, together with matchers from one {...} line.
    (
        {"alertname": "HighErrors", "bucket": "5"},
        {},
        Classification("P1", "ops", "errors-band", "default"),
    ),
    (
        {"alertname": "HighErrors", "bucket": "10"},
        {},
        Classification("P2", "ops", "default", "default"),
    ),
    (
        {"alertname": "HighErrors", "bucket": "7", "env": "dev"},
        {},
        Classification("P2", "ops", "default", "default"),
    ),
    # The value of a condition on a label is read from labels, not annotations.
    (
        {"alertname": "HighErrors"},
        {"bucket": "7"},
        Classification("P2", "ops", "default", "default"),
    ),
    ({"service": "postgres"}, {}, Classification("P2", "db", "default", "db")),
    ({"service": "api2"}, {}, Classification("P2", "ops", "default", "default")),
]


@pytest.mark.parametrize(("labels", "annotations", "expected"), CLASSIFY)
def test_classify(
    rules: RuleSet, labels: dict[str, str], annotations: dict[str, str], expected: Classification
) -> None:
    assert rules.classify(labels, annotations) == expected
    # Asked again (now from the cache), and with labels no rule reads.
    assert rules.classify(labels, annotations) == expected
    noisy = {**labels, "instance": "10.0.0.1:9090", "pod": "api-7d9f"}
    assert rules.classify(noisy, {**annotations, "summary": "x"}) == expected


def test_cache_distinguishes_missing_and_empty_annotation(tmp_path: Path) -> None:
    rules = load_rules(
        write(
            tmp_path,
            BASE.replace(
                "  - name: any-critical\n",
                "  - name: below-five\n"
                "    when: [{annotation: error_rate_percent, below: 5}]\n"
                "    severity: P1\n"
                "  - name: any-critical\n",
            ),
        )
    )
    assert rules.classify({}, {"error_rate_percent": "1"}).severity_rule == "below-five"
    assert rules.classify({}, {}).severity_rule == "default"
    assert rules.classify({}, {"error_rate_percent": ""}).severity_rule == "default"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12", 12.0),
        ("12.5", 12.5),
        (" 12.5 ", 12.5),
        ("12.5%", 12.5),
        ("12 %", 12.0),
        ("11x", 11.0),
        ("11X", 11.0),
        ("-3", -3.0),
        (".5", 0.5),
        ("1e2", 100.0),
        (None, None),
        ("", None),
        ("%", None),
        ("abc", None),
        ("12ms", None),
        ("nan", None),
        ("inf", None),
        ("1e999", None),
        ("1_000", None),
        ("0x10", None),
    ],
)
def test_parse_number(raw: str | None, expected: float | None) -> None:
    assert parse_number(raw) == expected


@pytest.mark.parametrize(
    ("bounds", "value", "holds"),
    [
        ("above: 10", "10", False),
        ("above: 10", "10.01", True),
        ("at_least: 10", "10", True),
        ("at_least: 10", "9.99", False),
        ("below: 5", "5", False),
        ("below: 5", "4.9", True),
        ("at_most: 5", "5", True),
        ("at_most: 5", "5.1", False),
        ("{at_least: 5, at_most: 10}", "7x", True),
        ("{at_least: 5, at_most: 10}", "11x", False),
        ("above: 0", "not a number", False),
        ("below: 100", None, False),
    ],
)
def test_numeric_condition_bounds(
    tmp_path: Path, bounds: str, value: str | None, holds: bool
) -> None:
    if bounds.startswith("{"):
        condition = "{annotation: v, " + bounds[1:]
    else:
        condition = "{annotation: v, " + bounds + "}"
    text = BASE.replace(
        "severity_rules:\n",
        f"severity_rules:\n  - name: cond\n    when: [{condition}]\n    severity: P0\n",
    )
    rules = load_rules(write(tmp_path, text))
    annotations = {} if value is None else {"v": value}
    assert (rules.classify({}, annotations).severity_rule == "cond") is holds


def test_empty_rule_lists_use_defaults(tmp_path: Path) -> None:
    text = BASE[: BASE.index("severity_rules:")]
    rules = load_rules(write(tmp_path, text))
    assert rules.classify({"alertname": "X"}, {}) == Classification(
        "P2", "ops", "default", "default"
    )


def test_explain_names_failing_matchers(rules: RuleSet) -> None:
    lines = rules.explain({"alertname": "ServiceDown"}, {})
    assert 'severity rule outage -> P0: no: scope="total"' in lines
    assert "severity rule errors-high -> P1: no: annotation error_rate_percent > 10" in lines
    assert 'team rule api -> api: no: service=~"api|gateway"' in lines
    assert any(line.startswith("severity rule errors-band") for line in lines)
    ok = rules.explain({"alertname": "ServiceDown", "scope": "total"}, {})
    assert "severity rule outage -> P0: matches" in ok


# ---------------------------------------------------------------------------
# The severity floor and dropped alerts.
# ---------------------------------------------------------------------------

FLOOR = BASE.replace(
    "severity_rules:\n",
    """\
severity_floor: {critical: P1, warning: P2, page: P1}
severity_rules:
  - {name: drop-none, match: ['severity="none"'], drop: true}
  - {name: drop-flaky, match: ['alertname="Flaky"'], drop: true}
  - {name: drop-test, match: ['env="test"'], drop: true, below_floor: true}
  - {name: staging, match: ['env="staging"'], severity: P2, below_floor: true}
  - {name: noisy, match: ['alertname="Noisy"'], severity: P2}
""",
)


def floored(
    severity: str,
    rule: str,
    floor: str | None,
    *,
    raised_from: str | None = None,
    below_floor: bool = False,
    dropped: bool = False,
) -> Classification:
    """A classification of the FLOOR file's default team."""
    return Classification(
        severity, "ops", rule, "default", floor, raised_from, below_floor, dropped
    )


# (labels, expected classification): the result is the higher of rule and floor.
FLOOR_CASES = [
    # A rule below the floor is raised to it, and says from what.
    (
        {"alertname": "Noisy", "severity": "critical"},
        floored("P1", "noisy", "P1", raised_from="P2"),
    ),
    ({"alertname": "Noisy", "severity": "warning"}, floored("P2", "noisy", "P2")),
    # No label, or a value the floor does not list: no floor.
    ({"alertname": "Noisy"}, floored("P2", "noisy", None)),
    ({"alertname": "Noisy", "severity": "Critical"}, floored("P2", "noisy", None)),
    # A rule above the floor keeps its severity.
    (
        {"alertname": "ServiceDown", "scope": "total", "severity": "warning"},
        floored("P0", "outage", "P2"),
    ),
    ({"severity": "critical"}, floored("P0", "any-critical", "P1")),
    # The default is raised like any rule.
    ({"severity": "page"}, floored("P1", "default", "P1", raised_from="P2")),
    ({}, floored("P2", "default", None)),
    # Explicitly below the floor.
    ({"env": "staging", "severity": "critical"}, floored("P2", "staging", "P1", below_floor=True)),
    ({"env": "staging", "severity": "warning"}, floored("P2", "staging", "P2")),
    # Dropped: by a rule; a floor overrules a drop unless the rule says below_floor.
    ({"severity": "none"}, floored("", "drop-none", None, dropped=True)),
    ({"alertname": "Flaky"}, floored("", "drop-flaky", None, dropped=True)),
    (
        {"alertname": "Flaky", "severity": "critical"},
        floored("P1", "drop-flaky", "P1", raised_from=DROP),
    ),
    (
        {"env": "test", "severity": "critical"},
        floored("", "drop-test", "P1", below_floor=True, dropped=True),
    ),
]


@pytest.mark.parametrize(("labels", "expected"), FLOOR_CASES)
def test_severity_floor(tmp_path: Path, labels: dict[str, str], expected: Classification) -> None:
    rules = load_rules(write(tmp_path, FLOOR))
    assert rules.classify(labels, {}) == expected
    assert rules.classify({**labels, "pod": "x"}, {}) == expected  # from the cache


def test_floor_reads_the_severity_label_even_when_no_rule_does(tmp_path: Path) -> None:
    """The cache key must include the label the floor reads."""
    text = BASE[: BASE.index("severity_rules:")] + "severity_floor: {critical: P0}\n"
    rules = load_rules(write(tmp_path, text))
    assert rules.classify({}, {}).severity == "P2"
    assert rules.classify({"severity": "critical"}, {}) == Classification(
        "P0", "ops", "default", "default", "P0", "P2"
    )
    assert rules.classify({}, {}).severity == "P2"


def test_unmatched_names_the_rule_lists_the_defaults_decided(rules: RuleSet) -> None:
    assert rules.classify({}, {}).unmatched == ("severity", "ownership")
    assert rules.classify({"service": "api"}, {}).unmatched == ("severity",)
    assert rules.classify({"severity": "critical"}, {}).unmatched == ("ownership",)
    assert rules.classify({"severity": "critical", "service": "api"}, {}).unmatched == ()


def test_explain_shows_the_floor_and_what_a_rule_may_do(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, FLOOR))
    lines = rules.explain({"alertname": "Noisy", "severity": "critical"}, {})
    assert 'severity floor severity="critical" -> P1' in lines
    assert "severity rule noisy -> P2: matches" in lines
    assert 'severity rule staging -> P2 (below_floor): no: env="staging"' in lines
    assert 'severity rule drop-none -> drop: no: severity="none"' in lines
    assert 'severity floor severity="": none' in rules.explain({}, {})


def test_ruleset_rejects_undeclared_names_when_built_directly() -> None:
    spec = RulesFile.model_validate(
        {
            "name": "x",
            "severities": [
                {"name": "P0", "title": "t", "paging": "page", "pagerduty_severity": "critical"}
            ],
            "teams": ["a"],
            "default_severity": "P0",
            "default_team": "b",
        }
    )
    with pytest.raises(ValueError, match="default_team: team 'b' is not declared in teams"):
        RuleSet(spec)


# ---------------------------------------------------------------------------
# Invalid files: every problem reported at once, each with file, line and reason.
# ---------------------------------------------------------------------------

# (description, replacements applied to BASE, expected problems as (text of the
# line the problem must point at, start of "location: reason")).
INVALID = [
    (
        "unknown keys",
        [
            ("description: a small plan\n", "description: a small plan\ncolour: red\n"),
            ("    paging: notify\n", "    paging: notify\n    urgent: true\n"),
        ],
        [
            ("colour: red", "colour: Extra inputs are not permitted"),
            ("urgent: true", "severities[2].urgent: Extra inputs are not permitted"),
        ],
    ),
    (
        "bad durations",
        [("resolve: 4h}", "resolve: 4 hours}"), ("after: 15m", "after: -1m")],
        [
            ("after: -1m", "severities[0].escalation[1].after: invalid duration '-1m'"),
            ("4 hours", "severities[1].sla.resolve: invalid duration '4 hours'"),
        ],
    ),
    (
        "bad matcher syntax points at the list item",
        [("'scope=\"total\"'", "'scope=\"total'")],
        [
            (
                "'scope=\"total'",
                'severity_rules[0].match[1]: matcher value contains unescaped double quote: "total',
            )
        ],
    ),
    (
        "bad regex",
        [("'service=~\"api|gateway\"'", "'service=~\"api(\"'")],
        [
            (
                "api(",
                "ownership_rules[0].match[0]: invalid regular expression 'api(': missing closing )",
            )
        ],
    ),
    (
        "undeclared severity and team",
        [
            ("    severity: P1\n  - name: errors-band", "    severity: P7\n  - name: errors-band"),
            ("    team: db\n", "    team: dba\n"),
        ],
        [
            (
                "severity: P7",
                "severity_rules[1].severity: severity 'P7' is not declared in severities",
            ),
            ("team: dba", "ownership_rules[1].team: team 'dba' is not declared in teams"),
        ],
    ),
    (
        "duplicates",
        [
            ("  - name: P2\n", "  - name: P1  # again\n"),
            ("teams: [api, db, ops]", "teams: [api, db, api, ops]"),
            ("  - name: any-critical", "  - name: outage  # again"),
            ("  - name: db\n", "  - name: api  # again\n"),
        ],
        [
            ("P1  # again", "severities[2].name: duplicate name 'P1', first at severities[1]"),
            ("teams: [", "teams[2]: duplicate name 'api', first at teams[0]"),
            ("default_severity: P2", "default_severity: severity 'P2' is not declared"),
            (
                "outage  # again",
                "severity_rules[3].name: duplicate rule name 'outage', first at severity_rules[0]",
            ),
            (
                "api  # again",
                "ownership_rules[1].name: duplicate rule name 'api', first at ownership_rules[0]",
            ),
        ],
    ),
    (
        "undeclared defaults",
        [
            ("default_severity: P2", "default_severity: P5"),
            ("default_team: ops", "default_team: sre"),
        ],
        [
            (
                "default_severity: P5",
                "default_severity: severity 'P5' is not declared in severities",
            ),
            ("default_team: sre", "default_team: team 'sre' is not declared in teams"),
        ],
    ),
    (
        "numeric condition with no source, and with two",
        [
            ("{annotation: error_rate_percent, above: 10}", "{above: 10}"),
            (
                "{label: bucket, at_least: 5, below: 10}",
                "{label: bucket, annotation: b, at_least: 5}",
            ),
        ],
        [
            ("{above: 10}", "severity_rules[1].when[0]: give exactly one of label or annotation"),
            ("annotation: b", "severity_rules[2].when[0]: give exactly one of label or annotation"),
        ],
    ),
    (
        "numeric condition without bounds, and a bad bound",
        [
            ("{annotation: error_rate_percent, above: 10}", "{annotation: error_rate_percent}"),
            ("at_least: 5, below: 10}", "at_least: five, below: 10}"),
        ],
        [
            (
                "{annotation: error_rate_percent}",
                "severity_rules[1].when[0]: give at least one of above, at_least, below, at_most",
            ),
            (
                "at_least: five",
                "severity_rules[2].when[0].at_least: Input should be a valid number",
            ),
        ],
    ),
    (
        "bad enums and names",
        [
            ("paging: notify", "paging: email"),
            ("while: unresolved", "while: forever"),
            ("tier: lead", "tier: 'lead engineer'"),
            ("teams: [api, db, ops]", "teams: [api, db, 'o p s']"),
        ],
        [
            (
                "while: forever",
                "severities[0].escalation[0].while: Input should be 'unacknowledged' or",
            ),
            ("lead engineer", "severities[0].escalation[1].tier: invalid name 'lead engineer'"),
            (
                "paging: email",
                "severities[2].paging: Input should be 'page', 'notify', 'ticket' or",
            ),
            ("'o p s'", "teams[2]: invalid name 'o p s'"),
            ("default_team: ops", "default_team: team 'ops' is not declared in teams"),
        ],
    ),
    (
        "record_only is a real boolean, never a truthy string",
        [("tier: vp, while: unresolved}", "tier: vp, while: unresolved, record_only: 'yes'}")],
        [("record_only: 'yes'", "severities[0].escalation[0].record_only: Input should be a")],
    ),
    (
        "missing required keys point at the enclosing mapping",
        [("    pagerduty_severity: error\n", ""), ("default_team: ops\n", "")],
        [
            ("name: test", "default_team: Field required"),
            ("  - name: P1", "severities[1].pagerduty_severity: Field required"),
        ],
    ),
    (
        "severity floor: undeclared severity, and a critical floor that does not page",
        [
            (
                "default_team: ops\n",
                "default_team: ops\nseverity_floor:\n  critical: P2\n  warning: P7\n",
            )
        ],
        [
            (
                "critical: P2",
                "severity_floor.critical: severity 'P2' does not page (paging: notify): "
                "the floor of a critical alert must be a severity whose paging is page",
            ),
            ("warning: P7", "severity_floor.warning: severity 'P7' is not declared in severities"),
        ],
    ),
    (
        "severity rule with both severity and drop, with neither, and a bad below_floor",
        [
            (
                "    severity: P0\n  - name: errors-high",
                "    severity: P0\n    drop: true\n  - name: errors-high",
            ),
            (
                "    severity: P1\n  - name: errors-band",
                "    below_floor: true\n  - name: errors-band",
            ),
            ("  - name: any-critical\n", "  - name: any-critical\n    below_floor: sometimes\n"),
        ],
        [
            ("  - name: outage", "severity_rules[0]: give either severity or drop: true"),
            ("  - name: errors-high", "severity_rules[1]: give either severity or drop: true"),
            (
                "below_floor: sometimes",
                "severity_rules[3].below_floor: Input should be a valid boolean",
            ),
        ],
    ),
    (
        "the rule name default is reserved",
        [("  - name: db\n", "  - name: default\n")],
        [("name: default", "ownership_rules[1].name: the rule name 'default' is reserved")],
    ),
    (
        "wrong types",
        [
            ("teams: [api, db, ops]", "teams: api"),
            ("match: ['alertname=\"ServiceDown\"', 'scope=\"total\"']", "match: x"),
        ],
        [
            ("teams: api", "teams: Input should be a valid list"),
            ("match: x", "severity_rules[0].match: Input should be a valid list"),
        ],
    ),
]


def _line_of(text: str, needle: str) -> int:
    index = text.index(needle)
    return text.count("\n", 0, index) + 1


@pytest.mark.parametrize(
    ("replacements", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_files_report_every_problem(
    tmp_path: Path, replacements: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    text = BASE
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


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("name: [unclosed\n", 2, "invalid YAML"),
        ("- a\n- b\n", 1, "Input should be a valid dictionary"),
        ("", None, "name: Field required"),
    ],
)
def test_unusable_documents(tmp_path: Path, text: str, line: int | None, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    first = info.value.problems[0]
    assert first.file == str(path)
    assert first.line == line
    assert reason in str(first)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_rules(tmp_path / "absent.yaml")


ESCALATING = (
    BASE
    + """escalation_rules:
  - {name: emergency, match: ['change="emergency"'], tier: change}
  - name: customers
    match_annotations: ['impact=~"customers?"']
    tier: comms
    record_only: true
  - name: absent-env
    match: ['env=""', 'alertname="Disk"']
    tier: ops
  - name: hot
    when: [{label: bucket, above: 90}, {annotation: error_rate_percent, at_least: 50}]
    tier: lead
"""
)

ESCALATION_CASES = [
    ({"change": "emergency"}, {}, [("emergency", "change", False)]),
    ({"change": "planned"}, {}, []),
    ({}, {"impact": "customer"}, [("customers", "comms", True)]),
    (
        {"change": "emergency"},
        {"impact": "customers"},
        [
            ("emergency", "change", False),
            ("customers", "comms", True),
        ],
    ),
    # A missing label matches as the empty string; a present empty-looking one does not.
    ({"alertname": "Disk"}, {}, [("absent-env", "ops", False)]),
    ({"alertname": "Disk", "env": "prod"}, {}, []),
    # A condition needs its value, and a number: a missing one never holds.
    ({"bucket": "95"}, {"error_rate_percent": "50"}, [("hot", "lead", False)]),
    ({"bucket": "95"}, {}, []),
    ({}, {"error_rate_percent": "80"}, []),
    ({"bucket": "x"}, {"error_rate_percent": "80"}, []),
]


@pytest.mark.parametrize(("labels", "annotations", "expected"), ESCALATION_CASES)
def test_escalation_rules_match_labels_annotations_and_conditions(
    tmp_path: Path,
    labels: dict[str, str],
    annotations: dict[str, str],
    expected: list[tuple[str, str, bool]],
) -> None:
    rules = load_rules(write(tmp_path, ESCALATING))
    hits = [(h.rule, h.tier, h.record_only) for h in rules.escalations(labels, annotations)]
    assert hits == expected
    # Again with labels and annotations no rule reads: answered from the cache,
    # which must not confuse it with the first answer of another alert.
    noisy = rules.escalations({**labels, "pod": "p-1"}, {**annotations, "summary": "s"})
    assert [(h.rule, h.tier, h.record_only) for h in noisy] == expected


def test_escalations_each_asks_once_per_distinct_alert_in_order(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, ESCALATING))
    alerts = [(labels, notes) for labels, notes, _ in ESCALATION_CASES]
    # Each case twice, the second time with labels no rule reads: the same answer.
    alerts += [({**labels, "pod": "p-2"}, notes) for labels, notes in alerts]
    each = rules.escalations_each(alerts)
    expected: list[tuple[object, ...]] = []
    for labels, notes in alerts:
        hits = rules.escalations(labels, notes)
        if hits and hits not in expected:
            expected.append(hits)
    assert each == expected
    assert len(each) < len([a for a in alerts if rules.escalations(*a)])
