"""Every statement the SQL stores share, written once and rendered for each dialect.

SQLite (3.24 and later) and PostgreSQL read the same SQL but for a few things a
:class:`Dialect` names: how a parameter is written, how text sorts by bytes, and
whether the outbox leases live in the table. Column lists come from the row types
(:mod:`sidecar.store.rows`) and :class:`~sidecar.store.queue.OutboxItem`.
"""

# ruff: noqa: S608 - every statement is built from constant column names; values are parameters

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, NamedTuple

from sidecar.store.base import IncidentQuery
from sidecar.store.queue import OutboxItem
from sidecar.store.rows import (
    INCIDENT_COLUMNS,
    OUTBOX_COLUMNS,
    DeliveryRow,
    EventRow,
    IncidentRow,
    WriteBatch,
    outbox_values,
)


class Dialect(NamedTuple):
    """What the backends spell differently."""

    name: str
    # The n-th parameter is ``{mark}n``: SQLite's ?NNN numbers them as PostgreSQL's $n does.
    mark: str
    # Appended to a text column in ORDER BY so that ties sort by bytes, as SQLite's
    # default does, whatever the database's locale.
    by_bytes: str
    # True where outbox leases are columns of the table (several replicas), False
    # where they live in the memory of the one process that owns the database.
    leases_in_table: bool

    def param(self, n: int) -> str:
        """The n-th parameter (from 1)."""
        return f"{self.mark}{n}"


SQLITE = Dialect("sqlite", mark="?", by_bytes="", leases_in_table=False)
POSTGRES = Dialect("postgresql", mark="$", by_bytes=' COLLATE "C"', leases_in_table=True)

# Predicates that select incidents, in SQL both dialects read the same way.
OPEN = "state <> 'resolved'"
REVIEW_PENDING = "review_due_at IS NOT NULL AND review_done_at IS NULL AND state = 'resolved'"

# Columns an upsert leaves as the incident's first write set them.
_SET_ONCE = ("id", "key", "triggered_at")


class Insert(NamedTuple):
    """An INSERT of rows of one type, as a statement of any number of rows.

    ``values`` says which field of the row (from 1) each column takes, so a
    field may fill two columns without being sent twice.
    """

    dialect: Dialect
    table: str
    columns: tuple[str, ...]
    values: tuple[int, ...]
    width: int
    tail: str = ""

    def sql(self, rows: int = 1) -> str:
        """The statement for ``rows`` rows, their fields as consecutive parameters."""
        return _render(self, rows)


@functools.cache
def _render(insert: Insert, rows: int) -> str:
    p = insert.dialect.param
    tuples = (
        "(" + ", ".join(p(start + v) for v in insert.values) + ")"
        for start in range(0, rows * insert.width, insert.width)
    )
    columns = ", ".join(insert.columns)
    return f"INSERT INTO {insert.table} ({columns}) VALUES {', '.join(tuples)}{insert.tail}"


def _insert(dialect: Dialect, table: str, columns: tuple[str, ...], tail: str = "") -> Insert:
    """Each field of the row type with ``columns`` as its fields into the column of its name."""
    width = len(columns)
    return Insert(dialect, table, columns, tuple(range(1, width + 1)), width, tail)


