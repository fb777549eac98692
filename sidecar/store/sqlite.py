"""The embedded SQLite store: WAL, ``synchronous=FULL`` commits, versioned migrations.

One writer thread owns the write connection, so SQLite never contends with
itself; the service hands it whole batches (group commit), so one fsync covers
every request that arrived while the previous batch was being written. Reads go
through a second connection on another thread, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sidecar.errors import StoreUnavailable
from sidecar.incidents import Incident, TimelineEvent
from sidecar.store.base import (
    INCIDENT_COLUMNS,
    OPEN,
    REVIEW_PENDING,
    Claim,
    IncidentQuery,
    LockedState,
    OutboxItem,
    RateBudget,
    WriteBatch,
    event_from_row,
    incident_from_row,
    query_filters,
    take_within_budget,
)

T = TypeVar("T")

# Each migration runs once, in order, in its own transaction; never edit one
# that has shipped, add the next instead.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "incidents and timeline",
        """
        CREATE TABLE incidents (
            id TEXT PRIMARY KEY,
            key TEXT NOT NULL,
            state TEXT NOT NULL,
            severity TEXT NOT NULL,
            team TEXT NOT NULL,
            started_at REAL NOT NULL,
            triggered_at REAL NOT NULL,
            acknowledged_at REAL,
            resolved_at REAL,
            updated_at REAL NOT NULL,
            data BLOB NOT NULL
        );
        -- The database itself guarantees one open incident per key.
        CREATE UNIQUE INDEX incidents_open_key ON incidents(key) WHERE state != 'resolved';
        CREATE INDEX incidents_state ON incidents(state, severity, team);
        CREATE INDEX incidents_triggered ON incidents(triggered_at);
        CREATE INDEX incidents_key_resolved ON incidents(key, resolved_at);
        CREATE TABLE events (
            incident_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            actor TEXT,
            message TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (incident_id, seq)
        ) WITHOUT ROWID;
        """,
    ),
    (
        2,
        "pagerduty outbox and inbound webhook deliveries",
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            routing TEXT NOT NULL,
            action TEXT NOT NULL,
            body BLOB NOT NULL,
            created_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,
            done_at REAL
        );
        CREATE INDEX outbox_pending ON outbox(dedup_key, id) WHERE state = 'pending';
        CREATE INDEX outbox_dedup ON outbox(dedup_key, id);
        CREATE INDEX outbox_incident ON outbox(incident_id);
        CREATE TABLE deliveries (
            id TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (source, id)
        ) WITHOUT ROWID;
        CREATE INDEX deliveries_received ON deliveries(received_at);
        """,
    ),
    (
        3,
        "post-incident review deadlines",
        """
        ALTER TABLE incidents ADD COLUMN review_due_at REAL;
        ALTER TABLE incidents ADD COLUMN review_done_at REAL;
        CREATE INDEX incidents_review_pending ON incidents(review_due_at)
            WHERE review_due_at IS NOT NULL AND review_done_at IS NULL;
        """,
    ),
    (
        4,
        "alerts in their own document",
        # Restored incidents keep this document undecoded until first used
        # (restart time). Earlier rows keep their alerts in data, still read.
        """
        ALTER TABLE incidents ADD COLUMN alerts BLOB;
        """,
    ),
    (
        5,
        "drop indexes no query of the backend uses",
        # No SQLite query looks incidents up by key (one process owns the file
        # and keeps them in memory), and the group key is long and random: each
        # new incident cost a page write of its own in this index at commit.
        """
        DROP INDEX IF EXISTS incidents_key_resolved;
        """,
    ),
    (
        6,
        "outbox backoff counts server failures only; shared send budget",
        # One process owns the file: its send budget and its leases live in memory
        # (a restart ends both with the process that held them).
        """
        ALTER TABLE outbox ADD COLUMN server_failures INTEGER NOT NULL DEFAULT 0;
        """,
    ),
]

