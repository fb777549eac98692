"""Replicas answer notification batches that change nothing from one locked read.

Two services on one throwaway PostgreSQL, in process: a resend that changes
nothing an incident records is answered without a transaction; one that changes
something is undone and runs again under the keys' locks, and is committed once;
a replica waiting for a key another is writing decides on what that one committed.
The function behind the read keeps to index lookups on a big table even with plans
made while it was empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from prometheus_client import CollectorRegistry

from sidecar.alertmanager import Notification, notification_from
from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.readonly import LOOK_AGAIN, ReadOnlyFirst
from sidecar.runtime import Components, build_components
from sidecar.store import PostgresStore
from sidecar.store.base import LockedState, Version, write_batch
from tests.payloads import alert, notification

GROUP = '{}:{alertname="DBDown"}'


class CountingStore(PostgresStore):
    """The PostgreSQL store, counting the transactions that lock keys."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, max_size=4)
        self.transactions = 0

    def locked(
        self,
        keys: Collection[str],
        ids: Collection[str],
        closed_since: float,
        known: Mapping[str, Version] = {},
    ) -> AbstractAsyncContextManager[LockedState]:
        self.transactions += 1
        return super().locked(keys, ids, closed_since, known)


def resend(*alerts: dict[str, Any]) -> Notification:
    return notification_from(notification(*alerts, group_key=GROUP))


def first(value: str = "1") -> dict[str, Any]:
    return alert("DBDown", fingerprint="0000000000000001", annotations={"value": value})


def second() -> dict[str, Any]:
    return alert("DBDown", fingerprint="0000000000000002", starts=1_700_000_100.0)


@pytest.fixture
async def replicas(
    config_factory: Callable[..., Config], clock: FakeClock, postgres_database_dsn: str
) -> AsyncIterator[list[tuple[Components, CountingStore]]]:
    made = []
    for _ in range(2):
        store = CountingStore(postgres_database_dsn)
        components = build_components(
            config_factory(), clock=clock, registry=CollectorRegistry(), store=store
        )
        await store.open()
        await components.service.start()
        made.append((components, store))
    yield made
    for components, store in made:
        await components.service.stop()
        await store.close()


async def submit(components: Components, n: Notification) -> list[Any]:
    book = components.book
    return await components.service.submit(
        lambda now: book.apply_notification(n, now), keys=book.keys_of(n)
    )


async def test_a_resend_that_changes_nothing_is_answered_without_a_transaction(
    replicas: list[tuple[Components, CountingStore]],
) -> None:
    (a, _), (b, b_store) = replicas
    opened = await submit(a, resend(first()))
    assert len(opened) == 1
    before = b_store.transactions
    # A refreshed annotation: nothing an incident records.
    assert await submit(b, resend(first("2"))) == []
    tries = b.service.read_only_first
    assert tries is not None and (tries.answered, tries.rerun) == (1, 0)
    assert b_store.transactions == before
    # B read the incident A opened under the key's lock, and holds it now.
    held = b.book.get_open(opened[0].incident.id)
    assert held is not None
    assert (b.service.held.kept, b.service.held.decoded) == (0, 1)
    # The row has not changed since: the next read takes the incident in memory for it.
    assert await submit(b, resend(first("3"))) == []
    assert (b.service.held.kept, b.service.held.decoded) == (1, 1)
    assert b.book.get_open(held.id) is held


async def test_a_resend_that_changes_something_runs_again_under_the_lock_once(
    replicas: list[tuple[Components, CountingStore]],
) -> None:
    (a, a_store), (b, b_store) = replicas
    opened = (await submit(a, resend(first())))[0].incident
    before = b_store.transactions
    changed = await submit(b, resend(first(), second()))
    assert [c.incident.id for c in changed] == [opened.id]
    tries = b.service.read_only_first
    assert tries is not None and (tries.answered, tries.rerun) == (0, 1)
    assert b_store.transactions == before + 1
    stored = await a_store.get_incident(opened.id)
    assert stored is not None and sorted(stored.alerts) == sorted(changed[0].incident.alerts)
    assert len(stored.alerts) == 2
    # The try was undone: the alert joined once, in the one commit.
    kinds = [e.kind for e in await a_store.timeline(opened.id)]
    assert kinds.count("alert_added") == 1


