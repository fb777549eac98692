"""``test-plan``: the presets' scenarios pass, a wrong expectation fails with a diff, and
the schema refuses what it cannot simulate."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.cli import main
from tests.conftest import REPO

PRESET_TESTS = sorted((REPO / "rules" / "tests").glob("*.test.yaml"))


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str) -> Path:
    """A test file beside a copy-free reference to the LLM-Marketplace preset."""
    path = tmp_path / "plan.test.yaml"
    rules = REPO / "rules" / "llm-marketplace.yaml"
    path.write_text(f"rules: {rules}\n" + textwrap.dedent(text))
    return path


def test_both_presets_ship_scenarios() -> None:
    assert {p.name for p in PRESET_TESTS} == {
        "llm-marketplace.test.yaml",
        "schema-registry.test.yaml",
    }


@pytest.mark.parametrize("path", PRESET_TESTS, ids=lambda p: p.name)
def test_the_presets_scenarios_pass(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "test-plan", path)
    assert code == 0, err
    assert "SUCCESS" in out


P0_OUTAGE = """
alertmanager: {group_by: [alertname], group_wait: 0s}
tests:
  - name: P0 outage
    alerts:
      - labels: {alertname: ServiceDown, service: publishing, scope: total}
        firing: [{from: 0s, to: 30m}]
    expect:
      - at: 6m
        incidents: [{severity: P0, state: %s, breaches: %s}]
        notifications:
          - {at: 0s, action: trigger, routing: default, severity: critical}
          - {at: 0s, action: trigger, tier: vp-engineering}
