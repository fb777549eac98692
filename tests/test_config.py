"""Configuration: the YAML file, its problems with file:line:col, environment overrides, secrets."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from sidecar.config import Config, Secrets, load_config, split_listen
from sidecar.errors import ConfigError, ConfigProblem
from tests.conftest import API_TOKEN, DATA, WEBHOOK_TOKEN, write_config


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    """Write a config file (dedented) beside a copy of the mini rules."""
    rules = tmp_path / "rules.yaml"
    if not rules.exists():
        rules.write_text((DATA / "rules-mini.yaml").read_text())
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path) -> list[ConfigProblem]:
    """The problems load_config reports for ``path`` (fails if it loads)."""
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems, "ConfigError without any problem"
    return err.value.problems


def by_location(found: list[ConfigProblem]) -> dict[str, ConfigProblem]:
    """Problems keyed by their location."""
    return {p.location: p for p in found}


VALID = """
server:
  listen: 127.0.0.1:9095
  webhook_token: wh-token
  api_token: api-token
store:
  url: sqlite:///data/sidecar.db
rules:
  file: rules.yaml
alertmanager:
  url: http://127.0.0.1:9093
pagerduty:
  events_url: http://127.0.0.1:1/v2/enqueue
  api_url: http://127.0.0.1:1
  api_token: pd-api-token
  webhook_secret: pd-webhook-secret
