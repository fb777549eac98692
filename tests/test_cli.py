"""The command line: ``check-config``, ``test-rules`` and ``serve``, in-process and as processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.cli import main
from tests.conftest import DATA, REPO, write_config
from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess
from tests.support.readers import write_users_file

PROBLEM_LINE = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<loc>[\w.\[\]]+): (?P<reason>.+)$"
)
CONSOLE_SCRIPT = Path(sys.executable).parent / "incident-sla-sidecar"


def example_config(
    tmp_path: Path, *, preset: str = "llm-marketplace", secrets: bool = True
) -> Path:
    """The repo's config.example.yaml in ``tmp_path``, with the presets and its secret files."""
    text = (REPO / "config.example.yaml").read_text()
    if preset != "llm-marketplace":
        marker = "file: rules/llm-marketplace.yaml"
        assert marker in text
        text = text.replace(marker, f"file: rules/{preset}.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    if secrets:
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "webhook-token").write_text("cli-webhook-token\n")
        (tmp_path / "secrets" / "api-token").write_text("cli-api-token\n")
        write_users_file(tmp_path / "secrets" / "web-config.yml")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run the CLI in-process: exit code, stdout, stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def problem_lines(err: str) -> list[re.Match[str]]:
    """The ``file:line:col: location: reason`` lines of an error output."""
    return [m for line in err.splitlines() if (m := PROBLEM_LINE.match(line))]


# -- check-config ---------------------------------------------------------


def test_check_config_accepts_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = example_config(tmp_path)
    code, out, err = run(capsys, "check-config", "--config", path)
    assert code == 0, err
    assert f"{path}: OK" in out
    assert "preset 'llm-marketplace'" in out
    assert "severities P0, P1, P2, P3" in out
    assert "store sqlite" in out
    assert "cli-webhook-token" not in out + err
    assert "insecure_disable_auth" not in out
    assert "reads: the API token, 1 user(s) of secrets/web-config.yml" in out
    # The example configures no PagerDuty: it says so, not refuses.
    assert "WARNING: no PagerDuty routing key is configured" in out


def test_check_config_accepts_the_example_with_the_other_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = example_config(tmp_path, preset="schema-registry")
    code, out, err = run(capsys, "check-config", "--config", path)
    assert code == 0, err
    assert "preset 'schema-registry'" in out
    assert "severities P0, P1, P2, P3, P4" in out


def test_check_config_warns_when_auth_is_disabled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"server": {"insecure_disable_auth": True}})
    code, out, _ = run(capsys, "check-config", "--config", path)
    assert code == 0
    assert "WARNING" in out and "insecure_disable_auth" in out
    assert "read every incident" in out


def test_check_config_says_when_a_proxy_header_is_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"server": {"trusted_user_header": "X-Auth-Request-User"}})
    code, out, _ = run(capsys, "check-config", "--config", path)
    assert code == 0
    assert "the proxy's X-Auth-Request-User header (trusted)" in out


def test_check_config_reports_missing_secret_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = example_config(tmp_path, secrets=False)
    code, out, err = run(capsys, "check-config", "--config", path)
    assert code == 1
    assert out == ""
    assert f"{path}: server.webhook_token_file: cannot read secret file" in err
    assert f"{path}: server.api_token_file: cannot read secret file" in err
    assert f"{tmp_path / 'secrets' / 'web-config.yml'}: cannot read file" in err
    assert "3 problem(s) found" in err


BAD_CONFIG = """
server:
  listen: nowhere
  webhook_token: a
  api_token: b
store:
  url: mysql://db
rules:
  file: rules.yaml
logging:
  colour: true
"""


def test_check_config_prints_every_problem_with_file_line_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(DATA / "rules-mini.yaml", tmp_path / "rules.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(BAD_CONFIG).lstrip())
    code, out, err = run(capsys, "check-config", "--config", path)
    assert code == 1
    assert out == ""
    found = {(m["file"], m["line"], m["col"], m["loc"]) for m in problem_lines(err)}
    assert found == {
        (str(path), "2", "3", "server.listen"),
        (str(path), "6", "3", "store.url"),
        (str(path), "10", "3", "logging.colour"),
    }
    assert "3 problem(s) found" in err


BAD_RULES = """
name: broken
severities:
  - {name: P0, title: Critical, paging: page, pagerduty_severity: critical}
  - {name: P1, title: High, paging: sometimes, pagerduty_severity: error}
teams: [sre]
default_severity: P0
default_team: sre
severity_rules:
  - {name: a, match: ['severity="critical"'], severity: P9}
  - {name: b, match: ['severity=~"("'], severity: P1}
"""


def test_check_config_reports_a_bad_rules_file_by_its_own_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent(BAD_RULES).lstrip())
    code, out, err = run(capsys, "check-config", "--config", path)
    assert code == 1
    assert out == ""
    lines = problem_lines(err)
    assert lines, err
    assert {m["file"] for m in lines} == {str(rules)}
    by_loc = {m["loc"]: m for m in lines}
    assert by_loc["severities[1].paging"]["line"] == "4"
    assert by_loc["severity_rules[0].severity"]["line"] == "9"
    assert "'P9' is not declared" in by_loc["severity_rules[0].severity"]["reason"]
    assert "severity_rules[1].match[0]" in by_loc


