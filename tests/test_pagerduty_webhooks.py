"""Webhooks v3: signatures as PagerDuty computes them, and parsing of every event we act on.

Event bodies come from the fake PagerDuty's ``webhook_event`` builder (written from
PagerDuty's "Webhooks Overview"), signatures from its ``sign``/``signature_header``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.incidents import Incident
from sidecar.pagerduty.inbound import before_reopening
from sidecar.pagerduty.webhooks import (
    SUPPORTED_EVENT_TYPES,
    InvalidWebhook,
    WebhookEvent,
    parse_webhook,
    verify_signature,
)
from tests.fakes.pagerduty import FakePagerDuty, encode_event, sign, signature_header

SECRET = "whsec-current-0123456789"
OLD_SECRET = "whsec-previous-9876543210"
BODY = b'{"event":{"id":"01","event_type":"incident.acknowledged"}}'


# signatures


def test_the_documented_algorithm_matches_an_independent_hmac() -> None:
    digest = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()

    assert verify_signature(BODY, f"v1={digest}", [SECRET])
    assert sign(BODY, SECRET) == f"v1={digest}"


@pytest.mark.parametrize(
    ("header", "secrets", "valid"),
    [
        pytest.param(signature_header(BODY, SECRET), [SECRET], True, id="valid"),
        pytest.param(signature_header(BODY, "another secret"), [SECRET], False, id="wrong secret"),
        pytest.param(
            signature_header(BODY, [OLD_SECRET, SECRET]), [SECRET], True, id="rotation: new matches"
        ),
        pytest.param(
            signature_header(BODY, [OLD_SECRET, SECRET]),
            [OLD_SECRET],
            True,
            id="rotation: old matches",
        ),
        pytest.param(
            signature_header(BODY, [OLD_SECRET, "third"]), [SECRET], False, id="rotation: neither"
        ),
        pytest.param(
            signature_header(BODY, "another secret"),
            ["unrelated", SECRET],
            False,
            id="two configured secrets, no match",
        ),
        pytest.param(
            signature_header(BODY, OLD_SECRET),
            [SECRET, OLD_SECRET],
            True,
            id="two configured secrets, second matches",
        ),
        pytest.param(None, [SECRET], False, id="missing header"),
        pytest.param("", [SECRET], False, id="empty header"),
        pytest.param(signature_header(BODY, SECRET), [], False, id="no secret configured"),
        pytest.param(signature_header(BODY, ""), [""], False, id="empty secret never verifies"),
        pytest.param("v1=", [SECRET], False, id="empty value"),
        pytest.param("v1=nothex" + "0" * 57, [SECRET], False, id="not hex"),
        pytest.param(signature_header(BODY, SECRET)[:-2], [SECRET], False, id="truncated"),
        pytest.param(signature_header(BODY, SECRET) + "00", [SECRET], False, id="too long"),
        pytest.param(
            signature_header(BODY, SECRET).replace("v1=", "v2="),
            [SECRET],
            False,
            id="other version only",
        ),
        pytest.param(
            "v0=abc," + signature_header(BODY, SECRET),
            [SECRET],
            True,
            id="other versions ignored",
        ),
        pytest.param(
            signature_header(BODY, SECRET).removeprefix("v1="), [SECRET], False, id="no version"
        ),
        pytest.param(
            " " + signature_header(BODY, [OLD_SECRET, SECRET]).replace(",", " , "),
            [SECRET],
            True,
            id="spaces around values",
        ),
        pytest.param(
            signature_header(BODY, SECRET).upper().replace("V1=", "v1="),
            [SECRET],
            True,
            id="upper-case hex",
        ),
        pytest.param(",,,", [SECRET], False, id="only commas"),
        pytest.param("v1=é" + "0" * 63, [SECRET], False, id="non-ASCII value"),
    ],
)
def test_signature_header_variants(header: str | None, secrets: list[str], valid: bool) -> None:
    assert verify_signature(BODY, header, secrets) is valid


def test_a_single_secret_given_as_a_string_is_one_secret() -> None:
    one_char = signature_header(BODY, "w")

    assert verify_signature(BODY, signature_header(BODY, SECRET), SECRET)
    assert not verify_signature(BODY, one_char, SECRET)


def test_a_tampered_body_fails_under_a_valid_signature() -> None:
    header = signature_header(BODY, SECRET)
    tampered = BODY.replace(b"acknowledged", b"resolved")

    assert verify_signature(BODY, header, [SECRET])
    assert not verify_signature(tampered, header, [SECRET])
    assert not verify_signature(BODY + b" ", header, [SECRET])


def test_unicode_secrets_and_bodies_are_signed_as_utf8() -> None:
    body = encode_event({"event": {"summary": "Störung: ünïcode ✓"}})
    secret = "sëcret"
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()

    assert verify_signature(body, f"v1={digest}", [secret])


# signatures over real deliveries from the fake


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[tuple[str, list[tuple[bytes, str]]]]:
    """A webhook endpoint that records each raw body and signature header, answering 200."""
    received: list[tuple[bytes, str]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers["X-PagerDuty-Signature"]))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/webhook/pagerduty", handle)
    server = await aiohttp_server(app)
    yield str(server.make_url("/webhook/pagerduty")), received


async def open_incident(pd: FakePagerDuty) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            pd.events_url,
            json={
                "routing_key": "r" * 32,
                "event_action": "trigger",
                "dedup_key": "k1",
                "payload": {"summary": "DB down", "source": "db-1", "severity": "critical"},
            },
        ) as response,
    ):
        assert response.status == 202
    incident = pd.open_incident("k1")
    assert incident is not None
    return incident.id


async def test_deliveries_signed_by_the_fake_verify_and_parse(
    pd: FakePagerDuty, receiver: tuple[str, list[tuple[bytes, str]]]
) -> None:
    url, received = receiver
    incident_id = await open_incident(pd)
    pd.subscribe(url, [OLD_SECRET, SECRET])

    pd.acknowledge_incident(incident_id, user=1)
    pd.publish_status_update(incident_id, "Failing over to the replica")
    pd.resolve_incident(incident_id)
    await pd.drain_webhooks()

    assert len(received) == 3
    parsed = []
    for body, header in received:
        assert verify_signature(body, header, [SECRET])
        assert not verify_signature(body, header, ["not the secret"])
        parsed.append(parse_webhook(body))
    assert [p.event_type for p in parsed] == [
        "incident.acknowledged",
        "incident.status_update_published",
        "incident.resolved",
    ]
    assert {p.pd_incident_id for p in parsed} == {incident_id}
    assert parsed[0].agent == "Secondary On-call"
    assert parsed[1].message == "Failing over to the replica"


# parsing


def built(pd: FakePagerDuty, event_type: str, incident_id: str, **kwargs: Any) -> bytes:
    return encode_event(pd.webhook_event(event_type, incident_id, **kwargs))


@pytest.mark.parametrize(
    "event_type",
    [
        "incident.acknowledged",
        "incident.unacknowledged",
        "incident.resolved",
        "incident.reopened",
        "incident.escalated",
    ],
)
async def test_incident_events_parse(pd: FakePagerDuty, event_type: str) -> None:
    incident_id = await open_incident(pd)
    moment = datetime(2026, 11, 22, 13, 49, 31, 169000, tzinfo=UTC)
    envelope = pd.webhook_event(event_type, incident_id, agent=pd.users[0], occurred_at=moment)

    event = parse_webhook(encode_event(envelope))

    assert event == WebhookEvent(
        event_id=envelope["event"]["id"],
        event_type=event_type,
        resource_type="incident",
        occurred_at=moment,
        pd_incident_id=incident_id,
        incident_key=None,  # Events API incidents: null unless the service says otherwise
        agent="Primary On-call",
        message=None,
        pd_incident_url=envelope["event"]["data"]["html_url"],
        pd_status="triggered",
        # Whole seconds, as PagerDuty writes them; not reopened in PagerDuty.
        pd_created_at=pd.incidents[incident_id].created_at.replace(microsecond=0),
        pd_reopened_at=None,
    )
    assert event.supported


async def test_status_update_takes_the_incident_from_its_reference(pd: FakePagerDuty) -> None:
    incident_id = await open_incident(pd)
    body = built(
        pd,
        "incident.status_update_published",
        incident_id,
        agent=pd.users[2],
        message="Mitigated; watching error rates",
    )

    event = parse_webhook(body)

    assert event.event_type == "incident.status_update_published"
    assert event.pd_incident_id == incident_id
    assert event.incident_key is None
    assert event.message == "Mitigated; watching error rates"
    assert event.agent == "Engineering Manager"
    assert event.supported


async def test_incident_key_is_read_when_present() -> None:
    async with FakePagerDuty(incident_key_is_dedup_key=True) as pd:
        incident_id = await open_incident(pd)
        event = parse_webhook(built(pd, "incident.resolved", incident_id))

    assert event.incident_key == "k1"
    assert event.pd_incident_id == incident_id


async def test_the_documented_example_parses() -> None:
    # The incident.priority_updated example of PagerDuty's "Webhooks Overview", abridged.
    body = json.dumps(
        {
            "event": {
                "id": "5ac64822-4adc-4fda-ade0-410becf0de4f",
                "event_type": "incident.priority_updated",
                "resource_type": "incident",
                "occurred_at": "2020-10-02T18:45:22.169Z",
                "agent": {
                    "html_url": "https://acme.pagerduty.com/users/PLH1HKV",
                    "id": "PLH1HKV",
                    "self": "https://api.pagerduty.com/users/PLH1HKV",
                    "summary": "Tenex Engineer",
                    "type": "user_reference",
                },
                "client": {"name": "PagerDuty"},
                "data": {
                    "id": "PGR0VU2",
                    "type": "incident",
                    "number": 2,
                    "status": "triggered",
                    "incident_key": "d3640fbd41094207a1c11e58e46b1662",
                    "title": "A little bump in the road",
                    "urgency": "high",
                },
            }
        }
    ).encode()

    event = parse_webhook(body)

    assert event.event_type == "incident.priority_updated"
    assert not event.supported
    assert event.pd_incident_id == "PGR0VU2"
    assert event.incident_key == "d3640fbd41094207a1c11e58e46b1662"
    assert event.agent == "Tenex Engineer"
    assert event.occurred_at == datetime(2020, 10, 2, 18, 45, 22, 169000, tzinfo=UTC)


def envelope(**event: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "evt-1",
        "event_type": "incident.acknowledged",
        "resource_type": "incident",
        "occurred_at": "2026-11-22T13:49:31.169Z",
        "agent": None,
        "client": None,
        "data": {"id": "PABC123", "type": "incident", "incident_key": None},
    }
    base.update(event)
    return {"event": base}


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        pytest.param(None, "pagerduty", id="null agent: automation"),
        pytest.param({"id": "PUSER1", "summary": "Ada"}, "Ada", id="summary"),
        pytest.param({"id": "PUSER1", "email": "ada@example.com"}, "ada@example.com", id="email"),
        pytest.param({"id": "PUSER1", "type": "user_reference"}, "PUSER1", id="id only"),
        pytest.param({"summary": "  "}, "pagerduty", id="blank summary"),
        pytest.param({}, "pagerduty", id="empty reference"),
    ],
)
def test_agent_display_names(agent: dict[str, Any] | None, expected: str) -> None:
    event = parse_webhook(json.dumps(envelope(agent=agent)).encode())

    assert event.agent == expected


def test_unknown_fields_and_event_types_are_accepted() -> None:
    body = envelope(
        event_type="service.updated",
        resource_type="service",
        data={"id": "PSVC1", "type": "service", "summary": "testing service updates"},
        future_field={"anything": True},
    )
    body["delivery"] = "extra"

    event = parse_webhook(json.dumps(body).encode())

    assert event.event_type == "service.updated"
    assert not event.supported
    assert event.pd_incident_id is None


def test_other_incident_events_take_the_incident_from_their_reference() -> None:
    body = envelope(
        event_type="incident.annotated",
        data={"incident": {"id": "PINC9", "type": "incident_reference"}, "content": "note"},
    )

    event = parse_webhook(json.dumps(body).encode())

    assert event.pd_incident_id == "PINC9"
    assert not event.supported


def test_unsupported_type_with_odd_data_still_parses() -> None:
    body = envelope(event_type="incident.workflow.started", data={"type": "incident", "id": 7})

    event = parse_webhook(json.dumps(body).encode())

    assert event.pd_incident_id is None


def test_a_naive_timestamp_is_taken_as_utc() -> None:
    event = parse_webhook(json.dumps(envelope(occurred_at="2026-11-22T13:49:31")).encode())

    assert event.occurred_at == datetime(2026, 11, 22, 13, 49, 31, tzinfo=UTC)


def test_supported_types_are_the_ones_the_sidecar_acts_on() -> None:
    assert {
        "incident.acknowledged",
        "incident.unacknowledged",
        "incident.resolved",
        "incident.reopened",
        "incident.status_update_published",
        "incident.escalated",
    } == SUPPORTED_EVENT_TYPES


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"", "Invalid JSON", id="empty"),
        pytest.param(b"not json", "Invalid JSON", id="not JSON"),
        pytest.param(b"[]", "Input should be an object", id="an array"),
        pytest.param(b"{}", "event: Field required", id="no event"),
        pytest.param(b'{"event": null}', "event: Input should be an object", id="null event"),
        pytest.param(
            json.dumps(envelope(id="")).encode(), "event.id: String should have", id="empty id"
        ),
        pytest.param(
            json.dumps(
                {"event": {k: v for k, v in envelope()["event"].items() if k != "id"}}
            ).encode(),
            "event.id: Field required",
            id="missing id",
        ),
        pytest.param(
            json.dumps(envelope(occurred_at="yesterday")).encode(),
            "event.occurred_at: Input should be a valid datetime",
            id="bad occurred_at",
        ),
        pytest.param(
            json.dumps(envelope(data=None)).encode(),
            "event.data: Input should be an object",
            id="null data",
        ),
        pytest.param(
            json.dumps(envelope(data={"type": "incident"})).encode(),
            "event.data (incident.acknowledged): id: Field required",
            id="incident without id",
        ),
        pytest.param(
            json.dumps(envelope(agent="someone")).encode(),
            "event.agent: Input should be",
            id="agent not a reference",
        ),
        pytest.param(
            json.dumps(
                envelope(event_type="incident.status_update_published", data={"message": "x"})
            ).encode(),
            "event.data (incident.status_update_published): incident: Field required",
            id="status update without incident",
        ),
        pytest.param(b"\xff\xfe", "Invalid JSON", id="not UTF-8"),
    ],
)
def test_invalid_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidWebhook) as caught:
        parse_webhook(body)

    assert isinstance(caught.value, ValueError)
    assert reason in str(caught.value), caught.value.reasons


# -- after a reopening: which PagerDuty incident an event is about ---------------------

REOPENED = datetime(2026, 11, 30, 7, 0, 0, 600000, tzinfo=UTC)


def reopened_incident(at: datetime | None = REOPENED) -> Incident:
    return Incident(
        id="i1",
        key="k",
        group_key="g",
        receiver="r",
        state="acknowledged",
        severity="P0",
        team="t",
        title="DBDown",
        labels={},
        external_url="",
        started_at=0.0,
        triggered_at=0.0,
        reopened_at=None if at is None else at.timestamp(),
    )


def resolved_event(
    occurred: datetime, created: datetime | None, pd_reopened: datetime | None = None
) -> WebhookEvent:
    return WebhookEvent(
        event_id="e",
        event_type="incident.resolved",
        resource_type="incident",
        occurred_at=occurred,
        pd_incident_id="POLD",
        incident_key=None,
        agent="pagerduty",
        message=None,
        pd_created_at=created,
        pd_reopened_at=pd_reopened,
    )


def test_events_about_the_pagerduty_incident_before_a_reopening_are_told_apart() -> None:
    second, minute = timedelta(seconds=1), timedelta(minutes=1)
    later = REOPENED + minute
    inc = reopened_incident()
    # Never reopened: every event counts.
    assert (
        before_reopening(resolved_event(REOPENED - minute, None), reopened_incident(None)) is None
    )
    # It happened before the reopening (the echo of our own resolve, late or again).
    reason = before_reopening(resolved_event(REOPENED - second, None), inc)
    assert reason is not None and "before the reopening" in reason and "POLD" in reason
    # After it, on a PagerDuty incident created an earlier second: the old one.
    reason = before_reopening(resolved_event(later, REOPENED - minute), inc)
    assert reason is not None and "created" in reason
    # Created within the reopening's second (PagerDuty writes whole seconds): maybe the new one.
    assert before_reopening(resolved_event(later, REOPENED.replace(microsecond=0)), inc) is None
    assert before_reopening(resolved_event(later, REOPENED + second), inc) is None
    # An old incident that someone reopened in PagerDuty after ours is live again.
    assert before_reopening(resolved_event(later, REOPENED - minute, later), inc) is None
    assert before_reopening(resolved_event(later, None), inc) is None


def test_a_nul_in_an_id_is_refused_and_in_a_name_replaced() -> None:
    # PostgreSQL text cannot hold NUL. PagerDuty's ids never hold one; names may.
    body = envelope(id="evt\u00001", agent={"id": "PUSER1", "summary": "B\u0000ob"})
    with pytest.raises(InvalidWebhook, match="event_id: must not contain NUL"):
        parse_webhook(json.dumps(body).encode())
    body["event"]["id"] = "evt-1"
    assert parse_webhook(json.dumps(body).encode()).agent == "B\ufffdob"
