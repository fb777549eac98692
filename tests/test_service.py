"""The incident service: group commit, per-caller results and errors, undo, restart, metrics.

The store under test is the real SQLite store, and the in-memory one, wrapped by
fakes that can hold a commit open (to make batches deterministic) or make it fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.alertmanager import Notification, notification_from
from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.errors import IncidentNotFound, StoreUnavailable
from sidecar.incidents import Change, IncidentBook
from sidecar.runtime import Components, build_components
from sidecar.service import Command
from sidecar.store import IncidentQuery, MemoryStore, SQLiteStore, Store, WriteBatch
from sidecar.store.memory import Tables
from tests.fakes.stores import FlakyStore
from tests.payloads import alert, notification

T0 = 1_700_000_000.0


class GatedStore(FlakyStore):
    """A FlakyStore whose writes wait at a gate the test opens, and are counted as attempted."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.gate.set()
        self.attempts = 0
        self._entered: asyncio.Event = asyncio.Event()

    async def write(self, batch: WriteBatch) -> None:
        self.attempts += 1
        self._entered.set()
        await self.gate.wait()
        await super().write(batch)

    async def writing(self) -> None:
        """Wait until a write has started (and is held at the gate, if closed)."""
        await self._entered.wait()
        self._entered.clear()


def group(i: int, **kw: Any) -> Notification:
    """A notification for group ``i``, with its own alert."""
    return notification_from(
        notification(
            alert(f"Alert{i}", fingerprint=f"{i:016x}", **kw),
            group_key=f'{{}}:{{alertname="Alert{i}"}}',
        )
    )


def notify(book: IncidentBook, n: Notification) -> Command:
    """The command a webhook handler submits for ``n``."""
    return lambda now: book.apply_notification(n, now)


async def start(
    config: Config, clock: FakeClock, backing: Callable[[], Store]
) -> tuple[Components, GatedStore]:
    """Build the components on a gated store, open it and start the service."""
    store = GatedStore(backing())
    components = build_components(config, clock=clock, registry=CollectorRegistry(), store=store)
    await store.open()
    await components.service.start()
    return components, store


async def shutdown(components: Components) -> None:
    """Stop the service, then close its store."""
    await components.service.stop()
    await components.store.close()


@pytest.fixture
def config(config_factory: Callable[..., Config]) -> Config:
    return config_factory()


@pytest.fixture(params=["sqlite", "memory"])
def backing(request: pytest.FixtureRequest, config: Config) -> Callable[[], Store]:
    """A new store on the test's one database: a SQLite file, or tables in memory."""
    if request.param == "memory":
        tables = Tables()
        return lambda: MemoryStore(tables)
    path = config.sqlite_path
    assert path is not None
    return lambda: SQLiteStore(path)


@pytest.fixture
async def running(
    config: Config, clock: FakeClock, backing: Callable[[], Store]
) -> AsyncIterator[tuple[Components, GatedStore]]:
    components, store = await start(config, clock, backing)
    yield components, store
    store.gate.set()
    await shutdown(components)


def sample(components: Components, name: str, **labels: str) -> float:
    """A sample of the components' registry, 0 when absent."""
    value = components.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- group commit ---------------------------------------------------------


