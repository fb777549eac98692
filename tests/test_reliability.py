"""Reliability under failure: SIGKILL under load, a PagerDuty outage, a broken store.

- SIGKILL at random moments while notifications stream in and PagerDuty events go
  out, over 20 rounds on one database: no notification that got a 200 is lost, each
  group has exactly one incident, every outbox event is delivered in the end, and
  PagerDuty only receives a repeat where a kill fell between its 202 and the outbox
  update (at-least-once delivery, at most the events in flight), never anything else.
- PagerDuty down while a concurrent stream arrives, then back: every event once, in
  order per dedup key.
- The SQLite database stops being writable while the sidecar process runs: writes
  get 503, reads still answer, and once the cause is gone writes succeed again
  without a restart. Two real causes: a full disk (a small tmpfs mounted for the
  test and filled; root can mount here, while file permissions would not stop root
  and ``PRAGMA max_page_count`` cannot be set from outside the process; where
  mounting is not permitted the test skips, or fails when ``CI=true``), and a file
  size limit lowered on the running process (``prlimit``, no privileges needed).
- In process, the store failing and recovering repeatedly under concurrent load:
  whole batches are undone, so memory and the store agree afterwards.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import random
import resource
import sqlite3
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.runtime import build_components
from sidecar.store import IncidentQuery, SQLiteStore
from sidecar.web import create_app
from tests.conftest import WEBHOOK_TOKEN
from tests.fakes.pagerduty import AcceptedEvent, FakePagerDuty
from tests.fakes.stores import FlakyStore
from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess, record_only_preset
from tests.support.binaries import skip_or_fail

pytestmark = pytest.mark.e2e

HOOK_PATH = "/webhook/alertmanager"
ROUTING_KEY = "RELR0UT1NGKEYRELR0UT1NGKEY000000"
RETRY = {"initial": "100ms", "max": "500ms", "rate_limited_initial": "200ms"}
P0_LABELS = {"alertname": "ServiceDown", "service": "publishing", "scope": "total"}
KILLS = 20
GROUPS_PER_ROUND = 60
CONCURRENCY = 8
OUTBOX_CONCURRENCY = 8  # sidecar.notify.outbox.OutboxWorker's default: events in flight at once


def dedup_key(key: str) -> str:
    """The dedup key of a group, as Alertmanager's own PagerDuty integration computes it."""
    return hashlib.sha256(key.encode()).hexdigest()


def episode(key: str, shard: int) -> tuple[bytes, bytes]:
    """The firing and the resolved notification of one P0 group episode."""
    started = datetime.now(UTC).timestamp() - 120
    labels = P0_LABELS | {"shard": str(shard)}
    fingerprint = f"{shard:016x}"
    firing = notification(
        alert("ServiceDown", fingerprint=fingerprint, starts=started, labels=labels), group_key=key
    )
    resolved = notification(
        alert(
            "ServiceDown",
            fingerprint=fingerprint,
            starts=started,
            labels=labels,
            status="resolved",
            ends=started + 60,
        ),
        group_key=key,
    )
    return body(firing), body(resolved)


async def metric(base_url: str, name: str) -> float:
    """The sum of the samples of ``name``."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


async def until(check: Any, what: str, limit: float = 30.0) -> None:
    """Poll the async ``check`` until true; fail after ``limit`` seconds."""
    try:
        async with asyncio.timeout(limit):
            while not await check():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {limit:g}s: {what}") from None


async def outbox_drained(proc: SidecarProcess) -> bool:
    """True when the sidecar's database holds no PagerDuty event still to send.

    Read from the database itself, not the pending gauge, which the worker
    updates only between its rounds: once this holds and the process is
    stopped, nothing more can reach PagerDuty, so what it got is final.
    """
    with closing(sqlite3.connect(proc.db_path)) as con:
        (pending,) = con.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()
    return bool(pending == 0)


def make_sidecar(workdir: Path, pd: FakePagerDuty, port: int | None = None) -> SidecarProcess:
    """A sidecar process paging the fake PagerDuty."""
    return SidecarProcess(
        workdir,
        port=port,
        overrides={
            # The team's page is under test; no escalation tier has a key.
            "rules": {"file": str(record_only_preset("llm-marketplace", workdir))},
            "pagerduty": {
                "events_url": pd.events_url,
                "api_url": pd.api_url,
                "routing_key": ROUTING_KEY,
                "timeout": "1s",
                "rate_limit_per_minute": 60000,
                "retry": RETRY,
            },
        },
    )


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    """The fake PagerDuty, serving from the test's event loop."""
    async with FakePagerDuty() as fake:
        yield fake


