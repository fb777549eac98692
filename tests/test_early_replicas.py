"""With replicas, a resend that changes nothing is answered from memory while the
follower vouches for it, and goes through a batch while it does not.

The follower's word (``ReplicaFollower.current``) is tested on an in-memory change
feed, step by step: it listens, and has re-read everything it was told of. Then two
services on one throwaway PostgreSQL, in process: a refreshed resend on the replica
that did not open the incident is answered without a batch or a transaction, and
while that replica has a change of the other's still to re-read, the resend waits
for it and is decided by a batch on what was committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.alertmanager import Notification, notification_from
from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.early import EarlyAnswers
from sidecar.errors import StoreUnavailable
from sidecar.follow import ReplicaFollower
from sidecar.runtime import Components, build_components
from sidecar.store import PostgresStore
from sidecar.store.base import LockedState, Version
from tests.payloads import alert, notification
from tests.test_service import at_once

GROUP = '{}:{alertname="DBDown"}'


async def until(check: Callable[[], bool], limit: float = 30.0) -> None:
    """Wait for ``check``; the limit only keeps a broken build from hanging."""
    async with asyncio.timeout(limit):
        while not check():
            await asyncio.sleep(0.01)


# -- the follower's word, on an in-memory feed ---------------------------------


class FakeListening:
    """A listening connection the test can cut."""

    def __init__(self, heard: Callable[[], None], lost: Callable[[], None]) -> None:
        self.heard, self.lost = heard, lost
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    async def close(self) -> None:
        # As asyncpg does: closing calls the termination listeners, soon after.
        self.closed = True
        asyncio.get_running_loop().call_soon(self.lost)

    def lose(self) -> None:
        """The connection drops: closed, and the listener told."""
        self.closed = True
        self.lost()


class FakeFeed:
    """The change feed in memory: (number, incident id, origin) in commit order."""

    origin = "this-replica"

    def __init__(self) -> None:
        self.changes: list[tuple[int, str, str]] = []
        self.listening: FakeListening | None = None
        self.failing = False
        self.broken = False  # reads fail with a bug rather than the store
        # The next read hears a notification while it reads (one sent late).
        self.heard_while_reading = False

    async def change_position(self) -> int:
        return self.changes[-1][0] if self.changes else 0

    async def changes_since(self, position: int, limit: int) -> list[tuple[int, str, str]]:
        if self.failing:
            raise StoreUnavailable("postgresql: connection refused")
        if self.broken:
            raise RuntimeError("a bug in reading the feed")
        if self.heard_while_reading and self.listening is not None:
            self.heard_while_reading = False
            self.listening.heard()
        return [c for c in self.changes if c[0] > position][:limit]

    async def prune_changes(self, older_than: float) -> None:
        return None

    async def listen(self, heard: Callable[[], None], lost: Callable[[], None]) -> FakeListening:
        self.listening = FakeListening(heard, lost)
        return self.listening

    def commit(
        self, incident_id: str, origin: str = "another-replica", *, notify: bool = True
    ) -> None:
        """Another replica commits a change, and the feed notifies the listener."""
        self.changes.append((len(self.changes) + 1, incident_id, origin))
        if notify and self.listening is not None and not self.listening.closed:
            self.listening.heard()


class HeldRefreshes:
    """Stands in for the service: while ``held``, each re-read waits for the test to let it go."""

    def __init__(self) -> None:
        self.held = False
        self.pending: list[asyncio.Event] = []
        self.refreshed: list[set[str]] = []

    async def refresh(self, ids: set[str]) -> None:
        if self.held:
            go = asyncio.Event()
            self.pending.append(go)
            await go.wait()
        self.refreshed.append(set(ids))

    def release(self) -> None:
        self.held = False
        for go in self.pending:
            go.set()
        self.pending.clear()

    async def reload(self) -> None:
        raise AssertionError("nothing here is old enough to need a reload")


def follower_on(feed: FakeFeed, service: HeldRefreshes, poll_interval: float) -> ReplicaFollower:
    """A follower of the in-memory feed; reads as soon as it is told (no coalescing)."""
    return ReplicaFollower(
        feed,  # type: ignore[arg-type]
        service,  # type: ignore[arg-type]
        poll_interval=poll_interval,
        coalesce=0,
        retry_after=0.01,
    )


@contextlib.asynccontextmanager
async def running(follower: ReplicaFollower) -> AsyncIterator[ReplicaFollower]:
    """The follower primed and started, stopped at the end."""
    await follower.prime()
    await follower.start()
    try:
        yield follower
    finally:
        await follower.stop()


async def test_the_follower_vouches_only_while_it_listens_and_has_read_what_it_was_told() -> None:
    feed, service = FakeFeed(), HeldRefreshes()
    follower = follower_on(feed, service, poll_interval=3600)  # only notifications wake it
    assert not follower.current(), "not before it listens and has read once"
    async with running(follower):
        try:
            await until(follower.current)
            # Told of a change: not current from that moment until the change is re-read.
            service.held = True
            feed.commit("i-1")
            assert not follower.current()
            await until(lambda: len(service.pending) == 1)
            assert not follower.current(), "the re-read is not committed yet"
            # Told of another while it re-reads the first: that read does not vouch for it.
            feed.commit("i-2")
            service.pending[0].set()
            await until(lambda: len(service.pending) == 2)
            assert service.refreshed == [{"i-1"}]
            assert not follower.current(), "i-2 was told of after the read began"
            service.release()
            await until(follower.current)
            assert service.refreshed == [{"i-1"}, {"i-2"}]
            # Its own commits are read too (and skipped), before it vouches again.
            feed.commit("mine", origin=feed.origin)
            assert not follower.current()
            await until(follower.current)
            assert service.refreshed == [{"i-1"}, {"i-2"}]
            # A lost connection hears nothing: not current until it listens and reads again.
            assert feed.listening is not None
            lost = feed.listening
            service.held = True
            feed.changes.append((len(feed.changes) + 1, "i-3", "another-replica"))  # unheard
            lost.lose()
            assert not follower.current()
            await until(lambda: len(service.pending) == 1)
            assert not follower.current()
            service.release()
            await until(follower.current)
            assert feed.listening is not lost and not feed.listening.closed, "it listens again"
            assert service.refreshed == [{"i-1"}, {"i-2"}, {"i-3"}]
        finally:
            service.release()


async def test_the_follower_stops_vouching_when_its_connection_or_its_notifications_fail() -> None:
    feed, service = FakeFeed(), HeldRefreshes()
    async with running(follower_on(feed, service, poll_interval=0.05)) as follower:
        await until(follower.current)
        # A connection that reads as closed vouches for nothing, called back or not.
        assert feed.listening is not None
        feed.listening.closed = True
        assert not follower.current()
        await until(follower.current)  # its next poll listens again
        # A change that polling finds, with no notification: notifications are not
        # arriving, so it stops vouching, and listens on a new connection (a
        # half-open one would never say so), until a notification is heard.
        deaf_on = feed.listening
        feed.commit("quiet", notify=False)
        await until(lambda: {"quiet"} in service.refreshed)
        assert not follower.current()
        await until(lambda: feed.listening is not deaf_on)
        assert deaf_on is not None and deaf_on.closed
        again = feed.listening
        assert again is not None
        feed.commit("missed", notify=False)
        again.lose()  # losing that one does not make it hear either
        await until(lambda: {"missed"} in service.refreshed)  # read since it listens again
        assert feed.listening is not again
        assert not follower.current()
        feed.commit("heard")
        await until(follower.current)
        assert {"heard"} in service.refreshed
        # Found by polling, but its notification arrives while it reads: only late.
        feed.heard_while_reading = True
        feed.commit("late", notify=False)
        await until(lambda: {"late"} in service.refreshed)
        await until(follower.current)
        # The store unreachable while it reads: not current until it has read again.
        feed.failing = True
        listening = feed.listening
        feed.commit("while-down")
        await until(lambda: listening is not None and listening.closed)
        assert not follower.current()
        feed.failing = False
        await until(follower.current)
        assert {"while-down"} in service.refreshed


async def test_a_follower_whose_read_fails_with_a_bug_vouches_for_nothing() -> None:
    feed, service = FakeFeed(), HeldRefreshes()
    async with running(follower_on(feed, service, poll_interval=0.05)) as follower:
        await until(follower.current)
        # Nothing notified: its poll reads, and the read fails.
        feed.broken = True
        feed.commit("unread", notify=False)
        (loop,) = follower.tasks
        await until(lambda: loop.died)
        assert feed.listening is not None and not feed.listening.closed
        assert not follower.current(), "its loop died with the change unread"


def test_a_closed_gate_keeps_a_repeat_from_an_early_answer() -> None:
    open_gate = [True]
    early = EarlyAnswers(gate=lambda: open_gate[0])
    assert early.unchanged(("k",), lambda: True)
    open_gate[0] = False
    assert not early.unchanged(("k",), lambda: True)
    assert early.answered == 1


# -- two replicas in process ----------------------------------------------------


class FeedGatedStore(PostgresStore):
    """PostgreSQL, counting the transactions that lock keys; reads of the change feed
    wait at a gate the test opens."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, max_size=4)
        self.transactions = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.feed_reads_waiting = 0
        # The next transaction commits, then reports a failure (its answer lost).
        self.lose_commit_answer = False

    def locked(
        self,
        keys: Collection[str],
        ids: Collection[str],
        closed_since: float,
        known: Mapping[str, Version] = {},
    ) -> AbstractAsyncContextManager[LockedState]:
        self.transactions += 1
        inner = super().locked(keys, ids, closed_since, known)
        if not self.lose_commit_answer:
            return inner
        self.lose_commit_answer = False
        return _AnswerLost(inner)

    async def read_locked(self, keys: Collection[str], closed_since: float, **kw: Any) -> Any:
        self.transactions += 1
        return await super().read_locked(keys, closed_since, **kw)

    async def changes_since(self, position: int, limit: int) -> list[tuple[int, str, str]]:
        self.feed_reads_waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.feed_reads_waiting -= 1
        return await super().changes_since(position, limit)


