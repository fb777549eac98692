"""Where incidents live: an interface, with SQLite embedded and PostgreSQL for several replicas."""

from __future__ import annotations

from pathlib import Path

from sidecar.store.base import IncidentQuery, Store, WriteBatch
from sidecar.store.postgres import PostgresStore
from sidecar.store.sqlite import SQLiteStore

__all__ = ["IncidentQuery", "PostgresStore", "SQLiteStore", "Store", "WriteBatch", "open_store"]


def open_store(url: str, *, sqlite_path: Path | None, synchronous: str = "full") -> Store:
    """Build the store named by ``store.url`` (not yet opened)."""
    if url.startswith("sqlite:///"):
        assert sqlite_path is not None
        return SQLiteStore(sqlite_path, synchronous=synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"store.url: unsupported scheme in {url!r}; use sqlite:/// or postgresql://")
