"""What only the embedded SQLite store does: its file, WAL and the synchronous setting.

Everything the Store interface promises is tested on SQLite and PostgreSQL alike in
``test_store_behaviour.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.store import SQLiteStore
from sidecar.store.migrations import SCHEMA
from sidecar.store.sql import POSTGRES, SQLITE
from sidecar.store.sqlite import MIGRATIONS
from tests.test_store_behaviour import batch, incident


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "sidecar.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    await s.open()
    yield s
    await s.close()


# -- schema ---------------------------------------------------------------


def _schema(path: Path) -> tuple[set[str], set[str], list[tuple[Any, ...]]]:
    """Tables, indexes and applied migrations of the database file, read on our own connection."""
    assert path.is_file()
    with contextlib.closing(sqlite3.connect(path)) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        applied = con.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    return tables, indexes, applied


async def test_open_creates_the_file_its_directories_and_the_schema(
    store: SQLiteStore, db_path: Path
) -> None:
    tables, indexes, applied = _schema(db_path)
    assert {"incidents", "events", "outbox", "deliveries", "schema_migrations"} <= tables
    assert {"incidents_open_key", "outbox_pending", "incidents_review_pending"} <= indexes
    assert applied == [(v, name) for v, name, _ in MIGRATIONS]


def test_migration_versions_are_increasing_and_unique() -> None:
    versions = [v for v, _, _ in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    assert all(name for _, name, _ in MIGRATIONS)
    # A version may hold nothing for SQLite (PostgreSQL's change feed), never for both.
    assert all(m.sql(SQLITE).strip() or m.sql(POSTGRES).strip() for m in SCHEMA)


# -- durability settings --------------------------------------------------


def _pragma(con: sqlite3.Connection | None, name: str) -> Any:
    """A PRAGMA's value on one of the store's own connections."""
    assert con is not None, "the store has no open connection"
    return con.execute(f"PRAGMA {name}").fetchone()[0]


async def test_wal_and_synchronous_full_on_both_connections(store: SQLiteStore) -> None:
    for con in (store._wcon, store._rcon):
        assert str(_pragma(con, "journal_mode")).lower() == "wal"
        assert _pragma(con, "synchronous") == 2  # FULL
        assert _pragma(con, "busy_timeout") > 0


async def test_wal_mode_is_persistent_in_the_file(store: SQLiteStore, db_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(db_path)) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


async def test_synchronous_normal_when_configured(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "x.db", synchronous="normal")
    await s.open()
    try:
        assert _pragma(s._wcon, "synchronous") == 1  # NORMAL
    finally:
        await s.close()


# -- checkpoints ------------------------------------------------------------

# About 6 MB in batches of 200 KB: SQLite's own automatic checkpoint (1,000 pages,
# 4 MB) would have run inside one of these commits.
_BATCHES, _PER_BATCH, _TITLE = 30, 10, 20_000


def _size(path: Path) -> int:
    return path.stat().st_size


async def _write_lots(store: SQLiteStore) -> int:
    for b in range(_BATCHES):
        incs = [incident(f"big-{b}-{i}") for i in range(_PER_BATCH)]
        for inc in incs:
            inc.title = "x" * _TITLE
        await store.write(batch(*incs))
    return _BATCHES * _PER_BATCH * _TITLE


async def test_commits_leave_the_log_to_the_checkpoint_thread(db_path: Path) -> None:
    """A commit never copies the log into the database (a stall for every request
    waiting for its batch): with the thread off, nothing reaches the database file
    below the backstop, and every commit is still there, from the log."""
    store = SQLiteStore(db_path, checkpoint_every=None)
    await store.open()
    try:
        written = await _write_lots(store)
        assert _size(db_path.with_name(f"{db_path.name}-wal")) > written
        assert _size(db_path) < written / 10
        assert len(await store.load_open()) == _BATCHES * _PER_BATCH
    finally:
        await store.close()


async def test_the_checkpoint_thread_copies_the_log_into_the_database(db_path: Path) -> None:
    store = SQLiteStore(db_path, checkpoint_every=0.0)
    await store.open()
    try:
        written = await _write_lots(store)
        await store.checkpointed()
        assert _size(db_path) > written
        assert store._checkpointer is not None and store._checkpointer.last is not None
        busy, frames, copied = store._checkpointer.last
        assert busy == 0 and frames == copied > 0
    finally:
        await store.close()
    reopened = SQLiteStore(db_path)
    await reopened.open()
    try:
        assert len(await reopened.load_open()) == _BATCHES * _PER_BATCH
    finally:
        await reopened.close()