class _AnswerLost:
    """A transaction that commits, after which its caller is told it failed."""

    def __init__(self, inner: AbstractAsyncContextManager[LockedState]) -> None:
        self.inner = inner

    async def __aenter__(self) -> LockedState:
        return await self.inner.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)
        raise ConnectionResetError("connection lost waiting for the COMMIT's answer")


@pytest.fixture
async def replicas(
    config_factory: Callable[..., Config], clock: FakeClock, postgres_database_dsn: str
) -> AsyncIterator[list[tuple[Components, FeedGatedStore]]]:
    made = []
    for _ in range(2):
        store = FeedGatedStore(postgres_database_dsn)
        components = build_components(
            config_factory(), clock=clock, registry=CollectorRegistry(), store=store
        )
        assert components.follower is not None
        await store.open()
        await components.follower.prime()
        await components.service.start()
        await components.follower.start()
        made.append((components, store))
    try:
        yield made
    finally:
        for components, store in made:
            store.gate.set()
            assert components.follower is not None
            await components.follower.stop()
            await components.service.stop()
            await store.close()


def resend(value: str) -> Notification:
    return notification_from(
        notification(
            alert("DBDown", fingerprint="0000000000000001", annotations={"value": value}),
            group_key=GROUP,
        )
    )


def submit(components: Components, n: Notification) -> Awaitable[list[Any]]:
    """What the webhook handler submits for ``n``: its command, keys and repeat check."""
    book = components.book
    return components.service.submit(
        lambda now: book.apply_notification(n, now),
        keys=book.keys_of(n),
        unchanged=lambda: book.repeats_open(n),
    )


