"""The embedded SQLite store: migrations, durability settings, round trips, the open-key index."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import StoreUnavailable
from sidecar.incidents import AlertState, Incident, State, TimelineEvent
from sidecar.store import IncidentQuery, SQLiteStore, WriteBatch
from sidecar.store.base import event_row, incident_row
from sidecar.store.sqlite import MIGRATIONS

T0 = 1_700_000_000.0
LATEST = max(version for version, _, _ in MIGRATIONS)


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
    )


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


def batch(*incidents: Incident, evs: list[TimelineEvent] | None = None) -> WriteBatch:
    """A write batch of these incidents and events."""
    out = WriteBatch()
    out.incidents.extend(incident_row(inc, T0 + 1000) for inc in incidents)
    out.events.extend(event_row(e) for e in evs or [])
    return out


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "sidecar.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    await s.open()
    yield s
    await s.close()


def migrations_applied(path: Path) -> list[tuple[Any, ...]]:
    """The migrations recorded in the database file, read on a connection of our own."""
    assert path.exists()
    with sqlite3.connect(path) as con:
        return con.execute(
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ).fetchall()


# -- schema ---------------------------------------------------------------


async def test_open_creates_the_database_and_applies_every_migration_once(
    store: SQLiteStore, db_path: Path
) -> None:
    # migrations_applied() also checks that the file (and its parent directories) exist.
    assert await store.schema_version() == LATEST
    assert [v for v, _ in migrations_applied(db_path)] == [v for v, _, _ in MIGRATIONS]
    with sqlite3.connect(db_path) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"incidents", "events", "schema_migrations"} <= tables
    assert "incidents_open_key" in indexes


async def test_reopening_is_idempotent_and_keeps_data(db_path: Path) -> None:
    first = SQLiteStore(db_path)
    await first.open()
    inc = incident("a")
    await first.write(batch(inc, evs=events(inc, 1)))
    await first.close()
    before = migrations_applied(db_path)
    for _ in range(2):
        again = SQLiteStore(db_path)
        await again.open()
        assert await again.schema_version() == LATEST
        assert await again.get_incident("a") == inc
        assert await again.timeline("a") == events(inc, 1)
        await again.close()
    assert migrations_applied(db_path) == before


def test_migration_versions_are_increasing_and_unique() -> None:
    versions = [v for v, _, _ in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    assert all(name and sql.strip() for _, name, sql in MIGRATIONS)


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
    with sqlite3.connect(db_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


async def test_synchronous_normal_when_configured(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "x.db", synchronous="normal")
    await s.open()
    try:
        assert _pragma(s._wcon, "synchronous") == 1  # NORMAL
    finally:
        await s.close()


# -- round trips ----------------------------------------------------------


@pytest.mark.parametrize("state", ["triggered", "acknowledged", "resolved"])
async def test_incident_round_trip_keeps_every_field(store: SQLiteStore, state: State) -> None:
    inc = incident("round", state=state)
    await store.write(batch(inc))
    got = await store.get_incident("round")
    assert got == inc
    assert got is not inc


async def test_timeline_round_trip_in_sequence_order(store: SQLiteStore) -> None:
    inc = incident("t")
    evs = events(inc, 3, 1, 2)
    await store.write(batch(inc, evs=evs))
    assert await store.timeline("t") == sorted(evs, key=lambda e: e.seq)


async def test_unknown_ids_read_as_nothing(store: SQLiteStore) -> None:
    assert await store.get_incident("missing") is None
    assert await store.timeline("missing") == []


async def test_an_empty_batch_is_fine(store: SQLiteStore) -> None:
    await store.write(WriteBatch())
    assert await store.list_incidents(IncidentQuery()) == []


async def test_upsert_updates_the_row(store: SQLiteStore) -> None:
    inc = incident("u")
    await store.write(batch(inc, evs=events(inc, 1)))
    inc.state = "acknowledged"
    inc.acknowledged_at = T0 + 99
    inc.acknowledged_by = "carol"
    inc.severity = "P0"
    inc.seq = 3
    await store.write(batch(inc, evs=events(inc, 2)))
    got = await store.get_incident("u")
    assert got == inc
    assert len(await store.list_incidents(IncidentQuery())) == 1
    assert [e.seq for e in await store.timeline("u")] == [1, 2]


async def test_a_replayed_event_is_not_appended_twice(store: SQLiteStore) -> None:
    inc = incident("e")
    await store.write(batch(inc, evs=events(inc, 1)))
    await store.write(batch(inc, evs=events(inc, 1)))
    assert await store.timeline("e") == events(inc, 1)


# -- one open incident per key --------------------------------------------


async def test_two_open_incidents_for_one_key_are_refused(store: SQLiteStore) -> None:
    await store.write(batch(incident("first", key="k")))
    with pytest.raises(StoreUnavailable):
        await store.write(batch(incident("second", key="k", state="acknowledged")))
    assert [i.id for i in await store.load_open()] == ["first"]


async def test_a_refused_batch_writes_nothing_at_all(store: SQLiteStore) -> None:
    ok = incident("ok")
    with pytest.raises(StoreUnavailable):
        await store.write(
            batch(ok, incident("x", key="k"), incident("y", key="k"), evs=events(ok, 1))
        )
    assert await store.list_incidents(IncidentQuery()) == []
    assert await store.timeline("ok") == []
    # And the writer connection is usable again.
    await store.write(batch(ok))
    assert await store.get_incident("ok") == ok


async def test_resolved_incidents_may_share_a_key_with_an_open_one(store: SQLiteStore) -> None:
    await store.write(batch(incident("old1", key="k", state="resolved", triggered_at=T0 - 9000)))
    await store.write(batch(incident("old2", key="k", state="resolved", triggered_at=T0 - 5000)))
    await store.write(batch(incident("new", key="k")))
    assert [i.id for i in await store.load_open()] == ["new"]
    assert len(await store.list_incidents(IncidentQuery())) == 3


async def test_resolving_then_reopening_a_key_in_one_batch(store: SQLiteStore) -> None:
    old = incident("old", key="k")
    await store.write(batch(old))
    old.state = "resolved"
    old.resolved_at = T0 + 50
    # The service writes the resolution before the new incident of the same key.
    await store.write(batch(old, incident("new", key="k", triggered_at=T0 + 60)))
    assert [i.id for i in await store.load_open()] == ["new"]


# -- queries --------------------------------------------------------------


async def seed(store: SQLiteStore) -> None:
    """Five incidents across states, severities and teams, triggered a second apart."""
    rows = [
        incident("a", severity="P0", team="sre", triggered_at=T0 + 1),
        incident("b", severity="P1", team="db", triggered_at=T0 + 2, state="acknowledged"),
        incident("c", severity="P1", team="sre", triggered_at=T0 + 3, state="resolved"),
        incident("d", severity="P2", team="db", triggered_at=T0 + 4, state="resolved"),
        incident("e", severity="P1", team="sre", triggered_at=T0 + 5),
    ]
    await store.write(batch(*rows))


async def test_load_open_returns_triggered_and_acknowledged(store: SQLiteStore) -> None:
    await seed(store)
    assert sorted(i.id for i in await store.load_open()) == ["a", "b", "e"]


async def test_load_closed_since(store: SQLiteStore) -> None:
    await seed(store)
    # c resolved at T0+603, d at T0+604 (see incident()).
    assert [i.id for i in await store.load_closed_since(T0 + 603)] == ["c", "d"]
    assert [i.id for i in await store.load_closed_since(T0 + 603.5)] == ["d"]
    assert await store.load_closed_since(T0 + 10_000) == []
    assert all(i.state == "resolved" for i in await store.load_closed_since(0))


async def test_load_closed_since_lets_the_latest_of_a_key_win(store: SQLiteStore) -> None:
    await store.write(batch(incident("older", key="k", state="resolved", triggered_at=T0)))
    await store.write(batch(incident("newer", key="k", state="resolved", triggered_at=T0 + 100)))
    latest = {i.key: i.id for i in await store.load_closed_since(0)}
    assert latest == {"k": "newer"}


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
        (IncidentQuery(severity="P3"), []),
        (IncidentQuery(limit=2), ["e", "d"]),
        (IncidentQuery(state="open", limit=1), ["e"]),
    ],
)
async def test_list_incidents_filters_and_limit_newest_first(
    store: SQLiteStore, query: IncidentQuery, expected: list[str]
) -> None:
    await seed(store)
    assert [i.id for i in await store.list_incidents(query)] == expected


async def test_ping(store: SQLiteStore) -> None:
    await store.ping()


# -- unavailable ----------------------------------------------------------


async def test_a_closed_store_raises_store_unavailable(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    await s.open()
    await s.close()
    await s.close()  # closing twice is harmless
    inc = incident("late")
    calls: list[Any] = [
        s.write(batch(inc)),
        s.load_open(),
        s.load_closed_since(0),
        s.list_incidents(IncidentQuery()),
        s.get_incident("late"),
        s.timeline("late"),
        s.ping(),
        s.schema_version(),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call


async def test_a_store_never_opened_raises_store_unavailable(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    try:
        with pytest.raises(StoreUnavailable):
            await s.ping()
        with pytest.raises(StoreUnavailable):
            await s.write(batch(incident("x")))
    finally:
        await s.close()


async def test_an_unusable_path_raises_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = SQLiteStore(blocker / "sidecar.db")
    try:
        # The Store contract: StoreUnavailable, so `serve` fails with a reason, not a traceback.
        with pytest.raises(StoreUnavailable):
            await s.open()
    finally:
        await s.close()


async def test_committed_writes_survive_reopening(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    await s.open()
    incs = [incident(f"i{n}", triggered_at=T0 + n) for n in range(50)]
    for inc in incs:
        await s.write(batch(inc, evs=events(inc, 1, 2)))
    await s.close()
    again = SQLiteStore(db_path)
    await again.open()
    try:
        assert sorted(i.id for i in await again.load_open()) == sorted(i.id for i in incs)
        assert len(await again.timeline("i7")) == 2
    finally:
        await again.close()