def test_check_config_reports_problems_of_both_files_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A config problem unrelated to the rules must not hide the rules file's problems.
    path = write_config(tmp_path, {"logging": {"colour": True}})
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent(BAD_RULES).lstrip())
    code, _, err = run(capsys, "check-config", "--config", path)
    assert code == 1
    files = {m["file"] for m in problem_lines(err)}
    assert files == {str(path), str(rules)}, err


def test_check_config_reports_invalid_yaml_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  listen: [127.0.0.1\nrules: {file: rules.yaml}\n")
    code, _, err = run(capsys, "check-config", "--config", path)
    assert code == 1
    assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: invalid YAML", err, re.M), err


def test_check_config_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "check-config", "--config", tmp_path / "absent.yaml")
    assert code == 1
    assert "absent.yaml" in err and "cannot read" in err


def test_check_config_reports_a_missing_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"rules": {"file": "nope.yaml"}})
    code, _, err = run(capsys, "check-config", "--config", path)
    assert code == 1
    assert str(tmp_path / "nope.yaml") in err


# -- test-rules -----------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "args", "severity", "severity_rule", "team", "team_rule"),
    [
        (
            "llm-marketplace",
            ["alertname=PublishingDown", "scope=total", "service=publishing"],
            "P0", "p0-core-service-down", "publishing", "publishing-service",
        ),
        (
            "llm-marketplace",
            ["alertname=Intrusion", "category=security-breach", "environment=staging"],
            "P0", "p0-security", "security", "security-incidents",
        ),
        (
            "llm-marketplace",
            ["alertname=Whatever"],
            "P3", "default", "devops", "default",
        ),
        (
            "schema-registry",
            ["alertname=HighErrorRate", "team=database", "--annotation", "error_rate_percent=12"],
            "P1", "p1-error-rate", "database", "team-label-database",
        ),
        (
            "schema-registry",
            ["alertname=HighErrorRate", "--annotation", "error_rate_percent=7"],
            "P2", "p2-error-rate", "sre", "default",
        ),
        (
            "schema-registry",
            ["alertname=HighErrorRate"],  # without the annotation no numeric rule can hold
            "P3", "default", "sre", "default",
        ),
    ],
)  # fmt: skip
def test_test_rules_prints_severity_team_and_matching_rules(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    preset: str,
    args: list[str],
    severity: str,
    severity_rule: str,
    team: str,
    team_rule: str,
) -> None:
    # test-rules needs no secrets: the example's token files are left out.
    path = example_config(tmp_path, preset=preset, secrets=False)
    code, out, err = run(capsys, "test-rules", "--config", path, *args)
    assert code == 0, err
    assert re.search(
        rf"^severity:\s+{severity}\s+\(rule: {re.escape(severity_rule)}\)$", out, re.M
    ), out
    assert re.search(rf"^team:\s+{team}\s+\(rule: {re.escape(team_rule)}\)$", out, re.M), out


def test_test_rules_shows_ladder_watch_and_rule_escalations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = example_config(tmp_path / "a", preset="llm-marketplace", secrets=False)
    down = ["alertname=ServiceDown", "service=publishing", "scope=total"]
    code, out, err = run(capsys, "test-rules", "--config", path, *down, "change=emergency")
    assert code == 0, err
    assert "ladder:   0s vp-engineering (while unresolved)\n" in out
    assert "watch:    1h after resolution (a re-fire reopens)\n" in out
    # Plan 000: "Any incident requiring emergency change -> Page Change Manager".
    assert "escalate: change-manager  (rule: emergency-change)\n" in out
    code, out, _ = run(capsys, "test-rules", "--config", path, *down, "change=planned")
    assert "escalate: none  (no escalation rule matches)\n" in out
    path = example_config(tmp_path / "b", preset="schema-registry", secrets=False)
    code, out, _ = run(capsys, "test-rules", "--config", path, "alertname=X", "category=data-loss")
    assert "ladder:   0s on-call-sre (while unacknowledged), 0s engineering-manager (while " in out
    assert "1h cto (while unresolved)\n" in out
    assert "escalate:" not in out  # this preset has no escalation rules