async def test_a_replica_answers_a_repeat_from_memory_only_once_it_has_read_the_others_changes(
    replicas: list[tuple[Components, FeedGatedStore]],
) -> None:
    (a, _), (b, b_store) = replicas
    assert a.follower is not None and b.follower is not None
    (opened,) = await submit(a, resend("1"))
    # B re-reads the incident A opened (a refresh by id), then vouches for its memory.
    await until(lambda: b.book.get_open(opened.incident.id) is not None)
    await until(b.follower.current)
    before = b_store.transactions
    assert at_once(submit(b, resend("2"))) == []
    early = b.service.early
    assert early is not None and early.answered == 1
    assert b_store.transactions == before, "no read, no transaction"

    # A acknowledges; B is told, and its read of the feed waits at the gate: it has
    # not even asked for the re-read yet.
    b_store.gate.clear()
    incident_id = opened.incident.id
    (acked,) = await a.service.submit(
        lambda now: [a.book.acknowledge(incident_id, actor="alice", source="api", now=now)],
        ids=[incident_id],
    )
    assert acked.incident.state == "acknowledged"
    await until(lambda: b_store.feed_reads_waiting == 1)
    assert not b.follower.current()
    assert await submit(b, resend("3")) == []
    assert early.answered == 1, "decided by a batch"
    assert b_store.transactions == before + 1, "on a read under the key's lock"
    held = b.book.get_open(incident_id)
    assert held is not None and held.state == "acknowledged", "what A committed"
    b_store.gate.set()
    await until(b.follower.current)
    assert at_once(submit(b, resend("4"))) == []
    assert early.answered == 2


