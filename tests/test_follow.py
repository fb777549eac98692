"""Replicas follow each other through PostgreSQL's change feed, without reloading everything.

Three real sidecar processes on one throwaway PostgreSQL, PagerDuty faked: what
one replica commits (an acknowledgment, a resolution) shows in the others' API
soon after, and an acknowledgment that stops an escalation on one stops it on
all of them: the tier is paged once for the incident nobody acknowledged and
never for the acknowledged one. The change feed itself (numbers in commit order,
a missed notification costing nothing) is tested on the store at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from sidecar.follow import ReplicaFollower
from sidecar.store import PostgresStore
from tests.fakes.pagerduty import FakePagerDuty
from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess
from tests.test_store_behaviour import batch, incident

pytestmark = pytest.mark.e2e

TEAM_KEY = "F0LL0WTEAMKEYF0LL0WTEAMKEYF0LL00"
TIER_KEY = "F0LL0WT1ERKEYF0LL0WT1ERKEYF0LL00"
ESCALATE_AFTER = 5.0  # seconds without acknowledgment before the lead is paged

RULES = f"""\
name: follow
severities:
  - name: P0
    title: Critical
    paging: page
    pagerduty_severity: critical
    escalation:
      - {{after: {ESCALATE_AFTER:g}s, tier: lead, while: unacknowledged}}