async def test_a_replica_waiting_for_a_key_decides_on_what_the_holder_committed(
    replicas: list[tuple[Components, CountingStore]], postgres_database_dsn: str
) -> None:
    (a, a_store), (b, _) = replicas
    opened = (await submit(a, resend(first())))[0].incident
    await submit(b, resend(first("2")))  # b holds the incident as opened
    # What A's service would write for an acknowledgment, written by hand under the lock.
    acknowledged = a.book.acknowledge(opened.id, actor="alice", source="api", now=a.clock.now())
    assert acknowledged is not None
    row_batch = write_batch([acknowledged], [], a.clock.now())
    async with a_store.locked({opened.key}, (), 0.0) as held:
        await held.write(row_batch)
        answer = asyncio.ensure_future(submit(b, resend(first("3"))))
        con = await asyncpg.connect(postgres_database_dsn)
        try:
            sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            while not await con.fetchval(sql):
                assert not answer.done()
                await asyncio.sleep(0.01)
        finally:
            await con.close()
    assert await answer == []
    # B held the row A has just replaced: it reads the new version, not its memory.
    seen = b.book.get_open(opened.id)
    assert seen is not None and seen.state == "acknowledged"
    assert b.service.held.decoded == 2


def test_tries_stop_while_most_batches_change_something_and_look_again_now_and_then() -> None:
    tries = ReadOnlyFirst(PostgresStore("postgresql://unused"))
    while tries.score >= 0.3:
        assert tries.worth_trying()
        tries.record(read_only=False)
    looks = [tries.worth_trying() for _ in range(2 * LOOK_AGAIN)]
    assert looks.count(True) == 2
    for _ in range(20):
        tries.record(read_only=True)
    assert tries.worth_trying()


async def test_the_locked_read_keeps_to_the_keys_rows_with_plans_made_on_an_empty_table(
    postgres_database_dsn: str,
) -> None:
    store = PostgresStore(postgres_database_dsn, min_size=1, max_size=1)
    await store.open()
    try:
        await store.read_locked(["k1"], 0.0)  # plans made now are kept for the session
        con = await asyncpg.connect(postgres_database_dsn)
        try:
            await con.execute(
                "INSERT INTO incidents (id, key, state, severity, team, started_at, "
                "triggered_at, resolved_at, updated_at, data, alerts) "
                "SELECT 'i' || n, 'k' || (n % 500), "
                "CASE WHEN n < 500 THEN 'triggered' ELSE 'resolved' END, 'P1', 't', 0, 0, "
                "CASE WHEN n < 500 THEN NULL ELSE n END, 0, '{}', '[]' "
                "FROM generate_series(0, 19999) AS n"
            )
        finally:
            await con.close()
        scans = (
            "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_user_tables "
            "WHERE relname = 'incidents'"
        )
        async with store._connection() as own:  # the session with the plans
            # Its counts reach pg_stat_user_tables at the end of each statement from now.
            await own.execute("SELECT pg_stat_force_next_flush()")
            before = await own.fetchval(scans)
            await own.execute("SELECT pg_stat_force_next_flush()")
            rows = await own.fetch(
                "SELECT * FROM sidecar_lock_incidents($1, $2, $3, $4, $5)",
                ["k1", "k2", "k3"],
                ["i4", "i501"],
                19000.0,
                b'{"i1": [1, 0.0], "i2": [2, 1.0]}',
                False,
            )
            await own.execute("SELECT pg_stat_force_next_flush()")
            read = await own.fetchval(scans) - before
        # i4 is open: its key's rows are read too.
        assert sorted(r["id"] for r in rows if not r["recent"]) == [
            "i1",
            "i2",
            "i3",
            "i4",
            "i501",
        ]
        assert sorted(r["id"] for r in rows if r["recent"]) == [f"i1950{n}" for n in range(1, 5)]
        # The four keys hold 160 incidents; the table 20,000.
        assert read < 160, read
    finally:
        await store.close()