"""


# -- a valid file ---------------------------------------------------------


def test_valid_config_loads_with_every_contract_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    s = config.settings
    assert s.server.listen == "127.0.0.1:9095"
    assert s.server.webhook_token is not None
    assert s.server.webhook_token.get_secret_value() == "wh-token"
    assert s.server.api_token is not None
    assert s.server.api_token.get_secret_value() == "api-token"
    assert s.store.url == "sqlite:///data/sidecar.db"
    assert s.alertmanager.url == "http://127.0.0.1:9093"
    assert s.pagerduty.events_url == "http://127.0.0.1:1/v2/enqueue"
    assert s.pagerduty.api_url == "http://127.0.0.1:1"
    assert s.pagerduty.api_token is not None
    assert s.pagerduty.api_token.get_secret_value() == "pd-api-token"
    assert s.pagerduty.webhook_secret is not None
    assert s.pagerduty.webhook_secret.get_secret_value() == "pd-webhook-secret"
    assert (config.secrets.webhook_token, config.secrets.api_token) == ("wh-token", "api-token")
    assert config.secrets.pagerduty_api_token == "pd-api-token"
    assert config.secrets.webhook_secret == "pd-webhook-secret"


def test_defaults_are_the_documented_safe_ones(tmp_path: Path) -> None:
    s = load_config(write_config(tmp_path)).settings
    assert s.store.synchronous == "full"
    assert s.incidents.key == "group"
    assert s.incidents.dedup_window == timedelta(hours=6)
    assert s.server.max_body_size == 16 * 1024 * 1024
    assert s.server.insecure_disable_auth is False
    assert s.pagerduty.events_url == "https://events.pagerduty.com/v2/enqueue"


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert config.rules_file == tmp_path / "rules.yaml"
    assert config.sqlite_path == tmp_path / "data" / "sidecar.db"


def test_durations_and_sizes_in_the_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, {"incidents": {"dedup_window": "15m"}, "server": {"max_body_size": "1MiB"}}
    )
    s = load_config(path).settings
    assert s.incidents.dedup_window == timedelta(minutes=15)
    assert s.server.max_body_size == 1024 * 1024


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9095", "127.0.0.1", 9095),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("[::1]:9095", "::1", 9095),
        (":9095", "0.0.0.0", 9095),
        ("localhost:0", "localhost", 0),
    ],
)
def test_split_listen(listen: str, host: str, port: int) -> None:
    assert split_listen(listen) == (host, port)


# -- problems, located ----------------------------------------------------


def test_unknown_key_is_refused_with_file_line_column_and_location(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server:
          listen: 127.0.0.1:9095
          webhook_token: a
          api_token: b
          listne: 0.0.0.0:1
        rules:
          file: rules.yaml
        """,
    )
    (problem,) = problems(path)
    assert (problem.file, problem.line, problem.column) == (str(path), 5, 3)
    assert problem.location == "server.listne"
    assert "not permitted" in problem.reason
    assert str(problem).startswith(f"{path}:5:3: server.listne: ")


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {webhook_token: a, api_token: b}
        rules: {file: rules.yaml}
        pagerdutty:
          api_url: http://127.0.0.1:1
        """,
    )
    (problem,) = problems(path)
    assert (problem.location, problem.line, problem.column) == ("pagerdutty", 3, 1)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("15 minutes", "invalid duration '15 minutes'"),
        ("1.5h", "invalid duration"),
        ("-5m", "invalid duration"),
    ],
)
def test_bad_duration(tmp_path: Path, value: str, reason: str) -> None:
    path = write(
        tmp_path,
        f"""
        server: {{webhook_token: a, api_token: b}}
        rules: {{file: rules.yaml}}
        incidents:
          key: group
          dedup_window: "{value}"
        """,
    )
    (problem,) = problems(path)
    assert (problem.location, problem.line, problem.column) == ("incidents.dedup_window", 5, 3)
    assert reason in problem.reason


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("localhost", "expected host:port"),
        ("9095", "expected host:port"),
        ("127.0.0.1:http", "invalid port"),
        ("127.0.0.1:70000", "out of range"),
        ("127.0.0.1:-1", "out of range"),
        ("127.0.0.1:", "invalid port"),
    ],
)
def test_bad_listen(tmp_path: Path, listen: str, reason: str) -> None:
    path = write_config(tmp_path, {"server": {"listen": listen}})
    found = by_location(problems(path))
    assert set(found) == {"server.listen"}
    assert reason in found["server.listen"].reason
    assert found["server.listen"].line is not None


@pytest.mark.parametrize(
    "url", ["mysql://db/incidents", "sqlite://relative.db", "data/sidecar.db", "", "http://x"]
)
def test_bad_store_url(tmp_path: Path, url: str) -> None:
    path = write_config(tmp_path, {"store": {"url": url}})
    found = by_location(problems(path))
    assert set(found) == {"store.url"}
    assert "sqlite:///" in found["store.url"].reason


@pytest.mark.parametrize(
    "url", ["sqlite:///data/x.db", "sqlite:////var/lib/sidecar/x.db", "postgresql://u@db/x"]
)
def test_store_urls_accepted(tmp_path: Path, url: str) -> None:
    assert load_config(write_config(tmp_path, {"store": {"url": url}})).settings.store.url == url


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server:
          listen: nowhere
          webhook_token: a
          api_token: b
        store:
          url: mysql://db
          synchronous: sometimes
        rules:
          file: rules.yaml
        incidents:
          dedup_window: soon
          key: team
        logging:
          colour: true
        """,
    )
    found = by_location(problems(path))
    assert {loc: (p.line, p.column) for loc, p in found.items()} == {
        "server.listen": (2, 3),
        "store.url": (6, 3),
        "store.synchronous": (7, 3),
        "incidents.dedup_window": (11, 3),
        "incidents.key": (12, 3),
        "logging.colour": (14, 3),
    }
    assert all(p.file == str(path) for p in found.values())


def test_missing_rules_section_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {webhook_token: a, api_token: b}\n")
    found = by_location(problems(path))
    assert "rules" in found
    assert "required" in found["rules"].reason.lower()


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server:
          listen: 127.0.0.1:9095
          webhook_token: [unclosed
        rules:
          file: rules.yaml
        """,
    )
    (problem,) = problems(path)
    assert problem.file == str(path)
    assert "invalid YAML" in problem.reason
    assert problem.line is not None and 3 <= problem.line <= 5


def test_tabs_are_invalid_yaml_with_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n\tlisten: 127.0.0.1:9095\nrules: {file: rules.yaml}\n")
    (problem,) = problems(path)
    assert "invalid YAML" in problem.reason
    assert (problem.line, problem.column) == (2, 1)


def test_empty_file_reports_what_is_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    found = by_location(problems(path))
    assert "rules" in found
    assert all(p.file == str(path) for p in found.values())


def test_comment_only_file_is_like_an_empty_file(tmp_path: Path) -> None:
    found = by_location(problems(write(tmp_path, "# nothing here yet\n")))
    assert "rules" in found


@pytest.mark.parametrize("text", ["- server\n- rules\n", "just a string\n", "42\n"])
def test_non_mapping_file_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    (problem,) = problems(path)
    assert problem.file == str(path)
    assert "mapping" in problem.reason


def test_missing_config_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    (problem,) = problems(path)
    assert problem.file == str(path)
    assert "cannot read" in problem.reason


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {webhook_token: a, api_token: b}
        rules: {file: !!python/object/apply:os.getcwd []}
        """,
    )
    (problem,) = problems(path)
    assert "invalid YAML" in problem.reason


