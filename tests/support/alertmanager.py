"""A real Prometheus Alertmanager (0.25) for end-to-end tests, alone or as an HA cluster.

The generated configuration has one route to one webhook receiver (the sidecar, or a fake)
with ``send_resolved: true``, bearer or basic authentication, and timers short enough that a
notification arrives about a second after an alert is posted. Alerts are posted through API v2
(``POST /api/v2/alerts``), silences are managed with ``amtool`` as an operator would.

The HTTP helpers are coroutines so that a test can run its fake receivers in the same event
loop; starting and stopping processes blocks (use ``astart``/``astop`` inside a running loop
when a fake must keep answering meanwhile).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml

from tests.support.ports import LOOPBACK, free_ports
from tests.support.processes import ManagedProcess, ProcessError, http_get_json

#: The root route's key, which prefixes the groupKey of every alert group it forms.
ROOT_ROUTE_KEY = "{}"


class AmtoolError(RuntimeError):
    """amtool exited with a non-zero status."""


def isoformat(moment: datetime) -> str:
    """Format a UTC datetime the way Alertmanager's API expects (RFC 3339)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def make_alert(
    labels: Mapping[str, str],
    *,
    annotations: Mapping[str, str] | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    generator_url: str = "http://127.0.0.1/graph",
) -> dict[str, Any]:
    """Build one postable alert for ``POST /api/v2/alerts``; it starts now unless told otherwise."""
    alert: dict[str, Any] = {
        "labels": dict(labels),
        "annotations": dict(annotations or {}),
        "startsAt": isoformat(starts_at or datetime.now(UTC)),
        "generatorURL": generator_url,
    }
    if ends_at is not None:
        alert["endsAt"] = isoformat(ends_at)
    return alert


def group_key(group_labels: Mapping[str, str]) -> str:
    """Return the groupKey Alertmanager sends for a group of the root route.

    Mirrors ``dispatch.aggrGroup`` keys: the route key, a colon, then the group labels sorted by
    name and quoted like a Prometheus label set, e.g. ``{}:{alertname="DiskFull"}``.
    """
    inner = ", ".join(f'{name}="{value}"' for name, value in sorted(group_labels.items()))
    return f"{ROOT_ROUTE_KEY}:{{{inner}}}"


