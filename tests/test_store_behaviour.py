"""What every store promises, run against the in-memory store, SQLite and PostgreSQL alike.

Each test gets a fresh database: new tables for the memory store, a file in ``tmp_path`` for
SQLite, a new database on the session's throwaway PostgreSQL server for PostgreSQL. Behaviour
only PostgreSQL has (leases for several workers, migrations raced by several replicas) is
tested at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest

from sidecar.errors import StoreUnavailable
from sidecar.incidents import AlertState, Incident, State, TimelineEvent
from sidecar.store import (
    IncidentQuery,
    MemoryStore,
    PostgresStore,
    SQLiteStore,
    Store,
    WriteBatch,
    open_store,
)
from sidecar.store import postgres as pg_module
from sidecar.store import sqlite as sqlite_module
from sidecar.store.base import (
    PAGERDUTY,
    Claimant,
    DeliveryRow,
    KeyPage,
    OutboxItem,
    OutboxRow,
    Outcome,
    RateBudget,
    event_row,
    incident_row,
)
from sidecar.store.memory import Tables
from tests.support.ports import free_port

T0 = 1_700_000_000.0


# -- the two backends -------------------------------------------------------


@dataclass
class Backend:
    """One store implementation on one fresh database."""

    name: str
    make: Callable[[], Store]  # a new, unopened store on the same database
    unreachable: Callable[[], Store] | None  # a store whose database cannot be reached
    applied: Callable[[], Awaitable[list[int]]]  # migration versions, read on our own connection
    latest: int
    dsn: str = ""  # where the database is: a PostgreSQL DSN, a SQLite path
    opened: list[Store] = field(default_factory=list)

    async def open(self) -> Store:
        """Open a new store on this database (closed at teardown)."""
        store = self.make()
        self.opened.append(store)
        await store.open()
        return store


def _memory_backend() -> Backend:
    tables = Tables()

    async def applied() -> list[int]:
        return []  # no schema, no migrations

    return Backend(
        "memory",
        make=lambda: MemoryStore(tables),
        unreachable=None,
        applied=applied,
        latest=0,
    )


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "nested" / "dir" / "sidecar.db"

    async def applied() -> list[int]:
        with contextlib.closing(sqlite3.connect(path)) as con:
            return [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY 1")]

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return Backend(
        "sqlite",
        make=lambda: SQLiteStore(path),
        unreachable=lambda: SQLiteStore(blocker / "sidecar.db"),
        applied=applied,
        latest=max(v for v, _, _ in sqlite_module.MIGRATIONS),
        dsn=str(path),
    )


def _postgres_backend(dsn: str) -> Backend:
    async def applied() -> list[int]:
        con = await asyncpg.connect(dsn)
        try:
            rows = await con.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        finally:
            await con.close()
        return [r[0] for r in rows]

    return Backend(
        "postgresql",
        make=lambda: PostgresStore(dsn, max_size=4),
        # Nothing listens on a port just found free; refused at once.
        unreachable=lambda: PostgresStore(f"postgresql://sidecar@127.0.0.1:{free_port()}/x"),
        applied=applied,
        latest=max(v for v, _, _ in pg_module.MIGRATIONS),
        dsn=dsn,
    )


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each backend on a fresh database; every store it opened is closed afterwards."""
    if request.param == "memory":
        b = _memory_backend()
    elif request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
    else:
        b = _postgres_backend(request.getfixturevalue("postgres_database_dsn"))
    yield b
    for store in b.opened:
        await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """An opened store on the backend's fresh database."""
    return await backend.open()


@pytest.fixture
async def pg(postgres_database_dsn: str) -> AsyncIterator[Backend]:
    """PostgreSQL alone, for what only it does."""
    b = _postgres_backend(postgres_database_dsn)
    yield b
    for store in b.opened:
        await store.close()


# -- rows -------------------------------------------------------------------


def incident(
    id: str,
    *,
    key: str | None = None,
    state: State = "triggered",
    severity: str = "P1",
    team: str = "sre",
    triggered_at: float = T0,
) -> Incident:
    """An incident with every stored field set to something recognisable."""
    resolved = state == "resolved"
    acked = state == "acknowledged"
    return Incident(
        id=id,
        key=key or f'{{}}:{{alertname="{id}"}}',
        group_key=key or f'{{}}:{{alertname="{id}"}}',
        receiver="sidecar",
        state=state,
        severity=severity,
        team=team,
        title=f"{id}: something broke",
        labels={"alertname": id, "service": "db"},
        external_url="http://alertmanager.example:9093",
        started_at=triggered_at - 30,
        triggered_at=triggered_at,
        acknowledged_at=triggered_at + 60 if acked or resolved else None,
        acknowledged_by="alice" if acked or resolved else None,
        acknowledge_source="api" if acked or resolved else None,
        resolved_at=triggered_at + 600 if resolved else None,
        resolved_by="bob" if resolved else None,
        resolve_source="pagerduty" if resolved else None,
        last_update_at=triggered_at + 120,
        alerts={
            "0123456789abcdef": AlertState(
                fingerprint="0123456789abcdef",
                status="resolved" if resolved else "firing",
                starts_at=triggered_at - 30,
                ends_at=triggered_at + 600 if resolved else None,
                severity=severity,
                labels={"alertname": id, "severity": "critical"},
                generator_url="http://prometheus.example:9090/graph",
            )
        },
        seq=2,
        status="Identified",
        status_at=triggered_at + 120,
        roles={"incident_commander": "alice", "smes": ["bob", "carol"]},
        severity_set_by="alice",
    )


def reviewed(inc: Incident, *, done: bool) -> Incident:
    """``inc`` with a post-incident review due a week after it resolved, done or not."""
    assert inc.resolved_at is not None
    inc.review_due_at = inc.resolved_at + 7 * 86400
    if done:
        inc.review_done_at = inc.resolved_at + 86400
        inc.review_done_by = "carol"
    return inc


def events(inc: Incident, *seqs: int) -> list[TimelineEvent]:
    """Timeline events of ``inc`` with these sequence numbers."""
    return [
        TimelineEvent(
            incident_id=inc.id,
            seq=seq,
            at=inc.triggered_at + seq,
            kind="opened" if seq == 1 else "acknowledged",
            source="alertmanager" if seq == 1 else "api",
            actor=None if seq == 1 else "alice",
            message=f"event {seq}",
            data={"seq": seq, "alerts": ["0123456789abcdef"], "nested": {"ok": True}},
        )
        for seq in seqs
    ]


def outbox_row(
    inc: Incident,
    action: str,
    *,
    at: float,
    dedup_key: str | None = None,
    routing: str = "default",
    integration: str = PAGERDUTY,
) -> OutboxRow:
    """A PagerDuty event of ``inc`` created at ``at``."""
    key = dedup_key or f"dedup-{inc.id}"
    body = orjson.dumps({"event_action": action, "dedup_key": key, "payload": {"at": at}})
    return OutboxRow(integration, inc.id, key, routing, action, body, at)