async def post_stream(
    proc: SidecarProcess,
    episodes: dict[str, tuple[bytes, bytes]],
    acked: dict[str, set[str]],
    *,
    kill_after: int | None = None,
) -> int:
    """Post every episode (firing, then resolved once the firing got its 200) concurrently.

    Records each 200 in ``acked[key]`` ("firing"/"resolved"); with ``kill_after``, SIGKILLs
    the sidecar after that many 200s of this stream. Returns how many requests failed.
    """
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in episodes:
        queue.put_nowait(key)
    headers = {"Authorization": f"Bearer {proc.webhook_token}"}
    oks = 0
    failed = 0

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal oks, failed
        while not queue.empty():
            key = queue.get_nowait()
            for kind, payload in zip(("firing", "resolved"), episodes[key], strict=True):
                if kind in acked[key]:
                    continue
                try:
                    async with http.post(proc.webhook_url, data=payload, headers=headers) as resp:
                        if resp.status != 200:
                            failed += 1
                            break
                        acked[key].add(kind)
                        oks += 1
                        if kill_after is not None and oks == kill_after:
                            await proc.akill()
                except aiohttp.ClientError:
                    failed += 1
                    break

    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    return failed


def collapse_straddling(
    events: list[AcceptedEvent], kills: list[datetime]
) -> tuple[list[str], int, Counter[int]]:
    """Drop repeats that straddle a kill; returns (actions, repeats dropped, repeats per kill).

    A repeat is an event with the same action as the previous accepted one of its dedup key:
    at-least-once delivery resends the event whose 202 was not yet recorded at a kill.
    """
    actions: list[str] = []
    per_kill: Counter[int] = Counter()
    dropped = 0
    previous: AcceptedEvent | None = None
    for event in events:
        if previous is not None and event.event_action == previous.event_action:
            straddled = [
                i for i, t in enumerate(kills) if previous.received_at <= t <= event.received_at
            ]
            assert straddled, (
                f"{event.dedup_key}: {event.event_action} sent twice with no kill in between"
            )
            per_kill[straddled[0]] += 1
            dropped += 1
        else:
            actions.append(event.event_action)
        previous = event
    return actions, dropped, per_kill


async def test_sigkill_under_load_loses_nothing_and_duplicates_only_in_flight_events(
    tmp_path: Path, pd: FakePagerDuty
) -> None:
    rng = random.Random(20261122)
    workdir = tmp_path / "sidecar"
    episodes: dict[str, tuple[bytes, bytes]] = {}
    acked: dict[str, set[str]] = {}
    kills: list[datetime] = []
    port: int | None = None
    killed_mid_stream = 0
    open_in_db: int | None = None
    for round_ in range(KILLS):
        keys = [
            f'{{}}:{{alertname="ServiceDown",round="{round_}",n="{n}"}}'
            for n in range(GROUPS_PER_ROUND)
        ]
        for n, key in enumerate(keys):
            episodes[key] = episode(key, round_ * 1000 + n)
            acked[key] = set()
        proc = make_sidecar(workdir, pd, port)
        await proc.astart()
        port = proc.port
        if open_in_db is not None:
            # The restarted sidecar holds exactly what the killed one had committed.
            async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/readyz") as resp:
                assert (await resp.json())["open_incidents"] == open_in_db, f"round {round_}"
        # Earlier rounds' unanswered notifications are retried too, as Alertmanager would.
        pending = {k: episodes[k] for k in episodes if len(acked[k]) < 2}
        kill_after = rng.randint(1, 2 * GROUPS_PER_ROUND - 1)
        await post_stream(proc, pending, acked, kill_after=kill_after)
        if proc.running:  # the stream ended first: kill with the outbox still busy
            await asyncio.sleep(rng.uniform(0, 0.3))
            await proc.akill()
        else:
            killed_mid_stream += 1
        kills.append(datetime.now(UTC))
        assert proc.returncode == -9

        # Straight from the database, before any restart: nothing acknowledged is lost.
        with closing(sqlite3.connect(proc.db_path)) as con:
            rows = con.execute("SELECT key, state FROM incidents").fetchall()
        stored = Counter(key for key, _ in rows)
        states = dict(rows)
        open_in_db = sum(1 for _, state in rows if state != "resolved")
        for key, kinds in acked.items():
            if "firing" in kinds:
                assert stored[key] == 1, f"round {round_}: {key} acknowledged, stored {stored[key]}"
            if "resolved" in kinds:
                assert states[key] == "resolved", f"round {round_}: resolution of {key} lost"
    assert killed_mid_stream >= KILLS // 2, "most kills must land while requests are in flight"

    # A final clean run: every notification not yet answered 200 is retried.
    final = make_sidecar(workdir, pd, port)
    await final.astart()
    try:
        assert await post_stream(final, episodes, acked) == 0
        await until(lambda: outbox_drained(final), "outbox drained after the last restart")
        async with aiohttp.ClientSession() as http, http.get(f"{final.url}/readyz") as resp:
            ready = await resp.json()
    finally:
        await final.astop()

    with closing(sqlite3.connect(final.db_path)) as con:
        incidents = con.execute("SELECT key, state FROM incidents").fetchall()
        outbox = con.execute("SELECT dedup_key, action, state FROM outbox ORDER BY id").fetchall()
    # The state is consistent: one incident per episode, all resolved, nothing open.
    assert Counter(key for key, _ in incidents) == Counter(set(episodes))
    assert {state for _, state in incidents} == {"resolved"}
    assert ready["open_incidents"] == 0
    # No event lost: every outbox row delivered; PagerDuty got each once, in order, or a
    # repeat that straddles a kill (the 202 arrived, the outbox update did not).
    assert {state for _, _, state in outbox} == {"delivered"}
    by_key: dict[str, list[str]] = {}
    for key, action, _ in outbox:
        by_key.setdefault(key, []).append(action)
    assert set(by_key) == {dedup_key(k) for k in episodes}
    total_repeats = 0
    all_per_kill: Counter[int] = Counter()
    for key, expected in by_key.items():
        assert expected == ["trigger", "resolve"], key
        actions, repeats, per_kill = collapse_straddling(pd.events_for(key), kills)
        assert actions == expected, f"{key}: PagerDuty got {actions}"
        # A repeated trigger lands on the open alert: still one PagerDuty incident, one page.
        assert len(pd.incidents_for(key)) == 1, key
        total_repeats += repeats
        all_per_kill.update(per_kill)
    # At most the events in flight at a kill are repeated (the worker sends this many at once).
    assert all(n <= OUTBOX_CONCURRENCY for n in all_per_kill.values()), all_per_kill
    assert len(pd.events) == 2 * len(episodes) + total_repeats


