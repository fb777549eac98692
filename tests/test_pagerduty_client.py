"""The Events API client's classification and the REST lookup, against the fake PagerDuty.

Every answer PagerDuty documents (202, 400, 429, 5xx) and every failure without an
answer (timeout, dropped connection, refused connection) is produced by the fake's
failure injection or a closed port, never by mocks.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.clock import FakeClock
from sidecar.pagerduty.client import (
    ApiAuthError,
    ApiNotFound,
    ApiProtocolError,
    ApiUnavailable,
    EventsClient,
    PagerDutyApiError,
    RestClient,
    SendResult,
)
from sidecar.pagerduty.events import build_acknowledge, build_resolve
from tests.fakes.pagerduty import FakePagerDuty

ROUTING_KEY = "R0UT1NGK3Y0123456789abcdefabcdef"
DEDUP_KEY = "7ad2c5e2d92218899a9c4638d9dfc7c313e0841aae4928b16ef80cffc651b1a8"


def trigger(dedup_key: str = DEDUP_KEY, **payload: Any) -> dict[str, Any]:
    return {
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": "[P1] DBDown", "source": "am:9093", "severity": "critical"}
        | payload,
        "client": "incident-sla-sidecar",
    }


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def events(http: aiohttp.ClientSession, pd: FakePagerDuty) -> EventsClient:
    return EventsClient(http, pd.events_url, timeout=5.0)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# Events API v2


async def test_202_is_accepted_with_pagerdutys_dedup_key(
    events: EventsClient, pd: FakePagerDuty
) -> None:
    result = await events.send(trigger(), ROUTING_KEY)

    assert result == SendResult("accepted", 202, "Event processed", DEDUP_KEY)
    assert not result.retryable
    [accepted] = pd.events
    assert accepted.routing_key == ROUTING_KEY
    assert accepted.body == {**trigger(), "routing_key": ROUTING_KEY}
    assert pd.requests[0].headers["Content-Type"] == "application/json"


async def test_the_body_given_is_not_changed(events: EventsClient) -> None:
    body = trigger()

    await events.send(body, ROUTING_KEY)

    assert "routing_key" not in body


async def test_acknowledge_and_resolve_reach_the_alert(
    events: EventsClient, pd: FakePagerDuty
) -> None:
    results = [
        await events.send(trigger(), ROUTING_KEY),
        await events.send(build_acknowledge(DEDUP_KEY), ROUTING_KEY),
        await events.send(build_resolve(DEDUP_KEY), ROUTING_KEY),
    ]

    assert [r.outcome for r in results] == ["accepted"] * 3
    assert [e.outcome for e in pd.events_for(DEDUP_KEY)] == ["opened", "acknowledged", "resolved"]


async def test_400_is_rejected_with_pagerdutys_errors(
    events: EventsClient, pd: FakePagerDuty
) -> None:
    result = await events.send(trigger(severity="disaster"), ROUTING_KEY)

    assert result.outcome == "rejected"
    assert result.status == 400
    assert not result.retryable
    assert result.message.startswith("Event object is invalid: ")
    assert "payload.severity" in result.message
    assert pd.events == []


async def test_injected_400_is_rejected(events: EventsClient, pd: FakePagerDuty) -> None:
    pd.reject_next()

    result = await events.send(trigger(), ROUTING_KEY)

    assert (result.outcome, result.status) == ("rejected", 400)
    assert result.message == "Event object is invalid: Rejected by fault injection"


async def test_the_routing_key_never_appears_in_a_message(http: aiohttp.ClientSession) -> None:
    async with FakePagerDuty(routing_keys=["the-only-valid-key"]) as pd:
        client = EventsClient(http, pd.events_url)
        # An invalid key placed where PagerDuty echoes values back: the summary.
        result = await client.send(trigger(summary=ROUTING_KEY, severity="bad"), ROUTING_KEY)
        unknown = await client.send(trigger(), ROUTING_KEY)

    assert result.outcome == unknown.outcome == "rejected"
    assert ROUTING_KEY not in result.message
    assert unknown.message == "Event object is invalid: Invalid routing key"


async def test_429_is_rate_limited(events: EventsClient, pd: FakePagerDuty) -> None:
    pd.rate_limit_next()

    result = await events.send(trigger(), ROUTING_KEY)

    assert (result.outcome, result.status) == ("rate_limited", 429)
    assert result.retryable
    assert result.retry_after is None  # PagerDuty documents no Retry-After
    assert pd.events == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0", 0.0), ("a while", None)],
)
async def test_a_429s_retry_after_is_passed_on(
    events: EventsClient, pd: FakePagerDuty, header: str, expected: float | None
) -> None:
    pd.rate_limit_next(retry_after=header)  # as a proxy in front of PagerDuty may answer

    result = await events.send(trigger(), ROUTING_KEY)

    assert (result.outcome, result.retry_after) == ("rate_limited", expected)


async def test_a_retry_after_date_counts_from_the_answers_own_date(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    # aiohttp stamps the fake's answer with a Date; a Retry-After a day after it waits a
    # day, however wrong our own clock is.
    events = EventsClient(http, pd.events_url, clock=FakeClock(0.0))
    pd.rate_limit_next(retry_after=formatdate(time.time() + 86400, usegmt=True))

    result = await events.send(trigger(), ROUTING_KEY)

    assert result.retry_after is not None
    assert 86400 - 5 <= result.retry_after <= 86400 + 5


async def test_the_fakes_own_rate_limit_is_rate_limited(http: aiohttp.ClientSession) -> None:
    async with FakePagerDuty(rate_limit_per_minute=2) as pd:
        client = EventsClient(http, pd.events_url)
        outcomes = [(await client.send(trigger(), ROUTING_KEY)).outcome for _ in range(3)]

    assert outcomes == ["accepted", "accepted", "rate_limited"]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_retried(events: EventsClient, pd: FakePagerDuty, status: int) -> None:
    pd.fail_next(status=status)

    result = await events.send(trigger(), ROUTING_KEY)

    assert (result.outcome, result.status) == ("retry", status)
    assert result.retryable
    assert pd.events == []


async def test_a_pagerduty_outage_is_retried(events: EventsClient, pd: FakePagerDuty) -> None:
    pd.go_down(503)
    during = await events.send(trigger(), ROUTING_KEY)
    pd.come_back()
    after = await events.send(trigger(), ROUTING_KEY)

    assert (during.outcome, after.outcome) == ("retry", "accepted")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (408, "retry"),
        (401, "rejected"),
        (403, "rejected"),
        (404, "rejected"),
        (413, "rejected"),
        (302, "rejected"),
        (200, "accepted"),
    ],
)
async def test_other_codes(
    aiohttp_server: Any, http: aiohttp.ClientSession, status: int, outcome: str
) -> None:
    # Codes PagerDuty does not document for the Events API but proxies and gateways send.
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        headers = {"Location": "http://127.0.0.1:9/elsewhere"} if status == 302 else None
        return web.json_response({"message": "from a proxy"}, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v2/enqueue", answer)
    server = await aiohttp_server(app)
    client = EventsClient(http, str(server.make_url("/v2/enqueue")))

    result = await client.send(trigger(), ROUTING_KEY)

    assert (result.outcome, result.status) == (outcome, status)
    assert result.message == "from a proxy"


async def test_an_answer_that_is_not_json_is_still_classified(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad gateway</html>")

    app = web.Application()
    app.router.add_post("/v2/enqueue", answer)
    server = await aiohttp_server(app)

    result = await EventsClient(http, str(server.make_url("/v2/enqueue"))).send(
        trigger(), ROUTING_KEY
    )

    assert result == SendResult("retry", 502, "HTTP 502", None)


async def test_a_timeout_is_retried(http: aiohttp.ClientSession, pd: FakePagerDuty) -> None:
    pd.timeout_next(seconds=30)
    client = EventsClient(http, pd.events_url, timeout=0.2)

    result = await client.send(trigger(), ROUTING_KEY)

    assert (result.outcome, result.status) == ("retry", None)
    assert "no answer within 0.2 s" in result.message
    assert pd.events == []


async def test_a_timeout_after_pagerduty_took_the_event_is_retried(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    # The answer is lost: sending again is safe, the dedup key makes it a no-op.
    pd.timeout_next(seconds=30, process=True)
    client = EventsClient(http, pd.events_url, timeout=0.2)

    lost = await client.send(trigger(), ROUTING_KEY)
    again = await client.send(trigger(), ROUTING_KEY)

    assert (lost.outcome, again.outcome) == ("retry", "accepted")
    assert [e.outcome for e in pd.events] == ["opened", "deduplicated"]


async def test_a_dropped_connection_is_retried(events: EventsClient, pd: FakePagerDuty) -> None:
    pd.drop_next()

    result = await events.send(trigger(), ROUTING_KEY)

    assert (result.outcome, result.status) == ("retry", None)
    assert "Disconnected" in result.message or "Connection" in result.message


async def test_a_refused_connection_is_retried(http: aiohttp.ClientSession) -> None:
    client = EventsClient(http, f"http://127.0.0.1:{closed_port()}/v2/enqueue")

    result = await client.send(trigger(), ROUTING_KEY)

    assert (result.outcome, result.status) == ("retry", None)
    assert "ClientConnectorError" in result.message
    assert ROUTING_KEY not in result.message


async def test_an_oversized_event_is_rejected_without_a_request(
    events: EventsClient, pd: FakePagerDuty
) -> None:
    body = trigger(custom_details={"blob": "x" * 600_000})

    result = await events.send(body, ROUTING_KEY)

    assert result.outcome == "rejected"
    assert result.status is None
    assert "over PagerDuty's limit of 512000" in result.message
    assert pd.requests == []


async def test_an_oversized_event_is_what_pagerduty_refuses(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    # The same body posted directly: the fake, like PagerDuty, answers 400.
    data = aiohttp.JsonPayload(
        {**trigger(custom_details={"blob": "x" * 600_000}), "routing_key": ROUTING_KEY}
    )
    async with http.post(pd.events_url, data=data) as response:
        assert response.status == 400


# REST API: alert keys of an incident


async def open_incidents(
    events: EventsClient, dedup_keys: list[str], *, routing_key: str = ROUTING_KEY
) -> None:
    for key in dedup_keys:
        assert (await events.send(trigger(key), routing_key)).outcome == "accepted"


async def test_alert_keys_of_an_incident(
    http: aiohttp.ClientSession, pd: FakePagerDuty, events: EventsClient
) -> None:
    await open_incidents(events, [DEDUP_KEY])
    incident = pd.open_incident(DEDUP_KEY)
    assert incident is not None
    rest = RestClient(http, pd.api_url, pd.api_token)

    keys = await rest.incident_alert_keys(incident.id)

    assert keys == [DEDUP_KEY]
    [request] = [r for r in pd.requests if r.api == "rest"]
    assert request.headers["Authorization"] == f"Token token={pd.api_token}"
    assert request.headers["Accept"] == "application/vnd.pagerduty+json;version=2"
    assert request.path.startswith(f"/incidents/{incident.id}/alerts?")


async def test_alert_keys_follow_pagination(http: aiohttp.ClientSession) -> None:
    # With alert grouping, every trigger of the routing key joins one incident.
    async with FakePagerDuty(alert_grouping=True) as pd:
        events = EventsClient(http, pd.events_url)
        keys = [f"key-{n:03d}" for n in range(230)]
        await open_incidents(events, keys)
        incident = pd.open_incident(keys[0])
        assert incident is not None
        rest = RestClient(http, pd.api_url + "/", pd.api_token)

        found = await rest.incident_alert_keys(incident.id)

        pages = [r.path for r in pd.requests if r.api == "rest"]
    assert found == keys
    assert len(pages) == 3
    assert [p.split("offset=")[1] for p in pages] == ["0", "100", "200"]


async def test_a_wrong_token_is_an_auth_error(
    http: aiohttp.ClientSession, pd: FakePagerDuty, events: EventsClient
) -> None:
    await open_incidents(events, [DEDUP_KEY])
    incident = pd.open_incident(DEDUP_KEY)
    assert incident is not None
    rest = RestClient(http, pd.api_url, "not-the-token")

    with pytest.raises(ApiAuthError) as caught:
        await rest.incident_alert_keys(incident.id)

    assert caught.value.status == 401
    assert "Authentication failed" in str(caught.value)
    assert "not-the-token" not in str(caught.value)
    assert not caught.value.retryable


async def test_an_unknown_incident_is_not_found(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    rest = RestClient(http, pd.api_url, pd.api_token)

    with pytest.raises(ApiNotFound) as caught:
        await rest.incident_alert_keys("PNOSUCH")

    assert caught.value.status == 404
    assert isinstance(caught.value, PagerDutyApiError)


async def test_an_id_is_quoted_into_the_path(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    rest = RestClient(http, pd.api_url, pd.api_token)

    with pytest.raises(ApiNotFound):
        await rest.incident_alert_keys("../../v2/enqueue")

    [request] = [r for r in pd.requests if r.api == "rest"]
    assert request.path.startswith("/incidents/..%2F..%2Fv2%2Fenqueue/alerts")


@pytest.mark.parametrize(
    ("inject", "status"),
    [
        pytest.param(lambda pd: pd.fail_next(api="rest"), 500, id="500"),
        pytest.param(lambda pd: pd.rate_limit_next(api="rest"), 429, id="429"),
        pytest.param(lambda pd: pd.go_down(503), 503, id="down"),
        # aiohttp itself repeats an idempotent GET once after a disconnect: drop both.
        pytest.param(lambda pd: pd.drop_next(2, api="rest"), None, id="dropped connection"),
        pytest.param(lambda pd: pd.timeout_next(seconds=30, api="rest"), None, id="timeout"),
    ],
)
async def test_unavailability_is_retryable(
    http: aiohttp.ClientSession, pd: FakePagerDuty, inject: Any, status: int | None
) -> None:
    inject(pd)
    rest = RestClient(http, pd.api_url, pd.api_token, timeout=0.2)

    with pytest.raises(ApiUnavailable) as caught:
        await rest.incident_alert_keys("PANY")

    assert caught.value.status == status
    assert caught.value.retryable
    assert pd.api_token not in str(caught.value)


async def test_a_refused_connection_is_unavailable(http: aiohttp.ClientSession) -> None:
    rest = RestClient(http, f"http://127.0.0.1:{closed_port()}", "token")

    with pytest.raises(ApiUnavailable) as caught:
        await rest.incident_alert_keys("PANY")

    assert caught.value.status is None


async def test_an_invalid_request_is_a_protocol_error(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    pd.reject_next(api="rest")
    rest = RestClient(http, pd.api_url, pd.api_token)

    with pytest.raises(ApiProtocolError) as caught:
        await rest.incident_alert_keys("PANY")

    assert caught.value.status == 400
    assert "Invalid Input Provided (code 2001)" in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("not json", id="not JSON"),
        pytest.param('{"limit": 100}', id="no alerts list"),
        pytest.param('{"alerts": [], "more": true}', id="more without alerts"),
    ],
)
async def test_odd_success_answers(
    aiohttp_server: Any, http: aiohttp.ClientSession, answer: str
) -> None:
    async def alerts(request: web.Request) -> web.Response:
        return web.Response(text=answer, content_type="application/json")

    app = web.Application()
    app.router.add_get("/incidents/{id}/alerts", alerts)
    server = await aiohttp_server(app)
    rest = RestClient(http, str(server.make_url("/")), "token")

    if answer.startswith('{"alerts"'):
        # An empty page ends the walk even when "more" says otherwise: no endless loop.
        assert await rest.incident_alert_keys("PANY") == []
    else:
        with pytest.raises(ApiProtocolError):
            await rest.incident_alert_keys("PANY")


async def test_endless_pagination_is_cut_off(
    aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    calls = 0

    async def alerts(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"alerts": [{"alert_key": "same"}], "more": True})

    app = web.Application()
    app.router.add_get("/incidents/{id}/alerts", alerts)
    server = await aiohttp_server(app)
    rest = RestClient(http, str(server.make_url("/")), "token")

    with pytest.raises(ApiProtocolError, match="more than 100 pages"):
        await rest.incident_alert_keys("PANY")
    assert calls == 100


async def test_an_empty_incident_id_is_refused(http: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="empty"):
        await RestClient(http, "http://127.0.0.1:9", "token").incident_alert_keys("")