async def claimed(
    store: Store,
    now: float,
    limit: int,
    lease: float,
    owner: str,
    budget: RateBudget | None = None,
) -> list[OutboxItem]:
    """What one claim leased."""
    return (await store.claim_outbox(now, limit, Claimant(owner, lease, budget))).items


def batch(
    *incidents: Incident,
    evs: list[TimelineEvent] | None = None,
    outbox: list[OutboxRow] | None = None,
    deliveries: list[DeliveryRow] | None = None,
) -> WriteBatch:
    """A write batch of these rows."""
    out = WriteBatch()
    out.incidents.extend(incident_row(inc, T0 + 1000) for inc in incidents)
    out.events.extend(event_row(e) for e in evs or [])
    out.outbox.extend(outbox or [])
    out.deliveries.extend(deliveries or [])
    return out


# -- schema -----------------------------------------------------------------


async def test_open_applies_every_migration_once(backend: Backend) -> None:
    store = await backend.open()
    assert await store.schema_version() == backend.latest
    assert await backend.applied() == list(range(1, backend.latest + 1))


def test_both_backends_are_at_the_same_schema_version() -> None:
    sqlite_versions = [(v, n) for v, n, _ in sqlite_module.MIGRATIONS]
    assert [(v, n) for v, n, _ in pg_module.MIGRATIONS] == sqlite_versions


async def test_reopening_is_idempotent_and_keeps_data(backend: Backend) -> None:
    first = await backend.open()
    inc = incident("a")
    await first.write(batch(inc, evs=events(inc, 1)))
    await first.close()
    before = await backend.applied()
    for _ in range(2):
        again = await backend.open()
        assert await again.schema_version() == backend.latest
        assert await again.get_incident("a") == inc
        assert await again.timeline("a") == events(inc, 1)
        await again.close()
    assert await backend.applied() == before


async def test_committed_writes_survive_reopening(backend: Backend) -> None:
    first = await backend.open()
    incs = [incident(f"i{n}", triggered_at=T0 + n) for n in range(30)]
    for inc in incs:
        await first.write(batch(inc, evs=events(inc, 1, 2)))
    await first.close()
    again = await backend.open()
    assert sorted(i.id for i in await again.load_open()) == sorted(i.id for i in incs)
    assert len(await again.timeline("i7")) == 2


# -- round trips ------------------------------------------------------------


@pytest.mark.parametrize("state", ["triggered", "acknowledged", "resolved"])
async def test_incident_round_trip_keeps_every_field(store: Store, state: State) -> None:
    inc = incident("round", state=state)
    await store.write(batch(inc))
    got = await store.get_incident("round")
    assert got == inc
    assert got is not inc


@pytest.mark.parametrize("done", [False, True])
async def test_review_columns_round_trip(store: Store, done: bool) -> None:
    inc = reviewed(incident("rev", state="resolved"), done=done)
    await store.write(batch(inc))
    got = await store.get_incident("rev")
    assert got == inc
    assert got is not None
    assert got.review_due_at == inc.review_due_at
    assert got.review_done_at == (inc.review_done_at if done else None)


async def test_restored_alerts_decode_on_first_read_and_write_back_unchanged(
    store: Store,
) -> None:
    inc = incident("lazy")
    stored = incident_row(inc, T0).alerts
    await store.write(batch(inc))
    [got] = await store.load_open()
    # Restart time: the alerts stay as stored until something reads them...
    assert got.alerts_doc == stored
    # ...and an incident written back untouched (a breach, say) keeps those bytes.
    assert incident_row(got, T0).alerts == stored
    assert got.alerts == inc.alerts
    assert got.alerts_doc is None
    # Alert states are replaced, never changed in place (they are frozen).
    got.alerts["0123456789abcdef"] = got.alerts["0123456789abcdef"].ended(T0 + 1)
    assert orjson.loads(incident_row(got, T0).alerts)[0]["status"] == "resolved"


async def test_rows_written_before_alerts_had_their_own_column_are_read(
    backend: Backend, store: Store
) -> None:
    inc = incident("old")
    await store.write(batch(inc))
    # Schema version 3 kept the alerts inside the data document.
    doc = orjson.dumps({**inc.data_json(), "alerts": orjson.loads(inc.alerts_json())})
    if isinstance(store, MemoryStore):
        row = store.tables.incidents["old"]
        store.tables.incidents["old"] = row._replace(data=doc, alerts=None)
    elif backend.name == "sqlite":
        with contextlib.closing(sqlite3.connect(store_path(store))) as con, con:
            con.execute("UPDATE incidents SET data = ?, alerts = NULL WHERE id = 'old'", (doc,))
    else:
        con = await asyncpg.connect(backend.dsn)
        try:
            await con.execute(
                "UPDATE incidents SET data = $1::json, alerts = NULL WHERE id = 'old'",
                doc.decode(),
            )
        finally:
            await con.close()
    [got] = await store.load_open()
    assert got == inc
    assert got.alerts["0123456789abcdef"].labels == {"alertname": "old", "severity": "critical"}
    # Written back in the current layout.
    await store.write(batch(got))
    [again] = await store.load_open()
    assert again.alerts_doc is not None
    assert again == inc


def store_path(store: Store) -> Path:
    """The database file of a SQLite store."""
    assert isinstance(store, SQLiteStore)
    return store.path


async def test_the_json_document_keeps_any_text(store: Store) -> None:
    inc = incident("text")
    # Non-ASCII, quotes, backslashes and a NUL in a label value: all legal in Alertmanager
    # labels; PostgreSQL's jsonb would refuse the NUL.
    odd = 'ünïcødé ✓ "quoted" back\\slash nul\u0000end 🚨'
    inc.labels = {**inc.labels, "description": odd}
    inc.title = odd
    await store.write(batch(inc))
    got = await store.get_incident("text")
    assert got == inc
    assert got is not None
    assert got.labels["description"] == odd


async def test_timeline_round_trip_in_sequence_order(store: Store) -> None:
    inc = incident("t")
    evs = events(inc, 3, 1, 2)
    await store.write(batch(inc, evs=evs))
    assert await store.timeline("t") == sorted(evs, key=lambda e: e.seq)


async def test_unknown_ids_read_as_nothing(store: Store) -> None:
    assert await store.get_incident("missing") is None
    assert await store.timeline("missing") == []
    assert await store.outbox_for_incident("missing") == []
    assert await store.incident_for_dedup_key("missing") is None


async def test_an_empty_batch_is_fine(store: Store) -> None:
    await store.write(WriteBatch())
    assert await store.list_incidents(IncidentQuery()) == []


