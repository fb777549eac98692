"""The shipped Prometheus alert rules, checked by the real promtool.

``promtool check rules`` loads them, ``promtool test rules`` runs the unit tests in
rules/prometheus/tests/, every alert has a firing and a quiet case, and breaking any one alert's
expression makes the unit tests fail (so none of them passes by accident).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.binaries import require_binary

REPO = Path(__file__).resolve().parent.parent
RULES_LINK = REPO / "rules" / "prometheus" / "incident-sla-alerts.yaml"
TESTS_DIR = REPO / "rules" / "prometheus" / "tests"
# Gauges of state shared by every replica (the store): combined with max, never summed.
SHARED_GAUGES = (
    "incident_sla_open_incidents",
    "incident_sla_open_breached_incidents",
    "incident_sla_pagerduty_outbox_pending",
)
# Metrics whose `severity` label is the incident severity (P0..P4), not the alert's urgency.
INCIDENT_SEVERITY_METRICS = re.compile(
    r"incident_sla_(incidents_total|open_incidents|open_breached_incidents|breaches_total|"
    r"escalations_total|time_to_\w+_seconds)"
)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool and capture its output."""
    binary = require_binary("promtool")
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped file."""
    doc = yaml.safe_load(RULES_LINK.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def unit_test_files() -> list[Path]:
    """The promtool unit-test files."""
    files = sorted(TESTS_DIR.glob("*.yaml"))
    assert files, f"no promtool unit tests in {TESTS_DIR}"
    return files


ALERTS = [rule["alert"] for rule in alert_rules()]


def test_promtool_check_rules() -> None:
    """Prometheus loads the rule file."""
    result = promtool("check", "rules", str(RULES_LINK))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """``promtool test rules`` passes."""
    result = promtool("test", "rules", *map(str, unit_test_files()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_alerts_are_shipped() -> None:
    """The alerts the issue asks for are all there."""
    assert set(ALERTS) == {
        "IncidentSLABreached",
        "IncidentSLAAcknowledgmentOverdue",
        "IncidentSLAComplianceBelowTarget",
        "IncidentSLAPagerDutyOutboxStuck",
        "IncidentSLAPagerDutyEventsRejected",
        "IncidentSLAWebhookAuthFailures",
        "IncidentSLASidecarDown",
        "IncidentSLASidecarAbsent",
    }


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert is unit-tested both ways."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in unit_test_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(ALERTS) - firing == set()
    assert set(ALERTS) - quiet == set()


@pytest.mark.parametrize("rule", alert_rules(), ids=ALERTS)
def test_alert_annotations_and_labels(rule: dict[str, Any]) -> None:
    """Summary, description and a runbook link that exists; a conventional severity."""
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    # The sidecar serves the runbook (tests/test_runbooks.py follows every link).
    assert annotations["runbook_url"].endswith(f"/runbooks/{rule['alert']}")
    assert (REPO / "docs" / "runbooks" / f"{rule['alert']}.md").is_file()
    assert rule["labels"]["severity"] in {"warning", "critical"}
    # The incident severity survives the alert's own severity label.
    if INCIDENT_SEVERITY_METRICS.search(rule["expr"]) and "by (severity" in rule["expr"]:
        assert '"incident_severity", "$1", "severity"' in rule["expr"]


@pytest.mark.parametrize("rule", alert_rules(), ids=ALERTS)
def test_shared_gauges_are_not_summed_across_replicas(rule: dict[str, Any]) -> None:
    """Gauges of shared state are combined with max, so N replicas do not count N times."""
    expr = re.sub(r"\s+", " ", rule["expr"])
    for gauge in SHARED_GAUGES:
        for match in re.finditer(rf"{gauge}\b", expr):
            before = expr[: match.start()]
            assert re.search(r"max(?: by \([\w, ]+\))? ?\($", before), (gauge, expr)


@pytest.mark.parametrize("alert", ALERTS)
def test_unit_tests_catch_a_broken_alert(alert: str, tmp_path: Path) -> None:
    """Replacing one alert's expression with one that never fires fails the unit tests."""
    doc = yaml.safe_load(RULES_LINK.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(1) == 0"
    broken_dir = tmp_path / "prometheus"
    (broken_dir / "tests").mkdir(parents=True)
    (broken_dir / RULES_LINK.name).write_text(yaml.safe_dump(doc), encoding="utf-8")
    copies = []
    for path in unit_test_files():
        copies.append(shutil.copy(path, broken_dir / "tests" / path.name))
    result = promtool("test", "rules", *map(str, copies))
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr
