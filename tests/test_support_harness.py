"""Smoke tests of the end-to-end harness in tests/support: each real component starts, answers
and behaves as the sidecar's end-to-end tests will rely on.

The e2e tests need the Debian packages prometheus-alertmanager, prometheus, postgresql-15 and
postgresql-client-15; without them they skip, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.alertmanager import group_key, make_alert
from tests.support.binaries import find_binary, missing_binary_message, require_binary
from tests.support.fixtures import (
    AlertmanagerClusterFactory,
    AlertmanagerFactory,
    PrometheusFactory,
)
from tests.support.ports import free_port, free_ports
from tests.support.postgres import PostgresCluster
from tests.support.processes import ManagedProcess, ProcessError, http_ready
from tests.support.prometheus import SCRAPE_JOB, promtool

# Upper bound for anything a test waits on; a healthy run needs a few seconds at most.
WAIT_SECONDS = 20.0
WEBHOOK_TOKEN = "harness-webhook-token"
ServerFactory = Callable[..., Any]


@dataclass(frozen=True)
class Delivery:
    """One webhook request as the receiver saw it."""

    headers: dict[str, str]
    payload: dict[str, Any]


class WebhookRecorder:
    """A real aiohttp webhook receiver that records every delivery.

    With ``hold_until`` it answers no request before that many have arrived (or a bound passes),
    like a slow receiver: Alertmanager writes its notification log only after a successful
    send, so HA replicas cannot deduplicate against each other meanwhile.
    """

    def __init__(self, hold_until: int = 0) -> None:
        self.hold_until = hold_until
        self.deliveries: list[Delivery] = []
        self._changed = asyncio.Condition()

    def app(self) -> web.Application:
        """Build the receiver application (POST /hook)."""
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        async with self._changed:
            self.deliveries.append(Delivery(dict(request.headers), payload))
            self._changed.notify_all()
            if self.hold_until:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WAIT_SECONDS):
                        await self._changed.wait_for(
                            lambda: len(self.deliveries) >= self.hold_until
                        )
        return web.json_response({"status": "ok"})

    async def wait_for(self, predicate: Callable[[list[Delivery]], bool]) -> list[Delivery]:
        """Wait until ``predicate`` holds for the deliveries so far and return them."""
        try:
            async with asyncio.timeout(WAIT_SECONDS), self._changed:
                await self._changed.wait_for(lambda: predicate(self.deliveries))
        except TimeoutError:
            raise AssertionError(
                f"no matching webhook within {WAIT_SECONDS:g}s; got {self.deliveries}"
            ) from None
        return list(self.deliveries)


def with_status(status: str) -> Callable[[list[Delivery]], bool]:
    """Predicate: some delivery has this notification status."""
    return lambda deliveries: any(d.payload["status"] == status for d in deliveries)


async def start_recorder(
    aiohttp_server: ServerFactory, hold_until: int = 0
) -> tuple[WebhookRecorder, str]:
    """Start a recorder on 127.0.0.1 and return it with its webhook URL."""
    recorder = WebhookRecorder(hold_until)
    server: TestServer = await aiohttp_server(recorder.app(), host="127.0.0.1")
    return recorder, str(server.make_url("/hook"))


async def eventually(check: Callable[[], Any], what: str) -> None:
    """Re-run an async check until it returns true, failing after WAIT_SECONDS."""
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {WAIT_SECONDS:g}s") from None


# --- the harness's own building blocks (no Debian packages needed) ---------------------------


def test_require_binary_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "incident-sla-sidecar-no-such-binary"
    assert find_binary(missing) is None
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install the Debian package"):
        require_binary(missing)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=missing):
        require_binary(missing)


def test_missing_binary_message_names_the_debian_package() -> None:
    assert "postgresql-15" in missing_binary_message("initdb")
    assert "prometheus-alertmanager" in missing_binary_message("amtool")


def test_require_binary_finds_an_executable_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = tmp_path / "harness-tool"
    tool.write_text("#!/bin/sh\n", encoding="utf-8")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert require_binary("harness-tool") == tool


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5, udp=True)
    assert len(set(ports)) == 5
    assert all(1024 <= port <= 65535 for port in ports)


def test_managed_process_waits_for_readiness_and_stops(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = ManagedProcess(
        "http.server",
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        log_path=tmp_path / "server.log",
        cwd=tmp_path,
        ready_url=url,
    )
    with process:
        assert process.running
        assert http_ready(url)
    assert not process.running
    assert process.returncode == -15  # ended by SIGTERM, the default stop signal


def test_managed_process_kill_is_sigkill(tmp_path: Path) -> None:
    process = ManagedProcess(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=tmp_path / "sleeper.log",
        ready_check=lambda: True,
    ).start()
    assert process.kill() == -9
    assert not process.running


def test_managed_process_reports_early_exit_with_log_tail(tmp_path: Path) -> None:
    process = ManagedProcess(
        "crasher",
        [sys.executable, "-c", "import sys; print('boom: bad config', flush=True); sys.exit(3)"],
        log_path=tmp_path / "crasher.log",
        ready_url=f"http://127.0.0.1:{free_port()}/",
    )
    with pytest.raises(ProcessError, match=r"(?s)status 3 .*boom: bad config"):
        process.start()


def test_managed_process_gives_up_after_ready_timeout(tmp_path: Path) -> None:
    process = ManagedProcess(
        "never-ready",
        [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(60)"],
        log_path=tmp_path / "never.log",
        ready_check=lambda: False,
        ready_timeout=0.5,
    )
    with pytest.raises(ProcessError, match=r"(?s)not ready .*starting"):
        process.start()
    assert not process.running


# --- Alertmanager ------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("auth", ["bearer", "basic"])
async def test_alertmanager_delivers_firing_then_resolved_webhook(
    aiohttp_server: ServerFactory, alertmanager_factory: AlertmanagerFactory, auth: str
) -> None:
    recorder, url = await start_recorder(aiohttp_server)
    if auth == "bearer":
        manager = alertmanager_factory(url, bearer_token=WEBHOOK_TOKEN)
        expected_authorization = f"Bearer {WEBHOOK_TOKEN}"
    else:
        manager = alertmanager_factory(url, basic_auth=("alertmanager", WEBHOOK_TOKEN))
        credentials = base64.b64encode(f"alertmanager:{WEBHOOK_TOKEN}".encode()).decode()
        expected_authorization = f"Basic {credentials}"
    alert = make_alert(
        {"alertname": "HarnessSmoke", "severity": "critical", "instance": "db-1"},
        annotations={"summary": "harness smoke test"},
    )

    await manager.post_alerts([alert])
    firing = next(
        d for d in await recorder.wait_for(with_status("firing")) if d.payload["status"] == "firing"
    )

    assert firing.headers["Authorization"] == expected_authorization
    assert firing.payload["version"] == "4"
    assert firing.payload["groupKey"] == group_key({"alertname": "HarnessSmoke"})
    assert firing.payload["groupLabels"] == {"alertname": "HarnessSmoke"}
    assert firing.payload["externalURL"] == manager.url
    [sent] = firing.payload["alerts"]
    assert sent["labels"] == alert["labels"]
    assert sent["annotations"] == {"summary": "harness smoke test"}
    assert sent["endsAt"] == "0001-01-01T00:00:00Z"
    assert len(sent["fingerprint"]) == 16

    await manager.resolve_alerts([alert])
    resolved = next(
        d
        for d in await recorder.wait_for(with_status("resolved"))
        if d.payload["status"] == "resolved"
    )

    assert resolved.payload["groupKey"] == firing.payload["groupKey"]
    [ended] = resolved.payload["alerts"]
    assert ended["status"] == "resolved"
    assert ended["fingerprint"] == sent["fingerprint"]
    assert ended["endsAt"] != "0001-01-01T00:00:00Z"


@pytest.mark.e2e
async def test_amtool_silence_is_active_with_author_then_expires(
    aiohttp_server: ServerFactory, alertmanager_factory: AlertmanagerFactory
) -> None:
    _, url = await start_recorder(aiohttp_server)
    manager = alertmanager_factory(url, bearer_token=WEBHOOK_TOKEN)

    silence_id = await manager.add_silence(
        ['alertname="HarnessSilenced"'],
        author="harness-smoke",
        comment="silenced by the harness smoke test",
        duration="10m",
    )
    silence = await manager.silence(silence_id)

    assert silence["status"]["state"] == "active"
    assert silence["createdBy"] == "harness-smoke"
    assert silence["comment"] == "silenced by the harness smoke test"
    assert silence["matchers"] == [
        {"name": "alertname", "value": "HarnessSilenced", "isRegex": False, "isEqual": True}
    ]
    assert silence_id in [s["id"] for s in await manager.silences()]

    await manager.post_alerts([make_alert({"alertname": "HarnessSilenced"})])
    [alert] = await manager.alerts(filters=['alertname="HarnessSilenced"'])
    assert alert["status"]["state"] == "suppressed"
    assert alert["status"]["silencedBy"] == [silence_id]

    await manager.expire_silence(silence_id)
    assert (await manager.silence(silence_id))["status"]["state"] == "expired"


@pytest.mark.e2e
async def test_ha_cluster_replicas_each_deliver_a_duplicate(
    aiohttp_server: ServerFactory, alertmanager_cluster_factory: AlertmanagerClusterFactory
) -> None:
    recorder, url = await start_recorder(aiohttp_server, hold_until=2)
    cluster = alertmanager_cluster_factory(url, replicas=2, bearer_token=WEBHOOK_TOKEN)
    for replica in cluster:
        status = await replica.status()
        assert status["cluster"]["status"] == "ready"
        assert len(status["cluster"]["peers"]) == 2

    await cluster.post_alerts([make_alert({"alertname": "HarnessHA", "severity": "warning"})])
    deliveries = await recorder.wait_for(lambda ds: len(ds) >= 2)

    assert {d.payload["externalURL"] for d in deliveries} == set(cluster.urls)
    assert {d.payload["groupKey"] for d in deliveries} == {group_key({"alertname": "HarnessHA"})}
    assert {d.payload["status"] for d in deliveries} == {"firing"}
    assert {d.headers["Authorization"] for d in deliveries} == {f"Bearer {WEBHOOK_TOKEN}"}
    fingerprints = {a["fingerprint"] for d in deliveries for a in d.payload["alerts"]}
    assert len(fingerprints) == 1


@pytest.mark.e2e
async def test_ha_cluster_gossips_a_silence_to_the_other_replica(
    aiohttp_server: ServerFactory, alertmanager_cluster_factory: AlertmanagerClusterFactory
) -> None:
    _, url = await start_recorder(aiohttp_server)
    first, second = alertmanager_cluster_factory(url, replicas=2)

    silence_id = await first.add_silence(
        ["alertname=HarnessGossip"], author="harness-smoke", comment="gossip check"
    )

    async def replicated() -> bool:
        return silence_id in [s["id"] for s in await second.silences()]

    await eventually(replicated, f"silence {silence_id} on {second.url}")
    assert (await second.silence(silence_id))["createdBy"] == "harness-smoke"


# --- Prometheus ----------------------------------------------------------------------------------

RULES = """\
groups:
  - name: harness
    rules:
      - record: harness:smoke_value:doubled
        expr: harness_smoke_value * 2