async def test_upsert_updates_the_row(store: Store) -> None:
    inc = incident("u")
    await store.write(batch(inc, evs=events(inc, 1)))
    inc.state = "acknowledged"
    inc.acknowledged_at = T0 + 99
    inc.acknowledged_by = "carol"
    inc.severity = "P0"
    inc.team = "db"
    inc.seq = 3
    await store.write(batch(inc, evs=events(inc, 2)))
    assert await store.get_incident("u") == inc
    assert [i.id for i in await store.list_incidents(IncidentQuery(severity="P0"))] == ["u"]
    assert len(await store.list_incidents(IncidentQuery())) == 1
    assert [e.seq for e in await store.timeline("u")] == [1, 2]


async def test_a_large_batch_writes_every_row(store: Store) -> None:
    # More rows than one multi-row statement takes, and not a multiple of it.
    incs = [incident(f"big{n:03}", triggered_at=T0 + n) for n in range(70)]
    write = WriteBatch()
    for inc in incs:
        write.incidents.append(incident_row(inc, T0))
        write.events.extend(event_row(e) for e in events(inc, 1, 2))
    await store.write(write)
    loaded = {i.id: i for i in await store.load_open()}
    assert loaded == {i.id: i for i in incs}
    assert [len(await store.timeline(i.id)) for i in incs] == [2] * 70


async def test_a_replayed_event_is_not_appended_twice(store: Store) -> None:
    inc = incident("e")
    await store.write(batch(inc, evs=events(inc, 1)))
    await store.write(batch(inc, evs=events(inc, 1, 1)))
    assert await store.timeline("e") == events(inc, 1)


# -- one open incident per key ----------------------------------------------


async def test_two_open_incidents_for_one_key_are_refused(store: Store) -> None:
    await store.write(batch(incident("first", key="k")))
    with pytest.raises(StoreUnavailable):
        await store.write(batch(incident("second", key="k", state="acknowledged")))
    assert [i.id for i in await store.load_open()] == ["first"]


async def test_a_refused_batch_writes_nothing_at_all(store: Store) -> None:
    ok = incident("ok")
    with pytest.raises(StoreUnavailable):
        await store.write(
            batch(
                ok,
                incident("x", key="k"),
                incident("y", key="k"),
                evs=events(ok, 1),
                outbox=[outbox_row(ok, "trigger", at=T0)],
                deliveries=[DeliveryRow("d1", "pagerduty", T0)],
            )
        )
    assert await store.list_incidents(IncidentQuery()) == []
    assert await store.timeline("ok") == []
    assert await store.outbox_pending() == 0
    assert await store.known_deliveries("pagerduty", 0) == []
    # And the store is usable again.
    await store.write(batch(ok))
    assert await store.get_incident("ok") == ok


async def test_resolved_incidents_may_share_a_key_with_an_open_one(store: Store) -> None:
    await store.write(batch(incident("old1", key="k", state="resolved", triggered_at=T0 - 9000)))
    await store.write(batch(incident("old2", key="k", state="resolved", triggered_at=T0 - 5000)))
    await store.write(batch(incident("new", key="k")))
    assert [i.id for i in await store.load_open()] == ["new"]
    assert len(await store.list_incidents(IncidentQuery())) == 3


async def test_resolving_then_reopening_a_key_in_one_batch(store: Store) -> None:
    old = incident("old", key="k")
    await store.write(batch(old))
    old.state = "resolved"
    old.resolved_at = T0 + 50
    # The service writes the resolution before the new incident of the same key.
    await store.write(batch(old, incident("new", key="k", triggered_at=T0 + 60)))
    assert [i.id for i in await store.load_open()] == ["new"]


# -- queries ----------------------------------------------------------------


async def seed(store: Store) -> None:
    """Five incidents across states, severities and teams, triggered a second apart."""
    rows = [
        incident("a", severity="P0", team="sre", triggered_at=T0 + 1),
        incident("b", severity="P1", team="db", triggered_at=T0 + 2, state="acknowledged"),
        incident("c", severity="P1", team="sre", triggered_at=T0 + 3, state="resolved"),
        incident("d", severity="P2", team="db", triggered_at=T0 + 4, state="resolved"),
        incident("e", severity="P1", team="sre", triggered_at=T0 + 5),
    ]
    await store.write(batch(*rows))


async def test_load_open_returns_triggered_and_acknowledged(store: Store) -> None:
    await seed(store)
    assert sorted(i.id for i in await store.load_open()) == ["a", "b", "e"]
    assert {i.state for i in await store.load_open()} == {"triggered", "acknowledged"}


async def test_load_closed_since(store: Store) -> None:
    await seed(store)
    # c resolved at T0+603, d at T0+604 (see incident()).
    assert [i.id for i in await store.load_closed_since(T0 + 603)] == ["c", "d"]
    assert [i.id for i in await store.load_closed_since(T0 + 603.5)] == ["d"]
    assert await store.load_closed_since(T0 + 10_000) == []
    assert all(i.state == "resolved" for i in await store.load_closed_since(0))


async def test_load_closed_since_lets_the_latest_of_a_key_win(store: Store) -> None:
    await store.write(batch(incident("newer", key="k", state="resolved", triggered_at=T0 + 100)))
    await store.write(batch(incident("older", key="k", state="resolved", triggered_at=T0)))
    latest = {i.key: i.id for i in await store.load_closed_since(0)}
    assert latest == {"k": "newer"}


async def test_load_pending_reviews(store: Store) -> None:
    await store.write(
        batch(
            reviewed(incident("due", state="resolved"), done=False),
            reviewed(incident("done", state="resolved", triggered_at=T0 + 1), done=True),
            incident("no-review", state="resolved", triggered_at=T0 + 2),
            incident("open", triggered_at=T0 + 3),
        )
    )
    pending = await store.load_pending_reviews()
    assert [i.id for i in pending] == ["due"]
    assert pending[0] == reviewed(incident("due", state="resolved"), done=False)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (IncidentQuery(), ["e", "d", "c", "b", "a"]),
        (IncidentQuery(state="open"), ["e", "b", "a"]),
        (IncidentQuery(state="triggered"), ["e", "a"]),
        (IncidentQuery(state="acknowledged"), ["b"]),
        (IncidentQuery(state="resolved"), ["d", "c"]),
        (IncidentQuery(severity="P1"), ["e", "c", "b"]),
        (IncidentQuery(team="db"), ["d", "b"]),
        (IncidentQuery(state="open", severity="P1", team="sre"), ["e"]),
        (IncidentQuery(state="resolved", team="db"), ["d"]),
        (IncidentQuery(severity="P3"), []),
        (IncidentQuery(limit=2), ["e", "d"]),
        (IncidentQuery(state="open", limit=1), ["e"]),
        (IncidentQuery(limit=2, offset=2), ["c", "b"]),
        (IncidentQuery(state="open", limit=5, offset=1), ["b", "a"]),
        (IncidentQuery(limit=2, offset=5), []),
    ],
)
async def test_list_incidents_filters_and_limit_newest_first(
    store: Store, query: IncidentQuery, expected: list[str]
) -> None:
    await seed(store)
    assert [i.id for i in await store.list_incidents(query)] == expected


