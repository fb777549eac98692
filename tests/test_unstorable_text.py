"""Notifications whose text a store could not hold as sent are kept, never retried for ever.

A NUL character in an alert's text (PostgreSQL text refuses it) and a group key longer
than PostgreSQL's btree entries (about 2.7 KB) each made every write of their batch
fail: a 503 that Alertmanager retries for ever, failing the notifications batched with
them. Both are settled when the payload is parsed, the same for SQLite and PostgreSQL,
so that both stores (and a restart reading either) hold the same incident. The other
ways in settle NUL at their own edge (PagerDuty's webhooks, a notified service's
answer) or refuse it with the reason (people, through the API and the forms); a value
a store still refuses fails its own command alone, not its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from prometheus_client import CollectorRegistry

from sidecar.alertmanager import MAX_KEY_BYTES, incident_key, notification_from
from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.errors import StoreUnavailable
from sidecar.incidents import Incident
from sidecar.runtime import Components, build_components
from sidecar.store import PostgresStore, SQLiteStore, Store
from sidecar.store.base import IncidentQuery
from sidecar.web.app import create_app
from tests.fakes.pagerduty import FakePagerDuty, encode_event, signature_header
from tests.fakes.receiver import WebhookReceiver
from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess
from tests.support.alertmanager import make_alert
from tests.support.fixtures import AlertmanagerFactory
from tests.support.outboxes import drain_all
from tests.support.readers import READ_HEADERS

WEBHOOK = "/webhook/alertmanager"
NUL = "\u0000"
REPLACED = "\ufffd"
# A group key over the bound, as ``group_by: ['...']`` makes of alerts with long labels:
# random, so that PostgreSQL cannot compress it into its index.
EVERY = IncidentQuery(limit=10)
LONG_KEY = '{}:{alertname="QueryFailed", query="' + secrets.token_hex(2000) + '"}'


class Backend:
    """A fresh database of one store, opened as many times as asked."""

    def __init__(self, name: str, dsn: str, make: Callable[[], Store]) -> None:
        self.name = name
        self.dsn = dsn  # the SQLite file's path, or PostgreSQL's DSN
        self.make = make
        self.opened: list[Store] = []

    async def reopened(self) -> Store:
        """The database opened anew, as a restart (or a replica) reads it."""
        store = self.make()
        self.opened.append(store)
        await store.open()
        return store


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "sidecar.db"
        b = Backend("sqlite", str(path), lambda: SQLiteStore(path))
    else:
        dsn = request.getfixturevalue("postgres_database_dsn")
        b = Backend("postgresql", dsn, lambda: PostgresStore(dsn, max_size=4))
    yield b
    for store in b.opened:
        await store.close()


@pytest.fixture
async def sidecar(
    backend: Backend,
    config_factory: Callable[..., Config],
    clock: FakeClock,
    aiohttp_client: Callable[..., Any],
) -> tuple[Components, Any]:
    """The sidecar in process on the backend, and an HTTP client of it."""
    store = backend.make()
    c = build_components(config_factory(), clock=clock, registry=CollectorRegistry(), store=store)
    return c, await aiohttp_client(create_app(c))


async def post(client: Any, auth: dict[str, str], payload: dict[str, Any]) -> None:
    resp = await client.post(WEBHOOK, data=body(payload), headers=auth)
    assert resp.status == 200, await resp.text()


async def only_incident(backend: Backend) -> tuple[Incident, list[str]]:
    """The one incident the database holds, as a restart reads it, and its timeline."""
    store = await backend.reopened()
    [inc] = await store.list_incidents(EVERY)
    full = await store.get_incident(inc.id)
    assert full is not None
    return full, [e.message for e in await store.timeline(inc.id)]


# -- NUL characters ------------------------------------------------------------


def nul_alert(fingerprint: str) -> dict[str, Any]:
    """An alert with a NUL in its name, a label's name and value, summary and URL."""
    a = alert(
        f"Disk{NUL}Full",
        fingerprint=fingerprint,
        labels={"device": f"/dev/sda{NUL}1", f"odd{NUL}name": "x"},
        annotations={"summary": f"disk {NUL} full", "runbook_url": f"http://r/{NUL}"},
    )
    a["generatorURL"] = f"http://prometheus/graph?g0.expr={NUL}"
    return a