_UPSERT = (
    f"INSERT INTO incidents ({INCIDENT_COLUMNS})",
    14,
    """
ON CONFLICT(id) DO UPDATE SET
    state = excluded.state, severity = excluded.severity, team = excluded.team,
    started_at = excluded.started_at, acknowledged_at = excluded.acknowledged_at,
    resolved_at = excluded.resolved_at, updated_at = excluded.updated_at, data = excluded.data,
    review_due_at = excluded.review_due_at, review_done_at = excluded.review_done_at,
    alerts = excluded.alerts
""",
)
_INSERT_EVENT = ("INSERT OR IGNORE INTO events", 8, "")
_INSERT_OUTBOX = (
    "INSERT INTO outbox (incident_id, dedup_key, routing, action, body, created_at, "
    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_DELIVERY = "INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?)"
_OUTBOX_COLUMNS = (
    "id, incident_id, dedup_key, routing, action, body, created_at, state, attempts, "
    "next_attempt_at, last_error, done_at, server_failures"
)
_DUE_HEAD = (
    "id IN (SELECT min(id) FROM outbox WHERE state = 'pending' GROUP BY dedup_key) "
    "AND next_attempt_at <= ?"
)
# The oldest due heads of each routing name, at most ? of each, for the budget to pick from.
_DUE_HEADS_PER_ROUTING = (
    f"SELECT {_OUTBOX_COLUMNS} FROM ("  # noqa: S608 - constant SQL
    f"  SELECT {_OUTBOX_COLUMNS}, row_number() OVER (PARTITION BY routing ORDER BY id) AS n"
    f"  FROM outbox WHERE {_DUE_HEAD}"
    ") WHERE n <= ? ORDER BY id"
)
_SELECT = f"SELECT {INCIDENT_COLUMNS} FROM incidents"  # noqa: S608


# Rows per multi-row statement (14 columns: far below SQLite's 32,766 variables).
_ROWS_PER_STATEMENT = 32


def _insert_many(
    con: sqlite3.Connection, statement: tuple[str, int, str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """``executemany`` as multi-row statements.

    executemany steps once per row, and the sqlite3 module lets go of the GIL
    around every step; with the event loop busy on the one core, each step
    then waits up to the interpreter's switch interval (5 ms) to get it back,
    and a commit of a few dozen rows took tens of milliseconds. One statement
    per chunk is one step.
    """
    head, width, tail = statement
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        con.execute(_multi_row(head, width, tail, len(chunk)), [v for r in chunk for v in r])


@functools.cache
def _multi_row(head: str, width: int, tail: str, rows: int) -> str:
    one = "(" + ", ".join(["?"] * width) + ")"
    return f"{head} VALUES {', '.join([one] * rows)}{tail}"


class SQLiteStore:
    """SQLite behind the :class:`~sidecar.store.base.Store` interface."""

    def __init__(self, path: Path, *, synchronous: str = "full") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wcon: sqlite3.Connection | None = None
        self._rcon: sqlite3.Connection | None = None
        self._closed = False
        # The outbox worker's leases (item id -> until) and sends per budget bucket:
        # in memory, since this process is the file's only user.
        self._leases: dict[int, float] = {}
        self._sends: dict[str, deque[float]] = {}
        self._claiming = asyncio.Lock()

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

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Create the database if needed and migrate it."""

        def go() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._wcon = self._connect()
            _migrate(self._wcon)

        await self._run(self._writer, go)

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
        await self._run(self._writer, close_w)
        await self._run(self._reader, close_r)
        self._closed = True
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    # -- writes -----------------------------------------------------------

    # One process owns the file: its memory is the truth, nothing to lock.
    shared = False

    @asynccontextmanager
    async def locked(
        self, keys: Collection[str], ids: Collection[str], closed_since: float
    ) -> AsyncIterator[LockedState]:
        """No locks and no rows: writes go through :meth:`write` (see Store.locked)."""
        yield LockedState(set(keys), set(ids), [], [], self.write)

    async def write(self, batch: WriteBatch) -> None:
        """Write the batch in one transaction; returns after the durable commit."""

        def go() -> None:
            con = self._w()
            con.execute("BEGIN IMMEDIATE")
            try:
                _insert_many(con, _UPSERT, batch.incidents)
                _insert_many(con, _INSERT_EVENT, batch.events)
                if batch.outbox:
                    con.executemany(_INSERT_OUTBOX, [(*row, row[5]) for row in batch.outbox])
                if batch.deliveries:
                    con.executemany(_INSERT_DELIVERY, batch.deliveries)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

        await self._run(self._writer, go)

    # -- reads ------------------------------------------------------------

    async def _select(self, sql: str, params: tuple[Any, ...] = ()) -> list[Incident]:
        def go() -> list[Incident]:
            # Row by row, not fetchall(): at start the raw rows of every open
            # incident would otherwise sit in memory beside the decoded ones, and
            # the allocator keeps that peak for the life of the process.
            return [incident_from_row(r) for r in self._r().execute(sql, params)]

        return await self._run(self._reader, go)

    async def load_open(self) -> list[Incident]:
        """Every open incident."""
        return await self._select(f"{_SELECT} WHERE {OPEN}")

    async def load_pending_reviews(self) -> list[Incident]:
        """Resolved incidents whose post-incident review is not done."""
        return await self._select(f"{_SELECT} WHERE {REVIEW_PENDING}")

    async def load_closed_since(self, since: float) -> list[Incident]:
        """Latest resolved incident per key resolved after ``since``."""
        return await self._select(
            f"{_SELECT} WHERE state = 'resolved' AND resolved_at >= ? ORDER BY resolved_at",
            (since,),
        )

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        """Incidents matching the filters, newest first."""
        where, params = query_filters(query, lambda _n: "?")
        sql = f"{_SELECT}{where} ORDER BY triggered_at DESC, id LIMIT ?"
        return await self._select(sql, tuple(params))

    async def get_incident(self, incident_id: str) -> Incident | None:
        """One incident by id."""
        rows = await self._select(f"{_SELECT} WHERE id = ?", (incident_id,))
        return rows[0] if rows else None

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        """The incident's events in sequence order."""

        def go() -> list[TimelineEvent]:
            cur = self._r().execute(
                "SELECT * FROM events WHERE incident_id = ? ORDER BY seq", (incident_id,)
            )
            return [event_from_row(r) for r in cur.fetchall()]

        return await self._run(self._reader, go)

    async def ping(self) -> None:
        """A trivial read through the reader connection."""
        await self._run(self._reader, lambda: self._r().execute("SELECT 1").fetchone())

    # -- outbox -----------------------------------------------------------

    async def _outbox(self, sql: str, params: tuple[Any, ...]) -> list[OutboxItem]:
        def go() -> list[OutboxItem]:
            return [OutboxItem(*r) for r in self._r().execute(sql, params).fetchall()]

        return await self._run(self._reader, go)

    async def due_outbox(self, now: float, limit: int) -> list[OutboxItem]:
        """Heads of the per-dedup-key queues whose next attempt is due and not leased."""
        leased = self._live_leases(now)
        heads = await self._outbox(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE {_DUE_HEAD} "  # noqa: S608
            "ORDER BY id LIMIT ?",
            (now, limit + len(leased)),
        )
        return [h for h in heads if h.id not in leased][:limit]

    async def claim_outbox(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        owner: str,
        budget: RateBudget | None = None,
    ) -> Claim:
        """Lease due heads within the budget (see Store.claim_outbox); all in memory.

        A leased head is still its key's head, so the key's next event waits for it.
        """
        async with self._claiming:
            leased = self._live_leases(now)
            # Enough of each routing name that leased heads cannot crowd out free ones.
            heads = await self._outbox(_DUE_HEADS_PER_ROUTING, (now, limit + len(leased)))
            free = [h for h in heads if h.id not in leased]
            sent: dict[str, list[float]] = {}
            if budget is not None:
                for bucket, times in self._sends.items():
                    while times and times[0] <= now - budget.window:
                        times.popleft()
                    sent[bucket] = list(times)
            claim = take_within_budget(free, limit, budget, sent, now)
            for item in claim.items:
                self._leases[item.id] = now + lease_seconds
                spent = budget.buckets.get(item.routing) if budget is not None else None
                if spent is not None:
                    self._sends.setdefault(spent, deque()).append(now)
            return claim

    def _live_leases(self, now: float) -> set[int]:
        for item_id in [i for i, until in self._leases.items() if until <= now]:
            del self._leases[item_id]
        return set(self._leases)

    async def finish_outbox(
        self,
        item_id: int,
        *,
        state: str,
        attempts: int,
        next_attempt_at: float,
        error: str | None,
        now: float,
        server_failures: int = 0,
    ) -> None:
        """Record the outcome of a send, durably, then end its lease."""
        done_at = now if state != "pending" else None

        def go() -> None:
            self._w().execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?, "
                "done_at = ?, server_failures = ? WHERE id = ?",
                (state, attempts, next_attempt_at, error, done_at, server_failures, item_id),
            )

        await self._run(self._writer, go)
        self._leases.pop(item_id, None)

    async def outbox_pending(self) -> int:
        """Count of undelivered events."""

        def go() -> int:
            row = (
                self._r().execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()
            )
            return int(row[0])

        return await self._run(self._reader, go)

    async def outbox_for_incident(self, incident_id: str) -> list[OutboxItem]:
        """Every PagerDuty event of the incident."""
        return await self._outbox(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE incident_id = ? ORDER BY id",  # noqa: S608
            (incident_id,),
        )

    async def incident_for_dedup_key(self, dedup_key: str) -> str | None:
        """The latest incident paged with ``dedup_key``."""

        def go() -> str | None:
            row = (
                self._r()
                .execute(
                    "SELECT incident_id FROM outbox WHERE dedup_key = ? ORDER BY id DESC LIMIT 1",
                    (dedup_key,),
                )
                .fetchone()
            )
            return None if row is None else str(row[0])

        return await self._run(self._reader, go)

    async def known_deliveries(self, source: str, since: float) -> list[str]:
        """Delivery ids of ``source`` received since ``since``."""

        def go() -> list[str]:
            cur = self._r().execute(
                "SELECT id FROM deliveries WHERE source = ? AND received_at >= ?", (source, since)
            )
            return [r[0] for r in cur.fetchall()]

        return await self._run(self._reader, go)

    async def schema_version(self) -> int:
        """Highest applied migration."""
        return await self._run(self._reader, lambda: _version(self._r()))


def _version(con: sqlite3.Connection) -> int:
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0])


def _migrate(con: sqlite3.Connection) -> None:
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