async def test_list_incidents_breaks_ties_by_id(store: Store) -> None:
    await store.write(batch(*(incident(i, triggered_at=T0) for i in ["b", "B", "a", "_"])))
    # Byte order, whatever the database's locale.
    assert [i.id for i in await store.list_incidents(IncidentQuery())] == ["B", "_", "a", "b"]


async def test_get_incident(store: Store) -> None:
    await seed(store)
    got = await store.get_incident("c")
    assert got == incident("c", severity="P1", team="sre", triggered_at=T0 + 3, state="resolved")


async def test_ping(store: Store) -> None:
    await store.ping()
    await store.ping()


# -- outbox -----------------------------------------------------------------


async def test_outbox_rows_are_written_with_the_batch(store: Store) -> None:
    inc = incident("o")
    row = outbox_row(inc, "trigger", at=T0)
    await store.write(batch(inc, outbox=[row]))
    [item] = await store.outbox_for_incident("o")
    assert item == OutboxItem(
        id=item.id,
        integration="pagerduty",
        incident_id="o",
        dedup_key="dedup-o",
        routing="default",
        action="trigger",
        body=row.body,
        created_at=T0,
        state="pending",
        attempts=0,
        next_attempt_at=T0,
        last_error=None,
        done_at=None,
        server_failures=0,
    )
    assert isinstance(item.body, bytes)
    assert await store.outbox_pending() == 1
    assert await store.incident_for_dedup_key("dedup-o") == "o"


async def test_due_outbox_returns_the_head_of_each_dedup_key(store: Store) -> None:
    a, b, c = incident("a"), incident("b"), incident("c")
    await store.write(
        batch(
            a,
            b,
            c,
            outbox=[
                outbox_row(a, "trigger", at=T0),
                outbox_row(b, "trigger", at=T0 + 1),
                outbox_row(a, "acknowledge", at=T0 + 2),
                outbox_row(a, "resolve", at=T0 + 3),
                outbox_row(c, "trigger", at=T0 + 50),  # not due before T0 + 50
            ],
        )
    )
    due = await store.due_outbox(T0 + 10, 100)
    assert [(i.incident_id, i.action) for i in due] == [("a", "trigger"), ("b", "trigger")]
    assert [i.incident_id for i in await store.due_outbox(T0 + 10, 1)] == ["a"]
    assert [i.incident_id for i in await store.due_outbox(T0 + 60, 100)] == ["a", "b", "c"]
    assert await store.due_outbox(T0 - 1, 100) == []
    assert await store.outbox_pending() == 5


async def test_finish_outbox_moves_each_queue_on_in_order(store: Store) -> None:
    a = incident("a")
    await store.write(
        batch(
            a,
            outbox=[
                outbox_row(a, "trigger", at=T0),
                outbox_row(a, "acknowledge", at=T0 + 1),
                outbox_row(a, "resolve", at=T0 + 2),
            ],
        )
    )
    [trigger] = await store.due_outbox(T0 + 5, 10)
    # A retryable failure: the key waits for the retry, its later events behind it.
    await store.finish_outbox(
        trigger.id,
        Outcome(state="pending", attempts=1, next_attempt_at=T0 + 30, error="500: boom", at=T0),
    )
    assert await store.due_outbox(T0 + 29, 10) == []
    [retry] = await store.due_outbox(T0 + 30, 10)
    assert (retry.id, retry.attempts, retry.last_error) == (trigger.id, 1, "500: boom")
    assert retry.done_at is None
    await store.finish_outbox(
        trigger.id,
        Outcome(state="delivered", attempts=2, next_attempt_at=T0 + 31, error=None, at=T0 + 31),
    )
    [ack] = await store.due_outbox(T0 + 31, 10)
    assert ack.action == "acknowledge"
    await store.finish_outbox(
        ack.id,
        Outcome(state="dead", attempts=1, next_attempt_at=T0 + 32, error="400: bad", at=T0 + 32),
    )
    [resolve] = await store.due_outbox(T0 + 32, 10)
    assert resolve.action == "resolve"
    assert await store.outbox_pending() == 1

    items = {i.action: i for i in await store.outbox_for_incident("a")}
    assert [i.action for i in await store.outbox_for_incident("a")] == [
        "trigger",
        "acknowledge",
        "resolve",
    ]
    assert (items["trigger"].state, items["trigger"].attempts) == ("delivered", 2)
    assert (items["trigger"].last_error, items["trigger"].done_at) == (None, T0 + 31)
    assert (items["acknowledge"].state, items["acknowledge"].last_error) == ("dead", "400: bad")
    assert items["acknowledge"].done_at == T0 + 32
    assert (items["resolve"].state, items["resolve"].done_at) == ("pending", None)


async def test_incident_for_dedup_key_is_the_latest_incident_paged(store: Store) -> None:
    old = incident("old", key="k", state="resolved")
    new = incident("new", key="k", triggered_at=T0 + 1000)
    await store.write(batch(old, outbox=[outbox_row(old, "trigger", at=T0, dedup_key="same")]))
    await store.write(
        batch(new, outbox=[outbox_row(new, "trigger", at=T0 + 1000, dedup_key="same")])
    )
    assert await store.incident_for_dedup_key("same") == "new"
    assert await store.incident_for_dedup_key("other") is None


async def test_latest_page_tells_when_its_first_trigger_on_the_key_can_have_gone_out(
    store: Store,
) -> None:
    old = incident("old", key="k", state="resolved")
    new = incident("new", key="k", triggered_at=T0 + 5)
    assert await store.latest_page("same") is None
    old_rows = [
        outbox_row(old, "trigger", at=T0, dedup_key="same"),
        outbox_row(old, "resolve", at=T0 + 1, dedup_key="same"),
        outbox_row(old, "trigger", at=T0, dedup_key="early"),
    ]
    await store.write(batch(old, outbox=old_rows))
    # The first incident on the key follows none; it was queued at T0.
    assert await store.latest_page("same") == KeyPage("old", T0, follows=False)
    new_rows = [
        outbox_row(new, "trigger", at=T0 + 5, dedup_key="same"),
        outbox_row(new, "trigger", at=T0 + 5, dedup_key="early"),
    ]
    await store.write(batch(new, outbox=new_rows))
    # The key's earlier events wait: its trigger has not gone out.
    assert await store.latest_page("same") == KeyPage("new", math.inf, follows=True)
    trigger, resolve, early = await store.outbox_for_incident("old")
    await store.finish_outbox(trigger.id, Outcome("delivered", 1, T0 + 1, None, at=T0 + 1))
    await store.finish_outbox(resolve.id, Outcome("pending", 1, T0 + 9, "503: down", at=T0 + 2))
    assert await store.latest_page("same") == KeyPage("new", math.inf, follows=True)
    # A key sends its events in order: the new trigger went after the old ones were done.
    await store.finish_outbox(resolve.id, Outcome("delivered", 2, T0 + 30, None, at=T0 + 30))
    assert await store.latest_page("same") == KeyPage("new", T0 + 30, follows=True)
    # Done (dead, here) before it was queued: queued is when it could go.
    await store.finish_outbox(early.id, Outcome("dead", 1, T0 + 3, "400: bad", at=T0 + 3))
    assert await store.latest_page("early") == KeyPage("new", T0 + 5, follows=True)
    # Its later events (an acknowledgment, a reopening's trigger) and other
    # integrations' rows leave its first page as it was.
    later = [
        outbox_row(new, "acknowledge", at=T0 + 40, dedup_key="same"),
        outbox_row(new, "trigger", at=T0 + 50, dedup_key="same"),
        outbox_row(old, "post", at=T0 + 60, dedup_key="same", integration="slack"),
    ]
    await store.write(batch(new, outbox=later))
    assert await store.latest_page("same") == KeyPage("new", T0 + 30, follows=True)
    assert await store.latest_page("same", "slack") is None  # not triggered there
    assert await store.latest_page("other") is None