"""


@pytest.mark.e2e
async def test_prometheus_scrapes_target_and_evaluates_rules(
    aiohttp_server: ServerFactory, prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            text="# TYPE harness_smoke_value gauge\nharness_smoke_value 42\n",
            content_type="text/plain",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    target: TestServer = await aiohttp_server(app, host="127.0.0.1")
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES, encoding="utf-8")
    prometheus = prometheus_factory([f"127.0.0.1:{target.port}"], rule_files=[rules], start=False)
    await prometheus.astart()

    [sample] = await prometheus.wait_for("harness_smoke_value", lambda s: len(s) == 1)
    assert sample.value == 42.0
    assert sample.labels["job"] == SCRAPE_JOB
    assert sample.labels["instance"] == f"127.0.0.1:{target.port}"
    [doubled] = await prometheus.wait_for("harness:smoke_value:doubled", lambda s: len(s) == 1)
    assert doubled.value == 84.0
    [group] = await prometheus.rules()
    assert group["rules"][0]["health"] == "ok"


@pytest.mark.e2e
def test_promtool_checks_good_and_bad_rules(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(RULES, encoding="utf-8")
    bad = tmp_path / "bad.yml"
    bad.write_text(RULES.replace("harness_smoke_value * 2", "harness_smoke_value *"), "utf-8")

    assert "SUCCESS" in promtool("check", "rules", str(good)).stdout
    failed = promtool("check", "rules", str(bad), check=False)
    assert failed.returncode != 0
    assert "FAILED" in failed.stdout + failed.stderr


# --- PostgreSQL ----------------------------------------------------------------------------------


def psql(dsn: str, sql: str) -> str:
    """Run SQL with the Debian psql client and return its tuples-only output."""
    completed = subprocess.run(
        [
            str(require_binary("psql")),
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn,
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


@pytest.mark.e2e
def test_postgres_accepts_connections_on_loopback_with_fsync(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    assert postgres_dsn.startswith(f"postgresql://sidecar@127.0.0.1:{postgres_cluster.port}/")
    assert psql(postgres_dsn, "SELECT current_database()") == "sidecar"
    assert psql(postgres_dsn, "SHOW listen_addresses") == "127.0.0.1"
    assert psql(postgres_dsn, "SHOW fsync") == "on"
    assert int(psql(postgres_dsn, "SHOW server_version_num")) // 10000 >= 15


@pytest.mark.e2e
def test_postgres_database_fixture_gives_a_fresh_writable_database(
    postgres_database_dsn: str, postgres_cluster: PostgresCluster
) -> None:
    name = postgres_database_dsn.rsplit("/", 1)[1]
    assert name in postgres_cluster.databases()
    assert (
        psql(postgres_database_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname='public'")
        == "0"
    )
    assert (
        psql(
            postgres_database_dsn,
            "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (7); SELECT id FROM t",
        )
        == "7"
    )
