"""The outbox worker on an injected clock: when it retries, and how much it sends at once.

The worker runs for real (its loop, its HTTP client, a SQLite store) against the
fake PagerDuty; only time is injected. Each test moves the clock to the retry time
the worker recorded, so the waits asserted are the worker's own decisions, not
measurements. The fake's rate limit counts on the same clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from sidecar.clock import FakeClock
from sidecar.metrics import Metrics
from sidecar.notify.outbox import OutboxWorker
from sidecar.notify.pagerduty import pagerduty_outbox, rate_buckets
from sidecar.notify.retry import RetryPolicy
from sidecar.pagerduty.events import build_resolve
from sidecar.store import SQLiteStore, WriteBatch
from sidecar.store.base import PAGERDUTY, Claimant, OutboxItem, OutboxRow
from tests.fakes.pagerduty import FakePagerDuty

T0 = 1_700_000_000.0
ROUTING_KEY = "0UTB0XR0UT1NGKEY0UTB0XR0UT1NGK00"
OTHER_KEY = "0UTB0XR0UT1NGKEY0UTB0XR0UT1NGK01"


def trigger(dedup_key: str) -> dict[str, Any]:
    return {
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": f"[P1] {dedup_key}", "source": "test", "severity": "critical"},
    }


async def queue(store: SQLiteStore, *events: dict[str, Any], routing: str = "default") -> None:
    """Commit events to the outbox, one incident per dedup key, in this order."""
    rows = [
        OutboxRow(
            PAGERDUTY,
            f"inc-{e['dedup_key']}",
            e["dedup_key"],
            routing,
            e["event_action"],
            orjson.dumps(e),
            T0,
        )
        for e in events
    ]
    await store.write(WriteBatch(outbox=rows))


async def item_after(
    store: SQLiteStore, dedup_key: str, attempts: int, *, state: str = "pending"
) -> OutboxItem:
    """The first event of ``dedup_key`` once its ``attempts``-th outcome is recorded."""
    async with asyncio.timeout(10):
        while True:
            first = (await store.outbox_for_incident(f"inc-{dedup_key}"))[0]
            if first.attempts >= attempts and first.state == state:
                return first
            await asyncio.sleep(0.01)


async def settled(store: SQLiteStore, *, pending: int) -> None:
    """Wait until only ``pending`` events are left undelivered."""
    async with asyncio.timeout(10):
        while await store.outbox_pending() > pending:
            await asyncio.sleep(0.01)


async def drained(store: SQLiteStore) -> None:
    """Wait until every event is delivered or dead: nothing more can be sent after."""
    await settled(store, pending=0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "outbox.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def pd(clock: FakeClock) -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty(monotonic=clock.now) as fake:
        yield fake


@pytest.fixture
async def start_worker(
    store: SQLiteStore, clock: FakeClock, pd: FakePagerDuty
) -> AsyncIterator[Callable[..., Any]]:
    started: list[OutboxWorker] = []

    async def start(**options: Any) -> OutboxWorker:
        worker = pagerduty_outbox(
            store,
            Metrics(CollectorRegistry(), severities=["P1"], teams=["sre"]),
            clock,
            events_url=options.pop("events_url", pd.events_url),
            routing_keys=options.pop("routing_keys", {"default": ROUTING_KEY}),
            timeout=options.pop("timeout", 5.0),
            retry=RetryPolicy(),  # the shipped defaults: 1 s, 5 min, 30 s after a 429
            poll_interval=0.05,
            **options,
        )
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()


async def test_500_503_429_in_a_row_reach_pagerduty_within_a_minute(
    store: SQLiteStore, clock: FakeClock, pd: FakePagerDuty, start_worker: Callable[..., Any]
) -> None:
    pd.fail_next(1, status=500)
    pd.fail_next(1, status=503)
    pd.rate_limit_next(1)
    await queue(store, trigger("p1"))
    worker = await start_worker()
    waits = []
    for attempt in (1, 2, 3):
        failed = await item_after(store, "p1", attempt)
        waits.append(failed.next_attempt_at - clock.now())
        clock.set(failed.next_attempt_at)
        worker.wake()
    delivered = await item_after(store, "p1", 4, state="delivered")

    assert [r.status for r in pd.requests] == [500, 503, 429, 202]
    assert 1 <= waits[0] <= 2  # after the 500
    assert 2 <= waits[1] <= 3  # after the 503
    assert 30 <= waits[2] <= 33  # after the 429: PagerDuty's 30 s, not grown by the 5xx
    assert clock.now() - T0 < 60
    assert delivered.server_failures == 2
    assert [e.event_action for e in pd.events_for("p1")] == ["trigger"]


async def test_a_429s_retry_after_is_honoured(
    store: SQLiteStore, clock: FakeClock, pd: FakePagerDuty, start_worker: Callable[..., Any]
) -> None:
    pd.rate_limit_next(1, retry_after="7")
    await queue(store, trigger("p1"))
    await start_worker()

    failed = await item_after(store, "p1", 1)

    assert 7 <= failed.next_attempt_at - clock.now() <= 7.7


async def test_429s_do_not_lengthen_the_backoff_of_a_later_server_failure(
    store: SQLiteStore, clock: FakeClock, pd: FakePagerDuty, start_worker: Callable[..., Any]
) -> None:
    pd.rate_limit_next(6)
    pd.fail_next(1, status=502)
    await queue(store, trigger("p1"))
    worker = await start_worker()
    for attempt in range(1, 7):
        failed = await item_after(store, "p1", attempt)
        assert 30 <= failed.next_attempt_at - clock.now() <= 33
        clock.set(failed.next_attempt_at)
        worker.wake()

    after_502 = await item_after(store, "p1", 7)

    # The first server failure waits as a first one does, not 2^6 s.
    assert 1 <= after_502.next_attempt_at - clock.now() <= 2
    assert after_502.server_failures == 1


async def test_one_key_never_gets_more_than_its_budget_in_a_window(
    store: SQLiteStore, clock: FakeClock, start_worker: Callable[..., Any]
) -> None:
    # team:db pages with the same key as default: one budget for both names.
    keys = {"default": ROUTING_KEY, "team:db": ROUTING_KEY, "team:web": OTHER_KEY}
    async with FakePagerDuty(rate_limit_per_minute=4, monotonic=clock.now) as pd:
        await queue(store, *(trigger(f"d{n}") for n in range(5)))
        await queue(store, *(trigger(f"b{n}") for n in range(5)), routing="team:db")
        await queue(store, *(trigger(f"w{n}") for n in range(2)), routing="team:web")
        worker = await start_worker(
            routing_keys=keys, rate_limit_per_minute=4, events_url=pd.events_url
        )
        sent = [6]  # the first window: four of ROUTING_KEY's ten, both of OTHER_KEY's
        windows = 0
        while True:
            # Drained for now: every send made has its outcome recorded...
            await settled(store, pending=12 - sent[-1])
            # ...and the store itself says nothing more may go yet.
            probe = await store.claim_outbox(clock.now(), 100, Claimant("probe", 60, worker.budget))
            assert probe.items == []
            assert len(pd.events) == sent[-1]
            if probe.held_until is None:
                break
            windows += 1
            clock.set(probe.held_until)
            worker.wake()
            sent.append(min(12, sent[-1] + 4))
        by_key = [e.routing_key for e in pd.events]

    assert by_key.count(ROUTING_KEY) == 10
    assert by_key.count(OTHER_KEY) == 2
    assert windows == 2  # 4, 4, 2 of the shared key's ten
    assert [r.status for r in pd.requests] == [202] * 12  # PagerDuty never had to refuse one
    assert await store.outbox_pending() == 0


async def test_only_what_can_be_sent_at_once_is_claimed(
    store: SQLiteStore, clock: FakeClock, pd: FakePagerDuty, start_worker: Callable[..., Any]
) -> None:
    # PagerDuty answers slowly: everything claimed is in flight, nothing claimed waits.
    pd.timeout_next(6, seconds=0.5, process=True)
    await queue(store, *(trigger(f"s{n}") for n in range(6)))
    await start_worker(concurrency=2)

    async with asyncio.timeout(10):
        while len(pd.requests) < 2:
            await asyncio.sleep(0.01)
    # Two in flight, leased; the other four are still free for any worker to take.
    assert len(await store.due_outbox(clock.now(), 100)) == 4
    await drained(store)
    assert len(pd.requests) == len(pd.events) == 6


async def test_an_item_whose_lease_lapsed_in_flight_is_not_sent_twice_by_its_worker(
    store: SQLiteStore, clock: FakeClock, pd: FakePagerDuty, start_worker: Callable[..., Any]
) -> None:
    pd.timeout_next(1, seconds=0.5, process=True)  # a slow answer: the send stays in flight
    await queue(store, trigger("slow"))
    worker = await start_worker()
    async with asyncio.timeout(10):
        while not pd.requests:
            await asyncio.sleep(0.01)
    clock.advance(3600)  # its lease lapses on the worker's own clock
    await worker.fill()  # claims it again, and must not send it again
    await drained(store)
    assert len(pd.requests) == 1


def test_names_that_hold_one_key_share_a_bucket_named_without_the_key() -> None:
    keys = {"default": "K1", "team:db": "K1", "tier:vp": "K2", "team:web": "K3"}
    assert rate_buckets(keys) == {
        "default": "default",
        "team:db": "default",
        "tier:vp": "tier:vp",
        "team:web": "team:web",
    }


def test_the_budget_is_scaled_to_the_window_and_counts_a_second_longer() -> None:
    worker = pagerduty_outbox(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        FakeClock(),
        events_url="http://127.0.0.1:1/v2/enqueue",
        routing_keys={"default": ROUTING_KEY},
        rate_limit_per_minute=1200,
        rate_limit_window=3.0,
    )
    assert (worker.budget.per_window, worker.budget.window) == (60, 4.0)
    assert (
        pagerduty_outbox(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            FakeClock(),
            events_url="http://127.0.0.1:1/v2/enqueue",
            routing_keys={},
        ).budget.per_window
        == 120
    )


async def test_resolve_never_overtakes_its_trigger(
    store: SQLiteStore, clock: FakeClock, pd: FakePagerDuty, start_worker: Callable[..., Any]
) -> None:
    pd.fail_next(1, status=500)
    await queue(store, trigger("o1"), build_resolve("o1"))
    worker = await start_worker()
    failed = await item_after(store, "o1", 1)
    # The resolve waits behind its failed trigger, however long that waits.
    assert [i.action for i in await store.due_outbox(clock.now(), 10)] == []
    clock.set(failed.next_attempt_at)
    worker.wake()
    await drained(store)
    assert [e.event_action for e in pd.events_for("o1")] == ["trigger", "resolve"]
