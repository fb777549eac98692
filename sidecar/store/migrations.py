"""The schema of both SQL stores: each migration written once, for both dialects.

A migration holds what both backends create, with column types in braces that
each dialect names (:data:`TYPES`), then what only one of them needs. Both
backends apply every version, so ``schema_version`` means the same on both.

PostgreSQL keeps the documents as ``json`` rather than ``jsonb``: it keeps the
exact bytes the rows carry and accepts every string JSON can hold, where ``jsonb``
refuses ``\\u0000`` (a label value could carry one, and a refused write would be a
503 that Alertmanager retries forever). Notification bodies are bytes: they are
sent verbatim.

Each migration runs once, in order, in its own transaction; never edit one that
has shipped, add the next instead.
"""

from __future__ import annotations

from typing import NamedTuple

from sidecar.store.lockread import LOCK_INCIDENTS_12
from sidecar.store.sql import Dialect

TYPES: dict[str, dict[str, str]] = {
    "sqlite": {
        "text": "TEXT",
        "integer": "INTEGER",
        "real": "REAL",
        "bytes": "BLOB",
        "json": "BLOB",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        # Tables looked up by their primary key alone need no rowid beside it.
        "by_key": " WITHOUT ROWID",
    },
    "postgresql": {
        "text": "text",
        "integer": "integer",
        "real": "double precision",
        "bytes": "bytea",
        "json": "json",
        "serial": "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "by_key": "",
    },
}


class Migration(NamedTuple):
    """One schema version: what both backends apply, then what each adds."""

    version: int
    name: str
    both: str = ""
    sqlite: str = ""
    postgresql: str = ""

    def sql(self, dialect: Dialect) -> str:
        """The statements of this version in ``dialect``, ``;``-separated."""
        own = self.sqlite if dialect.name == "sqlite" else self.postgresql
        return (self.both + own).format_map(TYPES[dialect.name])


