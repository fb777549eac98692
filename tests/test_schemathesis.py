"""schemathesis against the OpenAPI document and a real in-process sidecar.

The sidecar runs on 127.0.0.1 in a background thread with its own event loop
(schemathesis calls it synchronously through requests), with PagerDuty inbound
webhooks enabled; a requests auth hook signs every body with the webhook secret,
as PagerDuty does, so the PagerDuty operation is exercised past its signature
check. Every answer must be a documented status with a documented content type
and schema, and never a 5xx. Examples are bounded and derandomized.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from hypothesis import HealthCheck, Phase, settings
from prometheus_client import CollectorRegistry

from sidecar.clock import SystemClock
from sidecar.config import load_config
from sidecar.runtime import build_components
from sidecar.web import create_app
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN, write_config
from tests.fakes.pagerduty import signature_header
from tests.payloads import alert, body, notification
from tests.support.binaries import in_ci

try:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
except ImportError:  # a dev dependency: required in CI, optional on a laptop
    if in_ci():
        pytest.fail("schemathesis (dev extras) is not installed", pytrace=False)
    pytest.skip("schemathesis is not installed", allow_module_level=True)

SPEC = Path(__file__).parent.parent / "sidecar" / "web" / "openapi.yaml"
SECRET = "schemathesis-webhook-secret"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# GET /openapi.yaml has no input to generate; tests/test_openapi.py checks what it serves.
schema = schemathesis.openapi.from_path(SPEC).exclude(path="/openapi.yaml")


class ServerThread:
    """An aiohttp application served from a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.base_url = ""
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        """Serve on a free loopback port; returns once it accepts requests."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    def stop(self) -> None:
        """Run the application's cleanup, then stop the loop and the thread."""
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


class PagerDutySignature(requests.auth.AuthBase):
    """Sign the prepared body as PagerDuty signs a webhook delivery."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        raw = request.body
        data = raw.encode() if isinstance(raw, str) else raw if isinstance(raw, bytes) else b""
        request.headers["X-PagerDuty-Signature"] = signature_header(data, SECRET)
        return request


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sidecar with a few incidents in every state, served on 127.0.0.1."""
    workdir = tmp_path_factory.mktemp("schemathesis")
    config = load_config(write_config(workdir, {"pagerduty": {"webhook_secret": SECRET}}))
    components = build_components(config, clock=SystemClock(), registry=CollectorRegistry())
    server = ServerThread(create_app(components))
    server.start()
    try:
        hook = f"{server.base_url}/webhook/alertmanager"
        auth = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
        for i in range(3):
            payload = notification(alert(f"Seed{i}", fingerprint=f"{i:016x}"), group_key=f"g{i}")
            assert requests.post(hook, data=body(payload), headers=auth, timeout=10).ok
        api = {"Authorization": f"Bearer {API_TOKEN}"}
        listed = requests.get(f"{server.base_url}/api/v1/incidents", headers=api, timeout=10)
        first, second = (i["id"] for i in listed.json()["incidents"][:2])
        incidents = f"{server.base_url}/api/v1/incidents"
        assert requests.post(f"{incidents}/{first}/acknowledge", headers=api, timeout=10).ok
        assert requests.post(f"{incidents}/{second}/resolve", headers=api, timeout=10).ok
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """A session that never takes a proxy from the environment and signs PagerDuty bodies."""
    with requests.Session() as http:
        http.trust_env = False
        http.auth = PagerDutySignature()
        yield http


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_the_api_conforms_to_its_openapi_document(
    case: Any, base_url: str, session: requests.Session
) -> None:
    token = WEBHOOK_TOKEN if case.path.startswith("/webhook/") else API_TOKEN
    case.call_and_validate(
        base_url=base_url,
        session=session,
        headers={"Authorization": f"Bearer {token}"},
        checks=CHECKS,
        timeout=15,
    )
