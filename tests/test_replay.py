"""The cache of committed webhook bodies that lets their byte-identical repeats skip parsing."""

from __future__ import annotations

from sidecar.replay import ReplayCache

T0 = 1_700_000_000.0


def test_a_body_is_seen_once_added_and_only_that_body() -> None:
    cache = ReplayCache(size=10, ttl=60)
    body = b'{"groupKey": "a"}'
    digest = ReplayCache.digest(body)
    assert not cache.seen(digest, T0)
    cache.add(digest, T0)
    assert cache.seen(ReplayCache.digest(body), T0 + 1)
    assert not cache.seen(ReplayCache.digest(b'{"groupKey": "b"}'), T0 + 1)
    assert len(digest) == 16


def test_entries_expire_after_the_ttl() -> None:
    cache = ReplayCache(size=10, ttl=60)
    digest = ReplayCache.digest(b"x")
    cache.add(digest, T0)
    assert cache.seen(digest, T0 + 60)
    assert not cache.seen(digest, T0 + 61)
    assert not cache.seen(digest, T0 + 1)  # forgotten, not just hidden


def test_the_least_recently_seen_body_is_forgotten_first() -> None:
    cache = ReplayCache(size=3, ttl=3600)
    resent, *one_offs = [ReplayCache.digest(str(i).encode()) for i in range(6)]
    cache.add(resent, T0)
    for i, digest in enumerate(one_offs):
        # Alertmanager resends the same group between notifications of new ones.
        assert cache.seen(resent, T0 + i)
        cache.add(digest, T0 + i)
    assert cache.seen(resent, T0 + 10)
    assert not cache.seen(one_offs[0], T0 + 10)
    assert [cache.seen(d, T0 + 10) for d in one_offs[-2:]] == [True, True]


def test_a_body_applied_before_a_clear_is_not_remembered_after_it() -> None:
    # The clear (a rules reload, an incident resolved by hand while its alerts
    # fired) came while the body was being applied: its next copy must apply.
    cache = ReplayCache(size=10, ttl=3600)
    before, after = ReplayCache.digest(b"before"), ReplayCache.digest(b"after")
    generation = cache.generation
    cache.clear()
    cache.add(before, T0, generation=generation)
    assert not cache.seen(before, T0 + 1)
    cache.add(after, T0, generation=cache.generation)
    assert cache.seen(after, T0 + 1)