async def test_pagerduty_outage_under_load_then_every_event_once_in_order(
    tmp_path: Path, pd: FakePagerDuty
) -> None:
    proc = make_sidecar(tmp_path / "sidecar", pd)
    await proc.astart()
    try:
        pd.go_down()
        keys = [f'{{}}:{{alertname="ServiceDown",outage="{n}"}}' for n in range(60)]
        episodes = {key: episode(key, n) for n, key in enumerate(keys)}
        acked: dict[str, set[str]] = {key: set() for key in keys}
        # Half the stream while PagerDuty is down, half after it came back.
        first = dict(list(episodes.items())[:30])
        assert await post_stream(proc, first, acked) == 0
        await until(
            lambda: _positive(metric(proc.url, "incident_sla_pagerduty_outbox_pending")),
            "events pending during the outage",
        )
        assert pd.events == []
        pd.come_back()
        assert await post_stream(proc, episodes, acked) == 0
        await pd.wait_for_events(2 * len(keys), timeout=30)
        await until(lambda: outbox_drained(proc), "outbox drained")
    finally:
        await proc.astop()
    for key in keys:
        assert [e.event_action for e in pd.events_for(dedup_key(key))] == ["trigger", "resolve"]
    assert len(pd.events) == 2 * len(keys)
    failed_during_outage = [r for r in pd.requests if r.status == 503]
    assert failed_during_outage, "the outage was never hit"


async def _positive(value: Any) -> bool:
    return bool(await value > 0)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")


