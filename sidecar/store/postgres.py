"""The PostgreSQL store, for several replicas: asyncpg, a pool, versioned migrations.

The schema is SQLite's, in PostgreSQL types: epoch seconds as ``double precision``,
the incident and event documents as ``json``. ``json`` rather than ``jsonb``: it keeps
the exact bytes the rows carry and accepts every string JSON can hold, where ``jsonb``
refuses ``\\u0000`` (a label value could carry one, and a refused write would be a 503
that Alertmanager retries forever); operators still read the documents with ``->``,
``->>`` and, when they want the jsonb operators, ``data::jsonb``. PagerDuty bodies stay
``bytea``: they are sent verbatim.

Migrations run once, in order, in one transaction under an advisory lock, so replicas
starting together neither race nor apply one twice. The one-open-incident-per-key rule
is a partial unique index, as in SQLite. Outbox rows are leased
(:meth:`PostgresStore.claim_outbox`) so several workers never send the same event at
once and a dead worker's lease runs out; claims take one advisory lock, so that the
per-routing-key send budget they share (``outbox_sends``) is counted by one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]

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

# pg_advisory_xact_lock key: "sidecar" "migrate" as a fixed 64-bit number, the same in
# every replica and unlikely to collide with another application's lock in the database.
MIGRATION_LOCK = 0x5349_4443_4D49_4752
# The same for outbox claims ("sidecar" "outbox"): held by one claim at a time, for the
# few milliseconds it takes to count the budget, pick and lease.
CLAIM_LOCK = 0x5349_4443_4F55_5442

# Each migration runs once, in order; never edit one that has shipped, add the next
# instead. Versions match SQLite's, so `schema_version` means the same on both.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "incidents and timeline",
        """
        CREATE TABLE incidents (
            id text PRIMARY KEY,
            key text NOT NULL,
            state text NOT NULL,
            severity text NOT NULL,
            team text NOT NULL,
            started_at double precision NOT NULL,
            triggered_at double precision NOT NULL,
            acknowledged_at double precision,
            resolved_at double precision,
            updated_at double precision NOT NULL,
            data json NOT NULL
        );
        -- The database itself guarantees one open incident per key, across replicas.
        CREATE UNIQUE INDEX incidents_open_key ON incidents(key) WHERE state <> 'resolved';
        CREATE INDEX incidents_state ON incidents(state, severity, team);
        CREATE INDEX incidents_triggered ON incidents(triggered_at);
        CREATE INDEX incidents_key_resolved ON incidents(key, resolved_at);
        CREATE TABLE events (
            incident_id text NOT NULL,
            seq integer NOT NULL,
            at double precision NOT NULL,
            kind text NOT NULL,
            source text NOT NULL,
            actor text,
            message text NOT NULL,
            data json NOT NULL,
            PRIMARY KEY (incident_id, seq)
        );
        """,
    ),
    (
        2,
        "pagerduty outbox and inbound webhook deliveries",
        """
        CREATE TABLE outbox (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            incident_id text NOT NULL,
            dedup_key text NOT NULL,
            routing text NOT NULL,
            action text NOT NULL,
            body bytea NOT NULL,
            created_at double precision NOT NULL,
            state text NOT NULL DEFAULT 'pending',
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at double precision NOT NULL,
            last_error text,
            done_at double precision,
            -- Set while one worker sends the row; others skip it until lease_until.
            lease_owner text,
            lease_until double precision
        );
        CREATE INDEX outbox_pending ON outbox(dedup_key, id) WHERE state = 'pending';
        CREATE INDEX outbox_dedup ON outbox(dedup_key, id);
        CREATE INDEX outbox_incident ON outbox(incident_id);
        CREATE TABLE deliveries (
            id text NOT NULL,
            source text NOT NULL,
            received_at double precision NOT NULL,
            PRIMARY KEY (source, id)
        );
        CREATE INDEX deliveries_received ON deliveries(received_at);
        """,
    ),
    (
        3,
        "post-incident review deadlines",
        """
        ALTER TABLE incidents ADD COLUMN review_due_at double precision;
        ALTER TABLE incidents ADD COLUMN review_done_at double precision;
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
        ALTER TABLE incidents ADD COLUMN alerts json;
        """,
    ),
    (
        5,
        "drop indexes no query of the backend uses",
        # Nothing to drop here: replicas re-read recently closed incidents by key
        # under lock (``locked``), through incidents_key_resolved. The version
        # exists so that both backends keep one numbering.
        "SELECT 1",
    ),
    (
        6,
        "outbox backoff counts server failures only; shared send budget",
        # outbox_sends: one row per event claimed with a budget, by every replica, so
        # that together they keep to PagerDuty's rate per routing key. Rows older than
        # the window are deleted by the claims themselves.
        """
        ALTER TABLE outbox ADD COLUMN server_failures integer NOT NULL DEFAULT 0;
        CREATE TABLE outbox_sends (
            bucket text NOT NULL,
            at double precision NOT NULL
        );
        CREATE INDEX outbox_sends_at ON outbox_sends(at);
        """,
    ),
]

_UPSERT = f"""
INSERT INTO incidents ({INCIDENT_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state, severity = excluded.severity, team = excluded.team,
    started_at = excluded.started_at, acknowledged_at = excluded.acknowledged_at,
    resolved_at = excluded.resolved_at, updated_at = excluded.updated_at, data = excluded.data,
    review_due_at = excluded.review_due_at, review_done_at = excluded.review_done_at,
    alerts = excluded.alerts
"""  # noqa: S608 - a constant column list, no input
_INSERT_EVENT = (
    "INSERT INTO events (incident_id, seq, at, kind, source, actor, message, data) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (incident_id, dedup_key, routing, action, body, created_at, "
    "next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $6)"
)
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, source, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
)
_OUTBOX_COLUMNS = (
    "id, incident_id, dedup_key, routing, action, body, created_at, state, attempts, "
    "next_attempt_at, last_error, done_at, server_failures"
)
_SELECT = f"SELECT {INCIDENT_COLUMNS} FROM incidents"  # noqa: S608
# A pending row is a head when no older pending row shares its dedup key; it is free when
# nobody holds an unexpired lease on it ($1 is now).
_FREE_HEAD = (
    "o.state = 'pending' AND o.next_attempt_at <= $1 "
    "AND (o.lease_until IS NULL OR o.lease_until <= $1) "
    "AND NOT EXISTS (SELECT 1 FROM outbox p "
    "WHERE p.dedup_key = o.dedup_key AND p.state = 'pending' AND p.id < o.id)"
)
# The oldest free heads of each routing name, at most $2 of each, for the budget to pick from.
_FREE_HEADS_PER_ROUTING = f"""
SELECT {_OUTBOX_COLUMNS} FROM (
    SELECT {", ".join("o." + c.strip() for c in _OUTBOX_COLUMNS.split(","))},
        row_number() OVER (PARTITION BY o.routing ORDER BY o.id) AS n
    FROM outbox o WHERE {_FREE_HEAD}
) heads WHERE n <= $2 ORDER BY id
"""  # noqa: S608 - constant SQL, values are parameters

# Everything asyncpg, the socket or a timeout can raise when the database cannot serve us;
# TimeoutError and ConnectionError are OSErrors. InternalClientError is what asyncpg raises
# when a connection the server just terminated is reused before the client noticed.
_DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)


async def _init_connection(con: Any) -> None:
    # The rows carry orjson bytes: send and receive json as those bytes (json's binary
    # wire format is its text), never through Python objects.
    await con.set_type_codec(
        "json",
        schema="pg_catalog",
        encoder=bytes,
        decoder=bytes,
        format="binary",
    )


class PostgresStore:
    """PostgreSQL behind the :class:`~sidecar.store.base.Store` interface."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        # A hung server must become a 503 the sender retries, not a request that never ends.
        self.command_timeout = command_timeout
        self._pool: Any = None
        self._closed = False

    # -- plumbing ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("store is closed")
        if self._pool is None:
            raise StoreUnavailable("store is not open")

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        self._check_open()
        try:
            async with self._pool.acquire(timeout=self.connect_timeout) as con:
                yield con
        except _DATABASE_ERRORS as exc:
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._connection() as con:
            return list(await con.fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._connection() as con:
            return await con.fetchval(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> None:
        async with self._connection() as con:
            await con.execute(sql, *args)

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Create the connection pool and apply pending migrations."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                init=_init_connection,
            )
        except _DATABASE_ERRORS as exc:
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc
        async with self._connection() as con:
            await _migrate(con)

    async def close(self) -> None:
        """Close the pool (waiting for connections in use to be released)."""
        pool, self._pool = self._pool, None
        self._closed = True
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.command_timeout)
            except _DATABASE_ERRORS:
                # A connection still in use, or a server gone: do not hang the shutdown.
                pool.terminate()

    # -- writes -----------------------------------------------------------

    # Several replicas write here: the service serialises changes per key
    # through locked() instead of trusting its own memory.
    shared = True

    async def write(self, batch: WriteBatch) -> None:
        """Write the batch in one transaction; returns after the commit."""
        if not batch:
            self._check_open()
            return
        async with self._connection() as con, con.transaction():
            await _write(con, batch)

    @asynccontextmanager
    async def locked(
        self, keys: Collection[str], ids: Collection[str], closed_since: float
    ) -> AsyncIterator[LockedState]:
        """A transaction holding the keys' locks, with their current rows (see Store)."""
        async with self._connection() as con, con.transaction():
            if ids:
                rows = await con.fetch("SELECT key FROM incidents WHERE id = ANY($1)", list(ids))
                keys = set(keys) | {r[0] for r in rows}
            # Sorted, so that two replicas locking overlapping keys cannot deadlock.
            for key in sorted(keys):
                await con.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
            open_rows = await con.fetch(
                f"{_SELECT} WHERE (key = ANY($1) AND state <> 'resolved') OR id = ANY($2)",
                list(keys),
                list(ids),
            )
            closed_rows = await con.fetch(
                f"SELECT DISTINCT ON (key) {INCIDENT_COLUMNS} FROM incidents "  # noqa: S608
                "WHERE key = ANY($1) AND state = 'resolved' AND resolved_at >= $2 "
                "ORDER BY key, resolved_at DESC",
                list(keys),
                closed_since,
            )
            state = LockedState(
                keys=set(keys),
                ids=set(ids),
                incidents=[incident_from_row(tuple(r)) for r in open_rows],
                recently_closed=[incident_from_row(tuple(r)) for r in closed_rows],
                write=lambda batch: _write(con, batch),
            )
            yield state

    # -- reads ------------------------------------------------------------

    async def _select(self, sql: str, *args: Any) -> list[Incident]:
        return [incident_from_row(tuple(r)) for r in await self._fetch(sql, *args)]

    async def load_open(self) -> list[Incident]:
        """Every open incident."""
        return await self._select(f"{_SELECT} WHERE {OPEN}")

    async def load_pending_reviews(self) -> list[Incident]:
        """Resolved incidents whose post-incident review is not done."""
        return await self._select(f"{_SELECT} WHERE {REVIEW_PENDING}")

    async def load_closed_since(self, since: float) -> list[Incident]:
        """Incidents resolved after ``since``, oldest first (so the latest of a key wins)."""
        return await self._select(
            f"{_SELECT} WHERE state = 'resolved' AND resolved_at >= $1 "
            'ORDER BY resolved_at, id COLLATE "C"',
            since,
        )

    async def list_incidents(self, query: IncidentQuery) -> list[Incident]:
        """Incidents matching the filters, newest first."""
        where, params = query_filters(query, lambda n: f"${n}")
        # COLLATE "C" breaks ties by bytes, as SQLite does, whatever the database's locale.
        sql = f'{_SELECT}{where} ORDER BY triggered_at DESC, id COLLATE "C" LIMIT ${len(params)}'
        return await self._select(sql, *params)

    async def get_incident(self, incident_id: str) -> Incident | None:
        """One incident by id."""
        rows = await self._select(f"{_SELECT} WHERE id = $1", incident_id)
        return rows[0] if rows else None

    async def timeline(self, incident_id: str) -> list[TimelineEvent]:
        """The incident's events in sequence order."""
        rows = await self._fetch(
            "SELECT incident_id, seq, at, kind, source, actor, message, data FROM events "
            "WHERE incident_id = $1 ORDER BY seq",
            incident_id,
        )
        return [event_from_row(tuple(r)) for r in rows]

    async def ping(self) -> None:
        """A trivial query through the pool."""
        await self._fetchval("SELECT 1")

    # -- outbox -----------------------------------------------------------

    async def _outbox(self, sql: str, *args: Any) -> list[OutboxItem]:
        return _items(await self._fetch(sql, *args))

    async def due_outbox(self, now: float, limit: int) -> list[OutboxItem]:
        """Heads of the per-dedup-key queues that are due and not leased by a worker."""
        return await self._outbox(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox o WHERE {_FREE_HEAD} "  # noqa: S608
            "ORDER BY id LIMIT $2",
            now,
            limit,
        )

    async def claim_outbox(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        owner: str,
        budget: RateBudget | None = None,
    ) -> Claim:
        """Lease up to ``limit`` due heads to ``owner`` until ``now + lease_seconds``.

        Claims run one at a time (an advisory lock), so two workers never claim one row
        and every claim counts the sends of all the others in the budget; rows leased
        to anyone are skipped until the lease runs out, and only the head of each dedup
        key is ever claimed, so no two workers send one key's events at once.
        """
        async with self._connection() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK)
            heads = _items(await con.fetch(_FREE_HEADS_PER_ROUTING, now, limit))
            if not heads:
                return Claim([])
            sent: dict[str, list[float]] = {}
            if budget is not None:
                await con.execute("DELETE FROM outbox_sends WHERE at <= $1", now - budget.window)
                for bucket, at in await con.fetch("SELECT bucket, at FROM outbox_sends"):
                    sent.setdefault(bucket, []).append(at)
            claim = take_within_budget(heads, limit, budget, sent, now)
            await con.execute(
                "UPDATE outbox SET lease_until = $1, lease_owner = $2 WHERE id = ANY($3)",
                now + lease_seconds,
                owner,
                [item.id for item in claim.items],
            )
            if budget is not None:
                buckets = [budget.buckets.get(item.routing) for item in claim.items]
                await con.executemany(
                    "INSERT INTO outbox_sends (bucket, at) VALUES ($1, $2)",
                    [(bucket, now) for bucket in buckets if bucket is not None],
                )
        return claim

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
        """Record the outcome of a send and release its lease."""
        done_at = now if state != "pending" else None
        await self._execute(
            "UPDATE outbox SET state = $1, attempts = $2, next_attempt_at = $3, last_error = $4, "
            "done_at = $5, server_failures = $6, lease_owner = NULL, lease_until = NULL "
            "WHERE id = $7",
            state,
            attempts,
            next_attempt_at,
            error,
            done_at,
            server_failures,
            item_id,
        )

    async def outbox_pending(self) -> int:
        """Count of undelivered events."""
        return int(await self._fetchval("SELECT count(*) FROM outbox WHERE state = 'pending'"))

    async def outbox_for_incident(self, incident_id: str) -> list[OutboxItem]:
        """Every PagerDuty event of the incident."""
        return await self._outbox(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE incident_id = $1 ORDER BY id",  # noqa: S608
            incident_id,
        )

    async def incident_for_dedup_key(self, dedup_key: str) -> str | None:
        """The latest incident paged with ``dedup_key``."""
        value = await self._fetchval(
            "SELECT incident_id FROM outbox WHERE dedup_key = $1 ORDER BY id DESC LIMIT 1",
            dedup_key,
        )
        return None if value is None else str(value)

    async def known_deliveries(self, source: str, since: float) -> list[str]:
        """Delivery ids of ``source`` received since ``since``."""
        rows = await self._fetch(
            "SELECT id FROM deliveries WHERE source = $1 AND received_at >= $2", source, since
        )
        return [str(r[0]) for r in rows]

    async def schema_version(self) -> int:
        """Highest applied migration."""
        return int(await self._fetchval(_VERSION))


async def _write(con: Any, batch: WriteBatch) -> None:
    if batch.incidents:
        await con.executemany(_UPSERT, batch.incidents)
    if batch.events:
        await con.executemany(_INSERT_EVENT, batch.events)
    if batch.outbox:
        await con.executemany(_INSERT_OUTBOX, batch.outbox)
    if batch.deliveries:
        await con.executemany(_INSERT_DELIVERY, batch.deliveries)


_VERSION = "SELECT coalesce(max(version), 0) FROM schema_migrations"


def _items(rows: Sequence[Any]) -> list[OutboxItem]:
    return [OutboxItem(*r) for r in rows]


async def _migrate(con: Any) -> None:
    async with con.transaction():
        # Held until commit: a replica starting at the same time waits here, then sees
        # every migration this one applied and applies none twice.
        await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = int(await con.fetchval(_VERSION))
        for version, name, sql in MIGRATIONS:
            if version <= current:
                continue
            await con.execute(sql)
            await con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