teams: [sre]
default_severity: P0
default_team: sre
"""

# Only to keep a broken build from hanging: the target is 1 s, usually it takes milliseconds.
SEEN_WITHIN = 5.0


def group_key(name: str) -> str:
    return f'{{}}:{{alertname="{name}"}}'


def dedup(name: str) -> str:
    return hashlib.sha256(group_key(name).encode()).hexdigest()


def firing(name: str) -> bytes:
    one = alert(name, fingerprint=hashlib.md5(name.encode()).hexdigest()[:16])
    return body(notification(one, group_key=group_key(name)))


@pytest.fixture
def replicas() -> Iterator[list[SidecarProcess]]:
    made: list[SidecarProcess] = []
    yield made
    for proc in made:
        proc.stop()


async def call(
    http: aiohttp.ClientSession, proc: SidecarProcess, method: str, path: str, **kw: Any
) -> Any:
    token = proc.webhook_token if path.startswith("/webhook") else proc.api_token
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, f"{proc.url}{path}", headers=headers, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def until(check: Callable[[], Awaitable[bool]], limit: float) -> None:
    async with asyncio.timeout(limit):
        while not await check():
            await asyncio.sleep(0.05)


async def seen_everywhere(
    http: aiohttp.ClientSession, procs: list[SidecarProcess], incident_id: str, state: str
) -> None:
    """Wait until every one of ``procs`` answers the incident in ``state``."""

    states: list[str] = []

    async def check() -> bool:
        views = [await call(http, p, "GET", f"/api/v1/incidents/{incident_id}") for p in procs]
        states[:] = [v["state"] for v in views]
        return states == [state] * len(procs)

    try:
        await until(check, SEEN_WITHIN)
    except TimeoutError:
        raise AssertionError(f"still {states}, not {state}, after {SEEN_WITHIN:g} s") from None


async def outbox(dsn: str) -> dict[str, list[tuple[str, str, str]]]:
    """Incident id -> (routing name, action, state) of each of its PagerDuty events, in order."""
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch("SELECT incident_id, routing, action, state FROM outbox ORDER BY id")
    finally:
        await con.close()
    found: dict[str, list[tuple[str, str, str]]] = {}
    for r in rows:
        found.setdefault(r["incident_id"], []).append((r["routing"], r["action"], r["state"]))
    return found


async def test_a_change_on_one_replica_is_seen_and_honoured_by_the_others(
    tmp_path: Path, postgres_database_dsn: str, replicas: list[SidecarProcess]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    async with FakePagerDuty() as pd, aiohttp.ClientSession() as http:
        for i in range(3):
            replicas.append(
                SidecarProcess(
                    tmp_path / f"replica-{i}",
                    overrides={
                        "store": {"url": postgres_database_dsn},
                        "rules": {"file": str(rules)},
                        "pagerduty": {
                            "events_url": pd.events_url,
                            "routing_key": TEAM_KEY,
                            "tier_routing_keys": {"lead": {"key": TIER_KEY}},
                            "retry": {"initial": "100ms", "max": "1s"},
                        },
                    },
                )
            )
        await asyncio.gather(*(proc.astart() for proc in replicas))
        r0, r1, r2 = replicas

        # Opened on one, acknowledged on another: the third, and the first, see it.
        [acked] = (await call(http, r0, "POST", "/webhook/alertmanager", data=firing("Acked")))[
            "changed"
        ]
        await call(http, r1, "POST", f"/api/v1/incidents/{acked['id']}/acknowledge")
        await seen_everywhere(http, [r0, r2], acked["id"], "acknowledged")

        # Another incident whose lead is paged: its escalation is due later than the
        # acknowledged one's would have been (spaced by more than the second each
        # replica's scheduler sleeps at most), so by the time it is paged every
        # replica had passed the acknowledged incident's deadline.
        await asyncio.sleep(1.5)
        [paged] = (await call(http, r2, "POST", "/webhook/alertmanager", data=firing("Paged")))[
            "changed"
        ]

        async def lead_paged() -> bool:
            return bool(pd.events_for(f"{dedup('Paged')}:lead"))

        await until(lead_paged, ESCALATE_AFTER + 30)

        async def drained() -> bool:
            rows = await outbox(postgres_database_dsn)
            return all(state != "pending" for items in rows.values() for _, _, state in items)

        await until(drained, 30)
        rows = await outbox(postgres_database_dsn)
        assert [(routing, action) for routing, action, _ in rows[acked["id"]]] == [
            ("default", "trigger"),
            ("default", "acknowledge"),
        ]
        assert [(routing, action) for routing, action, _ in rows[paged["id"]]] == [
            ("default", "trigger"),
            ("tier:lead", "trigger"),
        ]
        assert [e.event_action for e in pd.events_for(f"{dedup('Paged')}:lead")] == ["trigger"]
        assert pd.events_for(f"{dedup('Acked')}:lead") == []

        # Resolved on the first: the other two answer it resolved too.
        await call(http, r0, "POST", f"/api/v1/incidents/{paged['id']}/resolve")
        await seen_everywhere(http, [r1, r2], paged["id"], "resolved")
        for proc in replicas:
            listed = await call(http, proc, "GET", "/api/v1/incidents?state=open")
            assert [i["id"] for i in listed["incidents"]] == [acked["id"]]


# -- the feed itself ----------------------------------------------------------


class _Recorder:
    """Stands in for the service: records what the follower asks it to re-read."""

    def __init__(self) -> None:
        self.refreshed: list[set[str]] = []
        self.reloads = 0

    async def refresh(self, ids: set[str]) -> None:
        self.refreshed.append(set(ids))

    async def reload(self) -> None:
        self.reloads += 1


async def test_a_follower_reads_each_other_replicas_change_once_and_skips_its_own(
    postgres_database_dsn: str,
) -> None:
    mine, other = PostgresStore(postgres_database_dsn), PostgresStore(postgres_database_dsn)
    await mine.open()
    await other.open()
    recorder = _Recorder()
    follower = ReplicaFollower(mine, recorder, batch=2)  # type: ignore[arg-type]
    try:
        await other.write(batch(incident("before")))
        await follower.prime()
        await mine.write(batch(incident("own")))
        for n in range(5):
            await other.write(batch(incident(f"theirs-{n}")))
        assert await follower.catch_up() == 5
        assert set().union(*recorder.refreshed) == {f"theirs-{n}" for n in range(5)}
        # Read in pages of two, from where the last read stopped: nothing twice.
        assert sum(len(ids) for ids in recorder.refreshed) == 5
        assert await follower.catch_up() == 0
        assert follower.position == await mine.change_position()
    finally:
        await mine.close()
        await other.close()


async def test_a_notification_wakes_the_follower_and_one_missed_costs_nothing(
    postgres_database_dsn: str,
) -> None:
    mine, other = PostgresStore(postgres_database_dsn), PostgresStore(postgres_database_dsn)
    await mine.open()
    await other.open()
    recorder = _Recorder()
    # Polls never within the test: only a notification can wake it.
    follower = ReplicaFollower(mine, recorder, poll_interval=3600)  # type: ignore[arg-type]
    try:
        await follower.prime()
        # Committed while nobody listens: no notification reaches the follower.
        await other.write(batch(incident("unheard")))
        await follower.start()

        async def refreshed(wanted: set[str]) -> bool:
            return wanted <= set().union(*recorder.refreshed)

        # Listening starts with a read from the last position: the missed change is read.
        await until(lambda: refreshed({"unheard"}), 30)
        await other.write(batch(incident("heard")))
        await until(lambda: refreshed({"heard"}), 30)
        assert recorder.reloads == 0
    finally:
        await follower.stop()
        await mine.close()
        await other.close()


async def test_a_follower_cut_off_longer_than_the_feed_keeps_changes_reloads_everything(
    postgres_database_dsn: str,
) -> None:
    store, other = PostgresStore(postgres_database_dsn), PostgresStore(postgres_database_dsn)
    await store.open()
    await other.open()
    recorder = _Recorder()
    clock = [1000.0]
    follower = ReplicaFollower(
        store,
        recorder,  # type: ignore[arg-type]
        retention=10.0,
        monotonic=lambda: clock[0],
    )
    try:
        await follower.prime()
        await other.write(batch(incident("meanwhile")))
        clock[0] += 4.0  # less than half the retention: the feed still has everything
        assert await follower.catch_up() == 1
        clock[0] += 6.0  # more: changes may have been pruned, only a reload is safe
        await other.write(batch(incident("lost")))
        assert await follower.catch_up() == 0
        assert recorder.reloads == 1
        assert recorder.refreshed == [{"meanwhile"}]
        # Numbered from before the reload: nothing the reload read is read again.
        assert follower.position == await store.change_position()
    finally:
        await store.close()
        await other.close()


async def waiting_for_a_lock(dsn: str) -> bool:
    con = await asyncpg.connect(dsn)
    try:
        return bool(
            await con.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
        )
    finally:
        await con.close()


async def test_change_numbers_are_visible_in_commit_order(postgres_database_dsn: str) -> None:
    # A transaction that numbered its change first but commits last must not let a
    # reader see a later number alone (the reader would move past the earlier for good).
    store = PostgresStore(postgres_database_dsn)
    await store.open()
    try:
        start = await store.change_position()
        async with store.locked({"slow"}, (), 0.0) as slow:
            await slow.write(batch(incident("slow", key="slow")))
            fast = asyncio.ensure_future(store.write(batch(incident("fast", key="fast"))))
            # The other writer waits for the first to commit before it numbers its change.
            await until(lambda: waiting_for_a_lock(postgres_database_dsn), 30)
            assert not fast.done()
            assert await store.changes_since(start, 10) == []
        await fast
        seen = await store.changes_since(start, 10)
        assert [incident_id for _, incident_id, _ in seen] == ["slow", "fast"]
    finally:
        await store.close()


async def test_changes_older_than_the_retention_are_pruned(postgres_database_dsn: str) -> None:
    store = PostgresStore(postgres_database_dsn)
    await store.open()
    try:
        await store.write(batch(incident("old")))
        await store.write(batch(incident("new")))
        con = await asyncpg.connect(postgres_database_dsn)
        try:
            await con.execute(
                "UPDATE changes SET at = now() - interval '2 hours' WHERE incident_id = 'old'"
            )
        finally:
            await con.close()
        await store.prune_changes(3600.0)
        assert [i for _, i, _ in await store.changes_since(0, 10)] == ["new"]
    finally:
        await store.close()