async def test_submits_that_arrive_during_a_commit_share_the_next_one(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    store.gate.clear()
    first = asyncio.create_task(svc.submit(notify(book, group(0))))
    await store.writing()  # batch 1 is being committed, held at the gate
    rest = [asyncio.create_task(svc.submit(notify(book, group(i)))) for i in range(1, 41)]
    await asyncio.sleep(0)  # every submit has queued its command
    store.gate.set()
    results = await asyncio.gather(first, *rest)
    assert svc.batches_committed == 2
    assert store.writes == 2
    # Every caller gets its own change, and only its own.
    for i, changes in enumerate(results):
        assert [c.incident.key for c in changes] == [f'{{}}:{{alertname="Alert{i}"}}']
        assert changes[0].incident.state == "triggered"
    stored = await store.list_incidents(IncidentQuery(limit=1000))
    assert len(stored) == 41
    assert {i.id for i in stored} == {changes[0].incident.id for changes in results}


async def test_many_concurrent_submits_need_fewer_commits_than_submits(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    results = await asyncio.gather(*(svc.submit(notify(book, group(i))) for i in range(200)))
    assert all(len(changes) == 1 for changes in results)
    assert 1 <= svc.batches_committed < 200
    assert store.writes == svc.batches_committed
    assert len(book) == 200


async def test_max_batch_bounds_a_commit(
    config_factory: Callable[..., Config], clock: FakeClock, backing: Callable[[], Store]
) -> None:
    components, store = await start(config_factory({"store": {"max_batch": 5}}), clock, backing)
    try:
        svc, book = components.service, components.book
        store.gate.clear()
        first = asyncio.create_task(svc.submit(notify(book, group(0))))
        await store.writing()
        rest = [asyncio.create_task(svc.submit(notify(book, group(i)))) for i in range(1, 21)]
        await asyncio.sleep(0)
        store.gate.set()
        await asyncio.gather(first, *rest)
        assert svc.batches_committed == 1 + 20 // 5
    finally:
        await shutdown(components)


async def test_duplicates_answer_without_a_commit(running: tuple[Components, GatedStore]) -> None:
    components, store = running
    svc, book = components.service, components.book
    assert len(await svc.submit(notify(book, group(1)))) == 1
    assert await svc.submit(notify(book, group(1))) == []
    assert svc.batches_committed == 1
    assert store.attempts == 1


def resend(book: IncidentBook, n: Notification) -> dict[str, Any]:
    """What the webhook handler submits with ``n``: its command, keys and repeat check."""
    return {
        "command": notify(book, n),
        "keys": book.keys_of(n),
        "unchanged": lambda: book.repeats_open(n),
    }


def at_once(awaitable: Any) -> Any:
    """The result of a coroutine that finishes without waiting for anything, else fail."""
    try:
        awaitable.send(None)
    except StopIteration as done:
        return done.value
    awaitable.close()
    raise AssertionError("it waited (for a batch)")


async def test_a_repeat_of_committed_alerts_is_answered_at_once_while_a_batch_commits(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    await svc.submit(**resend(book, group(1)))
    await store.writing()  # (that commit's)
    store.gate.clear()
    blocker = asyncio.create_task(svc.submit(**resend(book, group(2))))
    await store.writing()  # another key's batch is held at the gate
    refreshed = group(1, annotations={"value": "42"})
    assert at_once(svc.submit(**resend(book, refreshed))) == []
    assert svc.early is not None and svc.early.answered == 1
    store.gate.set()
    assert len(await blocker) == 1
    assert store.attempts == 2, "the repeat wrote nothing"


async def test_a_copy_of_a_notification_in_flight_waits_for_it_and_lands_if_it_fails(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    await svc.submit(**resend(book, group(1)))
    await store.writing()  # (that commit's)
    joined = notification_from(
        notification(
            alert("Alert1", fingerprint=f"{1:016x}"),
            alert("Alert1", fingerprint=f"{99:016x}", labels={"instance": "b"}),
            group_key='{}:{alertname="Alert1"}',
        )
    )
    store.gate.clear()
    store.fail_writes = True
    first = asyncio.create_task(svc.submit(**resend(book, joined)))
    await store.writing()  # applied in memory, held before its commit
    assert book.repeats_open(joined), "in memory, the copy repeats what the first applied"
    copy = asyncio.create_task(svc.submit(**resend(book, joined)))
    await asyncio.sleep(0)
    assert not copy.done(), "a key with a batch in flight is never answered from memory"
    held, store.gate = store.gate, asyncio.Event()  # the copy's batch waits at a new gate
    held.set()
    with pytest.raises(StoreUnavailable):
        await first
    assert not book.repeats_open(joined), "the failed batch was undone"
    store.fail_writes = False
    store.gate.set()
    (change,) = await copy
    assert sorted(change.incident.alerts) == [f"{1:016x}", f"{99:016x}"]
    (stored,) = await store.load_open()
    assert sorted(stored.alerts) == [f"{1:016x}", f"{99:016x}"]
    assert svc.early is not None and svc.early.answered == 0


def pair(first_status: str = "firing", ends: float | None = None) -> Notification:
    """Group 1 with two alerts; the first one may be resolved."""
    return notification_from(
        notification(
            alert("Alert1", fingerprint=f"{1:016x}", status=first_status, ends=ends),
            alert("Alert1", fingerprint=f"{99:016x}", labels={"instance": "b"}),
            group_key='{}:{alertname="Alert1"}',
        )
    )


async def test_a_command_by_id_in_flight_keeps_every_notification_on_the_batch_path(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    (opened,) = await svc.submit(**resend(book, pair()))
    await store.writing()  # (that commit's)
    store.gate.clear()
    store.fail_writes = True

    def silence_resolves_the_first(now: float) -> list[Change]:
        change = book.resolve_alerts(
            opened.incident.id, {f"{1:016x}": T0 + 100}, now=now, source="silence", message="m"
        )
        return [change] if change else []

    # A silence resolves the first alert by incident id: no key is named.
    by_id = asyncio.create_task(svc.submit(silence_resolves_the_first, ids=[opened.incident.id]))
    await store.writing()  # applied in memory, held before its commit
    resolved_first = pair("resolved", ends=T0 + 100)
    assert book.repeats_open(resolved_first), "in memory, it repeats the uncommitted change"
    answer = asyncio.create_task(svc.submit(**resend(book, resolved_first)))
    await asyncio.sleep(0)
    assert not answer.done(), "never answered from a change a command by id has not committed"
    held, store.gate = store.gate, asyncio.Event()
    held.set()
    with pytest.raises(StoreUnavailable):
        await by_id
    store.fail_writes = False
    store.gate.set()
    (change,) = await answer
    assert [e.kind for e in change.events] == ["alert_resolved"]
    assert svc.early is not None and svc.early.answered == 0


async def test_a_cancelled_caller_keeps_its_keys_busy_until_its_batch_ends(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    store.gate.clear()
    store.fail_writes = True
    first = asyncio.create_task(svc.submit(**resend(book, pair())))
    await store.writing()  # opened in memory, held before its commit
    first.cancel()  # aiohttp cancelling a handler at shutdown
    with pytest.raises(asyncio.CancelledError):
        await first
    copy = asyncio.create_task(svc.submit(**resend(book, pair())))
    await asyncio.sleep(0)
    assert not copy.done(), "the cancelled caller's command is still in flight"
    held, store.gate = store.gate, asyncio.Event()
    held.set()
    await store.writing()  # the first batch failed; the copy's is at the new gate
    assert book.repeats_open(pair()), "the copy's batch opened the incident again"
    store.fail_writes = False
    store.gate.set()
    (change,) = await copy
    assert change.incident.state == "triggered", "the copy opens what the failed batch undid"
    assert len(await store.load_open()) == 1


async def test_an_incident_changed_twice_in_one_batch_is_stored_in_its_final_state(
    running: tuple[Components, GatedStore], clock: FakeClock
) -> None:
    components, store = running
    svc, book = components.service, components.book
    store.gate.clear()
    blocker = asyncio.create_task(svc.submit(notify(book, group(99))))
    await store.writing()
    fire = asyncio.create_task(svc.submit(notify(book, group(1))))
    resolve = asyncio.create_task(
        svc.submit(notify(book, group(1, status="resolved", ends=T0 + 300)))
    )
    await asyncio.sleep(0)
    store.gate.set()
    await blocker
    (opened,), (closed,) = await fire, await resolve
    assert opened.incident.id == closed.incident.id
    stored = await store.get_incident(opened.incident.id)
    assert stored is not None
    assert (stored.state, stored.resolved_at) == ("resolved", T0 + 300)
    assert [e.kind for e in await store.timeline(stored.id)] == [
        "opened",
        "alert_resolved",
        "resolved",
    ]


# -- errors ---------------------------------------------------------------


async def test_a_domain_error_fails_only_its_caller(running: tuple[Components, GatedStore]) -> None:
    components, store = running
    svc, book = components.service, components.book

    def acknowledge_unknown(now: float) -> list[Change]:
        change = book.acknowledge("no-such-incident", actor="x", source="api", now=now)
        return [change] if change else []

    store.gate.clear()
    blocker = asyncio.create_task(svc.submit(notify(book, group(0))))
    await store.writing()
    good1 = asyncio.create_task(svc.submit(notify(book, group(1))))
    bad = asyncio.create_task(svc.submit(acknowledge_unknown))
    good2 = asyncio.create_task(svc.submit(notify(book, group(2))))
    await asyncio.sleep(0)
    store.gate.set()
    await blocker
    with pytest.raises(IncidentNotFound):
        await bad
    assert len(await good1) == 1
    assert len(await good2) == 1
    assert svc.batches_committed == 2  # the good ones still shared one commit
    assert len(await store.load_open()) == 3
    assert svc.running


async def test_a_failed_commit_fails_every_caller_and_undoes_the_batch(
    running: tuple[Components, GatedStore], clock: FakeClock
) -> None:
    components, store = running
    svc, book = components.service, components.book
    (existing,) = await svc.submit(notify(book, group(0)))
    incident_id = existing.incident.id
    counts_before = dict(book.open_counts)
    clock.advance(60)

    def acknowledge(now: float) -> list[Change]:
        change = book.acknowledge(incident_id, actor="alice", source="api", now=now)
        return [change] if change else []

    store.gate.clear()
    store.fail_writes = True
    blocker = asyncio.create_task(svc.submit(notify(book, group(50))))
    await store.writing()
    callers = [
        asyncio.create_task(svc.submit(acknowledge)),
        asyncio.create_task(svc.submit(notify(book, group(1)))),
        asyncio.create_task(svc.submit(notify(book, group(2)))),
        # Two changes of one new incident in the same failed batch.
        asyncio.create_task(svc.submit(notify(book, group(3)))),
        asyncio.create_task(svc.submit(notify(book, group(3, status="resolved", ends=T0 + 9)))),
    ]
    await asyncio.sleep(0)
    store.gate.set()
    for task in [blocker, *callers]:
        with pytest.raises(StoreUnavailable):
            await task
    # The book is exactly as before the failed batches.
    assert len(book) == 1
    inc = book.get_open(incident_id)
    assert inc is not None
    assert (inc.state, inc.acknowledged_at, inc.acknowledged_by) == ("triggered", None, None)
    assert {k: v for k, v in book.open_counts.items() if v} == {
        k: v for k, v in counts_before.items() if v
    }
    assert [i.id for i in await store.list_incidents(IncidentQuery())] == [incident_id]
    assert svc.batches_committed == 1

    # The service keeps working, and the retried commands land as if for the first time.
    store.fail_writes = False
    assert svc.running
    assert len(await svc.submit(acknowledge)) == 1
    assert len(await svc.submit(notify(book, group(1)))) == 1
    # Group 3's resolution was undone too: its firing notification opens an incident again.
    (reopened,) = await svc.submit(notify(book, group(3)))
    assert reopened.incident.state == "triggered"
    assert (book.get_open(incident_id) or inc).state == "acknowledged"
    assert len(await store.load_open()) == 3


async def test_a_store_that_is_down_answers_store_unavailable_then_recovers(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    store.down = True
    with pytest.raises(StoreUnavailable):
        await svc.submit(notify(book, group(1)))
    assert len(book) == 0
    store.down = False
    assert len(await svc.submit(notify(book, group(1)))) == 1


async def test_submit_before_start_or_after_stop_is_refused(
    config: Config, clock: FakeClock, backing: Callable[[], Store]
) -> None:
    components, _ = await start(config, clock, backing)
    svc, book = components.service, components.book
    await shutdown(components)
    assert not svc.running
    with pytest.raises(StoreUnavailable):
        await svc.submit(notify(book, group(1)))


async def test_stop_finishes_the_batch_in_flight(
    config: Config, clock: FakeClock, backing: Callable[[], Store]
) -> None:
    components, store = await start(config, clock, backing)
    svc, book = components.service, components.book
    store.gate.clear()
    caller = asyncio.create_task(svc.submit(notify(book, group(1))))
    await store.writing()
    stopping = asyncio.create_task(svc.stop())
    await asyncio.sleep(0)
    store.gate.set()
    await stopping
    for _ in range(5):
        await asyncio.sleep(0)
    try:
        # The caller in flight must get an answer: its changes (committed) or an error.
        assert caller.done(), "stop() left the caller of the batch in flight without an answer"
        assert len(caller.result()) == 1
        assert len(await store.load_open()) == 1
    finally:
        caller.cancel()
        await store.close()


# -- restart --------------------------------------------------------------


async def test_restart_restores_open_and_recently_closed_incidents(
    config: Config, clock: FakeClock, backing: Callable[[], Store]
) -> None:
    components, _ = await start(config, clock, backing)
    svc, book = components.service, components.book
    (still_open,) = await svc.submit(notify(book, group(1)))
    (acked,) = await svc.submit(notify(book, group(2, labels={"severity": "critical"})))
    await svc.submit(
        lambda now: [
            c for c in [book.acknowledge(acked.incident.id, actor="a", source="api", now=now)] if c
        ]
    )
    await svc.submit(notify(book, group(3)))
    (closed,) = await svc.submit(notify(book, group(3, status="resolved", ends=T0 + 500)))
    assert closed.incident.state == "resolved"
    await shutdown(components)

    clock.advance(600)
    again, _ = await start(config, clock, backing)
    try:
        book2 = again.book
        assert len(book2) == 2
        restored = book2.get_open(still_open.incident.id)
        assert restored is not None
        assert (restored.key, restored.state) == (still_open.incident.key, "triggered")
        restored_ack = book2.get_open(acked.incident.id)
        assert restored_ack is not None
        assert (restored_ack.state, restored_ack.severity) == ("acknowledged", "P0")
        assert book2.open_counts[("P0", "acknowledged")] == 1
        # Late duplicates after the restart open nothing: the open ones are known, and so is
        # the closed one's alert instance.
        svc2 = again.service
        assert await svc2.submit(notify(book2, group(1))) == []
        assert await svc2.submit(notify(book2, group(3))) == []
        assert await svc2.submit(notify(book2, group(3, status="resolved", ends=T0 + 500))) == []
        # The same group firing again (a new startsAt) is a new incident.
        (refired,) = await svc2.submit(notify(book2, group(3, starts=T0 + 1000)))
        assert refired.incident.id != closed.incident.id
        assert len(await again.store.list_incidents(IncidentQuery())) == 4
    finally:
        await shutdown(again)


async def test_restart_with_an_empty_store(running: tuple[Components, GatedStore]) -> None:
    components, _ = running
    assert len(components.book) == 0
    assert components.service.running


# -- metrics after commit -------------------------------------------------


async def test_metrics_are_published_only_after_a_commit(
    running: tuple[Components, GatedStore], clock: FakeClock
) -> None:
    components, store = running
    svc, book = components.service, components.book
    labels = {"severity": "P0", "team": "sre"}
    critical = group(1, labels={"severity": "critical"})

    store.gate.clear()
    task = asyncio.create_task(svc.submit(notify(book, critical)))
    await store.writing()
    # Applied to the book, not yet committed: nothing published.
    assert sample(components, "incident_sla_incidents_total", **labels) == 0
    assert sample(components, "incident_sla_time_to_detect_seconds_count", **labels) == 0
    store.fail_writes = True
    store.gate.set()
    with pytest.raises(StoreUnavailable):
        await task
    assert sample(components, "incident_sla_incidents_total", **labels) == 0
    assert sample(components, "incident_sla_time_to_detect_seconds_count", **labels) == 0

    store.fail_writes = False
    (opened,) = await svc.submit(notify(book, critical))
    assert sample(components, "incident_sla_incidents_total", **labels) == 1
    assert sample(components, "incident_sla_time_to_detect_seconds_count", **labels) == 1
    assert sample(components, "incident_sla_time_to_detect_seconds_sum", **labels) == (
        clock.now() - T0
    )

    def acknowledge(now: float) -> list[Change]:
        change = book.acknowledge(opened.incident.id, actor="a", source="api", now=now)
        return [change] if change else []

    clock.advance(90)
    store.fail_writes = True
    with pytest.raises(StoreUnavailable):
        await svc.submit(acknowledge)
    assert sample(components, "incident_sla_time_to_acknowledge_seconds_count", **labels) == 0
    store.fail_writes = False
    await svc.submit(acknowledge)
    assert sample(components, "incident_sla_time_to_acknowledge_seconds_count", **labels) == 1
    assert sample(components, "incident_sla_time_to_acknowledge_seconds_sum", **labels) == 90

    resolution = group(1, labels={"severity": "critical"}, status="resolved", ends=T0 + 1200)
    store.fail_writes = True
    with pytest.raises(StoreUnavailable):
        await svc.submit(notify(book, resolution))
    assert sample(components, "incident_sla_time_to_resolve_seconds_count", **labels) == 0
    store.fail_writes = False
    await svc.submit(notify(book, resolution))
    assert sample(components, "incident_sla_time_to_resolve_seconds_count", **labels) == 1
    assert sample(components, "incident_sla_time_to_resolve_seconds_sum", **labels) == 1200


async def test_alerts_no_rule_matched_are_counted_after_commit_once_per_instance(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    metric = "incident_sla_alerts_unmatched_total"
    # rules-mini: "crit" gives the severity; no ownership rule matches; team sre by default.
    critical = group(1, labels={"severity": "critical"})
    assert sample(components, metric, rules="ownership", team="db") == 0.0  # exported at 0
    store.fail_writes = True
    with pytest.raises(StoreUnavailable):
        await svc.submit(notify(book, critical))
    assert sample(components, metric, rules="ownership", team="sre") == 0
    store.fail_writes = False
    await svc.submit(notify(book, critical))
    await svc.submit(notify(book, critical))  # a repeat: the same instance
    assert sample(components, metric, rules="ownership", team="sre") == 1
    assert sample(components, metric, rules="severity", team="sre") == 0
    # Two alerts no rule matched at all, in one notification.
    pair = notification_from(
        notification(
            alert("A", fingerprint="00000000000000a1"),
            alert("B", fingerprint="00000000000000a2"),
            group_key="pair",
        )
    )
    await svc.submit(notify(book, pair))
    assert sample(components, metric, rules="ownership", team="sre") == 3
    assert sample(components, metric, rules="severity", team="sre") == 2


async def test_dropped_alerts_open_nothing_and_count_nothing(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    attempts = store.attempts
    for status, ends in (("firing", None), ("resolved", T0 + 60), ("firing", None)):
        watchdog = group(9, labels={"severity": "none"}, status=status, ends=ends)
        assert await svc.submit(notify(book, watchdog)) == []
    assert store.attempts == attempts  # nothing to commit
    assert len(book) == 0
    assert sample(components, "incident_sla_incidents_total", severity="P2", team="sre") == 0
    assert (
        sample(components, "incident_sla_alerts_unmatched_total", rules="ownership", team="sre")
        == 0
    )


async def test_open_incident_gauge_follows_commits_not_attempts(
    running: tuple[Components, GatedStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    gauge = "incident_sla_open_incidents"
    store.fail_writes = True
    with pytest.raises(StoreUnavailable):
        await svc.submit(notify(book, group(1)))
    assert sample(components, gauge, severity="P2", state="triggered") == 0
    store.fail_writes = False
    await svc.submit(notify(book, group(1)))
    assert sample(components, gauge, severity="P2", state="triggered") == 1


def test_store_fakes_are_real_wrappers(tmp_path: Path) -> None:
    store = GatedStore(SQLiteStore(tmp_path / "x.db"))
    assert isinstance(store.inner, SQLiteStore)
    assert store.gate.is_set()


class _ExplodingPager:
    """A planner with a bug: planning the notifications fails (a fake, not a mock)."""

    def plan(self, change: Any, now: float) -> None:
        raise ValueError("a bug while planning the notifications")


async def test_a_bug_planning_notifications_fails_that_command_only_and_the_loop_goes_on(
    config: Config, clock: FakeClock, backing: Callable[[], Store]
) -> None:
    components, store = await start(config, clock, backing)
    svc, book = components.service, components.book
    real_planners = book.planners
    book.planners = [_ExplodingPager()]
    try:
        with pytest.raises(RuntimeError, match="internal error"):
            await svc.submit(notify(book, group(1)))
        assert len(book) == 0  # undone
        assert svc.running
        book.planners = real_planners
        changes = await svc.submit(notify(book, group(1)))
        assert len(changes) == 1
        assert len(await store.load_open()) == 1
    finally:
        await svc.stop()
        await store.close()


async def test_committed_alerts_are_held_as_their_stored_document_until_read(
    running: tuple[Components, GatedStore],
) -> None:
    components, _ = running
    svc, book = components.service, components.book
    n = group(7)
    [change] = await svc.submit(notify(book, n))
    inc = book.get_open(change.incident.id)
    assert inc is not None
    stored = await components.store.get_incident(inc.id)
    assert stored is not None
    # Nothing decoded: the incident holds the very bytes the store holds.
    assert inc.alerts_doc == stored.alerts_json()
    assert not hasattr_slot(inc, "alerts")
    # Read again on demand, equal to what was applied...
    assert list(inc.alerts) == [f"{7:016x}"]
    assert inc.alerts[f"{7:016x}"].status == "firing"
    # ...and a later change applies to them as usual.
    resolved = group(7, status="resolved", ends=T0 + 60)
    [closing] = await svc.submit(notify(book, resolved))
    assert closing.incident.id == inc.id
    assert closing.incident.state == "resolved"
    assert closing.incident.alerts[f"{7:016x}"].status == "resolved"


def hasattr_slot(obj: object, name: str) -> bool:
    """Whether a slot is set, read through its descriptor (never through __getattr__)."""
    try:
        vars(type(obj))[name].__get__(obj, type(obj))
    except AttributeError:
        return False
    return True
