"""Where incidents live: one interface; SQLite embedded, PostgreSQL for replicas, memory (tests)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.store.base import IncidentQuery, Store, WriteBatch
from sidecar.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from sidecar.store.memory import MemoryStore
    from sidecar.store.postgres import PostgresStore

__all__ = [
    "IncidentQuery",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "WriteBatch",
    "open_store",
]


def __getattr__(name: str) -> Any:
    # asyncpg is imported only where PostgreSQL is used: it is a good part of
    # the start time of a sidecar on SQLite. Only tests use the memory store.
    if name == "PostgresStore":
        from sidecar.store.postgres import PostgresStore

        return PostgresStore
    if name == "MemoryStore":
        from sidecar.store.memory import MemoryStore

        return MemoryStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str, *, sqlite_path: Path | None, synchronous: str = "full") -> Store:
    """Build the store named by ``store.url`` (not yet opened)."""
    if url.startswith("sqlite:///"):
        assert sqlite_path is not None
        return SQLiteStore(sqlite_path, synchronous=synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        from sidecar.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"store.url: unsupported scheme in {url!r}; use sqlite:/// or postgresql://")
