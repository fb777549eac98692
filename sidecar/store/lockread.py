"""The locked read: a batch's keys locked and their rows read, in one round trip.

PostgreSQL's :meth:`~sidecar.store.postgres.PostgresStore.locked` and
:meth:`~sidecar.store.postgres.PostgresStore.read_locked` both begin with one call of
``sidecar_lock_incidents`` (migrations 11 and 12), which takes the keys' advisory locks
in sorted order, then reads the keys' open rows, the rows of the ids, and each key's
latest incident resolved since a time.

Migration 12's version takes two more arguments. ``known`` maps an incident id to the
version of its row the caller holds in memory (``[xmin, updated_at]``, see
:mod:`sidecar.held`): such a row comes back with its data and alerts NULL (both NOT
NULL in the table), so they are neither read from TOAST, sent, nor received; with 50
alerts the documents were most of what a read cost on both sides. ``shared`` takes the
locks shared: a read that writes nothing still waits for every writer of the keys to
commit, but not for other readers (replicas answering resends of the same groups).
Migration 11's function stays for replicas of the previous release during a rolling
upgrade.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import orjson

from sidecar.store.base import LockedRead, Version
from sidecar.store.codec import incident_from_row
from sidecar.store.rows import IncidentRow

# (sorted keys, ids, closed since, held versions, shared): the keys' locks, then
# (recent, version, *IncidentRow) rows: open incidents of the keys and ids (recent false),
# each key's latest resolved since then (recent true).
_LOCK_INCIDENTS = "SELECT * FROM sidecar_lock_incidents($1, $2, $3, $4, $5)"
_UPDATED_AT = IncidentRow._fields.index("updated_at")
_DATA = IncidentRow._fields.index("data")

LOCK_INCIDENTS_12 = """
        CREATE FUNCTION sidecar_lock_incidents(
            lock_keys text[], lock_ids text[], closed_since double precision, known json,
            shared boolean
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
            -- Parsed once; each row's lookup in it is then a binary search.
            held jsonb := known::jsonb;
        BEGIN
            IF cardinality(lock_ids) > 0 THEN
                SELECT array_agg(k ORDER BY k COLLATE "C") INTO all_keys FROM (
                    SELECT unnest(lock_keys) AS k
                    UNION SELECT i.key FROM incidents i WHERE i.id = ANY(lock_ids)
                ) AS both_keys;
            END IF;
            IF shared THEN
                PERFORM pg_advisory_xact_lock_shared(hashtextextended(k, 0))
                    FROM unnest(all_keys) AS k;
            ELSE
                PERFORM pg_advisory_xact_lock(hashtextextended(k, 0))
                    FROM unnest(all_keys) AS k;
            END IF;
            RETURN QUERY
                SELECT false, i.xmin::text::bigint, i.id, i.key, i.state, i.severity,
                    i.team, i.started_at, i.triggered_at, i.acknowledged_at, i.resolved_at,
                    i.review_due_at, i.review_done_at, i.number, i.updated_at,
                    -- NULL (not held: no such key) is not true: the documents go.
                    CASE WHEN (held -> i.id ->> 0)::bigint = i.xmin::text::bigint
                        AND (held -> i.id ->> 1)::double precision = i.updated_at
                        THEN NULL ELSE i.data END,
                    CASE WHEN (held -> i.id ->> 0)::bigint = i.xmin::text::bigint
                        AND (held -> i.id ->> 1)::double precision = i.updated_at
                        THEN NULL ELSE i.alerts END
                FROM unnest(all_keys) AS k
                JOIN incidents i ON i.key = k AND i.state <> 'resolved'
                UNION ALL
                -- An id's open incident is its key's, read above already; a resolved
                -- one is never held. (state || '' keeps the planner off the state
                -- index, which would read every resolved incident.)
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
                    WHERE i.key = k AND i.resolved_at >= closed_since
                        AND i.state || '' = 'resolved'
                    ORDER BY i.resolved_at DESC
                    LIMIT 1
                ) AS c;
        END
        $fn$;
        """


async def lock_and_read(
    con: Any,
    keys: Collection[str],
    ids: Collection[str],
    closed_since: float,
    known: Mapping[str, Version],
    shared: bool,
) -> LockedRead:
    """Call the function on ``con``: the keys' (and ids') rows read under their locks."""
    # Sorted, so that two replicas locking overlapping keys cannot deadlock; the locks
    # and the reads after them in one round trip.
    held = orjson.dumps(known)  # {id: [xmin, updated_at]}, floats exact (shortest repr)
    rows = await con.fetch(_LOCK_INCIDENTS, sorted(keys), list(ids), closed_since, held, shared)
    read = LockedRead(keys=set(keys), ids=set(ids), incidents=[], recently_closed=[])
    wanted = set(ids)
    for r in rows:
        row = r[2:]
        if r[0]:
            read.recently_closed.append(incident_from_row(row))
            continue
        if row[0] in wanted:
            read.keys.add(row[1])  # the keys of the ids are locked too
        # A version is the transaction that wrote the row, and when it said it did.
        read.versions[row[0]] = (r[1], row[_UPDATED_AT])
        if row[_DATA] is None:  # at the version known: the documents were left out
            read.unchanged.add(row[0])
        else:
            read.incidents.append(incident_from_row(row))
    return read
