"""The embedded SQLite store: WAL, ``synchronous=FULL`` commits, versioned migrations.

One writer thread owns the write connection, so SQLite never contends with
itself; the service hands it whole batches (group commit), so one fsync covers
every request that arrived while the previous batch was being written. Reads go
through a second connection on another thread, which WAL lets run beside the writer,
and a third copies the log into the database (:mod:`sidecar.store.checkpoint`), so
that no commit waits for a checkpoint.
The statements are :mod:`sidecar.store.sql`'s; one process owns the file, so the
outbox leases and the send budget live in its memory (:mod:`sidecar.store.local`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sidecar.alertmanager import incident_key
from sidecar.errors import StoreRefused, StoreUnavailable
from sidecar.store.checkpoint import BACKSTOP_PAGES, Checkpointer
from sidecar.store.local import OneProcess
from sidecar.store.migrations import migrations
from sidecar.store.queue import OutboxItem, outbox_item
from sidecar.store.rows import WriteBatch
from sidecar.store.sql import SQLITE, Insert, Statements
from sidecar.store.sqlstore import SQLStore

T = TypeVar("T")

# (version, name, statements): the schema in SQLite's words (see sidecar.store.migrations).
MIGRATIONS = migrations(SQLITE)


# Rows per multi-row statement (15 columns: far below SQLite's 32,766 variables).
_ROWS_PER_STATEMENT = 32


def _insert_many(con: sqlite3.Connection, insert: Insert, rows: Sequence[Sequence[Any]]) -> None:
    """``executemany`` as multi-row statements.

    executemany steps once per row, and the sqlite3 module lets go of the GIL
    around every step; with the event loop busy on the one core, each step
    then waits up to the interpreter's switch interval (5 ms) to get it back,
    and a commit of a few dozen rows took tens of milliseconds. One statement
    per chunk is one step.
    """
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        con.execute(insert.sql(len(chunk)), [v for r in chunk for v in r])


class SQLiteStore(OneProcess, SQLStore):
    """SQLite behind the :class:`~sidecar.store.base.Store` interface."""

    sql = Statements(SQLITE)

    def __init__(
        self, path: Path, *, synchronous: str = "full", checkpoint_every: float | None = 0.1
    ) -> None:
        """``checkpoint_every``: at most one checkpoint off the commit path per that many
        seconds; None leaves them to the commits, at the backstop (tests)."""
        super().__init__()
        self.path = path
        self.synchronous = synchronous.upper()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        every = checkpoint_every
        self._checkpointer = None if every is None else Checkpointer(self._connect, every=every)
        self._wcon: sqlite3.Connection | None = None
        self._rcon: sqlite3.Connection | None = None
        self._closed = False

    # -- plumbing ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA busy_timeout = 5000")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute(f"PRAGMA synchronous = {self.synchronous}")
        return con

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreUnavailable("store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)
        except (sqlite3.IntegrityError, sqlite3.DataError) as exc:
            # The rows themselves (a constraint, a value too big): see PostgreSQL's _REFUSALS.
            raise StoreRefused(f"sqlite {self.path}: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    def _w(self) -> sqlite3.Connection:
        if self._wcon is None:
            raise StoreUnavailable("store is not open")
        return self._wcon

    def _r(self) -> sqlite3.Connection:
        if self._rcon is None:
            raise StoreUnavailable("store is not open")
        return self._rcon

    async def _rows(self, sql: str, params: Sequence[Any], convert: Callable[[Any], T]) -> list[T]:
        # Row by row, not fetchall(): at start the raw rows of every open
        # incident would otherwise sit in memory beside the decoded ones, and
        # the allocator keeps that peak for the life of the process.
        return await self._run(
            self._reader, lambda: [convert(r) for r in self._r().execute(sql, params)]
        )

    async def _value(self, sql: str, params: Sequence[Any]) -> Any:
        def go() -> Any:
            row = self._r().execute(sql, params).fetchone()
            return None if row is None else row[0]

        return await self._run(self._reader, go)

    async def _update(self, sql: str, params: Sequence[Any]) -> None:
        await self._run(self._writer, lambda: self._w().execute(sql, params))
        self._wrote()

    def _wrote(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.wrote()

    async def checkpointed(self) -> None:
        """Wait until a checkpoint begun after every commit so far has finished (tests)."""
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.settle)

    async def _max_number(self, day: str) -> int:
        return int(await self._value(self.sql.last_number, (day,)))

    async def _heads(self, integration: str, now: float, per_routing: int) -> list[OutboxItem]:
        params = (integration, now, per_routing)
        return await self._rows(self.sql.heads_per_routing, params, outbox_item)

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Create the database if needed and migrate it."""

        def go() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._wcon = self._connect()
            # Checkpoints run on their own thread; the commits' own is only a backstop.
            self._wcon.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
            _migrate(self._wcon)

        await self._run(self._writer, go)
        if self._checkpointer is not None:
            self._checkpointer.start()

        def go_read() -> None:
            self._rcon = self._connect()

        await self._run(self._reader, go_read)

    async def close(self) -> None:
        """Close both connections and stop their threads."""

        def close_w() -> None:
            if self._wcon is not None:
                self._wcon.close()
                self._wcon = None

        def close_r() -> None:
            if self._rcon is not None:
                self._rcon.close()
                self._rcon = None

        if self._closed:
            return
        if self._checkpointer is not None:
            # Off the loop: a checkpoint under way finishes first.
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.stop)
        await self._run(self._writer, close_w)
        await self._run(self._reader, close_r)
        self._closed = True
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    # -- writes -----------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        """Write the batch in one transaction; returns after the durable commit."""

        def go() -> None:
            con = self._w()
            con.execute("BEGIN IMMEDIATE")
            try:
                for insert, rows in self.sql.writes(batch):
                    _insert_many(con, insert, rows)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

        await self._run(self._writer, go)
        self._wrote()


def _version(con: sqlite3.Connection) -> int:
    row = con.execute(SQLiteStore.sql.schema_version).fetchone()
    return int(row[0])


def _migrate(con: sqlite3.Connection) -> None:
    # Migration 13 keys incidents as the service does, in Python's own words.
    con.create_function("sidecar_incident_key", 1, incident_key, deterministic=True)
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    current = _version(con)
    for version, name, sql in MIGRATIONS:
        if version <= current:
            continue
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(None, (s.strip() for s in sql.split(";"))):
                con.execute(statement)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, strftime('%s','now'))",
                (version, name),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
