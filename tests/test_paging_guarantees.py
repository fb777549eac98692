"""Defects found by reading the code, each pinned by the test that first failed on it.

They share one theme, the README's paging guarantees: a late HA duplicate
never pages again, a silenced alert's end is never lost, a rules reload moves
every deadline, a dead commit loop is never reported healthy, an SLA has one
verdict, and an incident opened and resolved in one batch still pages.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.alertmanager import Notification, notification_from
from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.errors import StoreUnavailable
from sidecar.incidents import IncidentBook
from sidecar.rules import RuleSet, load_rules
from sidecar.runtime import Components, build_components
from sidecar.silences import AlertStatus, GettableAlert, GettableSilence, SilenceStatus
from sidecar.sla.verdict import sla_report
from sidecar.store import SQLiteStore
from sidecar.web import create_app
from tests.conftest import DATA
from tests.fakes.stores import FlakyStore
from tests.payloads import alert, notification

T0 = 1_700_000_000.0
ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY00"


def n(*alerts: dict[str, Any], external_url: str | None = None, **kw: Any) -> Notification:
    payload = notification(*alerts, **kw)
    if external_url is not None:
        payload["externalURL"] = external_url
    return notification_from(payload)


@pytest.fixture
def rules() -> RuleSet:
    return load_rules(DATA / "rules-mini.yaml")


async def start(config: Config, clock: FakeClock) -> tuple[Components, FlakyStore]:
    assert config.sqlite_path is not None
    store = FlakyStore(SQLiteStore(config.sqlite_path))
    components = build_components(config, clock=clock, registry=CollectorRegistry(), store=store)
    await store.open()
    await components.service.start()
    return components, store


@pytest.fixture
async def running(
    config_factory: Callable[..., Config], clock: FakeClock
) -> AsyncIterator[tuple[Components, FlakyStore]]:
    components, store = await start(
        config_factory({"pagerduty": {"routing_key": ROUTING_KEY}}), clock
    )
    yield components, store
    store.down = store.fail_writes = False
    await components.service.stop()
    await store.close()


def sample(components: Components, name: str, **labels: str) -> float:
    value = components.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- a. the dedup memory keeps the newest episode of each key ------------------


def _two_episodes(book: IncidentBook) -> tuple[Any, Any]:
    first = book.apply_notification(n(alert(starts=T0)), T0 + 10)[0].incident
    book.apply_notification(n(alert(status="resolved", starts=T0, ends=T0 + 600)), T0 + 620)
    second = book.apply_notification(n(alert(starts=T0 + 1000)), T0 + 1010)[0].incident
    book.apply_notification(
        n(alert(status="resolved", starts=T0 + 1000, ends=T0 + 1600)), T0 + 1620
    )
    assert first.id != second.id
    return first, second


def test_completing_an_older_review_keeps_the_newer_episode_in_the_dedup_memory(
    rules: RuleSet,
) -> None:
    book = IncidentBook(rules)
    first, _ = _two_episodes(book)
    assert book.complete_review(first, actor="ana", source="api", now=T0 + 2000) is not None
    # An HA peer's late copy of the second episode's firing notification.
    late = n(alert(starts=T0 + 1000), external_url="http://alertmanager-1.example:9093")
    assert book.apply_notification(late, T0 + 2001) == []
    assert len(book) == 0


def test_a_restore_keeps_the_newest_episode_whatever_order_the_rows_come_in(
    rules: RuleSet,
) -> None:
    first, second = _two_episodes(IncidentBook(rules))
    book = IncidentBook(rules)
    # The older episode's review is still pending: it is restored after the closed ones.
    book.restore([], [copy.copy(second)], [copy.copy(first)])
    late = n(alert(starts=T0 + 1000), external_url="http://alertmanager-1.example:9093")
    assert book.apply_notification(late, T0 + 2001) == []


# -- b. a silenced alert's end survives a failed commit ------------------------


def _silenced(fingerprint: str) -> GettableAlert:
    return GettableAlert(
        fingerprint=fingerprint,
        status=AlertStatus(state="suppressed", silencedBy=["s1"]),
    )


async def test_a_silenced_alerts_end_is_tried_again_after_the_store_failed(
    config_factory: Callable[..., Config], clock: FakeClock
) -> None:
    config = config_factory({"alertmanager": {"url": "http://127.0.0.1:9"}})
    components, store = await start(config, clock)
    try:
        watcher = components.silences
        assert watcher is not None
        book = components.book
        await components.service.submit(
            lambda now: book.apply_notification(n(alert(fingerprint="00000000000000aa")), now)
        )
        silence = GettableSilence(id="s1", createdBy="ana", status=SilenceStatus(state="active"))
        await watcher.apply([_silenced("00000000000000aa")], {"s1": silence})
        [inc] = book.open_incidents()
        assert inc.state == "acknowledged"
        # The alert ends under its silence: gone from Alertmanager's list.
        store.fail_writes = True
        with pytest.raises(StoreUnavailable):
            await watcher.apply([], {"s1": silence})
        assert len(book) == 1
        store.fail_writes = False
        assert await watcher.apply([], {"s1": silence}) == 1
        assert len(book) == 0
    finally:
        await components.service.stop()
        await store.close()


async def test_an_alert_left_out_of_a_resolved_notification_under_a_silence_resolves_at_its_end(
    config_factory: Callable[..., Config], clock: FakeClock
) -> None:
    """The mute stage leaves the silenced a2 out of the group's notification, "resolved"
    with a1 alone: the incident stays open until a2 ends under its silence."""
    config = config_factory({"alertmanager": {"url": "http://127.0.0.1:9"}})
    components, store = await start(config, clock)
    try:
        watcher, book, svc = components.silences, components.book, components.service
        assert watcher is not None
        a1 = alert(fingerprint="00000000000000a1", labels={"instance": "i1"})
        a2 = alert(fingerprint="00000000000000a2", labels={"instance": "i2"})
        [opened] = await svc.submit(lambda now: book.apply_notification(n(a1, a2), now))
        silence = GettableSilence(id="s1", createdBy="ana", status=SilenceStatus(state="active"))
        firing = GettableAlert(fingerprint="00000000000000a1", status=AlertStatus(state="active"))
        await watcher.apply([firing, _silenced("00000000000000a2")], {"s1": silence})
        a1r = {**a1, "status": "resolved", "endsAt": "2023-11-14T22:15:00Z"}
        await svc.submit(lambda now: book.apply_notification(n(a1r), now))
        inc = opened.incident
        assert inc.state == "triggered"  # a2 still fires, silenced
        # a2 ends under its silence: gone from Alertmanager's list, no notification.
        assert await watcher.apply([], {"s1": silence}) == 1
        assert inc.state == "resolved" and len(book) == 0
    finally:
        await components.service.stop()
        await store.close()


# -- c. a reload is a lifecycle step -------------------------------------------


def _rewrite_rules(config: Config, old: str, new: str) -> None:
    path = config.rules_file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


async def test_a_reload_moves_the_deadlines_already_scheduled(
    running: tuple[Components, FlakyStore],
) -> None:
    components, _ = running
    book = components.book
    [change] = await components.service.submit(
        lambda now: book.apply_notification(n(alert(labels={"severity": "info"})), now)
    )
    inc = change.incident
    assert inc.severity == "P2"
    # P2 acknowledge 1h, update 2h: the first deadline is the acknowledgment.
    assert components.scheduler.next_at() == (inc.triggered_at + 3600, True)
    _rewrite_rules(
        components.config,
        "sla: {detect: 30m, acknowledge: 1h,",
        "sla: {detect: 30m, acknowledge: 5m,",
    )
    assert components.reload_rules()
    assert components.scheduler.next_at() == (inc.triggered_at + 300, True)
    assert sample(components, "incident_sla_rules_last_reload_successful") == 1.0
    assert sample(components, "incident_sla_rules_last_reload_success_timestamp_seconds") > 0


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("teams: [sre, db]", "teams: [sre, db, web]", "teams"),
        ("  - {name: P2,", "  - {name: P3,", "severities"),
        # 7 minutes is no histogram bucket: the le= series would not count it.
        ("acknowledge: 1h,", "acknowledge: 7m,", "bucket"),
        # A new ladder step whose tier has no routing key would page nobody.
        (
            "resolve: 24h, postmortem: 1w}}",
            "resolve: 24h, postmortem: 1w},"
            " escalation: [{after: 1h, tier: cto, while: unresolved}]}",
            "cto",
        ),
    ],
)
async def test_a_reload_that_cannot_apply_live_is_refused_whole(
    running: tuple[Components, FlakyStore],
    caplog: pytest.LogCaptureFixture,
    old: str,
    new: str,
    reason: str,
) -> None:
    components, _ = running
    before = components.rules
    _rewrite_rules(components.config, old, new)
    assert not components.reload_rules()
    assert components.rules is before
    assert components.book.classifier is before
    assert sample(components, "incident_sla_rules_last_reload_successful") == 0.0
    [refused] = [r for r in caplog.records if r.msg.startswith("rules reload refused")]
    assert reason in " ".join(refused.problems)


# -- e. a dead commit loop is never healthy ------------------------------------


async def test_a_failing_after_commit_hook_neither_kills_the_loop_nor_strands_callers(
    running: tuple[Components, FlakyStore],
) -> None:
    components, _ = running
    svc, book = components.service, components.book

    def explode(changes: list[Any]) -> None:
        raise RuntimeError("a bug after the commit")

    svc.on_commit.insert(0, explode)
    changes = await asyncio.wait_for(
        svc.submit(lambda now: book.apply_notification(n(alert()), now)), 10
    )
    assert len(changes) == 1
    assert svc.running
    # The other hooks still ran: the scheduler knows the new incident.
    assert components.scheduler.next_at() is not None


async def test_liveness_fails_once_the_commit_loop_has_died(
    aiohttp_client: Callable[..., Any], running: tuple[Components, FlakyStore]
) -> None:
    components, _ = running
    client: TestClient[Any, Any] = await aiohttp_client(create_app(components))
    assert (await client.get("/healthz")).status == 200
    svc = components.service
    svc.max_batch = None  # type: ignore[assignment]  # a bug in the loop itself
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(svc.submit(lambda now: []), 10)
    answer = await client.get("/healthz")
    assert answer.status == 503
    assert "incident-commit-loop" in (await answer.json())["failed"]


# -- f. one verdict on each SLA ------------------------------------------------


def test_a_breach_recorded_at_its_deadline_stands_when_ends_at_falls_inside(
    rules: RuleSet,
) -> None:
    book = IncidentBook(rules)
    critical = {"severity": "critical"}
    inc = book.apply_notification(n(alert(starts=T0, labels=critical)), T0 + 10)[0].incident
    book.acknowledge(inc.id, actor="ana", source="api", now=T0 + 60)
    change = book.check_deadlines(inc.id, T0 + 3601)
    assert change is not None and "resolve" in inc.breaches
    resolved = n(alert(status="resolved", starts=T0, ends=T0 + 3000, labels=critical))
    book.apply_notification(resolved, T0 + 3700)
    report = {r.name: r.status for r in sla_report(inc, [], rules, T0 + 3700)}
    assert report["resolve"] == "breached"


def test_a_resolution_past_its_deadline_records_the_breach_it_reports(rules: RuleSet) -> None:
    book = IncidentBook(rules)
    critical = {"severity": "critical"}
    inc = book.apply_notification(n(alert(starts=T0, labels=critical)), T0 + 10)[0].incident
    # The scheduler has not run yet when the late resolution arrives.
    resolved = n(alert(status="resolved", starts=T0, ends=T0 + 3650, labels=critical))
    [change] = book.apply_notification(resolved, T0 + 3655)
    breaches = sorted(e.detail or "" for e in change.effects if e.kind == "breach")
    # An hour without a status update overran the 15-minute cadence too.
    assert breaches == ["acknowledge", "resolve", "update"]
    report = {r.name: r.status for r in sla_report(inc, [], rules, T0 + 3700)}
    assert report["resolve"] == report["acknowledge"] == report["update"] == "breached"


# -- g. opened and resolved in one batch ---------------------------------------


async def test_an_incident_opened_and_resolved_in_one_batch_sends_trigger_then_resolve(
    running: tuple[Components, FlakyStore],
) -> None:
    components, store = running
    svc, book = components.service, components.book
    firing = n(alert(labels={"severity": "critical"}))
    resolved = n(alert(status="resolved", ends=T0 + 60, labels={"severity": "critical"}))
    # Both queue before the loop runs: one batch.
    first = asyncio.ensure_future(svc.submit(lambda now: book.apply_notification(firing, now)))
    second = asyncio.ensure_future(svc.submit(lambda now: book.apply_notification(resolved, now)))
    [opened], [closed] = await asyncio.gather(first, second)
    assert svc.batches_committed == 1
    assert opened.incident.id == closed.incident.id
    outbox = await store.outbox_for_incident(opened.incident.id)
    assert [item.action for item in outbox] == ["trigger", "resolve"]