# -- authentication -------------------------------------------------------


def test_tokens_are_required(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server:
          listen: 127.0.0.1:9095
          webhook_token: only-this-one
        rules: {file: rules.yaml}
        """,
    )
    (problem,) = problems(path)
    assert problem.location == "server"
    assert "api_token" in problem.reason
    assert "insecure_disable_auth" in problem.reason
    assert problem.line == 1


def test_a_config_without_a_server_section_still_requires_tokens(tmp_path: Path) -> None:
    # Leaving out the whole section must not silently turn authentication off.
    path = write(tmp_path, "rules: {file: rules.yaml}\n")
    found = problems(path)
    assert any("webhook_token" in p.reason and "api_token" in p.reason for p in found), found


def test_auth_can_be_disabled_explicitly(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {insecure_disable_auth: true}
        rules: {file: rules.yaml}
        """,
    )
    config = load_config(path)
    assert config.settings.server.insecure_disable_auth is True
    assert config.secrets.webhook_token is None


# -- environment overrides ------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "read"),
    [
        ("SIDECAR__SERVER__LISTEN", "0.0.0.0:1234", lambda c: c.settings.server.listen),
        ("SIDECAR__SERVER__WEBHOOK_TOKEN", "env-wh", lambda c: c.secrets.webhook_token),
        ("SIDECAR__SERVER__API_TOKEN", "env-api", lambda c: c.secrets.api_token),
        ("SIDECAR__STORE__URL", "sqlite:///other.db", lambda c: c.settings.store.url),
        (
            "SIDECAR__ALERTMANAGER__URL",
            "http://127.0.0.1:9999",
            lambda c: c.settings.alertmanager.url,
        ),
        (
            "SIDECAR__PAGERDUTY__EVENTS_URL",
            "http://127.0.0.1:2/e",
            lambda c: c.settings.pagerduty.events_url,
        ),
        (
            "SIDECAR__PAGERDUTY__API_URL",
            "http://127.0.0.1:3",
            lambda c: c.settings.pagerduty.api_url,
        ),
        ("SIDECAR__PAGERDUTY__API_TOKEN", "env-pd", lambda c: c.secrets.pagerduty_api_token),
        ("SIDECAR__PAGERDUTY__WEBHOOK_SECRET", "env-sec", lambda c: c.secrets.webhook_secret),
        ("SIDECAR__STORE__SYNCHRONOUS", "normal", lambda c: c.settings.store.synchronous),
        ("SIDECAR__STORE__MAX_BATCH", "7", lambda c: c.settings.store.max_batch),
        ("sidecar__logging__level", "debug", lambda c: c.settings.logging.level),
    ],
)
def test_environment_overrides_win_over_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    var: str,
    value: str,
    read: Callable[[Config], object],
) -> None:
    config = load_config(write(tmp_path, VALID))
    before = read(config)
    monkeypatch.setenv(var, value)
    after = read(load_config(write(tmp_path, VALID)))
    assert str(after) == value
    assert before != after


def test_environment_duration_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR__INCIDENTS__DEDUP_WINDOW", "15m")
    monkeypatch.setenv("SIDECAR__SERVER__INSECURE_DISABLE_AUTH", "true")
    s = load_config(write(tmp_path, "rules: {file: rules.yaml}\n")).settings
    assert s.incidents.dedup_window == timedelta(minutes=15)
    assert s.server.insecure_disable_auth is True