class Statements:
    """Every shared statement, in one dialect; parameters are numbered as the comments say."""

    def __init__(self, d: Dialect) -> None:
        self.dialect = d
        p = d.param
        self.upsert_incident = _insert(
            d,
            "incidents",
            IncidentRow._fields,
            " ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in IncidentRow._fields if c not in _SET_ONCE),
        )
        # A replayed event (same incident and seq) is the one already stored, and a
        # redelivered webhook keeps the time it was first received.
        keep_first = " ON CONFLICT DO NOTHING"
        self.insert_event = _insert(d, "events", EventRow._fields, keep_first)
        self.insert_delivery = _insert(d, "deliveries", DeliveryRow._fields, keep_first)
        # Due as soon as it is queued.
        queued = _insert(d, "outbox", OUTBOX_COLUMNS)
        self.insert_outbox = Insert(
            d,
            "outbox",
            (*queued.columns, "next_attempt_at"),
            (*queued.values, OUTBOX_COLUMNS.index("created_at") + 1),
            queued.width,
        )

        incidents = f"SELECT {INCIDENT_COLUMNS} FROM incidents"
        self.select_incidents = incidents
        self.load_open = f"{incidents} WHERE {OPEN}"
        self.load_pending_reviews = f"{incidents} WHERE {REVIEW_PENDING}"
        # (since): oldest first, so that the latest of a key wins.
        self.load_closed_since = (
            f"{incidents} WHERE state = 'resolved' AND resolved_at >= {p(1)} "
            f"ORDER BY resolved_at, id{d.by_bytes}"
        )
        self.get_incident = f"{incidents} WHERE id = {p(1)}"
        self.incident_id_for_number = f"SELECT id FROM incidents WHERE number = {p(1)}"
        # (day): the highest number given on that day. A range, not LIKE, so that
        # the index serves it: '.' sorts right after '-'.
        self.last_number = (
            "SELECT coalesce(max(CAST(substr(number, 12) AS INTEGER)), 0) FROM incidents "
            f"WHERE number > {p(1)} || '-' AND number < {p(1)} || '.'"
        )
        self.timeline = (
            f"SELECT {', '.join(EventRow._fields)} FROM events "
            f"WHERE incident_id = {p(1)} ORDER BY seq"
        )

        items = ", ".join(f.name for f in fields(OutboxItem))
        o_items = ", ".join(f"o.{f.name}" for f in fields(OutboxItem))
        # (integration, now): a pending item is a head when no older pending item of its
        # integration shares its dedup key, and free when nobody holds a live lease on it.
        unleased = f"AND (o.lease_until IS NULL OR o.lease_until <= {p(2)}) "
        head = (
            f"o.state = 'pending' AND o.integration = {p(1)} AND o.next_attempt_at <= {p(2)} "
            + (unleased if d.leases_in_table else "")
            + "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.integration = o.integration "
            "AND p.dedup_key = o.dedup_key AND p.state = 'pending' AND p.id < o.id)"
        )
        # (integration, now, limit)
        self.due_heads = f"SELECT {o_items} FROM outbox o WHERE {head} ORDER BY o.id LIMIT {p(3)}"
        # (integration, now, n): the oldest n heads of each routing name, for the budget.
        self.heads_per_routing = (
            f"SELECT {items} FROM ("
            f"SELECT {o_items}, row_number() OVER (PARTITION BY o.routing ORDER BY o.id) AS n "
            f"FROM outbox o WHERE {head}) heads WHERE n <= {p(3)} ORDER BY id"
        )
        self.outbox_for_incident = (
            f"SELECT {items} FROM outbox WHERE incident_id = {p(1)} ORDER BY id"
        )
        # (state, attempts, next_attempt_at, last_error, done_at, server_failures, receipt, id)
        self.finish_outbox = (
            f"UPDATE outbox SET state = {p(1)}, attempts = {p(2)}, next_attempt_at = {p(3)}, "
            f"last_error = {p(4)}, done_at = {p(5)}, server_failures = {p(6)}, receipt = {p(7)}"
            + (", lease_owner = NULL, lease_until = NULL" if d.leases_in_table else "")
            + f" WHERE id = {p(8)}"
        )
        self.outbox_pending = (
            f"SELECT count(*) FROM outbox WHERE state = 'pending' AND integration = {p(1)}"
        )
        # (dedup_key, integration)
        self.incident_for_dedup_key = (
            f"SELECT incident_id FROM outbox WHERE dedup_key = {p(1)} AND integration = {p(2)} "
            "ORDER BY id DESC LIMIT 1"
        )
        # (dedup_key, integration): the first trigger on the key of the incident that
        # was notified last with it; the latest time an earlier event of the key was
        # done, and whether one is still pending (the trigger goes only after them);
        # whether another incident was triggered on the key before.
        earlier = "p.integration = f.integration AND p.dedup_key = f.dedup_key AND p.id < f.id"
        self.latest_page = (
            f"SELECT f.incident_id, f.created_at, (SELECT max(p.done_at) FROM outbox p "
            f"WHERE {earlier}), EXISTS (SELECT 1 FROM outbox p WHERE {earlier} "
            "AND p.state = 'pending'), "
            "EXISTS (SELECT 1 FROM outbox q WHERE q.integration = f.integration "
            "AND q.dedup_key = f.dedup_key AND q.id < f.id AND q.action = 'trigger' "
            "AND q.incident_id <> f.incident_id) "
            f"FROM outbox f WHERE f.dedup_key = {p(1)} AND f.integration = {p(2)} "
            "AND f.action = 'trigger' AND f.incident_id = (SELECT incident_id FROM outbox "
            f"WHERE dedup_key = {p(1)} AND integration = {p(2)} ORDER BY id DESC LIMIT 1) "
            "ORDER BY f.id LIMIT 1"
        )
        # (source, since)
        self.known_deliveries = (
            f"SELECT id FROM deliveries WHERE source = {p(1)} AND received_at >= {p(2)}"
        )
        self.schema_version = "SELECT coalesce(max(version), 0) FROM schema_migrations"

    def writes(self, batch: WriteBatch) -> list[tuple[Insert, Sequence[Sequence[Any]]]]:
        """The inserts that write ``batch``, in order, each with its rows' parameters."""
        return [
            (self.upsert_incident, batch.incidents),
            (self.insert_event, batch.events),
            (self.insert_outbox, [outbox_values(r) for r in batch.outbox]),
            (self.insert_delivery, batch.deliveries),
        ]

    def list_incidents(self, query: IncidentQuery) -> tuple[str, list[Any]]:
        """The statement listing incidents that match ``query``, newest first; its parameters."""
        p = self.dialect.param
        where: list[str] = [OPEN] if query.state == "open" else []
        params: list[Any] = []
        for column, value in (
            ("state", None if query.state == "open" else query.state),
            ("severity", query.severity),
            ("team", query.team),
        ):
            if value:
                params.append(value)
                where.append(f"{column} = {p(len(params))}")
        params.append(query.limit)
        clause = " WHERE " + " AND ".join(where) if where else ""
        order = f"ORDER BY triggered_at DESC, id{self.dialect.by_bytes} LIMIT {p(len(params))}"
        if query.offset:
            params.append(query.offset)
            order += f" OFFSET {p(len(params))}"
        return f"{self.select_incidents}{clause} {order}", params
