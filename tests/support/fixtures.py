"""pytest fixtures that start real Alertmanager, Prometheus and PostgreSQL processes.

Load them from ``tests/conftest.py`` with ``pytest_plugins = ["tests.support.fixtures"]``.
Every process a fixture starts is stopped at teardown, whether the test passed or not; logs
stay in the test's ``tmp_path`` (PostgreSQL's in its own directory, removed at the end).
A missing binary skips the test, or fails it when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

import pytest

from tests.support.alertmanager import Alertmanager, AlertmanagerCluster, render_config
from tests.support.binaries import require_binary, skip_or_fail
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster, server_bin_dir
from tests.support.prometheus import Prometheus
from tests.support.prometheus import render_config as render_prometheus_config

__all__ = [
    "AlertmanagerClusterFactory",
    "AlertmanagerFactory",
    "PrometheusFactory",
    "alertmanager_cluster_factory",
    "alertmanager_factory",
    "postgres_cluster",
    "postgres_database_dsn",
    "postgres_dsn",
    "prometheus_factory",
]


class ReceiverOptions(TypedDict, total=False):
    """Keyword options of the generated Alertmanager configuration (see ``render_config``)."""

    bearer_token: str | None
    basic_auth: tuple[str, str] | None
    group_by: Sequence[str]
    group_wait: str
    group_interval: str
    repeat_interval: str
    send_resolved: bool
    max_alerts: int
    receiver: str


def _config_text(webhook_url: str | None, config_text: str | None, options: ReceiverOptions) -> str:
    if config_text is not None:
        if webhook_url is not None or options:
            raise ValueError("give either config_text or webhook_url and options, not both")
        return config_text
    if webhook_url is None:
        raise ValueError("webhook_url is required unless config_text is given")
    return render_config(webhook_url, **options)


class AlertmanagerFactory:
    """Starts single Alertmanagers for one test and stops them all at teardown."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self._workdir = workdir
        self._stack = stack
        self._count = 0

    def __call__(
        self,
        webhook_url: str | None = None,
        *,
        config_text: str | None = None,
        start: bool = True,
        extra_args: Sequence[str] = (),
        **options: Unpack[ReceiverOptions],
    ) -> Alertmanager:
        """Start an Alertmanager whose one receiver posts to ``webhook_url``.

        Pass ``config_text`` instead to run a complete configuration of your own; with
        ``start=False`` it is only built (start it with ``start()`` or ``await astart()``).
        """
        self._count += 1
        manager = Alertmanager(
            binary=require_binary("prometheus-alertmanager"),
            amtool_binary=require_binary("amtool"),
            workdir=self._workdir / f"alertmanager-{self._count}",
            config_text=_config_text(webhook_url, config_text, options),
            web_port=free_port(),
            extra_args=extra_args,
        )
        self._stack.callback(manager.stop)
        return manager.start() if start else manager


class AlertmanagerClusterFactory:
    """Starts HA Alertmanager clusters for one test and stops them all at teardown."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self._workdir = workdir
        self._stack = stack
        self._count = 0

    def __call__(
        self,
        webhook_url: str | None = None,
        *,
        replicas: int = 2,
        peer_timeout: str = "0s",
        config_text: str | None = None,
        start: bool = True,
        **options: Unpack[ReceiverOptions],
    ) -> AlertmanagerCluster:
        """Start ``replicas`` peered Alertmanagers sharing one configuration, and wait for gossip.

        ``peer_timeout`` 0s (the default) makes every replica notify (duplicates); a longer one,
        e.g. "2s", lets the replicas deduplicate through their gossiped notification log.
        """
        self._count += 1
        cluster = AlertmanagerCluster.create(
            binary=require_binary("prometheus-alertmanager"),
            amtool_binary=require_binary("amtool"),
            workdir=self._workdir / f"alertmanager-cluster-{self._count}",
            config_text=_config_text(webhook_url, config_text, options),
            replicas=replicas,
            peer_timeout=peer_timeout,
        )
        self._stack.callback(cluster.stop)
        return cluster.start() if start else cluster


class PrometheusFactory:
    """Starts Prometheus servers for one test and stops them all at teardown."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self._workdir = workdir
        self._stack = stack
        self._count = 0

    def __call__(
        self,
        targets: Sequence[str] = (),
        *,
        rule_files: Sequence[Path] = (),
        alertmanagers: Sequence[str] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        metrics_path: str = "/metrics",
        config_text: str | None = None,
        start: bool = True,
    ) -> Prometheus:
        """Start Prometheus scraping ``targets`` (host:port) and evaluating ``rule_files``.

        ``alertmanagers`` (host:port) receive the alerts its rules fire. Pass ``config_text``
        to run a complete configuration of your own instead.
        """
        self._count += 1
        text = config_text or render_prometheus_config(
            targets,
            rule_files=rule_files,
            alertmanagers=alertmanagers,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
            metrics_path=metrics_path,
        )
        server = Prometheus(
            binary=require_binary("prometheus"),
            workdir=self._workdir / f"prometheus-{self._count}",
            config_text=text,
            port=free_port(),
        )
        self._stack.callback(server.stop)
        return server.start() if start else server


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[AlertmanagerFactory]:
    """Start single Alertmanagers on free loopback ports; all stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield AlertmanagerFactory(tmp_path, stack)


@pytest.fixture
def alertmanager_cluster_factory(tmp_path: Path) -> Iterator[AlertmanagerClusterFactory]:
    """Start HA Alertmanager clusters on free loopback ports; all stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield AlertmanagerClusterFactory(tmp_path, stack)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start Prometheus servers on free loopback ports; all stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield PrometheusFactory(tmp_path, stack)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the whole session, removed at the end."""
    for name in ("initdb", "postgres", "psql"):
        require_binary(name)
    if os.geteuid() == 0:
        require_binary("setpriv")  # to run the server as the postgres user
    bin_dir = server_bin_dir()
    if bin_dir is None:
        skip_or_fail(
            "no directory holds initdb, postgres and psql of one PostgreSQL version; "
            "install the Debian packages postgresql-15 and postgresql-client-15"
        )
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_cluster: PostgresCluster) -> str:
    """DSN of the session's default database, ``postgresql://user@127.0.0.1:port/db``."""
    return postgres_cluster.dsn


@pytest.fixture
def postgres_database_dsn(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """DSN of a fresh, empty database for this test only, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = postgres_cluster.create_database(name)
    try:
        yield dsn
    finally:
        postgres_cluster.drop_database(name)