def test_environment_keeps_the_rest_of_the_section_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR__SERVER__LISTEN", "127.0.0.1:1")
    config = load_config(write(tmp_path, VALID))
    assert config.settings.server.listen == "127.0.0.1:1"
    assert config.secrets.webhook_token == "wh-token"  # from the same section of the file


def test_a_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR__SERVER__LISTEN", "nowhere")
    monkeypatch.setenv("SIDECAR__STORE__MAX_BATCH", "lots")
    found = by_location(problems(write(tmp_path, VALID)))
    assert set(found) == {"server.listen", "store.max_batch"}
    assert found["server.listen"].file == "environment SIDECAR__SERVER__LISTEN"
    assert found["store.max_batch"].file == "environment SIDECAR__STORE__MAX_BATCH"
    assert "expected host:port" in found["server.listen"].reason
    # No line of the file: the value did not come from it.
    assert found["server.listen"].line is None


def test_a_bad_file_value_overridden_by_a_good_environment_value_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR__SERVER__LISTEN", "127.0.0.1:9095")
    path = write(tmp_path, VALID.replace("listen: 127.0.0.1:9095", "listen: nowhere"))
    assert load_config(path).settings.server.listen == "127.0.0.1:9095"


def test_an_unknown_key_in_a_known_section_from_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR__SERVER__LISTNE", "0.0.0.0:1")
    (problem,) = problems(write(tmp_path, VALID))
    assert problem.file == "environment SIDECAR__SERVER__LISTNE"
    assert problem.location == "server.listne"


@pytest.mark.parametrize("var", ["SIDECAR__SERVRE__LISTEN", "SIDECAR__BOGUS"])
def test_an_unknown_environment_section_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    # A typo in a variable name must not be silently ignored, as a typo in the file is not.
    monkeypatch.setenv(var, "0.0.0.0:1")
    found = problems(write(tmp_path, VALID))
    assert any(var.lower() in (p.file + p.location + p.reason).lower() for p in found), found


# -- secrets --------------------------------------------------------------


def secret_files(tmp_path: Path) -> None:
    """Secret files with the trailing newlines editors and `echo` leave."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "webhook-token").write_text("file-webhook-token\n")
    (tmp_path / "secrets" / "api-token").write_text("file-api-token\r\n")
    (tmp_path / "secrets" / "pd-token").write_text("file-pd-token")
    (tmp_path / "secrets" / "pd-secret").write_text("file-pd-secret\n\n")


FROM_FILES = """
server:
  webhook_token_file: secrets/webhook-token
  api_token_file: secrets/api-token
pagerduty:
  api_token_file: secrets/pd-token
  webhook_secret_file: secrets/pd-secret
rules:
  file: rules.yaml
