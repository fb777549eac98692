"""Message templates: one set per preset, user overrides, ``render-template``, and config checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.config import load_config
from sidecar.errors import ConfigError
from sidecar.notify.templates import PRESETS, SLACK_HEAD, MessageTemplates, sample_context
from sidecar.runtime import build_components
from tests.conftest import write_config

SLACK = {"token": "xoxb-1", "api_url": "http://127.0.0.1:9/api/", "channels": {"default": "#i"}}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_presets_templates_render(preset: str) -> None:
    assert MessageTemplates(preset).check("config.yaml") == []


@pytest.mark.parametrize(
    ("preset", "headline"),
    [
        ("generic", ":rotating_light: *P1 INCIDENT: Discovery Service High Latency*"),
        ("llm-marketplace", ":rotating_light: INCIDENT DECLARED"),  # plan 000
        ("schema-registry", ":rotating_light: INCIDENT ALERT"),  # plan 002
    ],
)
def test_each_plan_opens_with_its_own_message(preset: str, headline: str) -> None:
    text = MessageTemplates(preset).render(SLACK_HEAD, sample_context())
    assert text.splitlines()[0] == headline
    assert "<@U024BE7LH>" in text  # a mapped person is mentioned, not escaped
    assert "&gt; 5s latency" in text  # everything else is escaped as Slack asks


def test_a_users_file_replaces_the_packages(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "incident.txt.j2").write_text("NEW {{ incident.severity }}\n")
    templates = MessageTemplates("llm-marketplace", tmp_path)
    assert templates.render(SLACK_HEAD, sample_context()) == "NEW P1"
    assert templates.source(SLACK_HEAD) == f"{tmp_path}/slack/incident.txt.j2"
    assert templates.source("slack/status_update.txt.j2").endswith(
        "messages/llm-marketplace/slack/status_update.txt.j2"
    )


def config_with(tmp_path: Path, **sections: Any) -> Path:
    return write_config(tmp_path, sections)


def test_a_broken_override_refuses_to_start_naming_its_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = tmp_path / "messages" / "slack"
    overrides.mkdir(parents=True)
    (overrides / "incident.txt.j2").write_text("ok\n{% if %}\n")
    path = config_with(tmp_path, slack=SLACK, templates={"directory": "messages"})
    assert main(["check-config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{overrides}/incident.txt.j2" in err and "line 2" in err


def test_an_unknown_name_in_an_override_is_refused(tmp_path: Path) -> None:
    overrides = tmp_path / "messages" / "slack"
    overrides.mkdir(parents=True)
    (overrides / "incident.txt.j2").write_text("{{ incident.no_such_field }}\n")
    path = config_with(tmp_path, slack=SLACK, templates={"directory": "messages"})
    with pytest.raises(ConfigError) as caught:
        build_components(load_config(path))
    assert "no_such_field" in str(caught.value.problems[0])


@pytest.mark.parametrize(
    ("sections", "location"),
    [
        ({"reminders": {"severities": {"P9": "1m"}}}, "reminders.severities.P9"),
        ({"slack": {**SLACK, "channels": {"teams": {"nobody": "#x"}}}}, "slack.channels.teams"),
        (
            {"slack": {**SLACK, "channels": {"severities": {"P7": "#x"}}}},
            "slack.channels.severities.P7",
        ),
    ],
)
def test_names_the_rules_do_not_know_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sections: dict[str, Any], location: str
) -> None:
    assert main(["check-config", "--config", str(config_with(tmp_path, **sections))]) == 1
    assert location in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sections", "reason"),
    [
        ({"slack": {"channels": {"default": "#i"}}}, "token (or token_file) is required"),
        (
            {"webhooks": [{"name": "x", "url": "https://example.com/hook"}]},
            "secret (or secret_file) is required",
        ),
        (
            {"slack": {**SLACK, "users": {"alice": "alice"}}},
            "is not a Slack user ID",
        ),
    ],
)
def test_integration_sections_are_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sections: dict[str, Any], reason: str
) -> None:
    assert main(["check-config", "--config", str(config_with(tmp_path, **sections))]) == 1
    assert reason in capsys.readouterr().err


def test_render_template_previews_against_a_sample_incident(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render-template", "--preset", "schema-registry", SLACK_HEAD]) == 0
    assert capsys.readouterr().out.startswith(":rotating_light: INCIDENT ALERT\n")
    args = ["render-template", "--preset", "schema-registry", "--resolved"]
    assert main([*args, "slack/resolved.txt.j2"]) == 0
    out = capsys.readouterr().out
    assert "Duration: 1h 5m" in out and "Timeline:" in out
    assert main(["render-template", "slack/nope.txt.j2"]) == 1
    assert "unknown template" in capsys.readouterr().err


def test_render_template_uses_the_configs_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "messages" / "slack").mkdir(parents=True)
    (tmp_path / "messages" / "slack" / "incident.txt.j2").write_text("mine {{ plan }}\n")
    path = config_with(tmp_path, templates={"directory": "messages"})
    assert main(["render-template", "--config", str(path), SLACK_HEAD]) == 0
    assert capsys.readouterr().out == "mine sample\n"