async def test_a_nul_in_an_alerts_text_is_stored_as_a_replacement_character(
    backend: Backend, sidecar: tuple[Components, Any], auth: dict[str, str]
) -> None:
    _, client = sidecar
    payload = notification(nul_alert("00000000000000b1"), group_key='{}:{group="b"}')
    payload["commonAnnotations"] = {"summary": f"disk {NUL} full"}
    payload["externalURL"] = f"http://alertmanager/{NUL}"
    payload["receiver"] = f"sidecar{NUL}"
    await post(client, auth, payload)

    inc, timeline = await only_incident(backend)
    assert inc.title == f"Disk{REPLACED}Full: disk {REPLACED} full"
    assert timeline == [f"P2 incident opened: Disk{REPLACED}Full: disk {REPLACED} full"]
    assert inc.labels["alertname"] == f"Disk{REPLACED}Full"
    assert inc.external_url == f"http://alertmanager/{REPLACED}"
    assert inc.receiver == f"sidecar{REPLACED}"
    [state] = inc.alerts.values()
    # The alert's identity is Alertmanager's fingerprint, kept as sent.
    assert state.fingerprint == "00000000000000b1"
    assert state.labels == {
        "alertname": f"Disk{REPLACED}Full",
        "device": f"/dev/sda{REPLACED}1",
        f"odd{REPLACED}name": "x",
    }
    assert state.generator_url == f"http://prometheus/graph?g0.expr={REPLACED}"
    assert NUL not in repr((inc, timeline))


async def test_a_resend_with_the_nul_matches_the_incident_it_opened(
    backend: Backend, sidecar: tuple[Components, Any], auth: dict[str, str]
) -> None:
    _, client = sidecar
    firing = nul_alert("00000000000000b1")
    await post(client, auth, notification(firing, group_key="g"))
    await post(client, auth, notification(firing, group_key="g"))
    resolved = {**firing, "status": "resolved", "endsAt": "2023-11-14T22:20:00Z"}
    await post(client, auth, notification(resolved, group_key="g"))
    inc, _ = await only_incident(backend)
    assert inc.state == "resolved"


async def test_a_notification_with_a_nul_does_not_fail_its_batch(
    backend: Backend, sidecar: tuple[Components, Any], auth: dict[str, str]
) -> None:
    _, client = sidecar
    bad = notification(nul_alert("00000000000000b1"), group_key="bad")
    good = notification(alert("Other", fingerprint="00000000000000b2"), group_key="good")
    answers = await asyncio.gather(
        *(client.post(WEBHOOK, data=body(p), headers=auth) for p in (bad, good, bad))
    )
    assert [a.status for a in answers] == [200, 200, 200], [await a.text() for a in answers]
    store = await backend.reopened()
    assert sorted(i.key for i in await store.list_incidents(EVERY)) == ["bad", "good"]


async def test_people_are_told_to_leave_out_nul_rather_than_get_a_503(
    backend: Backend,
    sidecar: tuple[Components, Any],
    auth: dict[str, str],
    api_auth: dict[str, str],
) -> None:
    # What people write is refused with the reason (they see it and send it again);
    # only an alert, which nobody resends by hand, is kept with U+FFFD instead.
    _, client = sidecar
    await post(client, auth, notification(alert("DBDown"), group_key="g"))
    [inc] = await (await backend.reopened()).list_incidents(EVERY)
    api = f"/api/v1/incidents/{inc.id}"
    for path, payload in [
        ("updates", {"message": f"failing {NUL} over"}),
        ("acknowledge", {"actor": f"b{NUL}ob"}),
        ("roles", {"roles": {"incident_commander": f"b{NUL}ob"}}),
    ]:
        resp = await client.post(f"{api}/{path}", json=payload, headers=api_auth)
        assert (resp.status, "NUL" in await resp.text()) == (400, True), path
    page = await (await client.get(f"/incidents/{inc.id}")).text()
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert token is not None
    form = {"csrf": token[1], "message": f"failing {NUL} over"}
    resp = await client.post(f"/incidents/{inc.id}/update", data=form)
    assert (resp.status, "NUL" in await resp.text()) == (400, True)
    # Text that only reads like an escape is text.
    resp = await client.post(f"{api}/updates", json={"message": "C:\\u0000"}, headers=api_auth)
    assert resp.status == 200, await resp.text()
    _, timeline = await only_incident(backend)
    assert timeline[-1].endswith("C:\\u0000"), timeline


