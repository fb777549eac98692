"""Shared fixtures: a clean environment, a small rules file, and an in-process sidecar."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.clock import FakeClock
from sidecar.config import Config, load_config
from sidecar.runtime import Components, build_components
from sidecar.web import create_app
from tests.support.readers import basic_auth_header, reader_credentials, write_users_file

pytest_plugins = ["tests.support.fixtures"]

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
WEBHOOK_TOKEN = "test-webhook-token"
API_TOKEN = "test-api-token"
READER, READER_PASSWORD = reader_credentials()
READ_AUTH = basic_auth_header(READER, READER_PASSWORD)
"""What the shared clients send unless a test says otherwise: reads are protected."""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SIDECAR__ variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("SIDECAR__"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A config in ``tmp_path`` using the mini rules, with sections merged from ``overrides``."""
    rules = tmp_path / "rules.yaml"
    if not rules.exists():
        rules.write_text((DATA / "rules-mini.yaml").read_text())
    data: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "webhook_token": WEBHOOK_TOKEN,
            "api_token": API_TOKEN,
            "web_config_file": str(write_users_file(tmp_path / "web-config.yml")),
        },
        "store": {"url": "sqlite:///data/sidecar.db"},
        "rules": {"file": "rules.yaml"},
        "logging": {"format": "text"},
    }
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:  # a list section (webhooks)
            data[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Config]:
    """Build a loaded Config from section overrides."""

    def make(overrides: dict[str, Any] | None = None) -> Config:
        return load_config(write_config(tmp_path, overrides))

    return make


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves."""
    return FakeClock(1_700_000_600.0)


@pytest.fixture
def components(config_factory: Callable[..., Config], clock: FakeClock) -> Components:
    """The sidecar's parts on a fresh registry, fake clock and tmp SQLite store."""
    return build_components(config_factory(), clock=clock, registry=CollectorRegistry())


@pytest.fixture
def aiohttp_client(aiohttp_client: Callable[..., Any]) -> Callable[..., Any]:
    """pytest-aiohttp's client factory, its clients signed in as the test reader by default.

    Reads need credentials, and every config of :func:`write_config` has the
    reader; a request's own ``Authorization`` header replaces the reader's.
    """

    async def make(app: Any, *args: Any, **kwargs: Any) -> Any:
        headers = {"Authorization": READ_AUTH, **(kwargs.pop("headers", None) or {})}
        return await aiohttp_client(app, *args, headers=headers, **kwargs)

    return make


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Any], components: Components
) -> AsyncIterator[TestClient[Any, Any]]:
    """An HTTP client of an in-process sidecar, signed in as a reader (basic auth) by default.

    A request's own ``Authorization`` header replaces the reader's.
    """
    yield await aiohttp_client(create_app(components))


@pytest.fixture
def auth() -> Iterator[dict[str, str]]:
    """Headers with the webhook token."""
    yield {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}


@pytest.fixture
def api_auth() -> dict[str, str]:
    """Headers with the API token."""
    return {"Authorization": f"Bearer {API_TOKEN}"}
