"""The PostgreSQL store, for several replicas: asyncpg, a pool, versioned migrations.

The schema is SQLite's, in PostgreSQL types (:mod:`sidecar.store.migrations`): epoch
seconds as ``double precision``, the incident and event documents as ``json``, which
operators read with ``->``, ``->>`` and, for the jsonb operators, ``data::jsonb``.

Migrations run once, in order, in one transaction under an advisory lock, so replicas
starting together neither race nor apply one twice. The one-open-incident-per-key rule
is a partial unique index, as in SQLite. Outbox rows are leased
(:meth:`PostgresStore.claim_outbox`) so several workers never send the same event at
once and a dead worker's lease runs out; claims take one advisory lock, so that the
per-routing-key send budget they share (``outbox_sends``) is counted by one at a time.
Incident numbers are counted per day in ``incident_numbers``: a batch that may open an
incident locks its day's row (:meth:`PostgresStore.locked`), gives the numbers after it,
and moves it on in the transaction that inserts the incidents, so replicas never give
one number twice and a batch that fails gives none.
The statements both SQL stores run are :mod:`sidecar.store.sql`'s; the ones here are
PostgreSQL's alone (locks, leases in the table, the shared budget, the change feed).

Replicas follow each other through the ``changes`` table: a transaction that writes
incidents appends their ids while holding one advisory lock until it commits, so the
numbers are handed out in commit order and a reader that has seen number n has seen
every change before it; ``NOTIFY`` tells the listeners to read (:meth:`PostgresStore.listen`).
A notification missed while a listener reconnects costs nothing: the next read asks for
everything after the last number read (:mod:`sidecar.follow`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from sidecar.errors import StoreRefused, StoreUnavailable
from sidecar.store.base import LockedRead, LockedState, Version
from sidecar.store.lockread import lock_and_read
from sidecar.store.migrations import migrations
from sidecar.store.queue import Claim, Claimant, outbox_item, take_within_budget
from sidecar.store.rows import WriteBatch
from sidecar.store.sql import POSTGRES, Statements
from sidecar.store.sqlstore import SQLStore

T = TypeVar("T")

# pg_advisory_xact_lock key: "sidecar" "migrate" as a fixed 64-bit number, the same in
# every replica and unlikely to collide with another application's lock in the database.
MIGRATION_LOCK = 0x5349_4443_4D49_4752
# The same for outbox claims ("sidecar" "outbox"): held by one claim at a time, for the
# few milliseconds it takes to count the budget, pick and lease.
CLAIM_LOCK = 0x5349_4443_4F55_5442
# The same for the change feed ("sidecar" "change"): taken by a writing transaction
# right before it numbers its changes and held until it commits, so that numbers are
# visible in order. Commits that change incidents run one at a time (NOTIFY alone would
# serialise them just as much, but at commit, after the numbers were drawn).
CHANGES_LOCK = 0x5349_4443_4348_4E47
# The channel listeners wait on; the payload is the last number the commit drew.
CHANNEL = "sidecar_changes"
_RECORD_CHANGES = (
    "WITH serial AS (SELECT pg_advisory_xact_lock($1)), "
    "added AS (INSERT INTO changes (incident_id, origin) "
    "SELECT id, $3 FROM serial, unnest($2::text[]) AS id RETURNING seq) "
    "SELECT pg_notify($4, max(seq)::text) FROM added"
)

# (version, name, statements): the schema in PostgreSQL's words (see sidecar.store.migrations).
MIGRATIONS = migrations(POSTGRES)

_SQL = Statements(POSTGRES)
# (day): the day's last number, its counter row locked until the transaction ends (an
# upsert that changes nothing still locks the row it conflicts with).
_RESERVE_NUMBER = (
    "INSERT INTO incident_numbers (day, last) VALUES ($1, 0) "
    "ON CONFLICT (day) DO UPDATE SET last = incident_numbers.last RETURNING last"
)
# (day, last): move the day's counter on to the last number the batch gave.
_ADVANCE_NUMBER = (
    "INSERT INTO incident_numbers (day, last) VALUES ($1, $2) "
    "ON CONFLICT (day) DO UPDATE SET last = GREATEST(incident_numbers.last, excluded.last)"
)

# Everything asyncpg, the socket or a timeout can raise when the database cannot serve us;
# TimeoutError and ConnectionError are OSErrors. InternalClientError is what asyncpg raises
# when a connection the server just terminated is reused before the client noticed.
_DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)

# What the database refuses of the rows themselves, whichever connection sends them:
# a value its type cannot hold (class 22: NUL in text), a row over its limits (54: an
# index entry too long), a constraint (23). The batch fails again as it is; its
# commands may not (sidecar.service retries them one by one).
_REFUSALS = (
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
    asyncpg.IntegrityConstraintViolationError,
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


async def _keep_session(_con: Any) -> None:
    """Give a connection back to the pool as it is.

    asyncpg's default resets the session on every release (unlock session advisory
    locks, close cursors, unlisten, reset settings: one more round trip per use). Pool
    connections hold none of these: locks are transaction-scoped, LISTEN has a
    connection of its own, nothing sets a setting. An open transaction is still rolled
    back by asyncpg before this is called.
    """


class PostgresStore(SQLStore):
    """PostgreSQL behind the :class:`~sidecar.store.base.Store` interface."""

    sql = _SQL

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
        # Names this process's changes in the feed, so that it skips its own.
        self.origin = secrets.token_hex(8)

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
        except _REFUSALS as exc:
            raise StoreRefused(f"postgresql: {type(exc).__name__}: {exc}") from exc
        except _DATABASE_ERRORS as exc:
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc

    async def _rows(self, sql: str, params: Sequence[Any], convert: Callable[[Any], T]) -> list[T]:
        async with self._connection() as con:
            return [convert(r) for r in await con.fetch(sql, *params)]

    async def _value(self, sql: str, params: Sequence[Any]) -> Any:
        async with self._connection() as con:
            return await con.fetchval(sql, *params)

    async def _update(self, sql: str, params: Sequence[Any]) -> None:
        async with self._connection() as con:
            await con.execute(sql, *params)

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
                reset=_keep_session,
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
            await _write(con, batch, self.origin)

    @asynccontextmanager
    async def locked(
        self,
        keys: Collection[str],
        ids: Collection[str],
        closed_since: float,
        known: Mapping[str, Version] = {},
    ) -> AsyncIterator[LockedState]:
        """A transaction holding the keys' locks, with their current rows (see Store)."""
        async with self._connection() as con, con.transaction():
            read = await lock_and_read(con, keys, ids, closed_since, known, False)
            yield LockedState(
                read.keys,
                read.ids,
                read.incidents,
                read.recently_closed,
                versions=read.versions,
                unchanged=read.unchanged,
                write=lambda batch: _write(con, batch, self.origin),
                last_number=lambda day: _reserve(con, day),
            )

    async def read_locked(
        self, keys: Collection[str], closed_since: float, known: Mapping[str, Version] = {}
    ) -> LockedRead:
        """The keys' rows read under their locks, released at once (see ReadsUnderLock).

        No transaction around it: the statement is its own, so the locks are held
        while the function reads and let go when it returns. They are taken shared:
        the read waits for every writer of the keys to commit, not for other reads.
        """
        async with self._connection() as con:
            return await lock_and_read(con, keys, (), closed_since, known, True)

    # -- the change feed --------------------------------------------------

    async def change_position(self) -> int:
        """The number of the last committed change (0 for none)."""
        return int(await self._value("SELECT coalesce(max(seq), 0) FROM changes", ()))

    async def changes_since(self, position: int, limit: int) -> list[tuple[int, str, str]]:
        """(number, incident id, origin) of up to ``limit`` changes after ``position``, in order."""
        sql = "SELECT seq, incident_id, origin FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2"
        return await self._rows(sql, (position, limit), _change)

    async def prune_changes(self, older_than: float) -> None:
        """Forget changes committed more than ``older_than`` seconds ago."""
        sql = "DELETE FROM changes WHERE at < now() - make_interval(secs => $1)"
        await self._update(sql, (older_than,))

    async def listen(self, heard: Callable[[], None], lost: Callable[[], None]) -> Any:
        """A connection of its own on which every committed change calls ``heard``;
        ``lost`` is called when the connection ends (then ``is_closed``)."""
        self._check_open()
        con = None
        try:
            con = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
            con.add_termination_listener(lambda _con: lost())
            await con.add_listener(CHANNEL, lambda *_args: heard())
        except _DATABASE_ERRORS as exc:
            if con is not None:
                con.terminate()
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc
        return con  # is_closed() and close(): sidecar.follow.Listening

    # -- outbox -----------------------------------------------------------

    async def claim_outbox(self, now: float, limit: int, claimant: Claimant) -> Claim:
        """Lease up to ``limit`` due heads to the claimant (see Store.claim_outbox).

        Claims run one at a time (an advisory lock), so two workers never claim one row
        and every claim counts the sends of all the others in the budget; rows leased
        to anyone are skipped until the lease runs out, and only the head of each dedup
        key is ever claimed, so no two workers send one key's events at once.
        """
        integration, budget = claimant.integration, claimant.budget
        async with self._connection() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK)
            rows = await con.fetch(self.sql.heads_per_routing, integration, now, limit)
            heads = [outbox_item(r) for r in rows]
            if not heads:
                return Claim([])
            sent: dict[str, list[float]] = {}
            if budget is not None:
                await con.execute(
                    "DELETE FROM outbox_sends WHERE integration = $1 AND at <= $2",
                    integration,
                    now - budget.window,
                )
                for bucket, at in await con.fetch(
                    "SELECT bucket, at FROM outbox_sends WHERE integration = $1", integration
                ):
                    sent.setdefault(bucket, []).append(at)
            claim = take_within_budget(heads, limit, budget, sent, now)
            await con.execute(
                "UPDATE outbox SET lease_until = $1, lease_owner = $2 WHERE id = ANY($3)",
                now + claimant.lease_seconds,
                claimant.owner,
                [item.id for item in claim.items],
            )
            if budget is not None:
                buckets = [budget.buckets.get(item.routing) for item in claim.items]
                await con.executemany(
                    "INSERT INTO outbox_sends (integration, bucket, at) VALUES ($1, $2, $3)",
                    [(integration, bucket, now) for bucket in buckets if bucket is not None],
                )
        return claim


async def _reserve(con: Any, day: str) -> int:
    return int(await con.fetchval(_RESERVE_NUMBER, day))


def _change(row: Any) -> tuple[int, str, str]:
    return int(row[0]), str(row[1]), str(row[2])


async def _write(con: Any, batch: WriteBatch, origin: str) -> None:
    if batch.numbers:
        await con.executemany(_ADVANCE_NUMBER, list(batch.numbers.items()))
    for insert, rows in _SQL.writes(batch):
        if rows:
            await con.executemany(insert.sql(), rows)
    if batch.incidents:
        ids = list(dict.fromkeys(row.id for row in batch.incidents))
        await con.execute(_RECORD_CHANGES, CHANGES_LOCK, ids, origin, CHANNEL)


async def _migrate(con: Any) -> None:
    async with con.transaction():
        # Held until commit: a replica starting at the same time waits here, then sees
        # every migration this one applied and applies none twice.
        await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = int(await con.fetchval(_SQL.schema_version))
        for version, name, sql in MIGRATIONS:
            if version <= current:
                continue
            if sql.strip():  # a version may hold nothing for PostgreSQL
                await con.execute(sql)
            await con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