async def test_a_nul_in_what_pagerduty_says_a_person_did_is_kept_replaced(
    backend: Backend,
    config_factory: Callable[..., Config],
    clock: FakeClock,
    aiohttp_client: Callable[..., Any],
    auth: dict[str, str],
) -> None:
    async with FakePagerDuty() as pd:
        config = config_factory(
            {
                "pagerduty": {
                    "events_url": pd.events_url,
                    "api_url": pd.api_url,
                    "api_token": pd.api_token,
                    "webhook_secret": "s3cret",
                    "routing_key": "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY00",
                }
            }
        )
        store = backend.make()
        c = build_components(config, clock=clock, registry=CollectorRegistry(), store=store)
        client = await aiohttp_client(create_app(c))
        group = '{}:{alertname="DBDown"}'
        await post(client, auth, notification(alert("DBDown"), group_key=group))
        await pd.wait_for_events(1)
        pd_incident = pd.open_incident(hashlib.sha256(group.encode()).hexdigest())
        assert pd_incident is not None
        for event_type, extra in [
            ("incident.status_update_published", {"message": f"failing {NUL} over"}),
            ("incident.acknowledged", {"agent": {"id": "PUSER1", "summary": f"B{NUL}ob"}}),
        ]:
            raw = encode_event(pd.webhook_event(event_type, pd_incident.id, **extra))
            headers = {
                "Content-Type": "application/json",
                "X-PagerDuty-Signature": signature_header(raw, "s3cret"),
            }
            resp = await client.post("/webhook/pagerduty", data=raw, headers=headers)
            assert resp.status == 200, await resp.text()
        inc, timeline = await only_incident(backend)
        assert inc.acknowledged_by == f"B{REPLACED}ob"
        assert any(f"failing {REPLACED} over" in m for m in timeline), timeline
        assert NUL not in repr((inc, timeline))


async def test_a_nul_in_what_a_notified_service_answered_is_recorded_replaced(
    backend: Backend,
    config_factory: Callable[..., Config],
    clock: FakeClock,
    aiohttp_client: Callable[..., Any],
    auth: dict[str, str],
) -> None:
    # The answer is a dead letter's error text: had it failed to be written, the
    # send would have been repeated at every lease's end, for ever.
    async with WebhookReceiver("s3cret") as receiver:
        receiver.fail_next(400, text=f"proxy {NUL} error")
        endpoint = {"name": "status-page", "url": receiver.url, "secret": "s3cret"}
        config = config_factory({"webhooks": [endpoint]})
        store = backend.make()
        c = build_components(config, clock=clock, registry=CollectorRegistry(), store=store)
        client = await aiohttp_client(create_app(c))
        await post(client, auth, notification(alert("DBDown"), group_key="g"))
        await drain_all(c, limit=10)
        inc, _ = await only_incident(backend)
        [item] = await store.outbox_for_incident(inc.id)
        assert (item.state, item.last_error) == ("dead", f"HTTP 400: proxy {REPLACED} error")
        assert len(receiver.deliveries) == 1


# -- over-long group keys -----------------------------------------------------