# (preset, labels, the severity line, the floor line, the paging line)
FLOOR_OUTPUT = [
    (
        "llm-marketplace",
        ["alertname=AdminErrors", "service=admin", "severity=critical"],
        "P1  (rule: p2-errors)",
        'P1  (severity="critical"): raised from P2 (rule p2-errors)',
        "page",
    ),
    (
        "llm-marketplace",
        ["alertname=ServiceDown", "service=publishing", "environment=staging", "severity=critical"],
        "P3  (rule: p3-non-production)",
        'P1  (severity="critical"): lowered to P3 by rule p3-non-production (below_floor: true)',
        "ticket",
    ),
    (
        "llm-marketplace",
        ["alertname=ServiceDown", "service=publishing", "scope=total", "severity=warning"],
        "P0  (rule: p0-core-service-down)",
        'P2  (severity="warning")',
        "page",
    ),
    (
        "llm-marketplace",
        ["alertname=Watchdog", "severity=none"],
        "dropped  (rule: drop-severity-none)",
        'none  (severity="none" sets none)',
        "none: dropped, no incident is opened",
    ),
    (
        "schema-registry",
        ["alertname=KubeAPIErrorBudgetBurn", "severity=critical"],
        "P1  (rule: default)",
        'P1  (severity="critical"): raised from P3 (rule default)',
        "page",
    ),
    (
        "schema-registry",
        ["alertname=X"],
        "P3  (rule: default)",
        "none  (no severity label)",
        "ticket",
    ),
]


@pytest.mark.parametrize(("preset", "args", "severity", "floor", "paging"), FLOOR_OUTPUT)
def test_test_rules_shows_the_floor_and_when_a_rule_lowers_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    preset: str,
    args: list[str],
    severity: str,
    floor: str,
    paging: str,
) -> None:
    path = example_config(tmp_path, preset=preset, secrets=False)
    code, out, err = run(capsys, "test-rules", "--config", path, *args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"severity: {severity}", out
    assert lines[1] == f"floor:    {floor}", out
    assert lines[3] == f"paging:   {paging}", out


def test_test_rules_says_a_floor_kept_an_alert_a_rule_drops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    text = (DATA / "rules-mini.yaml").read_text()
    text = text.replace(
        "severity_rules:\n",
        "severity_floor: {critical: P1}\n"
        "severity_rules:\n"
        "  - {name: drop-flaky, match: ['alertname=\"Flaky\"'], drop: true}\n",
    )
    (tmp_path / "rules.yaml").write_text(text)
    code, out, err = run(
        capsys, "test-rules", "--config", path, "alertname=Flaky", "severity=critical"
    )
    assert code == 0, err
    assert out.splitlines()[:2] == [
        "severity: P1  (rule: drop-flaky)",
        'floor:    P1  (severity="critical"): kept; rule drop-flaky drops alerts but does not '
        "say below_floor",
    ]
    code, out, _ = run(capsys, "test-rules", "--config", path, "alertname=Flaky")
    assert out.splitlines()[0] == "severity: dropped  (rule: drop-flaky)"


def test_test_rules_prints_no_floor_line_when_the_rules_declare_no_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    code, out, _ = run(capsys, "test-rules", "--config", path, "severity=critical")
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "severity",
        "team",
        "paging",
        "status",
    ]


def test_test_rules_accepts_quoted_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = example_config(tmp_path, secrets=False)
    code, out, _ = run(
        capsys, "test-rules", "--config", path, 'alertname="DBDown"', 'service="database"'
    )
    assert code == 0
    assert re.search(r"^team:\s+database\b", out, re.M), out


def test_test_rules_refuses_a_malformed_pair(tmp_path: Path) -> None:
    path = example_config(tmp_path, secrets=False)
    with pytest.raises(SystemExit) as exc:
        main(["test-rules", "--config", str(path), "no-equals-sign"])
    assert exc.value.code not in (0, None)
    assert "no-equals-sign" in str(exc.value.code)


def test_test_rules_reports_a_bad_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(BAD_RULES).lstrip())
    code, _, err = run(capsys, "test-rules", "--config", path, "alertname=A")
    assert code == 1
    assert {m["file"] for m in problem_lines(err)} == {str(tmp_path / "rules.yaml")}


# -- routing: no page and no escalation may reach nobody ----------------------

ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY00"
# The LLM-Marketplace preset's ladders: (severity index, severity, tier).
LADDERS = [(0, "P0", "vp-engineering"), (1, "P1", "engineering-manager"), (2, "P2", "team-lead")]