"""


def test_a_passing_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, P0_OUTAGE % ("triggered", "[acknowledge]"))
    code, out, _ = run(capsys, "test-plan", path)
    assert code == 0
    assert f"{path}: SUCCESS (1 tests)" in out


def test_a_wrong_expectation_exits_1_with_a_diff_and_the_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, P0_OUTAGE % ("acknowledged", "[]"))
    code, _, err = run(capsys, "test-plan", path)
    assert code == 1
    assert f"{path}: FAILED 'P0 outage'" in err
    assert "at 6m:" in err
    assert "-  state: acknowledged" in err
    assert "+  state: triggered" in err
    assert "-  breaches: []" in err
    assert "+  breaches: [acknowledge]" in err
    # The timeline says why.
    assert "sla_breached      acknowledge SLA of P0 breached" in err
    assert "1 of 1 tests failed" in err


def test_a_missing_notification_is_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = P0_OUTAGE % ("triggered", "[acknowledge]")
    text = text.replace("          - {at: 0s, action: trigger, tier: vp-engineering}\n", "")
    code, _, err = run(capsys, "test-plan", write(tmp_path, text))
    assert code == 1
    assert "notifications differ" in err
    assert (
        "+- {at: 0s, integration: pagerduty, action: trigger, routing: 'tier:vp-engineering'" in err
    )


def test_a_status_the_plan_does_not_declare_fails_the_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """
    alertmanager: {group_wait: 0s}
    tests:
      - name: a status of another plan
        alerts:
          - labels: {alertname: ServiceDown, service: publishing, scope: total}
            firing: [{from: 0s}]
        actions: [{at: 1m, status_update: {message: found it, status: Fixed}}]
        expect: [{at: 2m, incidents: [{status: Investigating}]}]
    """
    code, _, err = run(capsys, "test-plan", write(tmp_path, text))
    assert code == 1
    assert (
        "action at 1m: status must be one of Investigating, Identified, Monitoring, Resolved; "
        "got 'Fixed'" in err
    )


def test_an_action_on_no_incident_fails_the_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """
    tests:
      - name: nothing to acknowledge
        actions: [{at: 1m, acknowledge: {actor: alice}}]
        expect: [{at: 2m, incidents: []}]
    """
    code, _, err = run(capsys, "test-plan", write(tmp_path, text))
    assert code == 1
    assert "action at 1m: no open incident to act on" in err


@pytest.mark.parametrize(
    ("snippet", "location", "reason"),
    [
        (
            "actions: [{at: 1m, assign_role: {role: captain, person: alice}}]",
            "tests[0].actions[0].assign_role",
            "unknown role 'captain'; the roles are incident_commander, smes",
        ),
        (
            "actions: [{at: 1m, acknowledge: {}, resolve: {}}]",
            "tests[0].actions[0]",
            "give exactly one of acknowledge",
        ),
        ("actions: [{at: soon, acknowledge: {}}]", "tests[0].actions[0].at", "invalid duration"),
    ],
)
def test_the_schema_refuses_what_it_cannot_run_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet: str, location: str, reason: str
) -> None:
    text = f"""
    tests:
      - name: refused
        {snippet}
    """
    if "expect:" not in snippet:
        text += "    expect: [{at: 1m}]\n"
    path = write(tmp_path, text)
    code, _, err = run(capsys, "test-plan", path)
    assert code == 1
    line = next(x for x in err.splitlines() if location in x)
    assert line.startswith(f"{path}:4:") or line.startswith(f"{path}:5:"), line
    assert reason in line
    assert f"{path}: FAILED to load" in err


def test_a_config_file_can_be_the_plan_under_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PagerDuty off in the configuration: nothing is sent, escalations reach nobody.
    (tmp_path / "config.yaml").write_text(
        f"server: {{webhook_token: a, api_token: b}}\n"
        f"rules: {{file: {REPO / 'rules' / 'llm-marketplace.yaml'}}}\n"
    )
    (tmp_path / "plan.test.yaml").write_text(
        textwrap.dedent(
            """
            config: config.yaml
            alertmanager: {group_wait: 0s}
            tests:
              - name: unrouted
                alerts:
                  - labels: {alertname: ServiceDown, service: publishing, scope: total}
                    firing: [{from: 0s}]
                expect:
                  - at: 1m
                    incidents: [{severity: P0, escalations: [vp-engineering]}]
                    notifications: []
            """
        )
    )
    code, out, err = run(capsys, "test-plan", tmp_path / "plan.test.yaml")
    assert code == 0, err
    assert "SUCCESS" in out


def test_the_readme_example_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### `incident-sla-sidecar test-plan FILE...`", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert example.startswith("rules: ../llm-marketplace.yaml")
    path = tmp_path / "readme.test.yaml"
    path.write_text(
        example.replace("../llm-marketplace.yaml", str(REPO / "rules" / "llm-marketplace.yaml"), 1)
    )
    code, out, err = run(capsys, "test-plan", path)
    assert code == 0, err
    assert "SUCCESS (1 tests)" in out


def test_reminders_and_webhook_events_when_the_configuration_has_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A webhook endpoint carries reminders, 5m before each update is due.
    (tmp_path / "config.yaml").write_text(
        "server: {webhook_token: a, api_token: b}\n"
        f"rules: {{file: {REPO / 'rules' / 'llm-marketplace.yaml'}}}\n"
        "webhooks: [{name: status, url: 'http://127.0.0.1:9/hook', secret: s}]\n"
        "reminders: {before: 5m}\n"
    )
    (tmp_path / "plan.test.yaml").write_text(
        textwrap.dedent(
            """
            config: config.yaml
            alertmanager: {group_wait: 0s}
            tests:
              - name: P0 reminded 5m before each 15m update
                alerts:
                  - labels: {alertname: ServiceDown, service: publishing, scope: total}
                    firing: [{from: 0s}]
                actions: [{at: 12m, status_update: {message: failing over}}]
                expect:
                  - {at: 9m59s, incidents: [{reminders: 0}]}
                  - {at: 10m, incidents: [{reminders: 1, breaches: [acknowledge]}]}
                  - at: 22m
                    incidents: [{reminders: 2, breaches: [acknowledge]}]
                    notifications:  # the webhook's events (PagerDuty is off here)
                      - {at: 0s, integration: webhook, action: opened, routing: status}
                      - {at: 0s, integration: webhook, action: escalated}
                      - {at: 5m1ms, integration: webhook, action: breached}
                      - {at: 10m, integration: webhook, action: reminder}
                      - {at: 12m, integration: webhook, action: status_update}
                      - {at: 22m, integration: webhook, action: reminder}
            """
        )
    )
    code, out, err = run(capsys, "test-plan", tmp_path / "plan.test.yaml")
    assert code == 0, err
    assert "SUCCESS" in out