SCHEMA: tuple[Migration, ...] = (
    Migration(
        1,
        "incidents and timeline",
        """
        CREATE TABLE incidents (
            id {text} PRIMARY KEY,
            key {text} NOT NULL,
            state {text} NOT NULL,
            severity {text} NOT NULL,
            team {text} NOT NULL,
            started_at {real} NOT NULL,
            triggered_at {real} NOT NULL,
            acknowledged_at {real},
            resolved_at {real},
            updated_at {real} NOT NULL,
            data {json} NOT NULL
        );
        -- The database itself guarantees one open incident per key, across replicas.
        CREATE UNIQUE INDEX incidents_open_key ON incidents(key) WHERE state <> 'resolved';
        CREATE INDEX incidents_state ON incidents(state, severity, team);
        CREATE INDEX incidents_triggered ON incidents(triggered_at);
        CREATE INDEX incidents_key_resolved ON incidents(key, resolved_at);
        CREATE TABLE events (
            incident_id {text} NOT NULL,
            seq {integer} NOT NULL,
            at {real} NOT NULL,
            kind {text} NOT NULL,
            source {text} NOT NULL,
            actor {text},
            message {text} NOT NULL,
            data {json} NOT NULL,
            PRIMARY KEY (incident_id, seq)
        ){by_key};
        """,
    ),
    Migration(
        2,
        "pagerduty outbox and inbound webhook deliveries",
        """
        CREATE TABLE outbox (
            id {serial},
            incident_id {text} NOT NULL,
            dedup_key {text} NOT NULL,
            routing {text} NOT NULL,
            action {text} NOT NULL,
            body {bytes} NOT NULL,
            created_at {real} NOT NULL,
            state {text} NOT NULL DEFAULT 'pending',
            attempts {integer} NOT NULL DEFAULT 0,
            next_attempt_at {real} NOT NULL,
            last_error {text},
            done_at {real}
        );
        CREATE INDEX outbox_pending ON outbox(dedup_key, id) WHERE state = 'pending';
        CREATE INDEX outbox_dedup ON outbox(dedup_key, id);
        CREATE INDEX outbox_incident ON outbox(incident_id);
        CREATE TABLE deliveries (
            id {text} NOT NULL,
            source {text} NOT NULL,
            received_at {real} NOT NULL,
            PRIMARY KEY (source, id)
        ){by_key};
        CREATE INDEX deliveries_received ON deliveries(received_at);
        """,
        # Several replicas send from one table: a row is leased to the worker that
        # sends it, and the others skip it until lease_until. (One process owns a
        # SQLite file: its leases live in memory.)
        postgresql="""
        ALTER TABLE outbox ADD COLUMN lease_owner text;
        ALTER TABLE outbox ADD COLUMN lease_until double precision;
        """,
    ),
    Migration(
        3,
        "post-incident review deadlines",
        """
        ALTER TABLE incidents ADD COLUMN review_due_at {real};
        ALTER TABLE incidents ADD COLUMN review_done_at {real};
        CREATE INDEX incidents_review_pending ON incidents(review_due_at)
            WHERE review_due_at IS NOT NULL AND review_done_at IS NULL;
        """,
    ),
    Migration(
        4,
        "alerts in their own document",
        # Restored incidents keep this document undecoded until first used
        # (restart time). Earlier rows keep their alerts in data, still read.
        """
        ALTER TABLE incidents ADD COLUMN alerts {json};
        """,
    ),
    Migration(
        5,
        "drop indexes no query of the backend uses",
        # No SQLite query looks incidents up by key (one process owns the file and
        # keeps them in memory), and the group key is long and random: each new
        # incident cost a page write of its own in this index at commit. PostgreSQL
        # replicas re-read recently closed incidents by key under lock (``locked``),
        # through this index: they keep it.
        sqlite="""
        DROP INDEX IF EXISTS incidents_key_resolved;
        """,
    ),
    Migration(
        6,
        "outbox backoff counts server failures only; shared send budget",
        """
        ALTER TABLE outbox ADD COLUMN server_failures {integer} NOT NULL DEFAULT 0;
        """,
        # outbox_sends: one row per event claimed with a budget, by every replica, so
        # that together they keep to PagerDuty's rate per routing key. Rows older than
        # the window are deleted by the claims themselves. (SQLite: in memory.)
        postgresql="""
        CREATE TABLE outbox_sends (
            bucket text NOT NULL,
            at double precision NOT NULL
        );
        CREATE INDEX outbox_sends_at ON outbox_sends(at);
        """,
    ),
    Migration(
        7,
        "outbox items name their integration",
        # Each integration has its own queues and send budget: a head is the oldest
        # pending item of its integration and dedup key. Every item so far was PagerDuty's.
        """
        ALTER TABLE outbox ADD COLUMN integration {text} NOT NULL DEFAULT 'pagerduty';
        DROP INDEX outbox_pending;
        CREATE INDEX outbox_pending ON outbox(integration, dedup_key, id)
            WHERE state = 'pending';
        """,
        postgresql="""
        ALTER TABLE outbox_sends ADD COLUMN integration text NOT NULL DEFAULT 'pagerduty';
        """,
    ),
    Migration(
        8,
        "incident numbers",
        # The plan's numbers (2026-11-30-001), unique even if a bug gave one twice: the
        # write would fail (503) rather than store two incidents under one number.
        """
        ALTER TABLE incidents ADD COLUMN number {text};
        CREATE UNIQUE INDEX incidents_number ON incidents(number) WHERE number IS NOT NULL;
        """,
        # Replicas count each day's numbers in one row, locked from the first number a
        # batch takes to its commit (SQLite: one process counts in memory, from the rows).
        postgresql="""
        CREATE TABLE incident_numbers (
            day text PRIMARY KEY,
            last integer NOT NULL
        );
        """,
    ),
    Migration(
        9,
        "changes for replicas to follow",
        # Every transaction that writes incidents appends their ids here, numbered in
        # commit order (see sidecar.store.postgres), so that each replica reads what the
        # others changed since the last number it read, instead of reloading every open
        # incident. Rows are pruned after an hour. (One process owns a SQLite file.)
        postgresql="""
        CREATE TABLE changes (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            incident_id text NOT NULL,
            origin text NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX changes_at ON changes(at);
        """,
    ),
    Migration(
        10,
        "outbox items keep what their delivery returned",
        # A Slack reply needs the ts of its thread's first message, a Jira link the
        # issue's key: the accepted send's receipt, read by the items after it.
        """
        ALTER TABLE outbox ADD COLUMN receipt {text};
        """,
    ),
    Migration(
        11,
        "one round trip to lock a batch's keys and read their incidents",
        # What PostgresStore.locked asked in three statements (lock, open rows, recently
        # closed rows), in one call. PL/pgSQL, so never inlined into the calling query,
        # and VOLATILE, so each statement in it takes a fresh snapshot: the rows are
        # read after the locks are held, never from a snapshot taken before the wait.
        # Locks go in the order of the array, which the caller sorts (the keys of
        # ``ids`` are merged in in the same byte order). The columns are the row's
        # version (its xmin: every write of a row makes a version with its
        # transaction's id), then IncidentRow's, in order: a migration that adds one
        # to incidents replaces this function.
        # Generic plans: planning the queries anew for each call's arrays cost more
        # than running them. And index lookups only: a plan is kept for the session,
        # and one made while the table was small (a new database, statistics not yet
        # gathered) would otherwise scan every incident in every batch.
        postgresql="""
        CREATE FUNCTION sidecar_lock_incidents(
            lock_keys text[], lock_ids text[], closed_since double precision
        ) RETURNS TABLE (
            recent boolean, version bigint, id text, key text, state text, severity text, team text,
            started_at double precision, triggered_at double precision,
            acknowledged_at double precision, resolved_at double precision,
            review_due_at double precision, review_done_at double precision,
            number text, updated_at double precision, data json, alerts json
        ) LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
        SET enable_hashjoin = off SET enable_mergejoin = off SET enable_material = off AS $fn$
        #variable_conflict use_column
        DECLARE
            all_keys text[] := lock_keys;
        BEGIN
            IF cardinality(lock_ids) > 0 THEN
                SELECT array_agg(k ORDER BY k COLLATE "C") INTO all_keys FROM (
                    SELECT unnest(lock_keys) AS k
                    UNION SELECT i.key FROM incidents i WHERE i.id = ANY(lock_ids)
                ) AS both_keys;
            END IF;
            PERFORM pg_advisory_xact_lock(hashtextextended(k, 0))
                FROM unnest(all_keys) AS k;
            -- Driven by the arrays, one index lookup per element: a plan that scans
            -- every incident is never the cheaper one, whatever the table's statistics.
            RETURN QUERY
                SELECT false, i.xmin::text::bigint, i.id, i.key, i.state, i.severity,
                    i.team, i.started_at, i.triggered_at, i.acknowledged_at, i.resolved_at,
                    i.review_due_at, i.review_done_at, i.number, i.updated_at, i.data,
                    i.alerts
                FROM unnest(all_keys) AS k
                JOIN incidents i ON i.key = k AND i.state <> 'resolved'
                UNION ALL
                -- An id's open incident is its key's, read above already. (state || ''
                -- keeps the planner off the state index, which would read every
                -- resolved incident.)
                SELECT false, i.xmin::text::bigint, i.id, i.key, i.state, i.severity,
                    i.team, i.started_at, i.triggered_at, i.acknowledged_at, i.resolved_at,
                    i.review_due_at, i.review_done_at, i.number, i.updated_at, i.data,
                    i.alerts
                FROM (SELECT DISTINCT unnest(lock_ids) AS n) AS wanted
                JOIN incidents i ON i.id = wanted.n AND i.state || '' = 'resolved'
                UNION ALL
                SELECT true, c.xmin::text::bigint, c.id, c.key, c.state, c.severity, c.team,
                    c.started_at, c.triggered_at, c.acknowledged_at, c.resolved_at,
                    c.review_due_at, c.review_done_at, c.number, c.updated_at, c.data, c.alerts
                FROM unnest(all_keys) AS k
                CROSS JOIN LATERAL (
                    SELECT i.xmin, i.id, i.key, i.state, i.severity, i.team, i.started_at,
                        i.triggered_at, i.acknowledged_at, i.resolved_at, i.review_due_at,
                        i.review_done_at, i.number, i.updated_at, i.data, i.alerts
                    FROM incidents i
                    -- By key and time, off the state index again.
                    WHERE i.key = k AND i.resolved_at >= closed_since
                        AND i.state || '' = 'resolved'
                    ORDER BY i.resolved_at DESC
                    LIMIT 1
                ) AS c;
        END
        $fn$;
        """,
    ),
    Migration(
        12,
        "the locked read leaves out the documents of rows the caller holds",
        # Migration 11's function with the versions the caller holds and a shared mode
        # (see sidecar.store.lockread).
        postgresql=LOCK_INCIDENTS_12,
    ),
    Migration(
        13,
        "over-long group keys key their incidents by hash",
        # sidecar.alertmanager.incident_key: a group key over 2,048 bytes (UTF-8) keys
        # its incident as "sha256:" and its digest, which PostgreSQL's indexes on key
        # can hold. Incidents stored before keep matching their groups: their keys are
        # rewritten the same way (no PostgreSQL row can hold one beyond about 2.7 KB,
        # unless it compressed well; SQLite any). The group key stays in ``data``.
        sqlite="""
        UPDATE incidents SET key = sidecar_incident_key(key)
            WHERE length(CAST(key AS BLOB)) > 2048;
        """,
        postgresql="""
        UPDATE incidents
            SET key = 'sha256:' || encode(sha256(convert_to(key, 'UTF8')), 'hex')
            WHERE octet_length(key) > 2048;
        """,
    ),
)


def migrations(dialect: Dialect) -> list[tuple[int, str, str]]:
    """(version, name, statements) of every migration, in order, in ``dialect``."""
    return [(m.version, m.name, m.sql(dialect)) for m in SCHEMA]
