"""The fake PagerDuty against PagerDuty's documented behaviour (sources in its docstring)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.pagerduty import (
    INCIDENT_EVENT_TYPES,
    MAX_EVENT_BYTES,
    WEBHOOK_USER_AGENT,
    FakePagerDuty,
    encode_event,
    sign,
    signature_header,
)

JSON = dict[str, Any]
ROUTING_KEY = "0123456789abcdef0123456789abcdef"
OTHER_ROUTING_KEY = "fedcba9876543210fedcba9876543210"
DROP = object()


def trigger(**changes: Any) -> JSON:
    """A valid trigger event as documented; ``changes`` override fields, DROP removes them."""
    event: JSON = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "group-1",
        "payload": {
            "summary": "DISK at 99% on machine prod-datapipe03.example.com",
            "source": "prod-datapipe03.example.com",
            "severity": "critical",
        },
    }
    for name, value in changes.items():
        target = event
        if name.startswith("payload."):
            target, name = event["payload"], name.removeprefix("payload.")
        if value is DROP:
            target.pop(name, None)
        else:
            target[name] = value
    return event


def follow_up(action: str, dedup_key: str = "group-1", **changes: Any) -> JSON:
    """An acknowledge or resolve event, as in the documentation's examples."""
    event: JSON = {"routing_key": ROUTING_KEY, "dedup_key": dedup_key, "event_action": action}
    event.update(changes)
    return event


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(
    http: aiohttp.ClientSession, pd: FakePagerDuty, event: Any, *, client_timeout: float = 10.0
) -> tuple[int, JSON]:
    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    async with http.post(
        pd.events_url,
        data=raw,
        headers={"Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=client_timeout),
    ) as response:
        return response.status, await response.json()


async def rest(
    http: aiohttp.ClientSession, pd: FakePagerDuty, path: str, token: str | None = "fake-api-token"
) -> tuple[int, JSON]:
    headers = {"Accept": "application/vnd.pagerduty+json;version=2"}
    if token is not None:
        headers["Authorization"] = f"Token token={token}"
    async with http.get(pd.api_url + path, headers=headers) as response:
        return response.status, await response.json()


# Events API v2: accepted events


async def test_valid_trigger_is_accepted_with_the_documented_body(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    assert pd.events_url.endswith("/v2/enqueue")
    assert pd.events_url.startswith("http://127.0.0.1:")

    status, body = await send(http, pd, trigger())

    assert status == 202
    assert body == {"status": "success", "message": "Event processed", "dedup_key": "group-1"}
    [event] = pd.events
    assert (event.routing_key, event.event_action, event.dedup_key) == (
        ROUTING_KEY,
        "trigger",
        "group-1",
    )
    assert event.outcome == "opened"
    assert event.body == trigger()
    assert pd.incidents[event.incident_id or ""].status == "triggered"


async def test_every_documented_optional_field_is_accepted(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    event = trigger(
        **{
            "payload.timestamp": "2015-07-17T08:42:58.315+0000",
            "payload.component": "postgres",
            "payload.group": "prod-datapipe",
            "payload.class": "deploy",
            "payload.custom_details": {"ping time": "1500ms", "load avg": 0.75},
            "images": [{"src": "https://example.com/a.png", "href": "https://example.com/"}],
            "links": [{"href": "https://example.com/", "text": "Link text"}],
            "client": "Sample Monitoring Service",
            "client_url": "https://monitoring.example.com",
        }
    )

    status, _ = await send(http, pd, event)

    assert status == 202
    assert pd.events[0].body == event


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(trigger(dedup_key="k" * 255), id="dedup_key of 255 characters"),
        pytest.param(trigger(**{"payload.summary": "é" * 1024}), id="summary of 1024 characters"),
        pytest.param(trigger(**{"payload.timestamp": "2026-11-22T13:49:31Z"}), id="timestamp Z"),
        pytest.param(trigger(**{"payload.severity": "info"}), id="severity info"),
    ],
)
async def test_limits_are_inclusive(
    http: aiohttp.ClientSession, pd: FakePagerDuty, event: JSON
) -> None:
    status, body = await send(http, pd, event)

    assert (status, body["status"]) == (202, "success")


async def test_trigger_without_dedup_key_gets_a_generated_one(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    _, first = await send(http, pd, trigger(dedup_key=DROP))
    _, second = await send(http, pd, trigger(dedup_key=DROP))

    assert re.fullmatch(r"[0-9a-f]{32}", first["dedup_key"])
    assert first["dedup_key"] != second["dedup_key"]
    assert len(pd.incidents) == 2
    status, _ = await send(http, pd, follow_up("acknowledge", first["dedup_key"]))
    assert status == 202
    assert pd.events[-1].outcome == "acknowledged"


# Events API v2: invalid events


@pytest.mark.parametrize(
    ("event", "field"),
    [
        pytest.param(trigger(routing_key=DROP), "routing_key", id="no routing_key"),
        pytest.param(trigger(routing_key=""), "routing_key", id="blank routing_key"),
        pytest.param(trigger(routing_key=7), "routing_key", id="numeric routing_key"),
        pytest.param(trigger(event_action=DROP), "event_action", id="no event_action"),
        pytest.param(trigger(event_action="open"), "event_action", id="unknown event_action"),
        pytest.param(follow_up("acknowledge", dedup_key=""), "dedup_key", id="ack, no dedup_key"),
        pytest.param(
            {"routing_key": ROUTING_KEY, "event_action": "resolve"},
            "dedup_key",
            id="resolve, no dedup_key",
        ),
        pytest.param(trigger(dedup_key="k" * 256), "dedup_key", id="dedup_key of 256"),
        pytest.param(trigger(dedup_key=42), "dedup_key", id="numeric dedup_key"),
        pytest.param(trigger(payload=DROP), "payload", id="no payload"),
        pytest.param(trigger(payload="disk full"), "payload", id="payload not an object"),
        pytest.param(trigger(**{"payload.summary": DROP}), "payload.summary", id="no summary"),
        pytest.param(trigger(**{"payload.summary": "  "}), "payload.summary", id="blank summary"),
        pytest.param(
            trigger(**{"payload.summary": "x" * 1025}), "payload.summary", id="summary of 1025"
        ),
        pytest.param(trigger(**{"payload.source": DROP}), "payload.source", id="no source"),
        pytest.param(trigger(**{"payload.severity": DROP}), "payload.severity", id="no severity"),
        pytest.param(
            trigger(**{"payload.severity": "fatal"}), "payload.severity", id="unknown severity"
        ),
        pytest.param(
            trigger(**{"payload.severity": "CRITICAL"}), "payload.severity", id="severity case"
        ),
        pytest.param(
            trigger(**{"payload.timestamp": "yesterday"}), "payload.timestamp", id="bad timestamp"
        ),
        pytest.param(
            trigger(**{"payload.timestamp": 1437122578}), "payload.timestamp", id="epoch timestamp"
        ),
        pytest.param(
            trigger(**{"payload.component": 3}), "payload.component", id="numeric component"
        ),
        pytest.param(trigger(**{"payload.group": []}), "payload.group", id="group not a string"),
        pytest.param(trigger(**{"payload.class": {}}), "payload.class", id="class not a string"),
        pytest.param(
            trigger(**{"payload.custom_details": "text"}),
            "payload.custom_details",
            id="custom_details not an object",
        ),
        pytest.param(trigger(links={"href": "https://x"}), "links", id="links not an array"),
        pytest.param(trigger(links=[{"text": "t"}]), "links[0].href", id="link without href"),
        pytest.param(trigger(images=[{"alt": "a"}]), "images[0].src", id="image without src"),
        pytest.param(trigger(client=1), "client", id="numeric client"),
        pytest.param(trigger(client_url=["x"]), "client_url", id="client_url not a string"),
    ],
)
async def test_invalid_event_is_refused_with_the_documented_error_body(
    http: aiohttp.ClientSession, pd: FakePagerDuty, event: JSON, field: str
) -> None:
    status, body = await send(http, pd, event)

    assert status == 400
    assert body["status"] == "invalid event"
    assert body["message"] == "Event object is invalid"
    assert any(f"'{field}'" in error for error in body["errors"]), body["errors"]
    assert pd.events == []
    assert pd.incidents == {}


async def test_every_problem_is_listed(http: aiohttp.ClientSession, pd: FakePagerDuty) -> None:
    event = trigger(**{"payload.summary": DROP, "payload.source": DROP, "payload.severity": DROP})

    _, body = await send(http, pd, event)

    assert len(body["errors"]) == 3


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"trigger"', b"\xff\xfe"])
async def test_body_that_is_not_a_json_object_is_unrecognized(
    http: aiohttp.ClientSession, pd: FakePagerDuty, raw: bytes
) -> None:
    status, body = await send(http, pd, raw)

    assert status == 400
    # The example error body of the Events API v2 OpenAPI document.
    assert body == {
        "status": "Unrecognized object",
        "message": "Event object format is unrecognized",
        "errors": ["JSON parse error"],
    }
    assert pd.events == []


def sized(size: int) -> bytes:
    """A valid trigger event encoded to exactly ``size`` bytes."""
    empty = json.dumps(trigger(**{"payload.custom_details": {"pad": ""}})).encode()
    padded = trigger(**{"payload.custom_details": {"pad": "x" * (size - len(empty))}})
    raw = json.dumps(padded).encode()
    assert len(raw) == size
    return raw


async def test_event_of_512_kb_is_accepted_and_one_byte_more_refused(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    assert MAX_EVENT_BYTES == 512_000

    at_limit, _ = await send(http, pd, sized(MAX_EVENT_BYTES))
    over, body = await send(http, pd, sized(MAX_EVENT_BYTES + 1).replace(b"group-1", b"group-2"))

    assert at_limit == 202
    assert over == 400
    assert body["status"] == "invalid event"
    assert [event.dedup_key for event in pd.events] == ["group-1"]


async def test_oversize_answer_can_be_413(http: aiohttp.ClientSession) -> None:
    async with FakePagerDuty(oversize_status=413) as pd:
        status, _ = await send(http, pd, sized(MAX_EVENT_BYTES + 1))

    assert status == 413
    assert pd.events == []


async def test_unknown_routing_key_is_invalid_when_keys_are_declared(
    http: aiohttp.ClientSession,
) -> None:
    async with FakePagerDuty(routing_keys=[ROUTING_KEY]) as pd:
        known, _ = await send(http, pd, trigger())
        unknown, body = await send(http, pd, trigger(routing_key=OTHER_ROUTING_KEY))

    assert known == 202
    assert unknown == 400
    assert body["errors"] == ["Invalid routing key"]


# Events API v2: alert and incident state


async def test_triggers_with_one_dedup_key_open_one_incident(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    for _ in range(3):
        status, _ = await send(http, pd, trigger())
        assert status == 202

    assert [event.outcome for event in pd.events] == ["opened", "deduplicated", "deduplicated"]
    assert len(pd.incidents) == 1
    [alert] = pd.alerts.values()
    assert alert.trigger_count == 3


async def test_lifecycle_and_trigger_after_resolve_opens_a_new_incident(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    for event in (
        trigger(),
        follow_up("acknowledge"),
        trigger(),
        follow_up("resolve"),
        follow_up("resolve"),
        trigger(),
    ):
        status, _ = await send(http, pd, event)
        assert status == 202

    outcomes = [(event.event_action, event.outcome) for event in pd.events_for("group-1")]
    assert outcomes == [
        ("trigger", "opened"),
        ("acknowledge", "acknowledged"),
        ("trigger", "deduplicated"),
        ("resolve", "resolved"),
        ("resolve", "dropped"),
        ("trigger", "opened"),
    ]
    first, second = pd.incidents_for("group-1")
    assert first.id != second.id
    assert (first.status, second.status) == ("resolved", "triggered")
    assert pd.open_incident("group-1") is second
    assert re.fullmatch(r"P[A-Z0-9]{6}", first.id)


async def test_follow_ups_without_an_open_alert_are_accepted_and_dropped(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    ack, _ = await send(http, pd, follow_up("acknowledge", "never-triggered"))
    resolve, _ = await send(http, pd, follow_up("resolve", "never-triggered"))

    assert (ack, resolve) == (202, 202)
    assert [event.outcome for event in pd.events] == ["dropped", "dropped"]
    assert pd.incidents == {}


async def test_follow_up_from_another_routing_key_is_dropped(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    await send(http, pd, trigger())
    status, _ = await send(http, pd, follow_up("resolve", routing_key=OTHER_ROUTING_KEY))

    assert status == 202
    assert pd.events[-1].outcome == "dropped"
    incident = pd.open_incident("group-1", ROUTING_KEY)
    assert incident is not None
    assert incident.status == "triggered"


async def test_acknowledging_twice_changes_nothing_the_second_time(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    await send(http, pd, trigger())
    await send(http, pd, follow_up("acknowledge"))
    await send(http, pd, follow_up("acknowledge"))

    assert [event.outcome for event in pd.events] == ["opened", "acknowledged", "unchanged"]
    assert [event["event"]["event_type"] for event in pd.webhook_events] == [
        "incident.triggered",
        "incident.acknowledged",
    ]


async def test_alert_grouping_puts_alerts_of_a_routing_key_in_one_incident(
    http: aiohttp.ClientSession,
) -> None:
    async with FakePagerDuty(alert_grouping=True) as pd:
        for key in ("a", "b", "c"):
            await send(http, pd, trigger(dedup_key=key))
        await send(http, pd, follow_up("resolve", "a"))
        [incident] = pd.incidents.values()
        path = f"/incidents/{incident.id}/alerts"
        _, first_page = await rest(http, pd, path + "?limit=2")
        _, second_page = await rest(http, pd, path + "?limit=2&offset=2")
        _, by_key = await rest(http, pd, path + "?alert_key=b")
        still_open = incident.status
        await send(http, pd, follow_up("resolve", "b"))
        await send(http, pd, follow_up("resolve", "c"))

    assert [alert["alert_key"] for alert in first_page["alerts"]] == ["a", "b"]
    assert first_page["more"] is True
    assert [alert["alert_key"] for alert in second_page["alerts"]] == ["c"]
    assert second_page["more"] is False
    assert [alert["alert_key"] for alert in by_key["alerts"]] == ["b"]
    assert still_open == "triggered"
    assert incident.status == "resolved"
    assert [event["event"]["event_type"] for event in pd.webhook_events] == [
        "incident.triggered",
        "incident.resolved",
    ]


async def test_urgency_follows_severity(http: aiohttp.ClientSession, pd: FakePagerDuty) -> None:
    await send(http, pd, trigger(dedup_key="a", **{"payload.severity": "error"}))
    await send(http, pd, trigger(dedup_key="b", **{"payload.severity": "warning"}))

    [high] = pd.incidents_for("a")
    [low] = pd.incidents_for("b")
    assert (high.urgency, low.urgency) == ("high", "low")


# failure injection


async def test_fail_next_answers_5xx_then_recovers(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    pd.fail_next(2)
    pd.fail_next(1, status=502)

    statuses = [(await send(http, pd, trigger()))[0] for _ in range(4)]

    assert statuses == [500, 500, 502, 202]
    assert [event.outcome for event in pd.events] == ["opened"]
    assert [record.fault for record in pd.requests] == ["status", "status", "status", None]
    assert pd.pending_faults() == 0


async def test_rate_limit_next_answers_429(http: aiohttp.ClientSession, pd: FakePagerDuty) -> None:
    pd.rate_limit_next()

    throttled, _ = await send(http, pd, trigger())
    accepted, _ = await send(http, pd, trigger())

    assert (throttled, accepted) == (429, 202)
    assert len(pd.events) == 1


async def test_reject_next_answers_400_with_the_error_body(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    pd.reject_next()

    status, body = await send(http, pd, trigger())

    assert status == 400
    assert (body["status"], body["message"]) == ("invalid event", "Event object is invalid")
    assert body["errors"]
    assert pd.events == []


async def test_timeout_next_outlasts_the_client_and_records_nothing(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    pd.timeout_next(seconds=60)

    with pytest.raises(TimeoutError):
        await send(http, pd, trigger(), client_timeout=0.2)
    status, _ = await send(http, pd, trigger())

    assert status == 202
    assert [event.outcome for event in pd.events] == ["opened"]
    assert [record.fault for record in pd.requests] == ["timeout", None]


async def test_timeout_after_processing_makes_the_retry_a_duplicate(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    pd.timeout_next(seconds=60, process=True)

    with pytest.raises(TimeoutError):
        await send(http, pd, trigger(), client_timeout=0.2)
    status, _ = await send(http, pd, trigger())

    assert status == 202
    assert [event.outcome for event in pd.events] == ["opened", "deduplicated"]
    assert len(pd.incidents) == 1


async def test_drop_next_closes_the_connection_without_an_answer(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    pd.drop_next()

    with pytest.raises(aiohttp.ClientConnectionError):
        await send(http, pd, trigger())
    status, _ = await send(http, pd, trigger())

    assert status == 202
    assert len(pd.events) == 1


async def test_down_until_told_otherwise(http: aiohttp.ClientSession, pd: FakePagerDuty) -> None:
    pd.go_down()
    pd.rate_limit_next()

    while_down = [(await send(http, pd, trigger()))[0] for _ in range(3)]
    rest_down, _ = await rest(http, pd, "/incidents/PNOTHER")
    pd.come_back()
    after = [(await send(http, pd, trigger()))[0] for _ in range(2)]

    assert while_down == [503, 503, 503]
    assert rest_down == 503
    assert after == [429, 202]
    assert len(pd.events) == 1


async def test_rate_limit_per_minute_per_routing_key(http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    async with FakePagerDuty(rate_limit_per_minute=2, monotonic=lambda: now[0]) as pd:
        first = [(await send(http, pd, trigger()))[0] for _ in range(3)]
        other_key, _ = await send(http, pd, trigger(routing_key=OTHER_ROUTING_KEY))
        now[0] += 60.0
        later, _ = await send(http, pd, trigger())

    assert first == [202, 202, 429]
    assert other_key == 202
    assert later == 202
    assert len(pd.events) == 4


async def test_the_rate_limit_window_is_rolling_and_scales_with_the_rate(
    http: aiohttp.ClientSession,
) -> None:
    now = [1000.0]
    # 240 a minute over a 5 s window: 20 per 5 s, counted back from each arrival.
    async with FakePagerDuty(
        rate_limit_per_minute=240, rate_limit_window=5.0, monotonic=lambda: now[0]
    ) as pd:
        early = [(await send(http, pd, trigger()))[0] for _ in range(10)]
        now[0] += 3.0
        late = [(await send(http, pd, trigger()))[0] for _ in range(11)]
        now[0] += 2.0  # the early ten left the window, the late ten did not
        after = [(await send(http, pd, trigger()))[0] for _ in range(11)]

    assert early == [202] * 10
    assert late == [202] * 10 + [429]
    assert after == [202] * 10 + [429]
    # Each request is stamped with its arrival on the same clock.
    assert [r.at for r in pd.requests[:11]] == [1000.0] * 10 + [1003.0]


async def test_a_429_carries_retry_after_only_when_asked(http: aiohttp.ClientSession) -> None:
    async with FakePagerDuty(rate_limit_per_minute=1) as pd:
        await send(http, pd, trigger())
        pd.rate_limit_next(retry_after="12")
        async with http.post(pd.events_url, json=trigger()) as injected:
            advised = injected.headers.get("Retry-After")
        async with http.post(pd.events_url, json=trigger()) as own:
            documented = own.headers.get("Retry-After")

    assert (injected.status, advised) == (429, "12")
    # PagerDuty's own 429 documents no Retry-After.
    assert (own.status, documented) == (429, None)


async def test_wait_for_events_returns_once_enough_arrived(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    await send(http, pd, trigger())

    events = await pd.wait_for_events(1)

    assert [event.dedup_key for event in events] == ["group-1"]
    with pytest.raises(TimeoutError):
        await pd.wait_for_events(2, timeout=0.05)


# REST API


async def test_alerts_of_an_incident_carry_the_dedup_key_as_alert_key(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    await send(http, pd, trigger(links=[{"href": "https://runbook.example.com"}]))
    incident = pd.open_incident("group-1")
    assert incident is not None

    status, body = await rest(http, pd, f"/incidents/{incident.id}/alerts")

    assert status == 200
    assert (body["limit"], body["offset"], body["more"], body["total"]) == (25, 0, False, None)
    [alert] = body["alerts"]
    assert alert["alert_key"] == "group-1"
    assert alert["type"] == "alert"
    assert alert["status"] == "triggered"
    assert alert["severity"] == "critical"
    assert alert["incident"] == {"id": incident.id, "type": "incident_reference"}
    assert alert["self"] == f"{pd.api_url}/incidents/{incident.id}/alerts/{alert['id']}"
    assert alert["body"]["contexts"] == [{"type": "link", "href": "https://runbook.example.com"}]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", alert["created_at"])


@pytest.mark.parametrize(
    "token", [None, "wrong-token", ""], ids=["no header", "wrong token", "empty token"]
)
async def test_rest_needs_the_token(
    http: aiohttp.ClientSession, pd: FakePagerDuty, token: str | None
) -> None:
    await send(http, pd, trigger())
    incident = pd.open_incident("group-1")
    assert incident is not None

    status, body = await rest(http, pd, f"/incidents/{incident.id}/alerts", token=token)

    assert status == 401
    assert body["error"]["code"] == 2006


async def test_bearer_scheme_is_not_pagerdutys(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    async with http.get(
        f"{pd.api_url}/incidents/PNOTHER", headers={"Authorization": "Bearer fake-api-token"}
    ) as response:
        assert response.status == 401


async def test_unknown_incident_is_not_found(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    status, body = await rest(http, pd, "/incidents/PNOTHER/alerts")

    assert status == 404
    assert body == {"error": {"message": "Not Found", "code": 2100}}


async def test_alert_filters_and_pagination(http: aiohttp.ClientSession, pd: FakePagerDuty) -> None:
    await send(http, pd, trigger())
    await send(http, pd, follow_up("resolve"))
    [incident] = pd.incidents_for("group-1")
    path = f"/incidents/{incident.id}/alerts"

    _, resolved = await rest(http, pd, path + "?statuses[]=resolved&total=true")
    _, triggered = await rest(http, pd, path + "?statuses[]=triggered")
    _, by_key = await rest(http, pd, path + "?alert_key=other")
    _, clamped = await rest(http, pd, path + "?limit=500")
    _, past_end = await rest(http, pd, path + "?offset=1")
    bad, _ = await rest(http, pd, path + "?limit=many")

    assert [alert["status"] for alert in resolved["alerts"]] == ["resolved"]
    assert resolved["total"] == 1
    assert triggered["alerts"] == []
    assert by_key["alerts"] == []
    assert clamped["limit"] == 100
    assert (past_end["alerts"], past_end["more"]) == ([], False)
    assert bad == 400


async def test_get_incident_by_id_or_number(http: aiohttp.ClientSession, pd: FakePagerDuty) -> None:
    await send(http, pd, trigger())
    await send(http, pd, follow_up("acknowledge"))
    incident = pd.open_incident("group-1")
    assert incident is not None

    status, by_id = await rest(http, pd, f"/incidents/{incident.id}")
    _, by_number = await rest(http, pd, f"/incidents/{incident.number}")

    assert status == 200
    assert by_id == by_number
    shown = by_id["incident"]
    assert (shown["id"], shown["type"], shown["status"]) == (
        incident.id,
        "incident",
        "acknowledged",
    )
    assert shown["incident_key"] is None
    assert shown["alert_counts"] == {"all": 1, "triggered": 1, "resolved": 0}


async def test_incident_key_can_be_the_dedup_key(http: aiohttp.ClientSession) -> None:
    async with FakePagerDuty(incident_key_is_dedup_key=True) as pd:
        await send(http, pd, trigger())
        incident = pd.open_incident("group-1")
        assert incident is not None
        _, body = await rest(http, pd, f"/incidents/{incident.id}")

    assert body["incident"]["incident_key"] == "group-1"


async def test_rest_failure_injection(http: aiohttp.ClientSession, pd: FakePagerDuty) -> None:
    pd.fail_next(api="rest")
    pd.rate_limit_next(api="rest")

    first, error = await rest(http, pd, "/incidents/PNOTHER")
    second, throttled = await rest(http, pd, "/incidents/PNOTHER")
    third, _ = await rest(http, pd, "/incidents/PNOTHER")

    assert (first, second, third) == (500, 429, 404)
    assert error["error"]["code"] == 2000
    assert throttled["error"]["code"] == 2020
    assert pd.pending_faults("events") == 0


# webhooks v3


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    # RFC 4231 test case 2, an HMAC-SHA256 vector computed by nobody here.
    assert sign(b"what do ya want for nothing?", "Jefe") == (
        "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    body = '{"event":{"summary":"naïve ☃"}}'.encode()
    expected = hmac.new(b"s3cr3t", body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cr3t") == f"v1={expected}"
    assert signature_header(body, ["old", "new"]) == f"{sign(body, 'old')},{sign(body, 'new')}"


class Receiver:
    """A webhook endpoint that records what it gets and answers from a script."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: deque[int] = deque()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=self.answers.popleft() if self.answers else 202)

    def events(self) -> list[JSON]:
        return [json.loads(body)["event"] for _, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/webhook/pagerduty", target.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    target.url = f"http://{host}:{port}/webhook/pagerduty"
    yield target
    await runner.cleanup()


def verifies(headers: dict[str, str], body: bytes, secret: str) -> bool:
    """The documentation's verification algorithm, written independently of the fake."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    offered = [
        part.removeprefix("v1=")
        for part in headers["X-PagerDuty-Signature"].split(",")
        if part.startswith("v1=")
    ]
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


async def opened(http: aiohttp.ClientSession, pd: FakePagerDuty) -> str:
    await send(http, pd, trigger())
    incident = pd.open_incident("group-1")
    assert incident is not None
    return incident.id


async def test_delivery_carries_pagerdutys_headers_and_signatures(
    http: aiohttp.ClientSession, pd: FakePagerDuty, receiver: Receiver
) -> None:
    event = pd.webhook_event("incident.acknowledged", await opened(http, pd))

    status = await pd.deliver(
        receiver.url, event, ["old-secret", "new-secret"], webhook_id="wh-1", subscription_id="PS1"
    )

    assert status == 202
    [(headers, body)] = receiver.received
    assert headers["User-Agent"] == WEBHOOK_USER_AGENT == "PagerDuty-Webhook/V3.0"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Webhook-Id"] == "wh-1"
    assert headers["X-Webhook-Subscription"] == "PS1"
    assert re.fullmatch(r"v1=[0-9a-f]{64},v1=[0-9a-f]{64}", headers["X-PagerDuty-Signature"])
    assert verifies(headers, body, "old-secret")
    assert verifies(headers, body, "new-secret")
    assert not verifies(headers, body, "another-secret")
    assert body == encode_event(event)
    assert json.loads(body) == event


async def test_tampered_body_does_not_match_its_signature(
    http: aiohttp.ClientSession, pd: FakePagerDuty, receiver: Receiver
) -> None:
    event = pd.webhook_event("incident.resolved", await opened(http, pd))
    tampered = encode_event(event).replace(b"resolved", b"triggered")

    await pd.deliver(receiver.url, event, "secret", body=tampered)

    [(headers, body)] = receiver.received
    assert body == tampered
    assert not verifies(headers, body, "secret")


@pytest.mark.parametrize("event_type", INCIDENT_EVENT_TYPES)
async def test_envelope_is_shaped_like_the_documentation(
    http: aiohttp.ClientSession, pd: FakePagerDuty, event_type: str
) -> None:
    incident_id = await opened(http, pd)

    envelope = pd.webhook_event(event_type, incident_id, message="Rolling back")

    assert list(envelope) == ["event"]
    event = envelope["event"]
    assert set(event) == {
        "id",
        "event_type",
        "resource_type",
        "occurred_at",
        "agent",
        "client",
        "data",
    }
    assert (event["event_type"], event["resource_type"]) == (event_type, "incident")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["occurred_at"])
    data = event["data"]
    if event_type == "incident.status_update_published":
        assert data["type"] == "incident_status_update"
        assert data["message"] == "Rolling back"
        assert data["incident"]["id"] == incident_id
        assert data["incident"]["type"] == "incident_reference"
    else:
        assert data["type"] == "incident"
        assert data["id"] == incident_id
        assert data["incident_key"] is None
        for name in ("self", "html_url", "number", "status", "title", "urgency", "service"):
            assert data[name] is not None, name
        for name in ("assignees", "escalation_policy", "priority", "teams", "created_at"):
            assert name in data, name


@pytest.mark.parametrize(
    ("act", "event_type", "status"),
    [
        (FakePagerDuty.acknowledge_incident, "incident.acknowledged", "acknowledged"),
        (FakePagerDuty.resolve_incident, "incident.resolved", "resolved"),
        (FakePagerDuty.escalate_incident, "incident.escalated", "triggered"),
        (FakePagerDuty.unacknowledge_incident, "incident.unacknowledged", "triggered"),
    ],
)
async def test_actions_in_pagerduty_change_state_and_emit_their_webhook(
    http: aiohttp.ClientSession,
    pd: FakePagerDuty,
    act: Callable[[FakePagerDuty, str], JSON],
    event_type: str,
    status: str,
) -> None:
    incident_id = await opened(http, pd)

    event = act(pd, incident_id)

    assert event["event"]["event_type"] == event_type
    assert event["event"]["data"]["status"] == status
    assert pd.webhook_events[-1] is event
    _, shown = await rest(http, pd, f"/incidents/{incident_id}")
    assert shown["incident"]["status"] == status


async def test_resolved_in_pagerduty_then_trigger_opens_a_new_incident(
    http: aiohttp.ClientSession, pd: FakePagerDuty
) -> None:
    first = await opened(http, pd)
    pd.resolve_incident(first)
    late_resolve, _ = await send(http, pd, follow_up("resolve"))
    reopen = pd.reopen_incident(first)
    await send(http, pd, trigger())

    assert late_resolve == 202
    assert pd.events[-2].outcome == "dropped"
    assert reopen["event"]["data"]["reopened_at"] is not None
    second = pd.open_incident("group-1")
    assert second is not None
    assert second.id != first


async def test_subscription_delivers_state_changes_in_order(
    http: aiohttp.ClientSession, pd: FakePagerDuty, receiver: Receiver
) -> None:
    subscription = pd.subscribe(receiver.url, "secret")
    incident_id = await opened(http, pd)
    await send(http, pd, follow_up("acknowledge"))
    pd.publish_status_update(incident_id, "Mitigated")
    await send(http, pd, follow_up("resolve"))

    await pd.drain_webhooks()

    assert [event["event_type"] for event in receiver.events()] == [
        "incident.triggered",
        "incident.acknowledged",
        "incident.status_update_published",
        "incident.resolved",
    ]
    assert all(verifies(headers, body, "secret") for headers, body in receiver.received)
    assert {headers["X-Webhook-Subscription"] for headers, _ in receiver.received} == {
        subscription.id
    }
    assert receiver.events()[1]["agent"] == pd.service


async def test_subscription_retries_5xx_and_429_with_the_same_webhook_id(
    http: aiohttp.ClientSession, pd: FakePagerDuty, receiver: Receiver
) -> None:
    receiver.answers.extend([500, 429])
    subscription = pd.subscribe(receiver.url, "secret", retry_delays=(0.01, 0.01, 0.01))

    await opened(http, pd)
    await pd.drain_webhooks()

    assert [attempt.status for attempt in subscription.attempts] == [500, 429, 202]
    assert len({headers["X-Webhook-Id"] for headers, _ in receiver.received}) == 1


async def test_subscription_drops_a_webhook_answered_4xx(
    http: aiohttp.ClientSession, pd: FakePagerDuty, receiver: Receiver
) -> None:
    receiver.answers.append(401)
    subscription = pd.subscribe(
        receiver.url, "secret", events=["incident.triggered"], retry_delays=(0.01,)
    )

    await opened(http, pd)
    await send(http, pd, trigger(dedup_key="group-2"))
    await send(http, pd, follow_up("acknowledge", "group-2"))
    await pd.drain_webhooks()

    assert [attempt.status for attempt in subscription.attempts] == [401, 202]
    assert [event["event_type"] for event in receiver.events()] == ["incident.triggered"] * 2