async def test_a_command_that_fails_half_way_does_not_leave_its_changes_taken_for_the_row(
    replicas: list[tuple[Components, CountingStore]],
) -> None:
    (a, a_store), (b, _) = replicas
    opened = (await submit(a, resend(first())))[0].incident
    assert await submit(b, resend(first("2"))) == []  # B holds the row's version now
    book = b.book

    def fails(now: float) -> list[Any]:
        book.apply_notification(resend(first(), second()), now)  # changes it in memory,
        raise RuntimeError("a bug after the change")  # then fails: nothing is written

    with pytest.raises(RuntimeError):
        await b.service.submit(fails, keys=[opened.key])
    # The resend must be applied against the row, which never got the second alert.
    changed = await submit(b, resend(first(), second()))
    assert [c.incident.id for c in changed] == [opened.id]
    stored = await a_store.get_incident(opened.id)
    assert stored is not None and len(stored.alerts) == 2


async def test_a_row_at_the_version_held_comes_without_its_documents(
    replicas: list[tuple[Components, CountingStore]],
) -> None:
    (a, a_store), _ = replicas
    opened = (await submit(a, resend(first())))[0].incident
    fresh = await a_store.read_locked([opened.key], 0.0)
    [decoded] = fresh.incidents
    assert decoded.id == opened.id and fresh.unchanged == set()
    version = fresh.versions[opened.id]
    held = await a_store.read_locked([opened.key], 0.0, {opened.id: version})
    assert (held.incidents, held.unchanged) == ([], {opened.id})
    assert held.versions == {opened.id: version}
    # Left out by the database, not dropped after the fact.
    async with a_store._connection() as con:
        rows = await con.fetch(
            "SELECT id, data, alerts FROM sidecar_lock_incidents($1, $2, $3, $4, $5)",
            [opened.key],
            [],
            0.0,
            f'{{"{opened.id}": [{version[0]}, {version[1]!r}]}}'.encode(),
            True,
        )
    assert [tuple(r) for r in rows] == [(opened.id, None, None)]
    # Another version of the row (same transaction id, another time; or another
    # transaction) is sent and decoded.
    for stale in ((version[0], version[1] + 0.001), (version[0] + 1, version[1])):
        read = await a_store.read_locked([opened.key], 0.0, {opened.id: stale})
        assert [i.id for i in read.incidents] == [opened.id] and read.unchanged == set()


async def test_a_read_waits_for_the_keys_writers_but_not_for_other_reads(
    replicas: list[tuple[Components, CountingStore]], postgres_database_dsn: str
) -> None:
    (a, a_store), _ = replicas
    opened = (await submit(a, resend(first())))[0].incident
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    reader = await asyncpg.connect(postgres_database_dsn)
    watcher = await asyncpg.connect(postgres_database_dsn)
    try:
        # Another replica's read holding the key's lock (a transaction keeps it).
        tx = reader.transaction()
        await tx.start()
        await reader.execute(
            "SELECT * FROM sidecar_lock_incidents($1, '{}', 0, '{}', true)", [opened.key]
        )
        read = asyncio.ensure_future(a_store.read_locked([opened.key], 0.0))
        while not read.done():
            assert not await watcher.fetchval(waiting), "a read waited for a read"
            await asyncio.sleep(0.01)
        assert [i.id for i in (await read).incidents] == [opened.id]
        # A writer of the key waits for the read to let go.
        async with contextlib.AsyncExitStack() as stack:
            locking = asyncio.ensure_future(
                stack.enter_async_context(a_store.locked({opened.key}, (), 0.0))
            )
            while not await watcher.fetchval(waiting):
                assert not locking.done()
                await asyncio.sleep(0.01)
            await tx.commit()
            state = await locking
            assert [i.id for i in state.incidents] == [opened.id]
    finally:
        await reader.close()
        await watcher.close()