"""


def test_secrets_from_files_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    secret_files(conf_dir)
    path = write(conf_dir, FROM_FILES)
    monkeypatch.chdir(tmp_path)  # not the config's directory: paths must not depend on cwd
    secrets = load_config(path).secrets
    assert secrets.webhook_token == "file-webhook-token"
    assert secrets.api_token == "file-api-token"
    assert secrets.pagerduty_api_token == "file-pd-token"
    assert secrets.webhook_secret == "file-pd-secret"


def test_secret_file_path_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_files(tmp_path)
    monkeypatch.setenv("SIDECAR__SERVER__API_TOKEN_FILE", str(tmp_path / "secrets" / "pd-token"))
    assert load_config(write(tmp_path, FROM_FILES)).secrets.api_token == "file-pd-token"


def test_missing_and_empty_secret_files_are_reported_together(tmp_path: Path) -> None:
    secret_files(tmp_path)
    (tmp_path / "secrets" / "api-token").unlink()
    (tmp_path / "secrets" / "pd-secret").write_text("\n")
    found = by_location(problems(write(tmp_path, FROM_FILES)))
    assert set(found) == {"server.api_token_file", "pagerduty.webhook_secret_file"}
    missing = found["server.api_token_file"]
    assert missing.file == str(tmp_path / "config.yaml")
    assert "cannot read secret file" in missing.reason
    assert str(tmp_path / "secrets" / "api-token") in missing.reason
    assert "empty" in found["pagerduty.webhook_secret_file"].reason


def test_secret_files_are_not_read_when_not_asked(tmp_path: Path) -> None:
    # test-rules needs no secrets, so a machine without them can still run it.
    config = load_config(write(tmp_path, FROM_FILES), read_secrets=False)
    assert config.secrets.webhook_token is None
    assert config.rules_file == tmp_path / "rules.yaml"


@pytest.mark.parametrize(
    ("section", "name"),
    [
        ("server", "webhook_token"),
        ("server", "api_token"),
        ("pagerduty", "api_token"),
        ("pagerduty", "webhook_secret"),
        ("pagerduty", "routing_key"),
    ],
)
def test_inline_and_file_together_are_refused(tmp_path: Path, section: str, name: str) -> None:
    path = write_config(tmp_path, {section: {name: "inline", f"{name}_file": "secrets/x"}})
    found = problems(path)
    assert any(
        f"set either {name} or {name}_file" in p.reason and p.location.startswith(section)
        for p in found
    ), found


def test_secrets_never_show_in_reprs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    for secret in ("wh-token", "api-token", "pd-api-token", "pd-webhook-secret"):
        assert secret not in repr(config.secrets)
        assert secret not in str(config.secrets)
        assert secret not in repr(config.settings)
        assert secret not in str(config.settings)
        assert secret not in config.settings.model_dump_json()
    assert repr(Secrets(webhook_token="hunter2")) == "Secrets(<redacted>)"


def test_secrets_from_the_environment_stay_out_of_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR__SERVER__WEBHOOK_TOKEN", "env-only-secret")
    monkeypatch.setenv("SIDECAR__SERVER__LISTEN", "nowhere")
    found = problems(write(tmp_path, VALID))
    assert "env-only-secret" not in "\n".join(str(p) for p in found)


def test_config_error_lists_every_problem_in_its_message(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"server": {"listen": "x"}, "store": {"url": "x"}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}:") for line in lines)


def test_the_test_fixture_config_is_valid(tmp_path: Path) -> None:
    config: Config = load_config(write_config(tmp_path))
    assert (config.secrets.webhook_token, config.secrets.api_token) == (WEBHOOK_TOKEN, API_TOKEN)


# -- pagerduty: retry waits and the shared rate ------------------------------


def test_pagerduty_waits_and_rate_default_to_pagerdutys_advice(tmp_path: Path) -> None:
    pd = load_config(write_config(tmp_path)).settings.pagerduty
    assert (pd.rate_limit_per_minute, pd.rate_limit_window) == (120, timedelta(minutes=1))
    assert (pd.retry.initial, pd.retry.max, pd.retry.rate_limited) == (
        timedelta(seconds=1),
        timedelta(minutes=5),
        timedelta(seconds=30),
    )


@pytest.mark.parametrize("key", ["rate_limited", "rate_limited_initial"])
def test_the_429_pause_is_read_under_its_former_name_too(tmp_path: Path, key: str) -> None:
    path = write_config(tmp_path, {"pagerduty": {"retry": {key: "45s"}}})
    assert load_config(path).settings.pagerduty.retry.rate_limited == timedelta(seconds=45)


def test_the_429_pause_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR__PAGERDUTY__RETRY__RATE_LIMITED", "20s")
    monkeypatch.setenv("SIDECAR__PAGERDUTY__RATE_LIMIT_WINDOW", "30s")
    pd = load_config(write_config(tmp_path)).settings.pagerduty
    assert (pd.retry.rate_limited, pd.rate_limit_window) == (
        timedelta(seconds=20),
        timedelta(seconds=30),
    )


def test_a_rate_limit_window_under_a_second_is_refused(tmp_path: Path) -> None:
    (problem,) = problems(write_config(tmp_path, {"pagerduty": {"rate_limit_window": "500ms"}}))
    assert problem.location == "pagerduty.rate_limit_window"
    assert "at least 1s" in problem.reason
