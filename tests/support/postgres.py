"""A throwaway PostgreSQL 15 cluster for end-to-end tests.

``initdb`` into a fresh temporary directory, then ``postgres`` in the foreground (so a test can
kill it like any other ManagedProcess), listening on 127.0.0.1 only with its socket in that
directory, ``trust`` authentication on loopback, ``fsync`` on. Stopping removes everything.

PostgreSQL refuses to run as root, and CI runs the tests as root: then every server command
runs as the ``postgres`` system user (created by the Debian package) through ``setpriv``, which
execs the command so signals reach the server itself, and the data directory is owned by that
user inside a directory it can traverse.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from tests.support.binaries import find_binary, postgres_bin_dirs
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import ManagedProcess

#: The system user PostgreSQL's Debian package creates; servers run as it when we are root.
SYSTEM_USER = "postgres"
#: The superuser initdb creates; tests connect as it.
DEFAULT_USER = "sidecar"
DEFAULT_DATABASE = "sidecar"

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresError(RuntimeError):
    """The throwaway cluster could not be created, started or queried."""


def server_bin_dir() -> Path | None:
    """Return the directory holding initdb, postgres and pg_isready of one version, or None."""
    initdb = find_binary("initdb")
    candidates = ([initdb.parent] if initdb is not None else []) + postgres_bin_dirs()
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "postgres", "psql")):
            return directory
    return None


def _run_as_prefix() -> list[str]:
    """Return the command prefix that drops root to the postgres system user (empty if not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError as exc:
        raise PostgresError(
            f"running as root, but there is no {SYSTEM_USER!r} system user to run PostgreSQL "
            "as (install the Debian package postgresql-15, or run the tests as another user)"
        ) from exc
    setpriv = find_binary("setpriv")
    if setpriv is None:
        raise PostgresError("running as root needs setpriv (Debian package util-linux)")
    return [
        str(setpriv),
        f"--reuid={SYSTEM_USER}",
        f"--regid={SYSTEM_USER}",
        "--init-groups",
        "--reset-env",
        "--",
    ]


@dataclass
class PostgresCluster:
    """One PostgreSQL server in its own temporary directory on a free loopback port."""

    bin_dir: Path
    user: str = DEFAULT_USER
    database: str = DEFAULT_DATABASE
    port: int = field(default_factory=free_port)
    ready_timeout: float = 60.0
    base_dir: Path = field(init=False)
    process: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        for name in (self.user, self.database):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")
        self._prefix = _run_as_prefix()
        # Our own directory rather than pytest's tmp_path: its parents may be 0700 and root's,
        # which the postgres user could not traverse.
        self.base_dir = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        self.base_dir.chmod(0o755)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(mode=0o700)
            if self._prefix:
                shutil.chown(directory, user=SYSTEM_USER, group=SYSTEM_USER)
        self.process = ManagedProcess(
            f"postgres:{self.port}",
            [
                *self._prefix,
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                f"port={self.port}",
                "-c",
                f"unix_socket_directories={self.socket_dir}",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
            ],
            log_path=self.base_dir / "postgres.log",
            cwd=self.base_dir,
            ready_check=self._accepts_connections,
            ready_timeout=self.ready_timeout,
            # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, checkpoint, exit.
            stop_signal=signal.SIGINT,
            stop_timeout=30.0,
        )

    @property
    def dsn(self) -> str:
        """DSN of the default database."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        """DSN of ``database`` on this server."""
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{database}"

    def start(self) -> Self:
        """Create the cluster if needed, start the server and create the default database."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self.process.start()
        if self.database not in self.databases():
            self.create_database(self.database)
        return self

    def stop(self) -> None:
        """Stop the server with a fast shutdown (the data directory stays)."""
        self.process.stop()

    def kill(self) -> None:
        """Kill the server and its backends with SIGKILL, as a crash would."""
        self.process.kill()

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _initdb(self) -> None:
        command = [
            *self._prefix,
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            # Only skips initdb's own final flush of a throwaway directory; the server runs
            # with fsync=on.
            "--no-sync",
            "--no-instructions",
        ]
        completed = subprocess.run(
            command,
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if completed.returncode != 0:
            raise PostgresError(
                f"initdb failed with {completed.returncode} in {self.data_dir} "
                f"(is every parent directory traversable by {SYSTEM_USER!r}?):\n"
                f"{completed.stdout}{completed.stderr}"
            )
        # Trust only the socket in our private directory and 127.0.0.1; no IPv6, no wildcard.
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n",
            encoding="utf-8",
        )
        if self._prefix:
            shutil.chown(hba, user=SYSTEM_USER, group=SYSTEM_USER)

    def _accepts_connections(self) -> bool:
        pg_isready = self.bin_dir / "pg_isready"
        if not pg_isready.is_file():
            return self._psql_ok("postgres", "SELECT 1")
        completed = subprocess.run(
            [
                str(pg_isready),
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--username",
                self.user,
                "--dbname",
                "postgres",
                "--timeout",
                "1",
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return completed.returncode == 0

    def _psql_ok(self, database: str, sql: str) -> bool:
        try:
            self.psql(sql, database=database)
        except PostgresError:
            return False
        return True

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run SQL with psql over TCP and return its unaligned, tuples-only output."""
        completed = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "--no-psqlrc",
                "--tuples-only",
                "--no-align",
                "--set=ON_ERROR_STOP=1",
                f"--dbname={self.dsn_for(database or self.database)}",
                "--command",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        )
        if completed.returncode != 0:
            raise PostgresError(f"psql {sql!r} failed: {completed.stderr.strip()}")
        return completed.stdout.strip()

    def databases(self) -> list[str]:
        """Names of the databases on the server."""
        out = self.psql("SELECT datname FROM pg_database ORDER BY datname", database="postgres")
        return out.splitlines()

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")
        self.psql(f'CREATE DATABASE "{name}"', database="postgres")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients first."""
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")
