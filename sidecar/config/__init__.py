"""The sidecar's configuration: one YAML file, validated by pydantic, overridable by environment.

Every key can be overridden by ``SIDECAR__<SECTION>__<KEY>`` (pydantic-settings'
nested delimiter), and every secret can instead be read from a mounted file
(``<key>_file``), the way Prometheus and Alertmanager take ``credentials_file``.
Relative paths (rules file, secret files, SQLite database) are resolved against
the directory of the configuration file, so a config and its rules travel together.

- :mod:`~sidecar.config.settings`: the file's format, one model a section;
- :mod:`~sidecar.config.secrets`: the secret values, inline or from files;
- :mod:`~sidecar.config.load`: :func:`load_config`, environment overrides and all.
"""

from sidecar.config.load import Config, load_config, rules_file_of
from sidecar.config.secrets import Secrets
from sidecar.config.settings import (
    DEFAULT_PORT,
    ENV_PREFIX,
    AlertmanagerConfig,
    IncidentsConfig,
    ListenAddress,
    LoggingConfig,
    PagerDutyConfig,
    RetryConfig,
    RoutingKey,
    RulesConfig,
    ServerConfig,
    Settings,
    StoreConfig,
    beside,
    split_listen,
)

__all__ = [
    "DEFAULT_PORT",
    "ENV_PREFIX",
    "AlertmanagerConfig",
    "Config",
    "IncidentsConfig",
    "ListenAddress",
    "LoggingConfig",
    "PagerDutyConfig",
    "RetryConfig",
    "RoutingKey",
    "RulesConfig",
    "Secrets",
    "ServerConfig",
    "Settings",
    "StoreConfig",
    "beside",
    "load_config",
    "rules_file_of",
    "split_listen",
]
