"""The configuration file's format: one section a top-level key, validated by pydantic.

Every key can be overridden by ``SIDECAR__<SECTION>__<KEY>`` (pydantic-settings'
nested delimiter). A secret is given inline or as a mounted file (``<key>_file``),
never both; reading the files is :mod:`sidecar.config.secrets`'.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.config.integrations import (
    JiraConfig,
    NotificationsConfig,
    RemindersConfig,
    SlackConfig,
    TemplatesConfig,
    WebhookEndpoint,
)
from sidecar.durations import ByteSize, Duration

ENV_PREFIX = "SIDECAR__"
DEFAULT_PORT = 9095


def split_listen(value: Any) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:9095`` for IPv6) into host and port; raise ValueError."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected host:port, as in 0.0.0.0:9095")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid port {port_text!r} in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    return (host or "0.0.0.0", port)  # noqa: S104 - an empty host means all interfaces


def _check_listen(value: Any) -> str:
    split_listen(value)
    return str(value)


ListenAddress = Annotated[str, BeforeValidator(_check_listen)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret_pair(model: BaseModel, name: str) -> None:
    if getattr(model, name) is not None and getattr(model, f"{name}_file") is not None:
        raise ValueError(f"set either {name} or {name}_file, not both")


class ServerConfig(_Section):
    """``server``: where to listen and who may write."""

    listen: ListenAddress = f"0.0.0.0:{DEFAULT_PORT}"
    webhook_token: SecretStr | None = None
    webhook_token_file: Path | None = None
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    insecure_disable_auth: bool = False
    max_body_size: ByteSize = 16 * 1024 * 1024
    # How users reach the sidecar (links in PagerDuty events and reviews).
    external_url: str | None = None
    # Who may read (pages and GET /api/v1/*) besides the API token: people in a
    # Prometheus web.config.file (basic_auth_users, bcrypt), and, as an explicit
    # opt-out for a cluster with an authenticating proxy in front (oauth2-proxy),
    # the header in which that proxy passes the signed-in user.
    web_config_file: Path | None = None
    trusted_user_header: str | None = None

    @field_validator("trusted_user_header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9-]+", value):
            raise ValueError("must be an HTTP header name, such as X-Forwarded-User")
        if value is not None and value.lower() in {"authorization", "cookie", "host"}:
            raise ValueError(f"{value} does not carry a user name")
        return value

    @field_validator("external_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an absolute http:// or https:// URL")
        return value

    # HTTPS, for clusters without a mesh: PEM files, re-read when they change on disk.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # mTLS: clients must present a certificate signed by one of these CAs.
    tls_client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _tls(self) -> ServerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        return self

    @model_validator(mode="after")
    def _tokens(self) -> ServerConfig:
        _secret_pair(self, "webhook_token")
        _secret_pair(self, "api_token")
        if self.insecure_disable_auth:
            return self
        missing = [
            name
            for name in ("webhook_token", "api_token")
            if getattr(self, name) is None and getattr(self, f"{name}_file") is None
        ]
        if missing:
            raise ValueError(
                f"{' and '.join(missing)} (or *_file) required: mutating endpoints need "
                "credentials unless server.insecure_disable_auth is true"
            )
        return self


class StoreConfig(_Section):
    """``store``: where incidents are kept."""

    url: str = "sqlite:///data/sidecar.db"
    # FULL survives power loss, NORMAL only process crashes; FULL is the safe default.
    synchronous: Literal["full", "normal"] = "full"
    max_batch: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// (embedded) or postgresql://")
        return url


class RulesConfig(_Section):
    """``rules``: the severity and ownership rules file (a preset or your own)."""

    file: Path


class IncidentsConfig(_Section):
    """``incidents``: what makes one incident."""

    key: Literal["group", "alert"] = "group"
    # How long a resolved incident's alerts are remembered, so that a late
    # duplicate (HA peers, retries) neither reopens nor duplicates it.
    dedup_window: Duration = timedelta(hours=6)
    # The IANA time zone whose days number incidents (2026-11-30-001).
    number_timezone: str = "UTC"

    @field_validator("number_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as UTC or Europe/Berlin"
            ) from None
        return value


class AlertmanagerConfig(_Section):
    """``alertmanager``: the Alertmanager API, polled for silences."""

    url: str | None = None
    # Silencing every firing alert of an incident acknowledges it.
    silences_acknowledge: bool = True
    # Only silences whose comment starts with this count (e.g. "ack:"); unset: all.
    silence_comment_prefix: str | None = None
    poll_interval: Duration = timedelta(seconds=15)


class RoutingKey(_Section):
    """A PagerDuty routing key, inline or from a mounted file."""

    key: SecretStr | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> RoutingKey:
        if (self.key is None) == (self.file is None):
            raise ValueError("give exactly one of key or file")
        return self


class RetryConfig(_Section):
    """``pagerduty.retry``: waits after failed sends (see :mod:`sidecar.notify.retry`)."""

    # 5xx, timeouts and network errors: exponential from initial, with jitter, up to max.
    initial: Duration = timedelta(seconds=1)
    max: Duration = timedelta(minutes=5)
    # A 429 waits its Retry-After (at most max), else this (PagerDuty suggests 30 s),
    # whatever failed before. ``rate_limited_initial`` is its former name, still read.
    rate_limited: Duration = Field(
        default=timedelta(seconds=30),
        validation_alias=AliasChoices("rate_limited", "rate_limited_initial"),
    )


class PagerDutyConfig(_Section):
    """``pagerduty``: Events API v2 out, webhooks v3 in."""

    events_url: str = "https://events.pagerduty.com/v2/enqueue"
    api_url: str = "https://api.pagerduty.com"
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    webhook_secret: SecretStr | None = None
    webhook_secret_file: Path | None = None
    routing_key: SecretStr | None = None
    routing_key_file: Path | None = None
    # Per owning team and per escalation tier; a team without its own key
    # pages through the default routing key.
    team_routing_keys: dict[str, RoutingKey] = Field(default_factory=dict)
    tier_routing_keys: dict[str, RoutingKey] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=10)
    # Shared by every replica, per routing key, counted as PagerDuty does: over a
    # rolling window of a minute (a shorter window, scaled alike, only speeds tests).
    rate_limit_per_minute: int = Field(default=120, ge=1)
    rate_limit_window: Duration = timedelta(minutes=1)
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _pairs(self) -> PagerDutyConfig:
        for name in ("api_token", "webhook_secret", "routing_key"):
            _secret_pair(self, name)
        return self

    @field_validator("rate_limit_window")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value


class LoggingConfig(_Section):
    """``logging``: level and format of the structured logs."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class Settings(BaseSettings):
    """The whole configuration file, with ``SIDECAR__SECTION__KEY`` overrides."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    # Validated even when absent, so a config without a server section still
    # has to give tokens (or opt out explicitly).
    server: ServerConfig = Field(default_factory=dict, validate_default=True)
    store: StoreConfig = StoreConfig()
    rules: RulesConfig
    incidents: IncidentsConfig = IncidentsConfig()
    alertmanager: AlertmanagerConfig = AlertmanagerConfig()
    pagerduty: PagerDutyConfig = PagerDutyConfig()
    slack: SlackConfig | None = None
    webhooks: list[WebhookEndpoint] = Field(default_factory=list)
    jira: JiraConfig | None = None
    reminders: RemindersConfig = RemindersConfig()
    templates: TemplatesConfig = TemplatesConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _webhook_names(self) -> Settings:
        names = [w.name for w in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError("webhooks: every endpoint needs its own name")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file; no .env files, no secrets_dir magic.
        return (env_settings, init_settings)


def beside(config_file: Path, path: Path) -> Path:
    """``path`` resolved against the directory of ``config_file``, unless it is absolute.

    So that a configuration and the files it names (rules, secrets, the SQLite
    database) travel together.
    """
    return path if path.is_absolute() else config_file.parent / path