# -- deliveries -------------------------------------------------------------


async def test_known_deliveries_since_by_source(store: Store) -> None:
    await store.write(
        batch(
            deliveries=[
                DeliveryRow("d1", "pagerduty", T0),
                DeliveryRow("d2", "pagerduty", T0 + 10),
                DeliveryRow("d3", "other", T0 + 10),
            ]
        )
    )
    # A redelivery is recorded once and keeps its first time.
    await store.write(batch(deliveries=[DeliveryRow("d1", "pagerduty", T0 + 20)]))
    assert sorted(await store.known_deliveries("pagerduty", 0)) == ["d1", "d2"]
    assert await store.known_deliveries("pagerduty", T0 + 5) == ["d2"]
    assert await store.known_deliveries("other", 0) == ["d3"]
    assert await store.known_deliveries("nobody", 0) == []


# -- unavailable ------------------------------------------------------------


def every_call(store: Store, *, empty_write: bool = False) -> list[Callable[[], Awaitable[Any]]]:
    """One call of every Store method but open and close, each made when called.

    With ``empty_write``, also an empty batch, which needs no database but must still
    refuse on a store that is not open.
    """
    inc = incident("late")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.write(batch(inc)),
        store.load_open,
        store.load_pending_reviews,
        lambda: store.load_closed_since(0),
        lambda: store.list_incidents(IncidentQuery()),
        lambda: store.get_incident("late"),
        lambda: store.timeline("late"),
        store.ping,
        lambda: store.due_outbox(T0, 10),
        lambda: store.claim_outbox(
            T0, 10, Claimant("w", 30, RateBudget(5, 61, {"default": "default"}))
        ),
        lambda: store.finish_outbox(
            1, Outcome(state="delivered", attempts=1, next_attempt_at=T0, error=None, at=T0)
        ),
        store.outbox_pending,
        lambda: store.outbox_for_incident("late"),
        lambda: store.incident_for_dedup_key("k"),
        lambda: store.known_deliveries("pagerduty", 0),
        store.schema_version,
    ]
    if empty_write:
        calls.append(lambda: store.write(WriteBatch()))
    return calls