async def test_keys_of_a_batch_that_may_have_committed_wait_for_a_read_under_their_locks(
    replicas: list[tuple[Components, FeedGatedStore]],
) -> None:
    (a, _), (b, b_store) = replicas
    assert b.follower is not None
    (opened,) = await submit(a, resend("1"))
    incident_id = opened.incident.id
    await until(lambda: b.book.get_open(incident_id) is not None)
    await until(b.follower.current)
    # B acknowledges it: the COMMIT goes through, B hears it failed and undoes its memory.
    b_store.lose_commit_answer = True
    with pytest.raises(StoreUnavailable):
        await b.service.submit(
            lambda now: [b.book.acknowledge(incident_id, actor="bob", source="api", now=now)],
            ids=[incident_id],
        )
    held = b.book.get_open(incident_id)
    assert held is not None and held.state == "triggered", "undone in memory"
    stored = await b_store.get_incident(incident_id)
    assert stored is not None and stored.state == "acknowledged", "committed in the store"
    # Its own change is not re-read by its follower, which vouches again.
    await until(b.follower.current)
    early = b.service.early
    assert early is not None
    before = b_store.transactions
    assert await submit(b, resend("2")) == []
    assert early.answered == 0, "the key is in doubt: read under its lock"
    assert b_store.transactions == before + 1
    held = b.book.get_open(incident_id)
    assert held is not None and held.state == "acknowledged", "the read brought the change"
    # Re-read under its lock: trusted again, the next resend is answered from memory.
    assert at_once(submit(b, resend("3"))) == []
    assert early.answered == 1
    assert b_store.transactions == before + 1


async def test_a_resolution_by_hand_on_one_replica_empties_the_others_replay_cache(
    replicas: list[tuple[Components, FeedGatedStore]],
) -> None:
    """Alertmanager's resend after a person resolved the incident while its alert
    fired opens an incident and pages: on the other replica too, where those very
    bytes were applied before and would be answered from the replay cache."""
    (a, _), (b, _) = replicas
    (opened,) = await submit(a, resend("1"))
    incident_id = opened.incident.id
    await until(lambda: b.book.get_open(incident_id) is not None)
    digest = b.replays.digest(b"the resend's bytes, applied on this replica")
    b.replays.add(digest, b.clock.now())
    await a.service.submit(
        lambda now: [a.book.resolve(incident_id, actor="alice", source="api", now=now)],
        ids=[incident_id],
    )
    await until(lambda: b.book.get_open(incident_id) is None)
    await b.service.settled()
    assert not b.replays.seen(digest, b.clock.now())
    (again,) = await submit(b, resend("1"))
    assert again.incident.id != incident_id and again.incident.is_open
