"""The configuration's secrets: read from the file, the environment or mounted files.

Each secret is given inline (``webhook_token``) or as a file (``webhook_token_file``,
resolved against the configuration's directory), the way Prometheus and
Alertmanager take ``credentials_file``. Every unreadable or empty file is
reported at once, and the values never show in a ``repr``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from sidecar.config.settings import Settings, beside
from sidecar.config.users import read_users
from sidecar.errors import ConfigError, ConfigProblem


class Secrets:
    """Secret values resolved from the config, the environment or mounted files."""

    __slots__ = (
        "api_token",
        "jira_api_token",
        "outbound_secrets",
        "pagerduty_api_token",
        "routing_keys",
        "slack_token",
        "users",
        "webhook_secret",
        "webhook_token",
    )

    def __init__(
        self,
        *,
        webhook_token: str | None = None,
        api_token: str | None = None,
        pagerduty_api_token: str | None = None,
        webhook_secret: str | None = None,
        routing_keys: dict[str, str] | None = None,
        users: dict[str, bytes] | None = None,
        slack_token: str | None = None,
        jira_api_token: str | None = None,
        outbound_secrets: dict[str, str] | None = None,
    ) -> None:
        self.webhook_token = webhook_token
        self.api_token = api_token
        self.pagerduty_api_token = pagerduty_api_token
        self.webhook_secret = webhook_secret
        # "default", "team:<name>", "tier:<name>" -> key; only these names are ever stored.
        self.routing_keys = routing_keys or {}
        # User name -> bcrypt hash, from server.web_config_file.
        self.users = users or {}
        self.slack_token = slack_token
        self.jira_api_token = jira_api_token
        # Outbound webhook name -> its signing secret.
        self.outbound_secrets = outbound_secrets or {}

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"

    @classmethod
    def read(cls, settings: Settings, config_file: Path) -> Secrets:
        """The secrets ``settings`` give, files read beside ``config_file``; raise ConfigError."""
        problems: list[ConfigProblem] = []

        def pick(location: str, value: SecretStr | None, file: Path | None) -> str | None:
            if value is not None:
                return value.get_secret_value()
            if file is None:
                return None
            resolved = beside(config_file, file)
            try:
                text = resolved.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(
                    ConfigProblem(
                        str(config_file),
                        location,
                        f"cannot read secret file {resolved}: {exc.strerror}",
                    )
                )
                return None
            if not text:
                problems.append(ConfigProblem(str(config_file), location, f"{resolved} is empty"))
                return None
            return text

        server, pd = settings.server, settings.pagerduty
        routing_keys: dict[str, str] = {}
        default_key = pick("pagerduty.routing_key_file", pd.routing_key, pd.routing_key_file)
        if default_key is not None:
            routing_keys["default"] = default_key
        for kind, refs in (("team", pd.team_routing_keys), ("tier", pd.tier_routing_keys)):
            for name, ref in refs.items():
                value = pick(f"pagerduty.{kind}_routing_keys.{name}.file", ref.key, ref.file)
                if value is not None:
                    routing_keys[f"{kind}:{name}"] = value
        secrets = cls(
            webhook_token=pick(
                "server.webhook_token_file", server.webhook_token, server.webhook_token_file
            ),
            api_token=pick("server.api_token_file", server.api_token, server.api_token_file),
            pagerduty_api_token=pick("pagerduty.api_token_file", pd.api_token, pd.api_token_file),
            webhook_secret=pick(
                "pagerduty.webhook_secret_file", pd.webhook_secret, pd.webhook_secret_file
            ),
            routing_keys=routing_keys,
            slack_token=(
                pick("slack.token_file", settings.slack.token, settings.slack.token_file)
                if settings.slack
                else None
            ),
            jira_api_token=(
                pick("jira.api_token_file", settings.jira.api_token, settings.jira.api_token_file)
                if settings.jira
                else None
            ),
            outbound_secrets={
                hook.name: secret
                for i, hook in enumerate(settings.webhooks)
                if (secret := pick(f"webhooks.{i}.secret_file", hook.secret, hook.secret_file))
            },
        )
        if server.web_config_file is not None:
            try:
                secrets.users = read_users(beside(config_file, server.web_config_file))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return secrets
