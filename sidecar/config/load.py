"""Loading a configuration: the file, then ``SIDECAR__`` overrides, then the secrets.

Every problem is reported at once, pointing at the file's line or at the
environment variable that set the value; a ``SIDECAR__`` variable that names
no section or key is a problem too, so that a typo cannot pass silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from sidecar.config.secrets import Secrets
from sidecar.config.settings import ENV_PREFIX, Settings, beside
from sidecar.errors import ConfigError, ConfigProblem
from sidecar.tls import TLSFiles
from sidecar.yamlfile import Loc, load_yaml, problems_from_validation


class Config:
    """A loaded configuration: validated settings, resolved paths and secrets."""

    def __init__(self, path: Path, settings: Settings, secrets: Secrets) -> None:
        self.path = path
        self.settings = settings
        self.secrets = secrets
        self.base_dir = path.parent

    def resolve(self, path: Path) -> Path:
        """Resolve ``path`` against the configuration file's directory."""
        return beside(self.path, path)

    @property
    def rules_file(self) -> Path:
        """The rules file to load."""
        return self.resolve(self.settings.rules.file)

    @property
    def tls_files(self) -> TLSFiles | None:
        """The server's TLS files, resolved, or None to serve plain HTTP."""
        server = self.settings.server
        if server.tls_cert_file is None or server.tls_key_file is None:
            return None
        ca = server.tls_client_ca_file
        return TLSFiles(
            cert=self.resolve(server.tls_cert_file),
            key=self.resolve(server.tls_key_file),
            client_ca=None if ca is None else self.resolve(ca),
        )

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database path, or None when the store is not SQLite."""
        url = self.settings.store.url
        if not url.startswith("sqlite:///"):
            return None
        return self.resolve(Path(url.removeprefix("sqlite:///")))


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
    secrets = Secrets.read(settings, path) if read_secrets else Secrets()
    return Config(path, settings, secrets)


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
    return beside(path, Path(file))


def _overrides() -> Iterator[tuple[str, list[str]]]:
    """Each ``SIDECAR__`` variable, with the lower-case names of what it sets."""
    for var in os.environ:
        if var.upper().startswith(ENV_PREFIX):
            yield var, var[len(ENV_PREFIX) :].lower().split("__")


def _env_override_location(loc: Loc) -> str | None:
    names = [str(p) for p in loc if isinstance(p, str)]
    overridden = {var.upper() for var, _ in _overrides()}
    for depth in range(len(names), 0, -1):
        var = ENV_PREFIX + "__".join(n.upper() for n in names[:depth])
        if var in overridden:
            return var
    return None


def _env_wins_over_file(data: dict[str, Any]) -> None:
    """An env var for ``x`` replaces the file's ``x_file`` (and the reverse), not conflicts."""
    for _, parts in _overrides():
        if len(parts) != 2 or not isinstance(data.get(parts[0]), dict):
            continue
        section, key = data[parts[0]], parts[1]
        twin = key.removesuffix("_file") if key.endswith("_file") else f"{key}_file"
        section.pop(twin, None)


def _unknown_env_vars() -> list[ConfigProblem]:
    """SIDECAR__ variables that name no section or key: a typo must not pass silently."""
    problems = []
    for var, parts in _overrides():
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
