"""The HTTP edge: status codes of the contract, credentials, bad input, and the incidents API."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sidecar.clock import isoformat
from sidecar.incidents import Incident
from sidecar.runtime import Components
from sidecar.store import IncidentQuery
from sidecar.web.api import incident_view
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN
from tests.payloads import alert, body, notification

Client = TestClient[Any, Any]
HOOK = "/webhook/alertmanager"


async def fire(client: Client, auth: dict[str, str], **kw: Any) -> dict[str, Any]:
    resp = await client.post(HOOK, data=body(notification(alert(**kw))), headers=auth)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def count_rows(components: Components) -> int:
    return len(await components.store.list_incidents(IncidentQuery()))


def sample(components: Components, name: str, **labels: str) -> float | None:
    return components.registry.get_sample_value(name, labels)


async def test_firing_notification_opens_an_incident_readable_through_the_api(
    client: Client, auth: dict[str, str], components: Components
) -> None:
    answer = await fire(client, auth, labels={"severity": "critical"})
    [changed] = answer["changed"]
    assert changed["state"] == "triggered"
    resp = await client.get(f"/api/v1/incidents/{changed['id']}")
    assert resp.status == 200
    data = await resp.json()
    assert (data["severity"], data["team"], data["state"]) == ("P0", "sre", "triggered")
    # Declared 10 minutes after startsAt: P0's 5 minute detection SLA is breached at once.
    assert [e["kind"] for e in data["timeline"]] == ["opened", "sla_breached"]
    assert data["sla"]["acknowledge"]["target_seconds"] == 300
    assert (
        sample(components, "incident_sla_breaches_total", severity="P0", team="sre", sla="detect")
        == 1
    )
    assert sample(components, "incident_sla_incidents_total", severity="P0", team="sre") == 1
    assert (
        sample(components, "incident_sla_webhook_requests_total", source="alertmanager", code="200")
        == 1
    )


async def test_a_resend_with_refreshed_annotations_is_answered_without_a_batch(
    client: Client, auth: dict[str, str], components: Components
) -> None:
    [opened] = (await fire(client, auth))["changed"]
    committed = components.service.batches_committed
    answer = await fire(client, auth, annotations={"summary": "still happening", "value": "7"})
    assert answer == {"status": "ok", "changed": []}
    assert components.service.early is not None and components.service.early.answered == 1
    assert components.service.batches_committed == committed
    [resolved] = (await fire(client, auth, status="resolved", ends=1_700_000_300.0))["changed"]
    assert (resolved["id"], resolved["state"]) == (opened["id"], "resolved")


async def test_a_body_the_old_rules_dropped_is_applied_again_after_a_reload(
    client: Client, auth: dict[str, str], components: Components
) -> None:
    dropped = body(notification(alert(labels={"severity": "none"})))
    for _ in range(2):  # the second answered from the replay cache
        resp = await client.post(HOOK, data=dropped, headers=auth)
        assert (await resp.json())["changed"] == []
    path = components.config.rules_file
    text = path.read_text()
    rule = "  - {name: drop-none, match: ['severity=\"none\"'], drop: true}\n"
    assert rule in text
    path.write_text(text.replace(rule, ""))
    assert components.reload_rules()
    # Alertmanager resends the same bytes: under the new rules they open an incident.
    resp = await client.post(HOOK, data=dropped, headers=auth)
    [opened] = (await resp.json())["changed"]
    assert opened["state"] == "triggered"


@pytest.mark.parametrize(
    ("payload", "reason_part"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "Expected `object`"),
        (body({**notification(alert()), "version": "3"}), "unsupported webhook version"),
        (body({k: v for k, v in notification(alert()).items() if k != "groupKey"}), "groupKey"),
        (body({**notification(alert()), "alerts": []}), "alerts"),
        (body({**notification(alert()), "status": "maybe"}), "status"),
        (body({**notification(alert()), "truncatedAlerts": "many"}), "truncatedAlerts"),
        (body(notification({**alert(), "labels": {"a": 1}})), ".a: Expected `str`, got `int`"),
        (body(notification({**alert(), "startsAt": "yesterday"})), "alerts.0.startsAt"),
        (body(notification({**alert(), "fingerprint": "not-hex!"})), "alerts.0.fingerprint"),
        (
            body(notification({k: v for k, v in alert().items() if k != "status"})),
            "alerts.0.status",
        ),
        (body(notification(alert(), group_key='{}:{a="\x00"}')), "NUL"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "wrong-version",
        "missing-groupKey",
        "no-alerts",
        "bad-status",
        "wrong-type",
        "label-not-string",
        "bad-time",
        "bad-fingerprint",
        "alert-missing-status",
        "nul-in-groupKey",
    ],
)
async def test_invalid_payloads_get_400_with_a_reason_and_write_nothing(
    client: Client, auth: dict[str, str], components: Components, payload: bytes, reason_part: str
) -> None:
    resp = await client.post(HOOK, data=payload, headers=auth)
    assert resp.status == 400
    data = await resp.json()
    assert any(reason_part in r for r in data["reasons"]), data
    assert await count_rows(components) == 0
    assert len(components.book) == 0


async def test_oversized_body_gets_413_and_writes_nothing(
    aiohttp_client: Any, config_factory: Any, clock: Any, auth: dict[str, str]
) -> None:
    from prometheus_client import CollectorRegistry

    from sidecar.runtime import build_components
    from sidecar.web import create_app

    components = build_components(
        config_factory({"server": {"max_body_size": "2KiB"}}),
        clock=clock,
        registry=CollectorRegistry(),
    )
    client = await aiohttp_client(create_app(components))
    big = notification(alert(annotations={"description": "x" * 4096}))
    resp = await client.post(HOOK, data=body(big), headers=auth)
    assert resp.status == 413
    assert "exceeded" in (await resp.json())["error"]
    assert len(components.book) == 0
    assert (
        sample(components, "incident_sla_webhook_requests_total", source="alertmanager", code="413")
        == 1
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {API_TOKEN}"},  # the API token is not the webhook token
        {"Authorization": f"Token {WEBHOOK_TOKEN}"},
        {"Authorization": "Basic " + base64.b64encode(b"am:wrong").decode()},
        {"Authorization": "Basic !!!notbase64"},
    ],
    ids=["missing", "wrong", "other-token", "wrong-scheme", "basic-wrong", "basic-garbage"],
)
async def test_webhook_without_valid_credentials_is_refused(
    client: Client, components: Components, headers: dict[str, str]
) -> None:
    resp = await client.post(HOOK, data=body(notification(alert())), headers=headers)
    assert resp.status == 401
    assert "WWW-Authenticate" in resp.headers
    assert "credentials" in (await resp.json())["error"]
    assert len(components.book) == 0


async def test_basic_auth_as_alertmanager_sends_it_is_accepted(client: Client) -> None:
    token = base64.b64encode(f"alertmanager:{WEBHOOK_TOKEN}".encode()).decode()
    resp = await client.post(
        HOOK, data=body(notification(alert())), headers={"Authorization": f"Basic {token}"}
    )
    assert resp.status == 200


async def test_auth_can_be_disabled_only_explicitly(
    aiohttp_client: Any, config_factory: Any, clock: Any
) -> None:
    from prometheus_client import CollectorRegistry

    from sidecar.runtime import build_components
    from sidecar.web import create_app

    config = config_factory(
        {"server": {"insecure_disable_auth": True, "webhook_token": None, "api_token": None}}
    )
    client = await aiohttp_client(
        create_app(build_components(config, clock=clock, registry=CollectorRegistry()))
    )
    resp = await client.post(HOOK, data=body(notification(alert())), headers={})
    assert resp.status == 200


async def test_store_failure_answers_503_keeps_nothing_and_recovers(
    aiohttp_client: Any, config_factory: Any, clock: Any, auth: dict[str, str]
) -> None:
    from prometheus_client import CollectorRegistry

    from sidecar.runtime import build_components
    from sidecar.store import SQLiteStore
    from sidecar.web import create_app
    from tests.fakes.stores import FlakyStore

    config = config_factory()
    assert config.sqlite_path is not None
    store = FlakyStore(SQLiteStore(config.sqlite_path))
    components = build_components(config, clock=clock, registry=CollectorRegistry(), store=store)
    client = await aiohttp_client(create_app(components))
    store.down = True  # the database goes away under the running service
    resp = await client.post(HOOK, data=body(notification(alert())), headers=auth)
    assert resp.status == 503
    assert "retry" in (await resp.json())["error"]
    assert len(components.book) == 0
    assert (await client.get("/readyz")).status == 503
    store.down = False  # Alertmanager retries: the same notification now lands, once
    resp = await client.post(HOOK, data=body(notification(alert())), headers=auth)
    assert resp.status == 200
    assert len((await resp.json())["changed"]) == 1
    assert len(await store.list_incidents(IncidentQuery())) == 1
    assert (await client.get("/readyz")).status == 200


async def test_acknowledge_and_resolve_through_the_api(
    client: Client,
    auth: dict[str, str],
    api_auth: dict[str, str],
    components: Components,
    clock: Any,
) -> None:
    incident_id = (await fire(client, auth))["changed"][0]["id"]
    url = f"/api/v1/incidents/{incident_id}"
    assert (await client.post(f"{url}/acknowledge", json={"actor": "alice"})).status == 401
    assert (
        await client.post(f"{url}/acknowledge", json={"actor": "alice"}, headers=auth)
    ).status == 401
    clock.advance(120)
    resp = await client.post(f"{url}/acknowledge", json={"actor": "alice"}, headers=api_auth)
    assert resp.status == 200
    data = await resp.json()
    assert (data["state"], data["acknowledged_by"], data["acknowledge_source"]) == (
        "acknowledged",
        "alice",
        "api",
    )
    assert (
        sample(
            components, "incident_sla_time_to_acknowledge_seconds_sum", severity="P2", team="sre"
        )
        == 120
    )
    resp = await client.post(
        f"{url}/resolve", json={"actor": "bob", "message": "rolled back"}, headers=api_auth
    )
    assert resp.status == 200
    assert (await resp.json())["resolved_by"] == "bob"
    resp = await client.post(f"{url}/acknowledge", headers=api_auth)
    assert resp.status == 409
    timeline = (await (await client.get(url)).json())["timeline"]
    assert [(e["kind"], e["actor"]) for e in timeline] == [
        ("opened", None),
        ("acknowledged", "alice"),
        ("resolved", "bob"),
    ]
    assert timeline[2]["message"] == "rolled back"


async def test_api_errors(client: Client, api_auth: dict[str, str], auth: dict[str, str]) -> None:
    assert (await client.get("/api/v1/incidents/unknown")).status == 404
    assert (
        await client.post("/api/v1/incidents/unknown/acknowledge", headers=api_auth)
    ).status == 404
    incident_id = (await fire(client, auth))["changed"][0]["id"]
    resp = await client.post(
        f"/api/v1/incidents/{incident_id}/acknowledge", data=b"{oops", headers=api_auth
    )
    assert resp.status == 400
    resp = await client.post(
        f"/api/v1/incidents/{incident_id}/acknowledge", json={"actor": 5}, headers=api_auth
    )
    assert resp.status == 400


async def test_what_no_route_answers_is_json_behind_credentials(
    client: Client, components: Components, api_auth: dict[str, str]
) -> None:
    resp = await client.get("/nowhere", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401, "an unknown path tells nothing without credentials"
    resp = await client.get("/nowhere")
    assert (resp.status, resp.content_type) == (404, "application/json")
    assert (await resp.json())["error"] == "Not Found"
    resp = await client.delete("/api/v1/incidents", headers=api_auth)
    assert (resp.status, resp.content_type) == (405, "application/json")
    assert resp.headers["Allow"] == "GET"
    resp = await client.get(HOOK)
    assert resp.status == 405, "webhooks check their own credentials"
    assert sample(
        components, "incident_sla_webhook_requests_total", source="alertmanager", code="405"
    )


async def test_list_filters(client: Client, auth: dict[str, str], api_auth: dict[str, str]) -> None:
    await fire(client, auth, labels={"severity": "critical"})
    await client.post(
        HOOK,
        data=body(
            notification(
                alert(
                    "Slow",
                    fingerprint="00000000000000a9",
                    labels={"severity": "warning", "service": "db"},
                ),
                group_key="g2",
            )
        ),
        headers=auth,
    )

    async def ids(query: str) -> list[str]:
        resp = await client.get(f"/api/v1/incidents{query}")
        assert resp.status == 200, await resp.text()
        return [i["severity"] for i in (await resp.json())["incidents"]]

    assert sorted(await ids("")) == ["P0", "P1"]
    assert await ids("?severity=P1") == ["P1"]
    assert await ids("?team=db") == ["P1"]
    assert sorted(await ids("?state=open")) == ["P0", "P1"]
    assert await ids("?state=resolved") == []
    assert len(await ids("?limit=1")) == 1
    for bad in ("?state=sleeping", "?severity=P9", "?team=nobody", "?limit=0", "?limit=x"):
        resp = await client.get(f"/api/v1/incidents{bad}")
        assert resp.status == 400, bad
        assert json.loads(await resp.text())["error"]


async def test_metrics_health_and_readiness(client: Client, components: Components) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert 'incident_sla_open_incidents{severity="P0",state="triggered"} 0.0' in text
    # Buckets include every SLA threshold of the rules (P1 acknowledge 15m = 900 s, P2 resolve 24h).
    assert (
        'incident_sla_time_to_acknowledge_seconds_bucket{le="900.0",severity="P1",team="sre"}'
        in text
    )
    assert 'le="86400.0"' in text
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"


def test_an_escalation_stored_before_outcomes_shows_when_but_no_outcome(
    components: Components,
) -> None:
    at = 1_700_000_000.0
    inc = Incident.from_columns(
        id="i1",
        key="k",
        state="triggered",
        severity="P0",
        team="sre",
        started_at=at,
        triggered_at=at,
        acknowledged_at=None,
        resolved_at=None,
        data={"escalated": {"vp": at}},  # the stored shape of earlier versions
    )
    view = incident_view(inc, components.rules, at + 60)
    assert view["escalated"] == {"vp": isoformat(at)}
    assert view["escalations"] == {"vp": {"at": isoformat(at), "outcome": None}}


async def test_a_read_never_shows_a_change_that_is_not_committed(
    aiohttp_client: Any,
    config_factory: Any,
    clock: Any,
    auth: dict[str, str],
    api_auth: dict[str, str],
) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from sidecar.runtime import build_components
    from sidecar.store import SQLiteStore
    from sidecar.web import create_app
    from tests.fakes.stores import FlakyStore

    class GatedStore(FlakyStore):
        """Holds each write until the test opens the gate (and then fails it if told)."""

        def __init__(self, inner: SQLiteStore) -> None:
            super().__init__(inner)
            self.gate = asyncio.Event()
            self.gate.set()
            self.writing = asyncio.Event()
            self.timeline_read = asyncio.Event()

        async def write(self, batch: Any) -> None:
            self.writing.set()
            await self.gate.wait()
            await super().write(batch)

        async def timeline(self, incident_id: str) -> Any:
            self.timeline_read.set()
            return await super().timeline(incident_id)

    config = config_factory()
    assert config.sqlite_path is not None
    store = GatedStore(SQLiteStore(config.sqlite_path))
    components = build_components(config, clock=clock, registry=CollectorRegistry(), store=store)
    client = await aiohttp_client(create_app(components))
    incident_id = (await fire(client, auth))["changed"][0]["id"]
    url = f"/api/v1/incidents/{incident_id}"

    service = components.service
    settling = asyncio.Event()
    settled = service.settled

    async def observed_settled() -> None:
        settling.set()
        await settled()

    service.settled = observed_settled  # type: ignore[method-assign]
    store.gate.clear()
    store.writing.clear()
    store.timeline_read.clear()
    ack = asyncio.ensure_future(client.post(f"{url}/acknowledge", headers=api_auth))
    await store.writing.wait()  # applied in memory, not yet durable
    read = asyncio.ensure_future(client.get(url, headers=api_auth))
    # Whichever comes first: the read waits for the commit, or it reads the store
    # (and so the book) while the acknowledgment is still in flight.
    waits = [asyncio.ensure_future(e.wait()) for e in (settling, store.timeline_read)]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    store.fail_writes = True  # the acknowledgment never becomes durable
    store.gate.set()
    assert (await ack).status == 503
    data = await (await read).json()
    assert data["state"] == "triggered"
    assert "acknowledged" not in [e["kind"] for e in data["timeline"]]
