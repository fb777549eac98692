"""A real Prometheus (2.42) for end-to-end tests: scrapes given targets every second, evaluates
given rule files every second, and optionally sends its alerts to Alertmanager.

``query`` and ``wait_for`` are coroutines so that a scraped target may be an aiohttp app in the
test's own event loop; ``promtool`` runs synchronously (it talks to nothing the test serves).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml

from tests.support.binaries import require_binary
from tests.support.ports import LOOPBACK
from tests.support.processes import ManagedProcess

#: The job label of every scraped target.
SCRAPE_JOB = "targets"


class PrometheusQueryError(RuntimeError):
    """Prometheus rejected a query or answered with an error status."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant-vector query result."""

    labels: dict[str, str]
    value: float


def render_config(
    targets: Sequence[str],
    *,
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    metrics_path: str = "/metrics",
    job_name: str = SCRAPE_JOB,
) -> str:
    """Render a prometheus.yml scraping ``targets`` (``host:port``) with ``rule_files``."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": job_name,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [
                {"api_version": "v2", "static_configs": [{"targets": list(alertmanagers)}]}
            ]
        }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Prometheus:
    """One Prometheus server listening on 127.0.0.1."""

    binary: Path
    workdir: Path
    config_text: str
    port: int
    ready_timeout: float = 30.0
    extra_args: Sequence[str] = ()
    process: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(self.config_text, encoding="utf-8")
        command = [
            str(self.binary),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            f"--web.external-url={self.url}/",
            *self.extra_args,
        ]
        self.process = ManagedProcess(
            f"prometheus:{self.port}",
            command,
            log_path=self.workdir / "prometheus.log",
            cwd=self.workdir,
            ready_url=f"{self.url}/-/ready",
            ready_timeout=self.ready_timeout,
        )

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        """Start the server and wait until it is ready."""
        self.process.start()
        return self

    async def astart(self) -> Self:
        """Like start(), without blocking the event loop (a scraped in-loop app keeps answering)."""
        return await asyncio.to_thread(self.start)

    def stop(self) -> None:
        """Stop the server."""
        self.process.stop()

    async def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """GET an HTTP API path and return the ``data`` of a successful answer."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{self.url}{path}", params=list(params)) as resp,
        ):
            body = await resp.json(content_type=None)
        if resp.status != 200 or body.get("status") != "success":
            raise PrometheusQueryError(f"GET {path} {list(params)}: {resp.status} {body}")
        return body["data"]

    async def query(self, expr: str) -> list[Sample]:
        """Evaluate an instant query; return its samples (a scalar gives one unlabelled sample)."""
        data = await self.get("/api/v1/query", [("query", expr)])
        kind = data["resultType"]
        if kind == "vector":
            return [
                Sample(labels=dict(item["metric"]), value=float(item["value"][1]))
                for item in data["result"]
            ]
        if kind == "scalar":
            return [Sample(labels={}, value=float(data["result"][1]))]
        raise PrometheusQueryError(f"{expr!r} gave a {kind}, not an instant vector or scalar")

    async def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[Sample]], bool],
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the bound is part of the failure message
        interval: float = 0.25,
    ) -> list[Sample]:
        """Re-run ``expr`` until ``predicate`` accepts its samples; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            samples = await self.query(expr)
            if predicate(samples):
                return samples
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{expr!r} did not satisfy the condition within {timeout:g}s; "
                    f"last result: {samples}"
                )
            await asyncio.sleep(interval)

    async def rules(self) -> list[dict[str, Any]]:
        """Return the rule groups as ``GET /api/v1/rules`` reports them (with health and alerts)."""
        data = await self.get("/api/v1/rules")
        groups: list[dict[str, Any]] = data["groups"]
        return groups

    async def active_alerts(self) -> list[dict[str, Any]]:
        """Return the pending and firing alerts (``GET /api/v1/alerts``)."""
        data = await self.get("/api/v1/alerts")
        alerts: list[dict[str, Any]] = data["alerts"]
        return alerts


def promtool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run promtool (``check rules``, ``test rules``, ``check config``...) and capture its output.

    With ``check``, a non-zero exit raises AssertionError showing promtool's output.
    """
    binary = require_binary("promtool")
    completed = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"promtool {' '.join(args)} exited with {completed.returncode}:\n"
            f"{completed.stdout}{completed.stderr}"
        )
    return completed
