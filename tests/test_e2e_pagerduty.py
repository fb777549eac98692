"""End to end with PagerDuty: a real Alertmanager, the sidecar as a process, the fake PagerDuty.

Every part runs as it would in production except PagerDuty, which is the fake written from
its documentation (``tests/fakes/pagerduty.py``), served from the test's event loop. The
sidecar is started with ``astart`` so that the loop keeps answering while it boots.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.pagerduty import FakePagerDuty
from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess, record_only_preset
from tests.support.alertmanager import group_key, make_alert
from tests.support.fixtures import AlertmanagerClusterFactory, AlertmanagerFactory
from tests.support.readers import READ_HEADERS

pytestmark = pytest.mark.e2e

T = TypeVar("T")

ROUTING_KEY = "E2ER0UT1NGKEYE2ER0UT1NGKEY000000"
WEBHOOK_SECRET = "e2e-pagerduty-webhook-secret"
# Short enough that an outage of a few seconds is retried through within the test's budget.
RETRY = {"initial": "100ms", "max": "1s", "rate_limited_initial": "200ms"}

P0_LABELS = {"alertname": "ServiceDown", "service": "publishing", "scope": "total"}
P2_LABELS = {"alertname": "KubePodCrashLooping", "service": "admin"}
P3_LABELS = {"alertname": "DiskFull", "service": "publishing", "environment": "development"}


def dedup_key(key: str) -> str:
    """The dedup key of a group, as Alertmanager's own PagerDuty integration computes it."""
    return hashlib.sha256(key.encode()).hexdigest()


