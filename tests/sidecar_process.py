"""Run the real sidecar as a separate process, as users run it (``python -m sidecar serve``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port
from tests.support.processes import ManagedProcess
from tests.support.readers import READER, READER_PASSWORD, basic_auth_header, write_users_file

REPO = Path(__file__).parent.parent


class SidecarProcess(ManagedProcess):
    """The sidecar on a free loopback port with its own config, rules and SQLite file."""

    def __init__(
        self,
        workdir: Path,
        *,
        preset: str = "llm-marketplace",
        webhook_token: str = "e2e-webhook-token",
        api_token: str = "e2e-api-token",
        overrides: dict[str, Any] | None = None,
        port: int | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_token = webhook_token
        self.api_token = api_token
        config: dict[str, Any] = {
            "server": {
                "listen": f"127.0.0.1:{self.port}",
                "webhook_token": webhook_token,
                "api_token": api_token,
                # Reads need credentials: the test reader signs in (see read_headers).
                "web_config_file": str(write_users_file(workdir / "web-config.yml")),
            },
            "store": {"url": "sqlite:///data/sidecar.db"},
            "rules": {"file": str(REPO / "rules" / f"{preset}.yaml")},
            "logging": {"format": "json"},
        }
        for section, values in (overrides or {}).items():
            config.setdefault(section, {}).update(values)
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.db_path = workdir / "data" / "sidecar.db"
        super().__init__(
            "sidecar",
            [sys.executable, "-m", "sidecar", "serve", "--config", str(self.config_path)],
            log_path=workdir / "sidecar.log",
            cwd=REPO,
            ready_url=f"{self.url}/readyz",
            ready_timeout=30.0,
        )

    @property
    def read_headers(self) -> dict[str, str]:
        """Headers that sign a read (pages, ``GET /api/v1/*``) in as the test reader."""
        return {"Authorization": basic_auth_header(READER, READER_PASSWORD)}

    @property
    def webhook_url(self) -> str:
        """Where Alertmanager posts."""
        return f"{self.url}/webhook/alertmanager"


def record_only_ladders(rules_text: str) -> str:
    """A rules file with every escalation step and escalation rule declared ``record_only``.

    For tests about the owning team's page with PagerDuty configured: a tier
    without a routing key is refused at start, and these tests page no tier.
    """
    data = yaml.safe_load(rules_text)
    for severity in data["severities"]:
        for step in severity.get("escalation", []):
            step["record_only"] = True
    for rule in data.get("escalation_rules", []):
        rule["record_only"] = True
    return yaml.safe_dump(data, sort_keys=False)


def record_only_preset(preset: str, directory: Path) -> Path:
    """The preset, its ladders record-only (see :func:`record_only_ladders`), in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{preset}-record-only.yaml"
    text = (REPO / "rules" / f"{preset}.yaml").read_text(encoding="utf-8")
    path.write_text(record_only_ladders(text), encoding="utf-8")
    return path


def without_recovery_watch(rules_text: str) -> str:
    """A rules file whose severities close at resolution (no ``recovery_watch``).

    For tests in real time that read the time to resolve right after a
    resolution: with a watch it is observed only when the watch ends.
    """
    data = yaml.safe_load(rules_text)
    for severity in data["severities"]:
        severity.pop("recovery_watch", None)
    return yaml.safe_dump(data, sort_keys=False)


def unwatched_preset(preset: str, directory: Path) -> Path:
    """The preset without recovery watches (:func:`without_recovery_watch`), in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{preset}-unwatched.yaml"
    text = (REPO / "rules" / f"{preset}.yaml").read_text(encoding="utf-8")
    path.write_text(without_recovery_watch(text), encoding="utf-8")
    return path