def render_config(
    webhook_url: str,
    *,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    group_by: Sequence[str] = ("alertname",),
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
    send_resolved: bool = True,
    max_alerts: int = 0,
    receiver: str = "sidecar",
) -> str:
    """Render an alertmanager.yml with a single webhook receiver."""
    if bearer_token is not None and basic_auth is not None:
        raise ValueError("use either bearer_token or basic_auth, not both")
    http_config: dict[str, Any] = {}
    if bearer_token is not None:
        http_config["authorization"] = {"type": "Bearer", "credentials": bearer_token}
    if basic_auth is not None:
        http_config["basic_auth"] = {"username": basic_auth[0], "password": basic_auth[1]}
    webhook: dict[str, Any] = {
        "url": webhook_url,
        "send_resolved": send_resolved,
        "max_alerts": max_alerts,
    }
    if http_config:
        webhook["http_config"] = http_config
    config = {
        "route": {
            "receiver": receiver,
            "group_by": list(group_by),
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [{"name": receiver, "webhook_configs": [webhook]}],
    }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Alertmanager:
    """One Alertmanager replica listening on 127.0.0.1."""

    binary: Path
    amtool_binary: Path | None
    workdir: Path
    config_text: str
    web_port: int
    cluster_port: int | None = None
    peers: Sequence[str] = ()
    peer_timeout: str = "0s"
    gossip_interval: str = "20ms"
    settle_timeout: str = "5s"
    data_retention: str = "1h"
    ready_timeout: float = 30.0
    extra_args: Sequence[str] = ()
    process: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "alertmanager.yml"
        config_path.write_text(self.config_text, encoding="utf-8")
        cluster_args: list[str]
        if self.cluster_port is None:
            cluster_args = ["--cluster.listen-address="]
        else:
            cluster_args = [
                f"--cluster.listen-address={LOOPBACK}:{self.cluster_port}",
                f"--cluster.advertise-address={LOOPBACK}:{self.cluster_port}",
                *(f"--cluster.peer={peer}" for peer in self.peers),
                f"--cluster.gossip-interval={self.gossip_interval}",
                "--cluster.pushpull-interval=1s",
                f"--cluster.settle-timeout={self.settle_timeout}",
                f"--cluster.peer-timeout={self.peer_timeout}",
                "--cluster.reconnect-interval=1s",
            ]
        command = [
            str(self.binary),
            f"--config.file={config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--data.retention={self.data_retention}",
            f"--web.listen-address={LOOPBACK}:{self.web_port}",
            f"--web.external-url={self.url}/",
            *cluster_args,
            "--log.level=debug",
            *self.extra_args,
        ]
        self.process = ManagedProcess(
            f"alertmanager:{self.web_port}",
            command,
            log_path=self.workdir / "alertmanager.log",
            cwd=self.workdir,
            ready_url=f"{self.url}/-/ready",
            ready_timeout=self.ready_timeout,
        )

    @property
    def url(self) -> str:
        """Base URL, also the ``externalURL`` of this replica's notifications."""
        return f"http://{LOOPBACK}:{self.web_port}"

    @property
    def cluster_address(self) -> str | None:
        """host:port of the gossip listener, or None when clustering is off."""
        return None if self.cluster_port is None else f"{LOOPBACK}:{self.cluster_port}"

    def start(self) -> Self:
        """Start the replica and wait until its API answers."""
        self.process.start()
        return self

    async def astart(self) -> Self:
        """Like start(), without blocking the event loop."""
        return await asyncio.to_thread(self.start)

    def stop(self) -> None:
        """Stop the replica (SIGTERM, then SIGKILL)."""
        self.process.stop()

    def kill(self) -> None:
        """Kill the replica with SIGKILL."""
        self.process.kill()

    async def astop(self) -> None:
        """Like stop(), without blocking the event loop."""
        await self.process.astop()

    async def akill(self) -> None:
        """Like kill(), without blocking the event loop."""
        await self.process.akill()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(method, f"{self.url}{path}", json=json_body, params=params) as resp,
        ):
            text = await resp.text()
            if resp.status >= 300:
                raise AssertionError(f"{method} {path} on {self.url}: {resp.status} {text}")
            return await resp.json(content_type=None) if text else None

    async def post_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Post alerts through API v2, as Prometheus does."""
        await self._request("POST", "/api/v2/alerts", json_body=[dict(a) for a in alerts])

    async def resolve_alerts(
        self, alerts: Iterable[Mapping[str, Any]], *, at: datetime | None = None
    ) -> None:
        """Post the same alerts again with ``endsAt`` set to ``at`` (default now): resolved."""
        ends_at = isoformat(at or datetime.now(UTC))
        await self.post_alerts([{**alert, "endsAt": ends_at} for alert in alerts])

    async def alerts(
        self,
        *,
        active: bool | None = None,
        silenced: bool | None = None,
        inhibited: bool | None = None,
        filters: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """List alerts through API v2 (``filters`` are matchers such as ``alertname="X"``)."""
        params: list[tuple[str, str]] = []
        for name, value in (("active", active), ("silenced", silenced), ("inhibited", inhibited)):
            if value is not None:
                params.append((name, str(value).lower()))
        params.extend(("filter", matcher) for matcher in filters)
        result: list[dict[str, Any]] = await self._request("GET", "/api/v2/alerts", params=params)
        return result

    async def silences(self) -> list[dict[str, Any]]:
        """List silences through API v2."""
        result: list[dict[str, Any]] = await self._request("GET", "/api/v2/silences")
        return result

    async def silence(self, silence_id: str) -> dict[str, Any]:
        """Fetch one silence through API v2."""
        result: dict[str, Any] = await self._request("GET", f"/api/v2/silence/{silence_id}")
        return result

    async def status(self) -> dict[str, Any]:
        """Fetch ``/api/v2/status`` (cluster peers and state, configuration, versions)."""
        result: dict[str, Any] = await self._request("GET", "/api/v2/status")
        return result

    async def amtool(self, *args: str) -> str:
        """Run amtool against this replica and return its standard output."""
        if self.amtool_binary is None:
            raise AmtoolError("amtool is not installed (Debian package prometheus-alertmanager)")
        command = [
            str(self.amtool_binary),
            f"--alertmanager.url={self.url}/",
            "--timeout=10s",
            *args,
        ]
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.workdir,
        )
        stdout, stderr = await proc.communicate()
        if proc.returncode != 0:
            raise AmtoolError(
                f"{' '.join(command)} exited with {proc.returncode}: "
                f"{stderr.decode(errors='replace').strip()}"
            )
        return stdout.decode()

    async def add_silence(
        self,
        matchers: Sequence[str],
        *,
        author: str,
        comment: str,
        duration: str = "1h",
    ) -> str:
        """Create a silence with ``amtool silence add`` and return its id."""
        output = await self.amtool(
            "silence",
            "add",
            f"--author={author}",
            f"--comment={comment}",
            f"--duration={duration}",
            *matchers,
        )
        silence_id = output.strip()
        if not silence_id:
            raise AmtoolError(f"amtool silence add printed no id for {list(matchers)}")
        return silence_id

    async def expire_silence(self, silence_id: str) -> None:
        """Expire a silence with ``amtool silence expire``."""
        await self.amtool("silence", "expire", silence_id)


@dataclass
class AlertmanagerCluster:
    """Several Alertmanager replicas gossiping as one HA cluster.

    Alerts go to every replica, as Prometheus sends them; silences gossip from whichever replica
    created them. With the default ``peer_timeout`` of 0s every replica notifies at once, before
    the others' notification log reaches it, so the receiver gets duplicates as in a real HA
    pair whose gossip lags.
    """

    replicas: list[Alertmanager]

    @classmethod
    def create(
        cls,
        binary: Path,
        amtool_binary: Path | None,
        workdir: Path,
        config_text: str,
        replicas: int,
        *,
        peer_timeout: str = "0s",
        gossip_interval: str = "20ms",
        settle_timeout: str = "5s",
        ready_timeout: float = 30.0,
    ) -> Self:
        """Allocate ports and build (not start) ``replicas`` peered replicas."""
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        web_ports = free_ports(replicas)
        cluster_ports = free_ports(replicas, udp=True)
        members: list[Alertmanager] = []
        for index in range(replicas):
            peers = [
                f"{LOOPBACK}:{port}" for other, port in enumerate(cluster_ports) if other != index
            ]
            members.append(
                Alertmanager(
                    binary=binary,
                    amtool_binary=amtool_binary,
                    workdir=workdir / f"replica-{index}",
                    config_text=config_text,
                    web_port=web_ports[index],
                    cluster_port=cluster_ports[index],
                    peers=peers,
                    peer_timeout=peer_timeout,
                    gossip_interval=gossip_interval,
                    settle_timeout=settle_timeout,
                    ready_timeout=ready_timeout,
                )
            )
        return cls(members)

    def __iter__(self) -> Iterator[Alertmanager]:
        return iter(self.replicas)

    def __len__(self) -> int:
        return len(self.replicas)

    def __getitem__(self, index: int) -> Alertmanager:
        return self.replicas[index]

    @property
    def urls(self) -> list[str]:
        """Base URLs of every replica."""
        return [replica.url for replica in self.replicas]

    def start(self, *, settle_timeout: float = 30.0) -> Self:
        """Start every replica, then wait until each one sees all peers and has settled."""
        try:
            for replica in self.replicas:
                replica.process.launch()
            for replica in self.replicas:
                replica.process.wait_ready()
            self.wait_settled(timeout=settle_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    async def astart(self, *, settle_timeout: float = 30.0) -> Self:
        """Like start(), without blocking the event loop."""
        return await asyncio.to_thread(self.start, settle_timeout=settle_timeout)

    def wait_settled(self, *, timeout: float = 30.0) -> None:
        """Block until every replica reports cluster status "ready" with all members."""
        deadline = time.monotonic() + timeout
        pending = list(self.replicas)
        while pending:
            pending = [r for r in pending if not _cluster_ready(r, len(self.replicas))]
            if not pending:
                return
            if time.monotonic() >= deadline:
                logs = "\n".join(
                    f"{r.process.name} ({r.process.log_path}):\n{r.process.log_tail(15)}"
                    for r in pending
                )
                raise ProcessError(f"Alertmanager cluster did not settle in {timeout:g}s\n{logs}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every replica."""
        for replica in self.replicas:
            replica.stop()

    async def post_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Post the alerts to every replica."""
        batch = [dict(alert) for alert in alerts]
        await asyncio.gather(*(replica.post_alerts(batch) for replica in self.replicas))

    async def resolve_alerts(
        self, alerts: Iterable[Mapping[str, Any]], *, at: datetime | None = None
    ) -> None:
        """Resolve the alerts on every replica."""
        batch = [dict(alert) for alert in alerts]
        moment = at or datetime.now(UTC)
        await asyncio.gather(*(r.resolve_alerts(batch, at=moment) for r in self.replicas))


def _cluster_ready(replica: Alertmanager, members: int) -> bool:
    status = http_get_json(f"{replica.url}/api/v2/status")
    if not isinstance(status, dict):
        return False
    cluster = status.get("cluster") or {}
    return cluster.get("status") == "ready" and len(cluster.get("peers") or []) == members