def actions(pd: FakePagerDuty, key: str) -> list[str]:
    """The accepted event actions of one dedup key, in arrival order."""
    return [event.event_action for event in pd.events_for(key)]


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    timeout: float = 20.0,  # noqa: ASYNC109 - a bound of its own, like FakePagerDuty's waits
) -> T:
    """Poll ``check`` until it gives something other than None; fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value is not None:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.1)


async def _at_least(value: Awaitable[float], floor: float) -> float | None:
    got = await value
    return got if got >= floor else None


async def outbox_empty(sidecar: SidecarProcess) -> bool | None:
    """True once the sidecar's database holds no PagerDuty event still to send.

    Read from the database, not the pending gauge (refreshed between the
    worker's rounds): once it holds and no notification can arrive any more,
    what PagerDuty got is final, and a check that something did not arrive can fail.
    """
    with closing(sqlite3.connect(sidecar.db_path)) as con:
        (pending,) = con.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()
    return True if pending == 0 else None


async def _positive(value: Awaitable[float]) -> float | None:
    got = await value
    return got if got > 0 else None


async def get_json(url: str) -> Any:
    """GET a JSON document, asserting a 200."""
    async with aiohttp.ClientSession(headers=READ_HEADERS) as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def metric(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` at ``base_url/metrics`` whose labels include ``labels``."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def post_notification(sidecar: SidecarProcess, payload: dict[str, Any]) -> dict[str, Any]:
    """Post an Alertmanager webhook body straight to the sidecar, asserting the 200."""
    headers = {"Authorization": f"Bearer {sidecar.webhook_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(sidecar.webhook_url, data=body(payload), headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


def flapping_groups(count: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``count`` P0 groups (one per shard), each with its firing and its resolved notification."""
    started = datetime.now(UTC).timestamp() - 120
    groups = []
    for i in range(count):
        labels = P0_LABELS | {"shard": str(i)}
        key = group_key({"alertname": "ServiceDown", "shard": str(i)})
        fingerprint = f"{i:016x}"
        firing = notification(
            alert("ServiceDown", fingerprint=fingerprint, starts=started, labels=labels),
            group_key=key,
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
        groups.append((key, firing, resolved))
    return groups


async def post_flapping_groups(
    sidecar: SidecarProcess, groups: list[tuple[str, dict[str, Any], dict[str, Any]]]
) -> None:
    """Post every group's firing then resolved notification, each durably accepted."""
    for _, firing, resolved in groups:
        opened = (await post_notification(sidecar, firing))["changed"]
        assert [(c["state"], c["severity"]) for c in opened] == [("triggered", "P0")]
        closed = (await post_notification(sidecar, resolved))["changed"]
        assert [(c["state"], c["severity"]) for c in closed] == [("resolved", "P0")]


async def retried(sidecar: SidecarProcess) -> float:
    """How many sends the sidecar has had to retry, every action together."""
    return await metric(sidecar.url, "incident_sla_pagerduty_events_total", result="retried")


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    """The fake PagerDuty, serving from the test's event loop."""
    async with FakePagerDuty() as fake:
        yield fake


SidecarFactory = Callable[..., SidecarProcess]


@pytest.fixture
def sidecar_factory(tmp_path: Path, pd: FakePagerDuty) -> Iterator[SidecarFactory]:
    """Build (not start) sidecar processes pointed at the fake; every one is stopped at the end."""
    built: list[SidecarProcess] = []

    def make(port: int | None = None) -> SidecarProcess:
        proc = SidecarProcess(
            tmp_path / "sidecar",
            port=port,
            overrides={
                # These tests follow the team's page; no escalation tier has a key.
                "rules": {"file": str(record_only_preset("llm-marketplace", tmp_path))},
                "pagerduty": {
                    "events_url": pd.events_url,
                    "api_url": pd.api_url,
                    "api_token": pd.api_token,
                    "webhook_secret": WEBHOOK_SECRET,
                    "routing_key": ROUTING_KEY,
                    "timeout": "1s",
                    # The outage tests resend dozens of events within seconds; PagerDuty's
                    # real limit would only slow them down (the fake does not enforce it).
                    "rate_limit_per_minute": 6000,
                    "retry": RETRY,
                },
            },
        )
        built.append(proc)
        return proc

    yield make
    for proc in built:
        proc.stop()


async def test_ha_alertmanager_pages_once_per_group_and_resolves(
    pd: FakePagerDuty,
    sidecar_factory: SidecarFactory,
    alertmanager_cluster_factory: AlertmanagerClusterFactory,
) -> None:
    sidecar = await sidecar_factory().astart()
    # peer_timeout 0s: both replicas notify every group; repeat_interval 1s: they repeat too.
    cluster = alertmanager_cluster_factory(
        sidecar.webhook_url,
        bearer_token=sidecar.webhook_token,
        group_by=["alertname"],
        group_wait="1s",
        group_interval="1s",
        repeat_interval="1s",
        start=False,
    )
    await cluster.astart()
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    alerts = [
        make_alert(labels, annotations={"summary": f"{labels['alertname']} e2e"}, starts_at=starts)
        for labels in (P0_LABELS, P2_LABELS, P3_LABELS)
    ]
    p0, p2, p3 = (dedup_key(group_key({"alertname": a["labels"]["alertname"]})) for a in alerts)
    await cluster.post_alerts(alerts)

    await pd.wait_for_events(2)  # the triggers of P0 and P2; P3 sends nothing
    # Several group intervals' worth of duplicate and repeated deliveries, all answered 200.
    await eventually(
        lambda: _at_least(
            metric(
                sidecar.url,
                "incident_sla_webhook_requests_total",
                source="alertmanager",
                code="200",
            ),
            12,
        ),
        "at least 12 deliveries from the two replicas (3 groups, duplicated and repeated)",
    )
    # Both replicas notified, so the sidecar got true HA duplicates, not only repeats.
    for replica in cluster:
        sent = await metric(replica.url, "alertmanager_notifications_total", integration="webhook")
        failed = await metric(
            replica.url, "alertmanager_notifications_failed_total", integration="webhook"
        )
        assert (sent >= 3, failed) == (True, 0), replica.url
    assert actions(pd, p0) == ["trigger"]
    assert actions(pd, p2) == ["trigger"]

    notified = {r.url: await metric(r.url, "alertmanager_notifications_total") for r in cluster}
    await cluster.resolve_alerts(alerts)
    await pd.wait_for_events(4)

    async def all_resolved() -> list[dict[str, Any]] | None:
        found = (await get_json(f"{sidecar.url}/api/v1/incidents"))["incidents"]
        done = [i for i in found if i["state"] == "resolved"]
        return found if len(done) == len(found) == 3 else None

    incidents = {i["group_key"]: i for i in await eventually(all_resolved, "3 incidents resolved")}
    # Late duplicates of the resolved notifications from the slower replica must change
    # nothing: each replica notifies every group again, then Alertmanager stops, so that
    # nothing more can arrive, and the outbox drains before anything is asserted.
    for replica in cluster:
        await eventually(
            lambda r=replica: _at_least(
                metric(r.url, "alertmanager_notifications_total"), notified[r.url] + len(alerts)
            ),
            f"{replica.url} notified every group after the resolution",
        )
    cluster.stop()
    await eventually(lambda: outbox_empty(sidecar), "outbox drained")

    assert actions(pd, p0) == ["trigger", "resolve"]
    assert actions(pd, p2) == ["trigger", "resolve"]
    assert actions(pd, p3) == []
    assert len(pd.events) == 4
    by_key = {e.dedup_key: e for e in pd.events if e.event_action == "trigger"}
    assert by_key[p0].body["payload"]["severity"] == "critical"
    assert by_key[p2].body["payload"]["severity"] == "warning"
    assert {e.routing_key for e in pd.events} == {ROUTING_KEY}
    assert len(pd.incidents_for(p0)) == 1

    # Exactly one incident per group although every notification arrived several times.
    assert sorted(incidents) == sorted(
        group_key({"alertname": a["labels"]["alertname"]}) for a in alerts
    )
    severities = {i["labels"]["alertname"]: i["severity"] for i in incidents.values()}
    assert severities == {"ServiceDown": "P0", "KubePodCrashLooping": "P2", "DiskFull": "P3"}
    assert await metric(sidecar.url, "incident_sla_incidents_total", severity="P0") == 1
    assert await metric(sidecar.url, "incident_sla_incidents_total") == 3

    p3_incident = incidents[group_key({"alertname": "DiskFull"})]
    detail = await get_json(f"{sidecar.url}/api/v1/incidents/{p3_incident['id']}")
    assert "ticket" in [e["kind"] for e in detail["timeline"]]
    assert detail["pagerduty"]["events"] == []
    p0_incident = incidents[group_key({"alertname": "ServiceDown"})]
    detail = await get_json(f"{sidecar.url}/api/v1/incidents/{p0_incident['id']}")
    assert [(e["action"], e["state"]) for e in detail["pagerduty"]["events"]] == [
        ("trigger", "delivered"),
        ("resolve", "delivered"),
    ]


async def test_alertmanagers_repeat_after_a_resolution_by_hand_pages_again(
    pd: FakePagerDuty, sidecar_factory: SidecarFactory, alertmanager_factory: AlertmanagerFactory
) -> None:
    """A person resolves the incident while its alert fires: Alertmanager's next
    notification of the group (every second here) pages again, as its own
    pagerduty_configs would, and the alert's resolution resolves that page, once."""
    sidecar = await sidecar_factory().astart()
    am = alertmanager_factory(
        sidecar.webhook_url,
        bearer_token=sidecar.webhook_token,
        group_by=["alertname"],
        group_wait="1s",
        group_interval="1s",
        repeat_interval="1s",
        start=False,
    )
    await am.astart()
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    alerts = [make_alert(P0_LABELS, annotations={"summary": "ServiceDown e2e"}, starts_at=starts)]
    key = dedup_key(group_key({"alertname": "ServiceDown"}))
    await am.post_alerts(alerts)
    await pd.wait_for_events(1)
    [first] = (await get_json(f"{sidecar.url}/api/v1/incidents"))["incidents"]
    headers = {"Authorization": f"Bearer {sidecar.api_token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(f"{sidecar.url}/api/v1/incidents/{first['id']}/resolve", json={}) as resp,
    ):
        assert resp.status == 200, await resp.text()
    # Its resolve, then the trigger of Alertmanager's repeat: PagerDuty opens a new incident.
    await pd.wait_for_events(3)
    assert actions(pd, key) == ["trigger", "resolve", "trigger"]
    assert len(pd.incidents_for(key)) == 2
    await am.resolve_alerts(alerts)
    await pd.wait_for_events(4)
    # Alertmanager stops, so that nothing more can arrive, and the outbox drains.
    am.stop()
    await eventually(lambda: outbox_empty(sidecar), "outbox drained")
    assert actions(pd, key) == ["trigger", "resolve", "trigger", "resolve"]
    assert [i.status for i in pd.incidents_for(key)] == ["resolved", "resolved"]


async def test_outage_then_recovery_delivers_every_event_once_in_order(
    pd: FakePagerDuty, sidecar_factory: SidecarFactory
) -> None:
    sidecar = await sidecar_factory().astart()
    faults: list[Callable[[], None]] = [
        *[lambda: pd.fail_next(1, status=500)] * 6,
        *[lambda: pd.fail_next(1, status=502)] * 2,
        *[lambda: pd.rate_limit_next(1)] * 6,
        # Held longer than the sidecar's 1 s timeout; nothing is recorded, as in a lost request.
        *[lambda: pd.timeout_next(1, seconds=2.5)] * 4,
        *[lambda: pd.drop_next(1)] * 4,
    ]
    random.Random(7).shuffle(faults)
    for plan in faults:
        plan()
    groups = flapping_groups(10)

    await post_flapping_groups(sidecar, groups)
    await eventually(lambda: outbox_empty(sidecar), "outbox drained", timeout=60)

    for key, _, _ in groups:
        assert actions(pd, dedup_key(key)) == ["trigger", "resolve"], key
    assert len(pd.events) == 2 * len(groups)
    assert pd.pending_faults() == 0
    served = Counter(r.fault for r in pd.requests if r.fault is not None)
    assert served == {"status": 14, "timeout": 4, "drop": 4}
    assert await retried(sidecar) >= len(faults)
    assert await metric(
        sidecar.url, "incident_sla_pagerduty_events_total", result="accepted"
    ) == 2 * len(groups)
    assert await metric(sidecar.url, "incident_sla_pagerduty_events_total", result="rejected") == 0


async def test_sigkill_during_an_outage_loses_and_duplicates_nothing(
    pd: FakePagerDuty, sidecar_factory: SidecarFactory
) -> None:
    sidecar = await sidecar_factory().astart()
    pd.go_down()
    groups = flapping_groups(10)

    # Every notification is answered 200 although PagerDuty is down: the outbox is durable.
    await post_flapping_groups(sidecar, groups)
    await eventually(lambda: _positive(retried(sidecar)), "sends failing against the outage")
    pending = await eventually(
        lambda: _positive(metric(sidecar.url, "incident_sla_pagerduty_outbox_pending")),
        "outbox pending reported",
    )
    assert pending == 2 * len(groups)
    assert pd.events == []

    await sidecar.akill()
    assert sidecar.returncode == -9
    again = await sidecar_factory(port=sidecar.port).astart()
    pd.come_back()

    await eventually(lambda: outbox_empty(again), "outbox drained after the restart", timeout=40)
    for key, _, _ in groups:
        assert actions(pd, dedup_key(key)) == ["trigger", "resolve"], key
    assert len(pd.events) == 2 * len(groups)
    assert await metric(
        again.url, "incident_sla_pagerduty_events_total", result="accepted"
    ) == 2 * len(groups)


async def test_acknowledged_in_pagerduty_reaches_the_sidecar_process(
    pd: FakePagerDuty, sidecar_factory: SidecarFactory
) -> None:
    sidecar = await sidecar_factory().astart()
    key = group_key({"alertname": "ServiceDown"})
    firing = notification(
        alert("ServiceDown", labels=P0_LABELS, starts=datetime.now(UTC).timestamp() - 60),
        group_key=key,
    )
    incident_id = (await post_notification(sidecar, firing))["changed"][0]["id"]
    await pd.wait_for_events(1)
    pd_incident = pd.open_incident(dedup_key(key))
    assert pd_incident is not None

    subscription = pd.subscribe(f"{sidecar.url}/webhook/pagerduty", WEBHOOK_SECRET)
    pd.acknowledge_incident(pd_incident.id)
    await pd.drain_webhooks()

    assert [(a.event_type, a.status) for a in subscription.attempts] == [
        ("incident.acknowledged", 200)
    ]
    view = await get_json(f"{sidecar.url}/api/v1/incidents/{incident_id}")
    assert view["state"] == "acknowledged"
    assert view["acknowledge_source"] == "pagerduty"
    assert view["acknowledged_by"] == "Primary On-call"
    # The acknowledgment goes to every page of the incident, here only the one
    # acknowledged: PagerDuty takes it and changes nothing, so nothing comes back.
    assert [e["action"] for e in view["pagerduty"]["events"]] == ["trigger", "acknowledge"]
    await pd.wait_for_events(2)
    assert actions(pd, dedup_key(key)) == ["trigger", "acknowledge"]
    assert pd.incidents[pd_incident.id].status == "acknowledged"
    await pd.drain_webhooks()
    assert len(subscription.attempts) == 1
    # The fake's incident_key is null: the sidecar mapped it back through the REST API.
    lookups = [r for r in pd.requests if r.api == "rest"]
    assert [(r.path.partition("?")[0], r.status) for r in lookups] == [
        (f"/incidents/{pd_incident.id}/alerts", 200)
    ]