async def test_an_over_long_group_key_keys_its_incident_by_hash(
    backend: Backend,
    config_factory: Callable[..., Config],
    clock: FakeClock,
    aiohttp_client: Callable[..., Any],
    auth: dict[str, str],
) -> None:
    # Paged (nothing listens on port 9 of loopback: the event stays queued).
    pd = {"routing_key": "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY00", "events_url": "http://127.0.0.1:9/"}
    c = build_components(
        config_factory({"pagerduty": pd}),
        clock=clock,
        registry=CollectorRegistry(),
        store=backend.make(),
    )
    client = await aiohttp_client(create_app(c))
    firing = alert("QueryFailed", fingerprint="00000000000000e1")
    await post(client, auth, notification(firing, group_key=LONG_KEY))
    digest = hashlib.sha256(LONG_KEY.encode()).hexdigest()
    inc, _ = await only_incident(backend)
    assert (inc.key, inc.group_key) == ("sha256:" + digest, LONG_KEY)
    # PagerDuty's dedup key is the group key's digest, as for every group.
    [trigger] = await c.store.outbox_for_incident(inc.id)
    assert trigger.dedup_key == digest
    # The group's later notifications find it.
    resolved = {**firing, "status": "resolved", "endsAt": "2023-11-14T22:20:00Z"}
    await post(client, auth, notification(resolved, group_key=LONG_KEY))
    inc, _ = await only_incident(backend)
    assert (inc.key, inc.state) == ("sha256:" + digest, "resolved")


@pytest.mark.parametrize(
    ("key", "kept"),
    [
        ("a" * MAX_KEY_BYTES, True),
        ("a" * (MAX_KEY_BYTES + 1), False),
        # Counted in UTF-8 bytes: 682 characters of three bytes each, and one of two.
        ("€" * 682 + "é", True),
        ("€" * 683, False),
        ("€" * 512, True),
    ],
)
def test_group_keys_up_to_the_bound_key_their_incidents_as_they_are(key: str, kept: bool) -> None:
    hashed = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert incident_key(key) == (key if kept else hashed)


async def as_the_previous_release_left_it(backend: Backend, group_key: str) -> None:
    """Key the incidents by their group key as it is, and unapply migration 13."""
    if backend.name == "sqlite":
        with contextlib.closing(sqlite3.connect(backend.dsn)) as con, con:
            con.execute("UPDATE incidents SET key = ?", (group_key,))
            con.execute("DELETE FROM schema_migrations WHERE version = 13")
        return
    con = await asyncpg.connect(backend.dsn)
    try:
        await con.execute("UPDATE incidents SET key = $1", group_key)
        await con.execute("DELETE FROM schema_migrations WHERE version = 13")
    finally:
        await con.close()


@pytest.mark.parametrize("long", [True, False])
async def test_incidents_stored_before_keep_matching_their_groups(
    backend: Backend,
    config_factory: Callable[..., Config],
    clock: FakeClock,
    aiohttp_client: Callable[..., Any],
    auth: dict[str, str],
    long: bool,
) -> None:
    # PostgreSQL compresses index entries: a long key of few distinct bytes fitted.
    key = '{}:{alertname="QueryFailed", query="' + "x" * 6000 + '"}' if long else '{}:{a="b"}'
    firing = alert("QueryFailed", fingerprint="00000000000000e1")
    resolved = {**firing, "status": "resolved", "endsAt": "2023-11-14T22:20:00Z"}
    for payload in (firing, resolved):
        store = backend.make()
        c = build_components(
            config_factory(), clock=clock, registry=CollectorRegistry(), store=store
        )
        client = await aiohttp_client(create_app(c))
        await post(client, auth, notification(payload, group_key=key))
        await client.close()
        if payload is firing:
            await as_the_previous_release_left_it(backend, key)
    # The group resolved the incident it opened before the upgrade, and opened none.
    reopened = await backend.reopened()
    [inc] = await reopened.list_incidents(EVERY)
    assert (inc.key, inc.group_key, inc.state) == (incident_key(key), key, "resolved")
    assert await reopened.schema_version() == 13


# -- a batch the store refuses ------------------------------------------------