async def test_a_closed_store_raises_store_unavailable(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    await store.close()  # closing twice is harmless
    for call in every_call(store, empty_write=True):
        with pytest.raises(StoreUnavailable):
            await call()


async def test_a_store_never_opened_raises_store_unavailable(backend: Backend) -> None:
    store = backend.make()
    try:
        for call in every_call(store, empty_write=True):
            with pytest.raises(StoreUnavailable):
                await call()
    finally:
        await store.close()


# The memory store has no database to reach: only the backends that do.
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_an_unreachable_database_raises_store_unavailable(backend: Backend) -> None:
    assert backend.unreachable is not None
    store = backend.unreachable()
    try:
        # The Store contract: StoreUnavailable, so `serve` fails with a reason, not a traceback.
        with pytest.raises(StoreUnavailable):
            await store.open()
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()


# -- the factory ------------------------------------------------------------


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1:5432/db", "postgres://u@127.0.0.1/db"])
def test_open_store_builds_a_postgres_store_for_postgres_urls(url: str) -> None:
    store = open_store(url, sqlite_path=None)
    assert isinstance(store, PostgresStore)
    assert store.dsn == url


def test_open_store_builds_a_sqlite_store_for_sqlite_urls(tmp_path: Path) -> None:
    store = open_store("sqlite:///x.db", sqlite_path=tmp_path / "x.db", synchronous="normal")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "x.db"


# -- leases and the send budget ---------------------------------------------


async def test_a_lease_expires_and_another_worker_takes_the_row(store: Store) -> None:
    a = incident("a")
    await store.write(
        batch(a, outbox=[outbox_row(a, "trigger", at=T0), outbox_row(a, "resolve", at=T0 + 1)])
    )
    [lease] = await claimed(store, T0 + 5, 10, 30, "dead-worker")
    assert lease.action == "trigger"
    assert lease.state == "pending"
    # The dead worker never finishes: the row is out of reach until its lease runs out...
    assert await claimed(store, T0 + 34.9, 10, 30, "survivor") == []
    assert await store.due_outbox(T0 + 34.9, 10) == []
    # ...then it is the head again, for the survivor, never its successor first.
    assert [i.id for i in await store.due_outbox(T0 + 35, 10)] == [lease.id]
    [taken] = await claimed(store, T0 + 35, 10, 30, "survivor")
    assert taken.id == lease.id
    await store.finish_outbox(
        taken.id,
        Outcome(state="delivered", attempts=1, next_attempt_at=T0 + 36, error=None, at=T0 + 36),
    )
    [resolve] = await claimed(store, T0 + 36, 10, 30, "survivor")
    assert resolve.action == "resolve"


async def test_finishing_a_retry_releases_the_lease(store: Store) -> None:
    a = incident("a")
    await store.write(batch(a, outbox=[outbox_row(a, "trigger", at=T0)]))
    [lease] = await claimed(store, T0, 10, 300, "w1")
    await store.finish_outbox(
        lease.id,
        Outcome(
            state="pending",
            attempts=3,
            next_attempt_at=T0 + 5,
            error="429",
            at=T0,
            server_failures=2,
        ),
    )
    # Due again at its retry time, well before the 300 s lease would have run out.
    assert await claimed(store, T0 + 4, 10, 300, "w2") == []
    [again] = await claimed(store, T0 + 5, 10, 300, "w2")
    assert (again.id, again.attempts, again.last_error) == (lease.id, 3, "429")
    assert again.server_failures == 2


def budget(per_window: int, **buckets: str) -> RateBudget:
    """``per_window`` sends a minute (plus a second) per bucket; ``default`` is its own."""
    return RateBudget(per_window, 61.0, {"default": "default", **buckets})


async def pending_events(store: Store, routing: str, n: int, *, at: float = T0) -> None:
    """``n`` incidents of ``routing``, each with a trigger then a resolve."""
    incs = [incident(f"{routing}-{k}", triggered_at=at + k) for k in range(n)]
    rows = [
        outbox_row(inc, action, at=at + k, routing=routing)
        for k, inc in enumerate(incs)
        for action in ("trigger", "resolve")
    ]
    await store.write(batch(*incs, outbox=rows))


async def test_a_claim_takes_no_more_than_the_budget_allows_now(store: Store) -> None:
    await pending_events(store, "default", 6)
    first = await store.claim_outbox(T0 + 10, 8, Claimant("w", 60, budget(4)))
    assert [i.incident_id for i in first.items] == [f"default-{k}" for k in range(4)]
    # Spent until the first of those sends leaves the window (61 s later).
    assert first.held_until == T0 + 10 + 61
    for item in first.items:
        await store.finish_outbox(
            item.id,
            Outcome(state="delivered", attempts=1, next_attempt_at=T0, error=None, at=T0 + 11),
        )
    # Finishing gives nothing back: the sends were made. Free slots do not help either.
    later = await store.claim_outbox(T0 + 40, 8, Claimant("w", 60, budget(4)))
    assert later.items == []
    assert later.held_until == T0 + 10 + 61
    # As sends leave the window, as many new ones go, oldest first, resolves after triggers.
    freed = await claimed(store, T0 + 71, 8, 60, "w", budget(4))
    assert [(i.incident_id, i.action) for i in freed] == [
        ("default-0", "resolve"),
        ("default-1", "resolve"),
        ("default-2", "resolve"),
        ("default-3", "resolve"),
    ]


async def test_the_budget_is_per_routing_key_and_names_of_one_key_share_it(store: Store) -> None:
    await pending_events(store, "default", 3, at=T0)
    await pending_events(store, "team:db", 3, at=T0 + 100)  # the same key as default
    await pending_events(store, "team:web", 3, at=T0 + 200)  # a key of its own
    await pending_events(store, "team:gone", 3, at=T0 + 300)  # no longer configured
    shared = budget(2, **{"team:db": "default", "team:web": "team:web"})
    items = await claimed(store, T0 + 400, 20, 60, "w", shared)
    assert sorted(i.incident_id for i in items) == [
        "default-0",
        "default-1",
        "team:gone-0",
        "team:gone-1",
        "team:gone-2",
        "team:web-0",
        "team:web-1",
    ]
    # Nothing else goes now: every budget is spent, and the rest is leased.
    assert await claimed(store, T0 + 400, 20, 60, "w2", shared) == []


async def test_without_a_budget_a_claim_takes_every_due_head_up_to_its_limit(
    store: Store,
) -> None:
    await pending_events(store, "default", 5)
    assert len(await claimed(store, T0 + 10, 2, 60, "w")) == 2
    claim = await store.claim_outbox(T0 + 10, 100, Claimant("w", 60))
    assert len(claim.items) == 3
    assert claim.held_until is None


# -- integrations -----------------------------------------------------------


def slack(claimant: str, budget: RateBudget | None = None) -> Claimant:
    """A worker of another integration than PagerDuty."""
    return Claimant(claimant, 60, budget, integration="slack")


async def test_each_integration_has_its_own_queues(store: Store) -> None:
    a = incident("a")
    rows = [
        outbox_row(a, "trigger", at=T0),
        outbox_row(a, "post", at=T0 + 1, integration="slack"),
        outbox_row(a, "resolve", at=T0 + 2),
        outbox_row(a, "update", at=T0 + 3, integration="slack"),
    ]
    await store.write(batch(a, outbox=rows))
    # One dedup key, two queues: each integration's head is its own oldest item.
    assert [i.action for i in await store.due_outbox(T0 + 10, 10)] == ["trigger"]
    assert [i.action for i in await store.due_outbox(T0 + 10, 10, "slack")] == ["post"]
    assert (await store.outbox_pending(), await store.outbox_pending("slack")) == (2, 2)
    # A PagerDuty worker claims PagerDuty's items alone...
    [trigger] = await claimed(store, T0 + 10, 10, 60, "pd")
    assert (trigger.integration, trigger.action) == (PAGERDUTY, "trigger")
    # ...and Slack's queue moves on while PagerDuty's waits for its leased head.
    [post] = (await store.claim_outbox(T0 + 10, 10, slack("sl"))).items
    assert (post.integration, post.action) == ("slack", "post")
    await store.finish_outbox(post.id, Outcome("delivered", 1, T0 + 11, None, at=T0 + 11))
    [update] = (await store.claim_outbox(T0 + 11, 10, slack("sl"))).items
    assert update.action == "update"
    assert await claimed(store, T0 + 11, 10, 60, "pd") == []
    everything = await store.outbox_for_incident("a")
    assert [i.action for i in everything] == ["trigger", "post", "resolve", "update"]


async def test_dedup_keys_are_looked_up_per_integration(store: Store) -> None:
    old = incident("old", key="k", state="resolved")
    new = incident("new", key="k", triggered_at=T0 + 1000)
    await store.write(batch(old, outbox=[outbox_row(old, "trigger", at=T0, dedup_key="same")]))
    post = outbox_row(new, "post", at=T0 + 1000, dedup_key="same", integration="slack")
    await store.write(batch(new, outbox=[post]))
    assert await store.incident_for_dedup_key("same") == "old"
    assert await store.incident_for_dedup_key("same", "slack") == "new"


async def test_each_integration_spends_its_own_budget(store: Store) -> None:
    await pending_events(store, "default", 3)
    incs = [incident(f"slack-{k}", triggered_at=T0 + k) for k in range(3)]
    posts = [outbox_row(inc, "post", at=T0, integration="slack") for inc in incs]
    await store.write(batch(*incs, outbox=posts))
    # The same routing name, and so the same bucket name, in both.
    pd = await claimed(store, T0 + 10, 10, 60, "pd", budget(2))
    sl = (await store.claim_outbox(T0 + 10, 10, slack("sl", budget(2)))).items
    assert [i.incident_id for i in pd] == ["default-0", "default-1"]
    assert [i.incident_id for i in sl] == ["slack-0", "slack-1"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_items_queued_before_integrations_are_pagerdutys(backend: Backend) -> None:
    # A database at schema version 6 with one pending item, as the last release left it.
    columns = "incident_id, dedup_key, routing, action, body, created_at, next_attempt_at"
    item = ("a", "k", "default", "trigger", b"{}", T0, T0)
    if backend.name == "sqlite":
        Path(backend.dsn).parent.mkdir(parents=True)
        with contextlib.closing(sqlite3.connect(backend.dsn)) as con, con:
            con.execute(
                "CREATE TABLE schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            for version, name, sql in sqlite_module.MIGRATIONS[:6]:
                con.executescript(sql)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, name))
            con.execute(f"INSERT INTO outbox ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)", item)
    else:
        con = await asyncpg.connect(backend.dsn)
        try:
            await con.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, name, sql in pg_module.MIGRATIONS[:6]:
                if sql.strip():
                    await con.execute(sql)
                await con.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
            await con.execute(
                f"INSERT INTO outbox ({columns}) VALUES ($1, $2, $3, $4, $5, $6, $7)", *item
            )
        finally:
            await con.close()
    store = await backend.open()
    assert await store.schema_version() == backend.latest
    [queued] = await store.outbox_for_incident("a")
    assert queued.integration == PAGERDUTY
    assert await store.outbox_pending() == 1
    assert [i.id for i in await claimed(store, T0, 10, 60, "pd")] == [queued.id]


# -- PostgreSQL only: several replicas on one database ----------------------


async def test_replicas_starting_together_migrate_once(pg: Backend) -> None:
    stores = [pg.make() for _ in range(6)]
    pg.opened.extend(stores)
    await asyncio.gather(*(s.open() for s in stores))
    assert await pg.applied() == list(range(1, pg.latest + 1))
    assert {await s.schema_version() for s in stores} == {pg.latest}


async def queue_of(store: Store, keys: int, per_key: int) -> list[int]:
    """``keys`` dedup keys with ``per_key`` pending events each; returns the head ids."""
    incs = [incident(f"i{k}", triggered_at=T0 + k) for k in range(keys)]
    rows = [outbox_row(inc, f"a{n}", at=T0 + n) for n in range(per_key) for inc in incs]
    await store.write(batch(*incs, outbox=rows))
    heads: dict[str, int] = {}
    for inc in incs:
        heads[inc.id] = min(i.id for i in await store.outbox_for_incident(inc.id))
    return sorted(heads.values())


async def test_concurrent_claims_never_return_the_same_row(pg: Backend) -> None:
    first, second = await pg.open(), await pg.open()
    assert isinstance(first, PostgresStore) and isinstance(second, PostgresStore)
    heads = await queue_of(first, keys=40, per_key=3)
    claims: list[list[OutboxItem]] = []
    for _ in range(3):
        claims.extend(
            await asyncio.gather(
                claimed(first, T0 + 10, 7, 30, "first"),
                claimed(second, T0 + 10, 7, 30, "second"),
                claimed(first, T0 + 10, 7, 30, "first"),
                claimed(second, T0 + 10, 7, 30, "second"),
            )
        )
    ids = [item.id for claim in claims for item in claim]
    assert len(ids) == len(set(ids)), "a row was claimed twice"
    # Every head is claimed by now (12 claims of 7 > 40 heads), and nothing more.
    assert sorted(ids) == heads
    assert await claimed(first, T0 + 10, 100, 30, "third") == []
    # Leased heads are not due for anyone else either, and their keys' later events wait.
    assert await second.due_outbox(T0 + 10, 100) == []


async def test_replicas_claiming_at_once_share_one_budget(pg: Backend) -> None:
    stores = [await pg.open() for _ in range(3)]
    await pending_events(stores[0], "default", 30)
    claims = await asyncio.gather(
        *(claimed(s, T0 + 100, 8, 60, f"r{n}", budget(10)) for n in range(3) for s in stores)
    )
    items = [item for claim in claims for item in claim]
    # Nine claims of up to eight, all at once, and together they took the ten allowed.
    assert len(items) == len({i.id for i in items}) == 10
    assert sorted(i.incident_id for i in items) == sorted(f"default-{k}" for k in range(10))
    assert {i.action for i in items} == {"trigger"}


async def test_a_running_store_that_loses_its_database_is_unavailable_until_it_is_back(
    pg: Backend, postgres_dsn: str
) -> None:
    store = await pg.open()
    await store.write(batch(incident("kept")))
    name = pg.dsn.rsplit("/", 1)[1]
    # From another database, as an operator would: refuse new connections, then drop the
    # pool's (what a failover or a restart does to it).
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        for call in every_call(store):
            with pytest.raises(StoreUnavailable):
                await call()
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
    # The same store serves again once the database is back, with nothing lost.
    assert await store.get_incident("kept") == incident("kept")
    await store.ping()


async def test_a_database_that_stops_answering_is_unavailable_not_a_hang(pg: Backend) -> None:
    store = PostgresStore(pg.dsn, command_timeout=0.5)
    pg.opened.append(store)
    await store.open()
    await store.write(batch(incident("kept")))
    blocker = await asyncpg.connect(pg.dsn)
    try:
        # A lock nobody releases stands in for a server that stops answering.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE incidents IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreUnavailable, match="Timeout"):
            await store.write(batch(incident("blocked")))
        with pytest.raises(StoreUnavailable):
            await store.load_open()
        await tx.rollback()
    finally:
        await blocker.close()
    await store.write(batch(incident("after")))
    assert sorted(i.id for i in await store.load_open()) == ["after", "kept"]


async def test_operators_can_query_the_documents_with_json_operators(pg: Backend) -> None:
    store = await pg.open()
    inc = incident("doc", state="acknowledged")
    await store.write(batch(inc, evs=events(inc, 1)))
    con = await asyncpg.connect(pg.dsn)
    try:
        row = await con.fetchrow(
            "SELECT data->>'title' AS title, data->'labels'->>'service' AS service, "
            "data->>'acknowledged_by' AS by, alerts->0->>'fingerprint' AS first_alert "
            "FROM incidents WHERE id = 'doc'"
        )
        nested = await con.fetchval(
            "SELECT data->'nested'->>'ok' FROM events WHERE incident_id = 'doc' AND seq = 1"
        )
    finally:
        await con.close()
    assert dict(row) == {
        "title": "doc: something broke",
        "service": "db",
        "by": "alice",
        "first_alert": "0123456789abcdef",
    }
    assert nested == "true"


async def test_workers_draining_one_outbox_send_each_event_once_in_key_order(
    pg: Backend,
) -> None:
    stores = [await pg.open() for _ in range(3)]
    assert all(isinstance(s, PostgresStore) for s in stores)
    incs = [incident(f"i{k}", triggered_at=T0 + k) for k in range(15)]
    # Each key's events together: the lowest ids are one key's, so only the head rule keeps
    # a worker from taking several events of one key at once.
    rows = [outbox_row(inc, f"a{n}", at=T0 + n) for inc in incs for n in range(4)]
    await stores[0].write(batch(*incs, outbox=rows))
    in_flight: set[str] = set()
    sent: list[OutboxItem] = []

    async def worker(store: PostgresStore, name: str) -> None:
        while taken := await claimed(store, T0 + 10, 4, 60, name):
            for item in taken:
                assert item.dedup_key not in in_flight, f"two sends of {item.dedup_key} at once"
                in_flight.add(item.dedup_key)
            await asyncio.sleep(0)  # let the other workers claim while these are "sent"
            for item in taken:
                sent.append(item)
                in_flight.discard(item.dedup_key)
                await store.finish_outbox(
                    item.id,
                    Outcome(state="delivered", attempts=1, next_attempt_at=T0, error=None, at=T0),
                )

    await asyncio.gather(
        *(worker(s, f"w{n}") for n, s in enumerate(stores) if isinstance(s, PostgresStore))
    )
    ids = [item.id for item in sent]
    assert len(ids) == len(set(ids)) == 60
    for key in {item.dedup_key for item in sent}:
        order = [item.id for item in sent if item.dedup_key == key]
        assert order == sorted(order), f"{key} was sent out of order"
    assert await stores[0].outbox_pending() == 0


# -- incident numbers ----------------------------------------------------------

DAY = "2023-11-14"


def numbered(id: str, n: int, day: str = DAY) -> Incident:
    """``incident(id)`` with the ``n``-th number of ``day``."""
    inc = incident(id)
    inc.number = f"{day}-{n:03d}"
    return inc


async def last_number(store: Store, day: str = DAY) -> int:
    async with store.locked((), (), 0.0) as state:
        return await state.last_number(day)


async def test_an_incident_is_found_by_its_number(store: Store) -> None:
    await store.write(batch(numbered("a", 1), numbered("b", 2)))
    assert await store.incident_id_for_number(f"{DAY}-002") == "b"
    assert await store.incident_id_for_number(f"{DAY}-003") is None
    assert (await store.get_incident("a")) == numbered("a", 1)


async def test_a_day_starts_at_zero_and_goes_on_from_what_was_committed(
    backend: Backend,
) -> None:
    store = await backend.open()
    assert await last_number(store) == 0
    async with store.locked(("k",), (), 0.0) as state:
        assert await state.last_number(DAY) == 0
        write = batch(*(numbered(f"i{n}", n) for n in range(1, 4)))
        write.numbers[DAY] = 3
        await state.write(write)
    assert await last_number(store) == 3
    assert await last_number(store, "2023-11-15") == 0
    await store.close()
    # After a restart the day goes on from its last number: none is given twice.
    again = await backend.open()
    assert await last_number(again) == 3


async def test_a_failed_write_gives_its_numbers_again(backend: Backend) -> None:
    store = await backend.open()
    await store.write(batch(incident("open", key="k")))
    with pytest.raises(StoreUnavailable):
        async with store.locked(("k2",), (), 0.0) as state:
            assert await state.last_number(DAY) == 0
            # A second open incident of key k: the whole batch is refused.
            refused = batch(numbered("dup", 1))
            refused.incidents[0] = refused.incidents[0]._replace(key="k")
            refused.numbers[DAY] = 1
            await state.write(refused)
    assert await last_number(store) == 0
    assert await store.incident_id_for_number(f"{DAY}-001") is None


@pytest.mark.parametrize("name", ["sqlite", "postgresql"])
async def test_the_database_refuses_a_number_given_twice(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if name == "sqlite":
        b = _sqlite_backend(tmp_path)
    else:
        b = _postgres_backend(request.getfixturevalue("postgres_database_dsn"))
    store = await b.open()
    try:
        await store.write(batch(numbered("a", 1)))
        with pytest.raises(
            (StoreUnavailable, sqlite3.IntegrityError, asyncpg.UniqueViolationError)
        ):
            await store.write(batch(numbered("b", 1)))
        assert await store.get_incident("b") is None
    finally:
        await store.close()


async def test_two_postgresql_stores_never_give_one_number_twice(pg: Backend) -> None:
    """Replicas number concurrently: the day's counter row serialises them until commit."""
    stores = [await pg.open(), await pg.open()]

    async def open_one(n: int) -> None:
        store = stores[n % 2]
        async with store.locked((f"k{n}",), (), 0.0) as state:
            last = await state.last_number(DAY)
            await asyncio.sleep(0)  # let the other replica try meanwhile
            inc = numbered(f"i{n}", last + 1)
            inc.key = inc.group_key = f"k{n}"
            write = batch(inc)
            write.numbers[DAY] = last + 1
            await state.write(write)

    await asyncio.gather(*(open_one(n) for n in range(16)))
    found = [await stores[0].get_incident(f"i{n}") for n in range(16)]
    numbers = sorted(i.number or "" for i in found if i is not None)
    assert numbers == [f"{DAY}-{n:03d}" for n in range(1, 17)]
    assert await last_number(stores[1]) == 16


# -- locked batches (replicas) ----------------------------------------------------


async def test_locked_reads_the_keys_open_and_recently_closed_rows_and_the_ids(pg: Backend) -> None:
    store = await pg.open()
    old = incident("old", key="k", state="resolved", triggered_at=T0 - 7200)
    recent = incident("recent", key="k", state="resolved")
    await store.write(batch(old, recent, incident("now", key="k"), incident("x", key="kx")))
    await store.write(batch(incident("other", key="elsewhere")))
    async with store.locked(("k",), ("x",), T0) as state:
        assert state.keys == {"k", "kx"}  # the keys of the ids are locked too
        assert state.ids == {"x"}
        assert sorted(i.id for i in state.incidents) == ["now", "x"]
        # Only the latest of a key resolved since then.
        assert [i.id for i in state.recently_closed] == ["recent"]
        assert state.incidents[0] == (await store.get_incident(state.incidents[0].id))


async def test_a_replica_waiting_for_a_key_reads_what_the_holder_committed(
    pg: Backend, postgres_database_dsn: str
) -> None:
    """The rows are read after the lock is granted, never from a snapshot taken before the
    wait: otherwise the second replica would open a second incident for the key."""
    first, second = await pg.open(), await pg.open()

    async def waiting() -> bool:
        con = await asyncpg.connect(postgres_database_dsn)
        try:
            sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            return bool(await con.fetchval(sql))
        finally:
            await con.close()

    async def read_under_lock(store: Store, keys: tuple[str, ...], ids: tuple[str, ...]) -> Any:
        async with store.locked(keys, ids, 0.0) as state:
            return state

    await first.write(batch(incident("known", key="k2", state="resolved")))
    for keys, ids in ((("k",), ()), ((), ("known",))):
        key = keys[0] if keys else "k2"
        async with first.locked((key,), (), 0.0) as held:
            await held.write(batch(incident(f"by-first-{key}", key=key, severity="P2")))
            other = asyncio.ensure_future(read_under_lock(second, keys, ids))
            while not await waiting():
                assert not other.done()
                await asyncio.sleep(0.01)
        state = await other
        assert f"by-first-{key}" in {i.id for i in state.incidents}
        assert key in state.keys
