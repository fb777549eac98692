"""The sidecar's configuration: one YAML file, validated by pydantic, overridable by environment.

Every key can be overridden by ``SIDECAR__<SECTION>__<KEY>`` (pydantic-settings'
nested delimiter), and every secret can instead be read from a mounted file
(``<key>_file``), the way Prometheus and Alertmanager take ``credentials_file``.
Relative paths (rules file, secret files, SQLite database) are resolved against
the directory of the configuration file, so a config and its rules travel together.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from sidecar.durations import ByteSize, Duration
from sidecar.errors import ConfigError, ConfigProblem
from sidecar.yamlfile import Loc, load_yaml, problems_from_validation

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
    """``pagerduty.retry``: waits after failed sends (see :mod:`sidecar.retry`)."""

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
    logging: LoggingConfig = LoggingConfig()

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


class Secrets:
    """Secret values resolved from the config, the environment or mounted files."""

    __slots__ = (
        "api_token",
        "pagerduty_api_token",
        "routing_keys",
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
    ) -> None:
        self.webhook_token = webhook_token
        self.api_token = api_token
        self.pagerduty_api_token = pagerduty_api_token
        self.webhook_secret = webhook_secret
        # "default", "team:<name>", "tier:<name>" -> key; only these names are ever stored.
        self.routing_keys = routing_keys or {}

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


class Config:
    """A loaded configuration: validated settings, resolved paths and secrets."""

    def __init__(self, path: Path, settings: Settings, secrets: Secrets) -> None:
        self.path = path
        self.settings = settings
        self.secrets = secrets
        self.base_dir = path.parent

    def resolve(self, path: Path) -> Path:
        """Resolve ``path`` against the configuration file's directory."""
        return path if path.is_absolute() else self.base_dir / path

    @property
    def rules_file(self) -> Path:
        """The rules file to load."""
        return self.resolve(self.settings.rules.file)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database path, or None when the store is not SQLite."""
        url = self.settings.store.url
        if not url.startswith("sqlite:///"):
            return None
        return self.resolve(Path(url.removeprefix("sqlite:///")))


def _env_override_location(loc: Loc) -> str | None:
    names = [str(p) for p in loc if isinstance(p, str)]
    for depth in range(len(names), 0, -1):
        var = ENV_PREFIX + "__".join(n.upper() for n in names[:depth])
        if any(k.upper() == var for k in os.environ):
            return var
    return None


def rules_file_of(path: Path) -> Path | None:
    """The rules file a (possibly invalid) configuration names, if it names one readably."""
    try:
        data = load_yaml(path).data
    except ConfigError:
        return None
    rules = data.get("rules") if isinstance(data, dict) else None
    file = rules.get("file") if isinstance(rules, dict) else None
    if not isinstance(file, str) or not file:
        return None
    return Path(file) if Path(file).is_absolute() else path.parent / file


def _env_wins_over_file(data: dict[str, Any]) -> None:
    """An env var for ``x`` replaces the file's ``x_file`` (and the reverse), not conflicts."""
    for var in os.environ:
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not isinstance(data.get(parts[0]), dict):
            continue
        section, key = data[parts[0]], parts[1]
        twin = key.removesuffix("_file") if key.endswith("_file") else f"{key}_file"
        section.pop(twin, None)


def _unknown_env_vars() -> list[ConfigProblem]:
    """SIDECAR__ variables that name no section or key: a typo must not pass silently."""
    problems = []
    for var in os.environ:
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        section = Settings.model_fields.get(parts[0])
        reason = None
        if section is None:
            reason = f"unknown section {parts[0]!r}"
        elif len(parts) > 1:
            model = section.annotation
            fields = getattr(model, "model_fields", None)
            if isinstance(fields, dict) and parts[1] not in fields:
                reason = f"unknown key {parts[1]!r} in section {parts[0]!r}"
        if reason:
            problems.append(ConfigProblem(f"environment {var}", ".".join(parts), reason))
    return problems


def load_config(path: Path, *, read_secrets: bool = True) -> Config:
    """Load, validate and resolve a configuration file; raise ConfigError listing every problem.

    ``read_secrets=False`` skips reading secret files (for ``test-rules``, which needs none).
    """
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError([ConfigProblem(str(path), "", "the configuration must be a mapping")])
    if unknown := _unknown_env_vars():
        raise ConfigError(unknown)
    for section, value in doc.data.items():
        if value is None:
            doc.data[section] = {}  # a section whose keys are all commented out
    _env_wins_over_file(doc.data)
    try:
        settings = Settings(**doc.data)
    except ValidationError as exc:
        problems = []
        for problem in problems_from_validation(exc, str(path), doc.position):
            loc = tuple(problem.location.replace("[", ".").replace("]", "").split("."))
            env_var = _env_override_location(loc)
            if env_var is not None:
                problem = ConfigProblem(f"environment {env_var}", problem.location, problem.reason)
            problems.append(problem)
        raise ConfigError(problems) from exc
    except SettingsError as exc:
        raise ConfigError([ConfigProblem("environment", "", str(exc))]) from exc
    config = Config(path, settings, Secrets())
    if read_secrets:
        config.secrets = _read_secrets(config)
    return config


def _read_secrets(config: Config) -> Secrets:
    problems: list[ConfigProblem] = []
    s = config.settings

    def pick(location: str, value: SecretStr | None, file: Path | None) -> str | None:
        if value is not None:
            return value.get_secret_value()
        if file is None:
            return None
        resolved = config.resolve(file)
        try:
            text = resolved.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(
                ConfigProblem(
                    str(config.path),
                    location,
                    f"cannot read secret file {resolved}: {exc.strerror}",
                )
            )
            return None
        if not text:
            problems.append(ConfigProblem(str(config.path), location, f"{resolved} is empty"))
            return None
        return text

    pd = s.pagerduty
    routing_keys: dict[str, str] = {}
    default_key = pick("pagerduty.routing_key_file", pd.routing_key, pd.routing_key_file)
    if default_key is not None:
        routing_keys["default"] = default_key
    for kind, refs in (("team", pd.team_routing_keys), ("tier", pd.tier_routing_keys)):
        for name, ref in refs.items():
            value = pick(f"pagerduty.{kind}_routing_keys.{name}.file", ref.key, ref.file)
            if value is not None:
                routing_keys[f"{kind}:{name}"] = value
    secrets = Secrets(
        webhook_token=pick(
            "server.webhook_token_file", s.server.webhook_token, s.server.webhook_token_file
        ),
        api_token=pick("server.api_token_file", s.server.api_token, s.server.api_token_file),
        pagerduty_api_token=pick("pagerduty.api_token_file", pd.api_token, pd.api_token_file),
        webhook_secret=pick(
            "pagerduty.webhook_secret_file", pd.webhook_secret, pd.webhook_secret_file
        ),
        routing_keys=routing_keys,
    )
    if problems:
        raise ConfigError(problems)
    return secrets
