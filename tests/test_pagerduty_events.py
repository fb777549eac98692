"""Events API v2 bodies: dedup keys, trigger contents, limits, and acceptance by the fake PagerDuty.

The dedup key is checked three ways: against SHA-256 values computed outside Python
(``printf '%s' KEY | sha256sum``), and against what a real Alertmanager's own
PagerDuty integration sends for the same group (end to end).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.incidents import AlertState, Incident
from sidecar.pagerduty.client import EventsClient
from sidecar.pagerduty.events import (
    CLIENT,
    MAX_EVENT_BYTES,
    MAX_GENERATOR_LINKS,
    build_acknowledge,
    build_resolve,
    build_trigger,
    dedup_key_for_alert,
    dedup_key_for_group,
    encode_event,
)
from tests.fakes.pagerduty import FakePagerDuty, validate_event
from tests.support.alertmanager import make_alert
from tests.support.fixtures import AlertmanagerFactory

ROUTING_KEY = "0123456789abcdef0123456789abcdef"
GROUP_KEY = '{}:{alertname="DBDown"}'
# printf '%s' '{}:{alertname="DBDown"}' | sha256sum
GROUP_KEY_SHA256 = "7ad2c5e2d92218899a9c4638d9dfc7c313e0841aae4928b16ef80cffc651b1a8"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def alert(
    fingerprint: str,
    *,
    status: str = "firing",
    starts_at: float = T0,
    ends_at: float | None = None,
    severity: str = "P1",
    labels: dict[str, str] | None = None,
    generator_url: str = "http://prometheus.example:9090/graph?g0.expr=up%3D%3D0",
) -> AlertState:
    return AlertState(
        fingerprint=fingerprint,
        status=status,  # type: ignore[arg-type]
        starts_at=starts_at,
        ends_at=ends_at,
        severity=severity,
        labels={"alertname": "DBDown", "instance": f"db-{fingerprint[-1]}"} | (labels or {}),
        generator_url=generator_url,
    )


def incident(*alerts: AlertState, **changes: Any) -> Incident:
    fields: dict[str, Any] = {
        "id": "a1b2c3d4e5f60718",
        "key": GROUP_KEY,
        "group_key": GROUP_KEY,
        "receiver": "sidecar",
        "state": "triggered",
        "severity": "P1",
        "team": "database",
        "title": "DBDown: the primary database is down",
        "labels": {"alertname": "DBDown"},
        "external_url": "http://alertmanager.example:9093",
        "started_at": T0,
        "triggered_at": T0 + 30,
        "alerts": {a.fingerprint: a for a in alerts},
    }
    fields.update(changes)
    return Incident(**fields)


def trigger(inc: Incident, **options: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "pagerduty_severity": "critical",
        "dedup_key": dedup_key_for_group(inc.group_key),
        "alertmanager_url": None,
        "incident_url": "https://sidecar.example/api/v1/incidents/a1b2c3d4e5f60718",
    }
    kwargs.update(options)
    return build_trigger(inc, **kwargs)


def size(body: dict[str, Any]) -> int:
    return len(encode_event(body, ROUTING_KEY))


# dedup keys


@pytest.mark.parametrize(
    ("group_key", "expected"),
    [
        (GROUP_KEY, GROUP_KEY_SHA256),
        # printf '%s' '{}/{team="db"}:{alertname="DBDown", instance="db-1"}' | sha256sum
        (
            '{}/{team="db"}:{alertname="DBDown", instance="db-1"}',
            "e42483f602b09603a6ebbe45fb686df1dc143a6b79e2d6eb0f983b2e801b8fb9",
        ),
        # printf '%s' '{}:{alertname="Ünïcode"}' | sha256sum  (UTF-8 bytes, as Go hashes)
        (
            '{}:{alertname="Ünïcode"}',
            "78e02e2ae8bdae3e9c8257fa006a79bc53d93b6581be69e9a13d6b488e32f1ff",
        ),
    ],
)
def test_group_dedup_key_is_the_hex_sha256_of_the_group_key(group_key: str, expected: str) -> None:
    assert dedup_key_for_group(group_key) == expected


def test_alert_dedup_key_is_the_hex_sha256_of_the_fingerprint() -> None:
    # printf '%s' '0123456789abcdef' | sha256sum
    expected = "9f9f5111f7b27a781f1f1ddde5ebc2dd2b796bfc7365c9c28b548e564176929f"

    assert dedup_key_for_alert(GROUP_KEY, "0123456789abcdef") == expected
    # Stable when routes or grouping change, and whatever the case of the hex digits.
    assert dedup_key_for_alert('{}/{team="db"}:{instance="db-1"}', "0123456789ABCDEF") == expected
    assert dedup_key_for_alert(GROUP_KEY, "0123456789abcdee") != expected


def test_empty_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="group key"):
        dedup_key_for_group("")
    with pytest.raises(ValueError, match="fingerprint"):
        dedup_key_for_alert(GROUP_KEY, "")


# trigger contents


def test_trigger_body() -> None:
    firing = alert("000000000000000a", labels={"service": "payments-db"})
    resolved = alert(
        "000000000000000b", status="resolved", starts_at=T0 - 60, ends_at=T0 + 120, severity="P2"
    )
    inc = incident(firing, resolved)

    body = trigger(inc)

    assert "routing_key" not in body
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == GROUP_KEY_SHA256
    assert body["client"] == CLIENT
    assert body["client_url"] == "https://sidecar.example/api/v1/incidents/a1b2c3d4e5f60718"
    payload = body["payload"]
    assert payload["summary"] == "[P1] DBDown: the primary database is down"
    assert payload["source"] == "alertmanager.example:9093"
    assert payload["severity"] == "critical"
    assert payload["timestamp"] == "2023-11-14T22:13:20.000+00:00"
    assert payload["group"] == "database"
    assert payload["class"] == "DBDown"
    assert "component" not in payload  # the two alerts disagree on "service"
    details = payload["custom_details"]
    assert details["incident_id"] == "a1b2c3d4e5f60718"
    assert details["severity"] == "P1"
    assert details["team"] == "database"
    assert details["state"] == "triggered"
    assert details["triggered_at"] == "2023-11-14T22:13:50.000+00:00"
    assert details["alert_counts"] == {"firing": 1, "resolved": 1, "total": 2}
    assert details["labels"] == {"alertname": "DBDown"}
    assert [a["fingerprint"] for a in details["firing"]] == ["000000000000000a"]
    assert details["firing"][0]["labels"] == {
        "alertname": "DBDown",
        "instance": "db-a",
        "service": "payments-db",
    }
    assert details["firing"][0]["ends_at"] is None
    assert details["resolved"] == [
        {
            "fingerprint": "000000000000000b",
            "status": "resolved",
            "severity": "P2",
            "starts_at": "2023-11-14T22:12:20.000+00:00",
            "ends_at": "2023-11-14T22:15:20.000+00:00",
            "labels": {"alertname": "DBDown", "instance": "db-b"},
            "generator_url": "http://prometheus.example:9090/graph?g0.expr=up%3D%3D0",
        }
    ]
    assert "alerts_omitted" not in details
    assert validate_event({**body, "routing_key": ROUTING_KEY}) == []


@pytest.mark.parametrize(
    ("labels", "alert_labels", "component"),
    [
        ({"alertname": "DBDown", "service": "api"}, {}, "api"),
        ({"alertname": "DBDown", "component": "disk"}, {}, "disk"),
        ({"alertname": "DBDown", "service": "api", "component": "disk"}, {}, "api"),
        ({"alertname": "DBDown"}, {"component": "etcd"}, "etcd"),  # shared by every alert
        ({"alertname": "DBDown"}, {}, None),
    ],
)
def test_component_comes_from_service_or_component(
    labels: dict[str, str], alert_labels: dict[str, str], component: str | None
) -> None:
    inc = incident(
        alert("000000000000000a", labels=alert_labels),
        alert("000000000000000b", labels=alert_labels),
        labels=labels,
    )

    assert trigger(inc)["payload"].get("component") == component


def test_summary_is_capped_at_1024_characters() -> None:
    inc = incident(alert("000000000000000a"), title="é" * 5000)

    summary = trigger(inc)["payload"]["summary"]

    assert len(summary) == 1024
    assert summary.startswith("[P1] éé")
    assert summary.endswith("…")


def test_summary_is_never_blank() -> None:
    inc = incident(alert("000000000000000a"), title="  ")
    bare = incident(alert("000000000000000a", labels={"alertname": ""}), title="", labels={})

    assert trigger(inc)["payload"]["summary"] == "[P1] DBDown"
    assert trigger(bare)["payload"]["summary"] == "[P1] incident a1b2c3d4e5f60718"


@pytest.mark.parametrize(
    ("external_url", "alertmanager_url", "receiver", "source"),
    [
        ("http://am.example:9093", None, "sidecar", "am.example:9093"),
        (
            "http://am.example:9093",
            "https://alerts.example.com/am/",
            "sidecar",
            "alerts.example.com",
        ),
        ("https://user:secret@am.example/", None, "sidecar", "am.example"),
        ("http://[::1]:9093", None, "sidecar", "[::1]:9093"),
        ("", None, "team-db-pager", "team-db-pager"),
        ("not a url", None, "team-db-pager", "team-db-pager"),
        ("", None, "", CLIENT),
    ],
)
def test_source_is_alertmanagers_host_or_the_receiver(
    external_url: str, alertmanager_url: str | None, receiver: str, source: str
) -> None:
    inc = incident(alert("000000000000000a"), external_url=external_url, receiver=receiver)

    body = trigger(inc, alertmanager_url=alertmanager_url)

    assert body["payload"]["source"] == source
    assert "secret" not in json.dumps(body)


def test_links_to_generators_incident_and_alertmanager() -> None:
    same = "http://prometheus.example:9090/graph?g0.expr=up%3D%3D0"
    inc = incident(
        alert("000000000000000a", generator_url=same),
        alert("000000000000000b", generator_url=same),
        alert("000000000000000c", generator_url="http://other-prometheus:9090/graph?g0.expr=x"),
        alert("000000000000000d", generator_url=""),
        alert("000000000000000e", generator_url="javascript:alert(1)"),
        alert("000000000000000f", generator_url="http://u:p@prom:9090/graph"),
        receiver="team db",
    )

    links = trigger(inc)["links"]

    assert links == [
        {"href": same, "text": "Source of DBDown"},
        {"href": "http://other-prometheus:9090/graph?g0.expr=x", "text": "Source of DBDown"},
        {"href": "http://prom:9090/graph", "text": "Source of DBDown"},
        {
            "href": "https://sidecar.example/api/v1/incidents/a1b2c3d4e5f60718",
            "text": f"Incident a1b2c3d4e5f60718 in {CLIENT}",
        },
        {
            # As Alertmanager's own __alertmanagerURL template.
            "href": "http://alertmanager.example:9093/#/alerts?receiver=team+db",
            "text": "Alertmanager",
        },
    ]


def test_without_urls_there_are_no_links_and_no_client_url() -> None:
    inc = incident(alert("000000000000000a", generator_url=""), external_url="")

    body = trigger(inc, incident_url=None)

    assert body["links"] == []
    assert "client_url" not in body
    assert validate_event({**body, "routing_key": ROUTING_KEY}) == []


def test_client_url_falls_back_to_alertmanager() -> None:
    body = trigger(incident(alert("000000000000000a")), incident_url=None)

    assert body["client_url"] == "http://alertmanager.example:9093/#/alerts?receiver=sidecar"


def test_generator_links_are_bounded() -> None:
    alerts = [
        alert(f"{n:016x}", generator_url=f"http://prometheus-{n}:9090/graph") for n in range(50)
    ]

    links = trigger(incident(*alerts))["links"]

    assert len(links) == MAX_GENERATOR_LINKS + 2
    assert links[0]["href"] == "http://prometheus-0:9090/graph"


def test_huge_label_values_are_capped() -> None:
    inc = incident(
        alert("000000000000000a", labels={"query": "q" * 100_000, "k" * 5000: "v"}),
        labels={"alertname": "DBDown", "service": "s" * 100_000},
    )

    body = trigger(inc)

    details = body["payload"]["custom_details"]
    labels = details["firing"][0]["labels"]
    assert len(labels["query"]) == 1024
    assert labels["query"].endswith("…")
    assert ("k" * 1023 + "…") in labels
    assert len(details["labels"]["service"]) == 1024
    assert len(body["payload"]["component"]) == 1024
    assert "alerts_omitted" not in details


def test_an_oversized_group_drops_resolved_alerts_first_and_says_so() -> None:
    big = {f"label_{i}": "x" * 1000 for i in range(20)}  # about 20 KB of labels per alert
    firing = [alert(f"{n:016x}", starts_at=T0 + n, labels=big) for n in range(20)]
    resolved = [
        alert(f"{n:016x}", status="resolved", ends_at=T0 + 500, labels=big) for n in range(20, 60)
    ]
    inc = incident(*firing, *resolved)

    body = trigger(inc)

    details = body["payload"]["custom_details"]
    assert size(body) <= MAX_EVENT_BYTES
    assert details["alert_counts"] == {"firing": 20, "resolved": 40, "total": 60}
    kept_resolved = len(details["resolved"])
    assert len(details["firing"]) == 20
    assert 0 < kept_resolved < 40
    assert details["alerts_omitted"] == 40 - kept_resolved
    # As many as fit: one more would not.
    assert size(body) + 21_000 > MAX_EVENT_BYTES


def test_an_oversized_firing_group_keeps_the_earliest_alerts() -> None:
    big = {f"label_{i}": "x" * 1000 for i in range(20)}
    firing = [alert(f"{n:016x}", starts_at=T0 + 1000 - n, labels=big) for n in range(100)]

    body = trigger(incident(*firing))

    details = body["payload"]["custom_details"]
    kept = details["firing"]
    assert size(body) <= MAX_EVENT_BYTES
    assert 0 < len(kept) < 100
    assert details["alerts_omitted"] == 100 - len(kept)
    assert details["resolved"] == []
    starts = [a["starts_at"] for a in kept]
    assert starts == sorted(starts)
    assert kept[0]["fingerprint"] == f"{99:016x}"  # the one that started first


def test_thousands_of_group_labels_are_dropped_last() -> None:
    labels = {f"label_{i}": "y" * 1000 for i in range(1000)}  # about 1 MB of group labels
    inc = incident(
        alert("000000000000000a"),
        alert("000000000000000b"),
        labels={"alertname": "DBDown", **labels},
    )

    body = trigger(inc)

    details = body["payload"]["custom_details"]
    assert size(body) <= MAX_EVENT_BYTES
    assert details["labels"] == {}
    assert details["labels_omitted"] == 1001
    # Without the group labels, the alerts fit again.
    assert "alerts_omitted" not in details
    assert len(details["firing"]) == 2
    assert body["payload"]["class"] == "DBDown"


def test_huge_group_labels_and_alerts_are_both_trimmed() -> None:
    group = {f"label_{i}": "y" * 1000 for i in range(1000)}
    big = {f"label_{i}": "x" * 1000 for i in range(20)}
    inc = incident(
        *(alert(f"{n:016x}", starts_at=T0 + n, labels=big) for n in range(60)),
        labels={"alertname": "DBDown", **group},
    )

    body = trigger(inc)

    details = body["payload"]["custom_details"]
    assert size(body) <= MAX_EVENT_BYTES
    assert details["labels_omitted"] == 1001
    assert 0 < len(details["firing"]) < 60
    assert details["alerts_omitted"] == 60 - len(details["firing"])


def test_invalid_arguments_are_refused() -> None:
    inc = incident(alert("000000000000000a"))

    with pytest.raises(ValueError, match="severity"):
        trigger(inc, pagerduty_severity="P1")
    with pytest.raises(ValueError, match="255"):
        trigger(inc, dedup_key="k" * 256)
    with pytest.raises(ValueError, match="empty"):
        trigger(inc, dedup_key="")
    with pytest.raises(ValueError, match="empty"):
        build_resolve("")


def test_acknowledge_and_resolve_bodies() -> None:
    assert build_acknowledge(GROUP_KEY_SHA256) == {
        "event_action": "acknowledge",
        "dedup_key": GROUP_KEY_SHA256,
    }
    assert build_resolve(GROUP_KEY_SHA256) == {
        "event_action": "resolve",
        "dedup_key": GROUP_KEY_SHA256,
    }


def test_encoding_is_compact_utf8_with_the_routing_key() -> None:
    data = encode_event({"dedup_key": "é"}, ROUTING_KEY)

    assert data == f'{{"dedup_key":"é","routing_key":"{ROUTING_KEY}"}}'.encode()


label_text = st.text(min_size=0, max_size=3000)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alerts=st.lists(
        st.tuples(
            st.dictionaries(st.text(min_size=1, max_size=300), label_text, max_size=30),
            st.sampled_from(["firing", "resolved"]),
            st.text(max_size=200),
        ),
        min_size=1,
        max_size=80,
    ),
    title=st.text(max_size=3000),
    group_labels=st.dictionaries(st.text(min_size=1, max_size=100), label_text, max_size=20),
)
def test_any_incident_gives_a_valid_event_under_the_limit(
    alerts: list[tuple[dict[str, str], str, str]], title: str, group_labels: dict[str, str]
) -> None:
    states = [
        AlertState(
            fingerprint=f"{n:016x}",
            status=status,  # type: ignore[arg-type]
            starts_at=T0 + n,
            ends_at=T0 + 100 if status == "resolved" else None,
            severity="P2",
            labels=labels,
            generator_url=url,
        )
        for n, (labels, status, url) in enumerate(alerts)
    ]
    inc = incident(*states, title=title, labels=group_labels)

    body = trigger(inc)

    assert size(body) <= MAX_EVENT_BYTES
    assert validate_event({**body, "routing_key": ROUTING_KEY}) == []
    details = body["payload"]["custom_details"]
    shown = len(details["firing"]) + len(details["resolved"])
    assert shown + details.get("alerts_omitted", 0) == len(states)


# acceptance by the fake PagerDuty


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_every_body_is_accepted_by_the_fake(
    pd: FakePagerDuty, http: aiohttp.ClientSession
) -> None:
    events = EventsClient(http, pd.events_url)
    inc = incident(alert("000000000000000a"), alert("000000000000000b", status="resolved"))
    key = dedup_key_for_group(inc.group_key)
    bodies = [trigger(inc), build_acknowledge(key), build_resolve(key)]

    results = [await events.send(body, ROUTING_KEY) for body in bodies]

    assert [(r.outcome, r.status) for r in results] == [("accepted", 202)] * 3
    assert [e.outcome for e in pd.events_for(key)] == ["opened", "acknowledged", "resolved"]
    [pd_alert] = pd.alerts.values()
    assert pd_alert.summary == "[P1] DBDown: the primary database is down"
    assert pd_alert.severity == "critical"
    assert pd_alert.custom_details["alert_counts"]["total"] == 2
    assert pd_alert.links[-1]["text"] == "Alertmanager"


async def test_an_oversized_group_is_accepted_by_the_fake(
    pd: FakePagerDuty, http: aiohttp.ClientSession
) -> None:
    big = {f"label_{i}": "x" * 1000 for i in range(50)}
    inc = incident(*(alert(f"{n:016x}", starts_at=T0 + n, labels=big) for n in range(40)))
    # The alerts' labels alone weigh about 2 MB: PagerDuty would refuse them whole.
    assert sum(len(json.dumps(a.labels)) for a in inc.alerts.values()) > 3 * MAX_EVENT_BYTES

    result = await EventsClient(http, pd.events_url).send(trigger(inc), ROUTING_KEY)

    assert (result.outcome, result.status) == ("accepted", 202)
    details = pd.events[0].body["payload"]["custom_details"]
    assert 0 < details["alerts_omitted"] < 40
    assert len(pd.requests[0].body) <= MAX_EVENT_BYTES


# end to end: the same dedup key as Alertmanager's own PagerDuty integration


@pytest.fixture
async def webhook_sink(aiohttp_server: Any) -> AsyncIterator[tuple[str, asyncio.Queue[Any]]]:
    """A webhook receiver that queues every notification it gets."""
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def handle(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/webhook", handle)
    server = await aiohttp_server(app)
    yield str(server.make_url("/webhook")), received


@pytest.mark.e2e
async def test_same_dedup_key_as_alertmanagers_pagerduty_integration(
    alertmanager_factory: AlertmanagerFactory,
    pd: FakePagerDuty,
    http: aiohttp.ClientSession,
    webhook_sink: tuple[str, asyncio.Queue[Any]],
) -> None:
    sink_url, notifications = webhook_sink
    timers = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}
    config = {
        "route": {
            "receiver": "fallback",
            "group_by": ["alertname", "instance"],
            **timers,
            # A child route, so the groupKey is not the root's alone.
            "routes": [{"receiver": "both", "matchers": ['team="db"'], **timers}],
        },
        "receivers": [
            {"name": "fallback", "webhook_configs": [{"url": sink_url}]},
            {
                "name": "both",
                "webhook_configs": [{"url": sink_url, "send_resolved": True}],
                "pagerduty_configs": [
                    {"routing_key": ROUTING_KEY, "url": pd.events_url, "send_resolved": True}
                ],
            },
        ],
    }
    manager = alertmanager_factory(config_text=yaml.safe_dump(config), start=False)
    await manager.astart()

    await manager.post_alerts(
        [make_alert({"alertname": "DBDown", "instance": "db-ü", "team": "db"})]
    )
    notification = await asyncio.wait_for(notifications.get(), 30)
    [am_event] = await pd.wait_for_events(1, timeout=30)

    group_key = notification["groupKey"]
    assert group_key.startswith("{}/{team=")
    assert am_event.event_action == "trigger"
    assert am_event.dedup_key == dedup_key_for_group(group_key)

    # The sidecar's trigger for the same group lands on the alert Alertmanager opened.
    inc = incident(alert("000000000000000a"), group_key=group_key, key=group_key)
    result = await EventsClient(http, pd.events_url).send(trigger(inc), ROUTING_KEY)
    assert result.outcome == "accepted"
    assert [e.outcome for e in pd.events] == ["opened", "deduplicated"]
    assert len(pd.incidents) == 1