def preset_config(
    tmp_path: Path, pagerduty: dict[str, Any] | None, rules_text: str | None = None
) -> tuple[Path, Path]:
    """A config on (a copy of) the LLM-Marketplace preset; its path and the rules path."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text or (REPO / "rules" / "llm-marketplace.yaml").read_text())
    overrides = {"pagerduty": pagerduty} if pagerduty is not None else None
    return write_config(tmp_path, overrides), rules


def line_of(path: Path, needle: str) -> int:
    """The 1-based number of the first line of ``path`` containing ``needle``."""
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if needle in line)


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_tier_without_routing_key_is_refused_naming_file_line_severity_and_tier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path, rules = preset_config(tmp_path, {"routing_key": ROUTING_KEY})
    code, out, err = run(capsys, command, "--config", path)
    assert code == 1
    assert "OK" not in out
    found = problem_lines(err)
    assert [(m["file"], int(m["line"]), m["loc"]) for m in found] == [
        (str(rules), line_of(rules, f"tier: {tier}"), f"severities[{i}].escalation[0].tier")
        for i, _, tier in LADDERS
    ] + [(str(rules), line_of(rules, "tier: change-manager"), "escalation_rules[0].tier")]
    for m, (_, severity, tier) in zip(found, LADDERS, strict=False):
        assert f"severity {severity} escalates to tier {tier!r}" in m["reason"]
        assert f"pagerduty.tier_routing_keys.{tier}" in m["reason"]
        assert "record_only: true" in m["reason"]
    # The plan's "Any incident requiring emergency change -> Page Change Manager".
    rule = found[-1]["reason"]
    assert "escalation rule 'emergency-change' pages tier 'change-manager'" in rule
    assert "pagerduty.tier_routing_keys.change-manager" in rule
    assert ("refusing to start" in err) == (command == "serve")


def test_record_only_steps_and_routed_tiers_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = (REPO / "rules" / "llm-marketplace.yaml").read_text()
    step = "{after: 12h, tier: team-lead, while: unresolved}"
    assert step in preset
    text = preset.replace(step, step.replace("}", ", record_only: true}"))
    tiers = {
        tier: {"key": ROUTING_KEY}
        for tier in ("vp-engineering", "engineering-manager", "change-manager")
    }
    path, _ = preset_config(
        tmp_path, {"routing_key": ROUTING_KEY, "tier_routing_keys": tiers}, text
    )
    code, out, err = run(capsys, "check-config", "--config", path)
    assert (code, err) == (0, "")
    assert f"{path}: OK" in out
    assert "WARNING" not in out


def test_without_pagerduty_check_config_warns_once_per_tier_that_would_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = preset_config(tmp_path, None)
    code, out, _ = run(capsys, "check-config", "--config", path)
    assert code == 0
    warnings = [line for line in out.splitlines() if "WARNING: escalation tier" in line]
    assert [w.split("'")[1] for w in warnings] == [tier for _, _, tier in LADDERS] + [
        "change-manager"
    ]
    assert "(rule emergency-change) would page" in warnings[-1]
    assert all("nobody will be paged for it" in w for w in warnings)


# -- serve ----------------------------------------------------------------


def test_serve_refuses_to_start_on_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(DATA / "rules-mini.yaml", tmp_path / "rules.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(BAD_CONFIG).lstrip())
    code, _, err = run(capsys, "serve", "--config", path)
    assert code == 1
    assert len(problem_lines(err)) == 3
    assert "refusing to start" in err


def test_serve_refuses_to_start_without_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = example_config(tmp_path, secrets=False)
    code, _, err = run(capsys, "serve", "--config", path)
    assert code == 1
    assert "webhook_token_file" in err and "refusing to start" in err


def test_arguments_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["check-config"])
    assert exc.value.code == 2
    assert "--config" in capsys.readouterr().err


# -- as real processes ----------------------------------------------------


def test_python_dash_m_help(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--help"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for command in ("serve", "check-config", "test-rules"):
        assert command in done.stdout


def test_console_script_checks_the_example(tmp_path: Path) -> None:
    if not CONSOLE_SCRIPT.exists():
        pytest.fail(f"console script {CONSOLE_SCRIPT} is not installed (pip install -e .)")
    path = example_config(tmp_path)
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "check-config", "--config", str(path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{path}: OK" in done.stdout
    version = subprocess.run(
        [str(CONSOLE_SCRIPT), "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert version.returncode == 0
    assert version.stdout.startswith("incident-sla-sidecar ")


def test_console_script_exits_1_on_a_bad_config(tmp_path: Path) -> None:
    if not CONSOLE_SCRIPT.exists():
        pytest.fail(f"console script {CONSOLE_SCRIPT} is not installed (pip install -e .)")
    shutil.copy(DATA / "rules-mini.yaml", tmp_path / "rules.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(BAD_CONFIG).lstrip())
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert len(problem_lines(done.stderr)) == 3


MINI_WITH_DB_RULE = (
    (DATA / "rules-mini.yaml")
    .read_text()
    .replace(
        "severity_rules:\n",
        "severity_rules:\n  - {name: db-is-critical, match: ['service=\"db\"'], severity: P0}\n",
    )
)


def wait_for(predicate: Callable[[], bool], what: str, proc: SidecarProcess) -> None:
    """Poll until ``predicate`` holds; fail with the process log if it never does."""
    deadline = time.monotonic() + 30
    while not predicate():
        if not proc.running:
            pytest.fail(f"the sidecar exited while waiting for {what}:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}; log:\n{proc.log_tail()}")
        time.sleep(0.05)


def log_records(proc: SidecarProcess) -> list[dict[str, Any]]:
    """The JSON log records the sidecar wrote so far."""
    records = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def count(proc: SidecarProcess, message: str) -> int:
    """How many log records carry exactly ``message``."""
    return sum(1 for r in log_records(proc) if r.get("msg") == message)


async def fire(http: aiohttp.ClientSession, proc: SidecarProcess, i: int) -> str:
    """Post a firing notification for a new group with ``service=db``; return its severity."""
    payload = notification(
        alert(f"Reload{i}", fingerprint=f"{i:016x}", labels={"service": "db"}),
        group_key=f'{{}}:{{alertname="Reload{i}"}}',
    )
    headers = {"Authorization": f"Bearer {proc.webhook_token}"}
    async with http.post(proc.webhook_url, data=body(payload), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        (changed,) = (await resp.json())["changed"]
    async with http.get(
        f"{proc.url}/api/v1/incidents",
        headers={"Authorization": f"Bearer {proc.api_token}"},
    ) as resp:
        assert resp.status == 200
        listing = await resp.json()
    incidents = listing["incidents"] if isinstance(listing, dict) else listing
    (found,) = [inc for inc in incidents if inc["id"] == changed["id"]]
    severity: str = found["severity"]
    return severity


@pytest.mark.e2e
async def test_serve_starts_and_sighup_reloads_the_rules(tmp_path: Path) -> None:
    workdir = tmp_path / "sidecar"
    workdir.mkdir()
    rules = workdir / "rules.yaml"
    rules.write_text((DATA / "rules-mini.yaml").read_text())
    proc = SidecarProcess(workdir, overrides={"rules": {"file": "rules.yaml"}})
    await proc.astart()
    try:
        assert proc.pid is not None
        async with aiohttp.ClientSession() as http:
            assert await fire(http, proc, 1) == "P2"  # the mini rules' default

            # A broken rules file: the reload is refused and the old rules stay.
            rules.write_text("severities: [unclosed\n")
            os.kill(proc.pid, signal.SIGHUP)
            wait_for(
                lambda: count(proc, "rules reload refused; keeping the last good rules") == 1,
                "the refused reload in the log",
                proc,
            )
            assert proc.running
            assert await fire(http, proc, 2) == "P2"

            # A valid, changed rules file: the new rule applies to new incidents.
            rules.write_text(MINI_WITH_DB_RULE)
            os.kill(proc.pid, signal.SIGHUP)
            wait_for(lambda: count(proc, "rules reloaded") == 1, "the reload in the log", proc)
            assert await fire(http, proc, 3) == "P0"
            assert proc.running
    finally:
        await proc.astop()
    assert proc.returncode == 0, proc.log_tail()


def test_test_rules_shows_the_calendar_of_business_time_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = example_config(tmp_path, preset="schema-registry", secrets=False)
    args = ["alertname=SchemaRegistryHighLatency", "--annotation", "latency_ratio=4x"]
    code, out, err = run(capsys, "test-rules", "--config", path, *args)
    assert code == 0, err
    assert out.splitlines()[4:] == [
        "calendar: business-hours: open during office-hours; business time for acknowledge 1h",
        "          office-hours: times 09:00-17:00; weekdays monday:friday; location UTC",
        "status:   Investigating (updates: Investigating, Resolved)",
        "watch:    30m after resolution (a re-fire reopens)",
    ]
    # A severity on the wall clock only shows no calendar.
    code, out, err = run(capsys, "test-rules", "--config", path, "incident_severity=P1")
    assert code == 0, err
    assert "calendar:" not in out