def _fill(filler: Path) -> None:
    """Fill the filesystem of ``filler`` with it, until ENOSPC."""
    chunk = b"\0" * 65536
    with filler.open("wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


async def break_and_recover(
    proc: SidecarProcess, break_store: Callable[[], Awaitable[None]], fix_store: Callable[[], None]
) -> None:
    """Accept, break the store under the running sidecar, see 503s, fix it, see 200s again."""
    headers = {"Authorization": f"Bearer {proc.webhook_token}"}
    big = {"description": "x" * 60_000}  # every write must grow the database files

    def payload(i: int) -> bytes:
        return body(
            notification(
                alert(f"Disk{i}", fingerprint=f"{i:016x}", annotations=big),
                group_key=f'{{}}:{{alertname="Disk{i}"}}',
            )
        )

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:

        async def post(i: int) -> tuple[int, dict[str, Any]]:
            async with http.post(proc.webhook_url, data=payload(i), headers=headers) as resp:
                return resp.status, await resp.json()

        async def stored() -> int:
            url = f"{proc.url}/api/v1/incidents?limit=1000"
            async with http.get(url, headers=proc.read_headers) as resp:
                assert resp.status == 200, await resp.text()  # reads still answer
                return len((await resp.json())["incidents"])

        assert (await post(0))[0] == 200
        await break_store()
        accepted, refused = [0], []
        for i in range(1, 200):
            status, answer = await post(i)
            assert status in (200, 503), (status, answer)
            if status == 503:
                assert "retry" in answer["error"], answer
                refused.append(i)
                if len(refused) == 3:
                    break
            else:
                accepted.append(i)
        assert refused, "the broken store never refused a write"
        assert await stored() == len(accepted), "a refused write was kept, or an accepted lost"

        fix_store()  # the cause goes away; the same process must recover
        for i in refused:  # Alertmanager retries what got a 503
            status, answer = await post(i)
            assert status == 200, answer
            assert len(answer["changed"]) == 1
        for i in range(300, 310):
            assert (await post(i))[0] == 200
        assert await stored() == len(accepted) + len(refused) + 10
        async with http.get(f"{proc.url}/readyz") as resp:
            assert resp.status == 200
    assert proc.running, "the sidecar must not have restarted"


async def test_disk_full_answers_503_and_recovers_without_restart(tmp_path: Path) -> None:
    workdir = tmp_path / "sidecar"
    data = workdir / "data"
    _mount_tmpfs(data, "8m")
    proc = SidecarProcess(workdir)
    filler = data / "filler"

    async def fill() -> None:
        await asyncio.to_thread(_fill, filler)

    try:
        await proc.astart()
        await break_and_recover(proc, fill, filler.unlink)
    finally:
        await proc.astop()
        await asyncio.to_thread(
            subprocess.run, ["umount", str(data)], check=False, capture_output=True
        )


async def test_file_size_limit_answers_503_and_recovers_without_restart(tmp_path: Path) -> None:
    # Works without privileges: lower RLIMIT_FSIZE of the running sidecar to the size its
    # database files have now, so any growth fails with EFBIG (CPython ignores SIGXFSZ).
    proc = SidecarProcess(tmp_path / "sidecar")
    await proc.astart()
    assert proc.pid is not None
    pid = proc.pid
    original = resource.prlimit(pid, resource.RLIMIT_FSIZE)

    async def limit() -> None:
        files = proc.db_path.parent.glob("sidecar.db*")
        largest = max(f.stat().st_size for f in files)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (largest, original[1]))

    def unlimit() -> None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, original)

    try:
        await break_and_recover(proc, limit, unlimit)
    finally:
        await proc.astop()


async def test_store_failures_under_concurrent_load_leave_memory_and_store_consistent(
    aiohttp_client: Callable[..., Any], config_factory: Callable[..., Config], clock: FakeClock
) -> None:
    # In process: writes fail (FlakyStore) while batches of concurrent changes to the same
    # incidents are in flight, so the service must undo whole batches, in reverse order.
    config = config_factory()
    assert config.sqlite_path is not None
    store = FlakyStore(SQLiteStore(config.sqlite_path))
    components = build_components(config, clock=clock, registry=CollectorRegistry(), store=store)
    client = await aiohttp_client(create_app(components))
    headers = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    refusals = 0
    oks = 0

    def group(n: int) -> list[bytes]:
        key = f'{{}}:{{alertname="Flaky{n}"}}'
        first = alert("Flaky", fingerprint=f"{2 * n:016x}", labels={"n": str(n)})
        second = alert(
            "Flaky", fingerprint=f"{2 * n + 1:016x}", labels={"n": str(n), "severity": "critical"}
        )
        ended = [
            {**a, "status": "resolved", "endsAt": "2023-11-14T23:00:00Z"} for a in (first, second)
        ]
        return [
            body(notification(first, group_key=key)),
            body(notification(first, second, group_key=key)),  # the severity rises
            body(notification(*ended, group_key=key)),
        ]

    async def send(payloads: list[bytes]) -> None:
        nonlocal refusals, oks
        for payload in payloads:
            while True:  # Alertmanager retries a 5xx until it gets a 200
                resp = await client.post(HOOK_PATH, data=payload, headers=headers)
                assert resp.status in (200, 503), await resp.text()
                if resp.status == 200:
                    oks += 1
                    # Flap the store: down after every 25th accepted write, up 8 refusals later.
                    if oks % 25 == 0:
                        store.fail_writes = True
                    break
                refusals += 1
                if refusals % 8 == 0:
                    store.fail_writes = False
                await asyncio.sleep(0)

    groups = 60
    await asyncio.gather(*(send(group(n)) for n in range(groups)))
    assert refusals >= 8, "the store never failed under load"

    rows = await components.store.list_incidents(IncidentQuery(limit=1000))
    assert Counter(r.key for r in rows) == Counter(
        f'{{}}:{{alertname="Flaky{n}"}}' for n in range(groups)
    )
    assert {(r.state, r.severity) for r in rows} == {("resolved", "P0")}
    assert len(components.book) == 0
    for row in rows:
        kinds = Counter(e.kind for e in await components.store.timeline(row.id))
        assert (kinds["opened"], kinds["resolved"]) == (1, 1), (row.key, kinds)
        assert len(row.alerts) == 2, row.key
        assert {a.status for a in row.alerts.values()} == {"resolved"}, row.key