# The store refusing a timeline message, as PostgreSQL refused NUL (SQLSTATE 22021,
# character_not_in_repertoire), for any other text the sidecar may yet let through.
REFUSE_POISON = {
    "postgresql": """
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.message LIKE '%poison%' THEN
                RAISE EXCEPTION 'refused' USING ERRCODE = '22021';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON events
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();
    """,
    "sqlite": """
        CREATE TRIGGER refuse_poison BEFORE INSERT ON events
            WHEN NEW.message LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'refused'); END;
    """,
}


async def test_a_value_the_store_refuses_fails_its_own_notification_alone(
    backend: Backend,
    config_factory: Callable[..., Config],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = backend.make()
    c = build_components(config_factory(), clock=clock, registry=CollectorRegistry(), store=store)
    await store.open()
    if backend.name == "sqlite":
        with contextlib.closing(sqlite3.connect(backend.dsn)) as lite, lite:
            lite.executescript(REFUSE_POISON["sqlite"])
    else:
        con = await asyncpg.connect(backend.dsn)
        try:
            await con.execute(REFUSE_POISON["postgresql"])
        finally:
            await con.close()
    await c.service.start()
    try:

        def submit(name: str) -> Any:
            n = notification_from(
                notification(alert(name, fingerprint="00000000000000c1"), group_key=name)
            )
            return c.service.submit(
                lambda now: c.book.apply_notification(n, now), keys=c.book.keys_of(n)
            )

        # Queued together: one batch.
        answers = await asyncio.gather(
            submit("Good1"), submit("poison"), submit("Good2"), return_exceptions=True
        )
        good1, poisoned, good2 = answers
        assert isinstance(poisoned, StoreUnavailable)  # a 503: retried, maybe by a fixed version
        assert isinstance(good1, list) and isinstance(good2, list)
        assert "batch refused; its commands run alone" in caplog.text
        stored = await store.list_incidents(EVERY)
        assert sorted(i.key for i in stored) == ["Good1", "Good2"]
        # Nothing of the refused one stayed in memory.
        assert not c.book.has_open("poison")
    finally:
        await c.service.stop()
        await store.close()


# -- from a real Alertmanager -------------------------------------------------


@pytest.mark.e2e
async def test_alertmanager_groups_with_a_nul_and_an_over_long_key_become_incidents(
    tmp_path: Path, postgres_database_dsn: str, alertmanager_factory: AlertmanagerFactory
) -> None:
    proc = SidecarProcess(tmp_path / "sidecar", overrides={"store": {"url": postgres_database_dsn}})
    proc.start()
    try:
        # group_by ['...']: every label is in the group key, a long query too.
        am = alertmanager_factory(
            proc.webhook_url, bearer_token=proc.webhook_token, group_by=["..."]
        )
        starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
        labels = {
            "alertname": "QueryFailed",
            "device": f"sda{NUL}1",
            "query": secrets.token_hex(1500),
        }
        summary = {"summary": f"disk {NUL} full"}
        await am.post_alerts([make_alert(labels, annotations=summary, starts_at=starts)])
        [inc] = await listed(proc, "open")
        assert inc["key"].startswith("sha256:")
        assert inc["key"] == incident_key(inc["group_key"])
        # Alertmanager quotes label values in the group key: the NUL arrives as text.
        assert 'device="sda\\x001"' in inc["group_key"]
        assert inc["title"] == f"QueryFailed: disk {REPLACED} full"

        ends = starts + timedelta(minutes=2)
        await am.post_alerts([make_alert(labels, starts_at=starts, ends_at=ends)])
        [done] = await listed(proc, "resolved")
        assert done["id"] == inc["id"]
    finally:
        proc.stop()


async def listed(proc: SidecarProcess, state: str) -> list[dict[str, Any]]:
    """The incidents in ``state``, once there are some (Alertmanager sends when it will)."""
    url = f"{proc.url}/api/v1/incidents?state={state}"
    async with aiohttp.ClientSession(headers=READ_HEADERS) as http:
        for _ in range(150):
            async with http.get(url) as resp:
                assert resp.status == 200, await resp.text()
                found: list[dict[str, Any]] = (await resp.json())["incidents"]
            if found:
                return found
            await asyncio.sleep(0.2)
    raise AssertionError(f"no {state} incident in time")
