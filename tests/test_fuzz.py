"""Property-based fuzzing of every body and query the service accepts (hypothesis).

Whatever arrives, the sidecar never answers 5xx and never crashes: every rejection is
a 4xx whose JSON body carries a non-empty ``error`` (and, for an invalid Alertmanager
body, ``reasons``); valid bodies get 200. The sidecar runs in process on the test's
event loop, its store a real SQLite file, paging against the fake PagerDuty; the
examples of one test share that sidecar, so its state grows as they run. Examples
are derandomized and the example database is off, so CI runs are reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar.clock import FakeClock
from sidecar.config import Config
from sidecar.runtime import Components, build_components
from sidecar.web import create_app
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN
from tests.fakes.pagerduty import FakePagerDuty, signature_header
from tests.payloads import GO_ZERO_TIME, alert, body, notification

Client = TestClient[Any, Any]
SECRET = "fuzz-webhook-secret"
ROUTING_KEY = "FUZZR0UT1NGKEYFUZZR0UT1NGKEY0000"
WEBHOOK_AUTH = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
API_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
HOOK = "/webhook/alertmanager"
PD_HOOK = "/webhook/pagerduty"
# A bound on a hung request (the sidecar answers in milliseconds), so a hang fails fast.
TIMEOUT = aiohttp.ClientTimeout(total=15)
ACTIONS = ("acknowledge", "resolve", "updates", "postmortem")
# Groups opened before the fuzzing starts, so some generated ids and keys are real.
SEEDED_GROUPS = [f'{{}}:{{alertname="Seed{i}"}}' for i in range(4)]

# No shrinking: the examples share one sidecar whose state they change, so a shrunk
# example would not replay the same way; the failing example is reported as drawn.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ---------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
label_maps = st.dictionaries(label_names, st.text(max_size=40), max_size=6)
epochs = st.floats(min_value=946_684_800, max_value=4_102_444_800)  # 2000 to 2100
fingerprints = st.from_regex(r"[0-9a-f]{1,16}", fullmatch=True)
# Every kind of time string: RFC 3339 at any year and offset, Go's zero time, junk.
any_times = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.just(GO_ZERO_TIME),
    st.just("9999-12-31T23:59:59-23:59"),
    st.just("0001-01-01T00:00:00+23:59"),
    st.text(max_size=30),
)


@st.composite
def valid_alerts(draw: st.DrawFn) -> dict[str, Any]:
    """One alert as Alertmanager sends it, firing or resolved."""
    status = draw(st.sampled_from(["firing", "resolved"]))
    starts = draw(epochs)
    ends = starts + draw(st.floats(min_value=0, max_value=86_400)) if status == "resolved" else None
    labels = draw(label_maps)
    return alert(
        draw(st.text(min_size=1, max_size=30)),
        fingerprint=draw(fingerprints),
        status=status,
        starts=starts,
        ends=ends,
        labels={**labels, "severity": draw(st.sampled_from(["critical", "warning", "info", ""]))},
        annotations=draw(label_maps),
    )


@st.composite
def valid_notifications(draw: st.DrawFn) -> dict[str, Any]:
    """A valid webhook v4 body, sometimes for a group that is already open."""
    alerts = draw(st.lists(valid_alerts(), min_size=1, max_size=4))
    # No NUL: the model refuses it in a groupKey (a store key), so the body would be invalid.
    keys = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=60)
    key = draw(st.sampled_from(SEEDED_GROUPS) | keys)
    payload = notification(*alerts, group_key=key, truncated=draw(st.integers(0, 5)))
    if draw(st.booleans()):
        payload["notification_reason"] = draw(st.text(max_size=10))  # newer Alertmanagers
    return payload


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _drop(node: Any, path: tuple[Any, ...]) -> None:
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]


@st.composite
def mutated_notifications(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with a few fields dropped, retyped, made huge or exotic, or added."""
    payload = draw(valid_notifications())
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(payload)
        path = draw(st.sampled_from(paths))
        mutation = draw(st.sampled_from(["drop", "retype", "huge", "unicode", "time", "add"]))
        if mutation == "drop":
            _drop(payload, path)
        elif mutation == "retype":
            _set(payload, path, draw(json_values))
        elif mutation == "huge":
            _set(payload, path, "x" * draw(st.sampled_from([1_000, 100_000, 1_000_000])))
        elif mutation == "unicode":
            _set(payload, path, draw(st.text(st.characters(codec="utf-8"), min_size=1)))
        elif mutation == "time":
            _set(payload, path, draw(any_times))
        else:
            parent = payload
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict):
                parent[draw(st.text(max_size=10))] = draw(json_values)
    return payload


PD_EVENT_TYPES = [
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reopened",
    "incident.escalated",
    "incident.status_update_published",
    "incident.annotated",
    "service.updated",
]
real_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))


# Any character but NUL, which no store can hold in text (and lone surrogates, as st.text).
NO_NUL = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


@st.composite
def pagerduty_envelopes(draw: st.DrawFn, *, valid: bool = False) -> dict[str, Any]:
    """A webhook v3 envelope, often about a seeded incident's dedup key.

    Unless ``valid``, any field may be missing, empty or of another type.
    """
    types = st.sampled_from(PD_EVENT_TYPES)
    event_type = draw(types if valid else types | st.text(max_size=20))
    # PagerDuty's ids never hold a NUL (one that does is refused with a 400).
    id_chars = NO_NUL if valid else st.characters()
    key = draw(
        st.sampled_from([hashlib.sha256(g.encode()).hexdigest() for g in SEEDED_GROUPS])
        | st.none()
        | st.text(id_chars, max_size=20)
    )
    min_size = 1 if valid else 0
    incident: dict[str, Any] = {
        "id": draw(st.text(id_chars, min_size=min_size, max_size=10)),
        "incident_key": key,
    }
    if event_type == "incident.status_update_published":
        data: Any = {"incident": incident, "message": draw(st.text(max_size=50))}
    else:
        data = {**incident, "type": "incident", "status": draw(st.text(max_size=10))}
    event: dict[str, Any] = {
        "id": draw(st.text(id_chars, min_size=min_size, max_size=12)),
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": draw(real_times if valid else any_times),
        "agent": draw(
            st.none()
            | st.fixed_dictionaries({"summary": st.text(max_size=10), "id": st.text(max_size=5)})
        ),
        "data": data,
    }
    if not valid:
        for _ in range(draw(st.integers(0, 2))):
            path = draw(st.sampled_from(_paths(event)))
            _set(event, path, draw(json_values))
    return {"event": event}


# What a client can put in a header: visible Latin-1, no control characters.
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=["Cc"]), max_size=80
)
any_bodies = st.one_of(
    st.binary(max_size=2_000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"null", b"NaN", b'{"a": Infinity}', b"\xff\xfe", b"{" * 10_000]),
)

# -- the sidecar ----------------------------------------------------------------


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    """The fake PagerDuty the fuzzed sidecar pages."""
    async with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
async def sidecar(
    aiohttp_client: Callable[..., Any],
    config_factory: Callable[..., Config],
    clock: FakeClock,
    pd: FakePagerDuty,
) -> tuple[Client, Components]:
    """An in-process sidecar with PagerDuty both ways, and a few open incidents."""
    config = config_factory(
        {
            "pagerduty": {
                "events_url": pd.events_url,
                "api_url": pd.api_url,
                "webhook_secret": SECRET,
                "routing_key": ROUTING_KEY,
                "timeout": "1s",
            }
        }
    )
    components = build_components(config, clock=clock, registry=CollectorRegistry())
    client = await aiohttp_client(create_app(components))
    for i, key in enumerate(SEEDED_GROUPS):
        payload = notification(
            alert(f"Seed{i}", fingerprint=f"{i:016x}", labels={"severity": "critical"}),
            group_key=key,
        )
        resp = await client.post(HOOK, data=body(payload), headers=WEBHOOK_AUTH, timeout=TIMEOUT)
        assert resp.status == 200, await resp.text()
    return client, components


async def check_answer(resp: Any, *, framework_may_refuse: bool = False) -> int:
    """The properties every answer has; returns the status.

    With ``framework_may_refuse``, a 400 in plain text is accepted too: aiohttp's
    HTTP parser refuses some undecodable bodies itself, before any handler (and
    so before the service's JSON errors) runs; still a 4xx, never retried.
    """
    text = await resp.text()
    sent = f"{resp.method} {resp.url.path_qs} {dict(resp.request_info.headers)}"
    assert resp.status < 500, f"{sent} -> {resp.status}: {text[:2000]}"
    if framework_may_refuse and resp.status == 400 and resp.content_type == "text/plain":
        assert text.strip(), "a refusal without a reason"
        return 400
    if resp.status >= 400:
        assert resp.content_type == "application/json", (resp.status, text[:500])
        data = json.loads(text)
        assert isinstance(data, dict), text[:500]
        assert isinstance(data.get("error"), str), text[:500]
        assert data["error"].strip(), text[:500]
    return int(resp.status)


# -- Alertmanager ---------------------------------------------------------------


@FUZZ
@given(payload=valid_notifications())
async def test_valid_alertmanager_bodies_get_200(
    sidecar: tuple[Client, Components], payload: dict[str, Any]
) -> None:
    client, _ = sidecar
    resp = await client.post(HOOK, data=body(payload), headers=WEBHOOK_AUTH, timeout=TIMEOUT)
    assert await check_answer(resp) == 200


@FUZZ
@given(payload=mutated_notifications())
async def test_mutated_alertmanager_bodies_never_get_a_5xx(
    sidecar: tuple[Client, Components], payload: dict[str, Any]
) -> None:
    client, _ = sidecar
    resp = await client.post(HOOK, data=body(payload), headers=WEBHOOK_AUTH, timeout=TIMEOUT)
    status = await check_answer(resp)
    assert status in (200, 400, 413)
    if status == 400:
        reasons = (await resp.json())["reasons"]
        assert reasons and all(isinstance(r, str) and r for r in reasons)


@FUZZ
@example(
    payload=notification(alert(labels={"severity": "critical"}), group_key="far-future"),
    starts="9999-12-31T23:59:59-23:59",
    ends=GO_ZERO_TIME,
    which=0,
)
@given(payload=valid_notifications(), starts=any_times, ends=any_times, which=st.integers(0, 3))
async def test_alert_times_at_the_edges_of_the_calendar_never_get_a_5xx(
    sidecar: tuple[Client, Components], payload: dict[str, Any], starts: str, ends: str, which: int
) -> None:
    client, _ = sidecar
    target = payload["alerts"][which % len(payload["alerts"])]
    target["startsAt"], target["endsAt"] = starts, ends
    resp = await client.post(HOOK, data=body(payload), headers=WEBHOOK_AUTH, timeout=TIMEOUT)
    if await check_answer(resp) == 200:
        # What was accepted must be readable back.
        for changed in (await resp.json())["changed"]:
            path = f"/api/v1/incidents/{changed['id']}"
            assert await check_answer(await client.get(path, timeout=TIMEOUT)) == 200
        listing = await client.get("/api/v1/incidents", timeout=TIMEOUT)
        assert await check_answer(listing) == 200
    else:
        assert resp.status == 400


@FUZZ
@given(raw=any_bodies)
async def test_arbitrary_alertmanager_bodies_are_refused_with_a_reason(
    sidecar: tuple[Client, Components], raw: bytes
) -> None:
    client, _ = sidecar
    resp = await client.post(HOOK, data=raw, headers=WEBHOOK_AUTH, timeout=TIMEOUT)
    assert await check_answer(resp) in (200, 400)


@FUZZ
@given(raw=any_bodies, header=header_values)
async def test_alertmanager_without_credentials_gets_401_whatever_the_body(
    sidecar: tuple[Client, Components], raw: bytes, header: str
) -> None:
    client, _ = sidecar
    resp = await client.post(HOOK, data=raw, headers={"Authorization": header}, timeout=TIMEOUT)
    assert await check_answer(resp) == 401


def _compressed(encoding: str, raw: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(raw)
    if encoding == "deflate":
        return zlib.compress(raw)
    return raw


# Encodings aiohttp decodes itself (it refuses others, br and zstd without their
# libraries, at the protocol level, before any handler runs).
@FUZZ
@given(
    path=st.sampled_from([HOOK, PD_HOOK, "/api/v1/incidents/some-id/acknowledge"]),
    encoding=st.sampled_from(["gzip", "deflate", "identity"]),
    raw=any_bodies | valid_notifications().map(body),
    how=st.sampled_from(["compressed", "truncated", "as-is"]),
)
async def test_content_encoded_bodies_never_get_a_5xx(
    sidecar: tuple[Client, Components], path: str, encoding: str, raw: bytes, how: str
) -> None:
    client, _ = sidecar
    data = _compressed(encoding, raw)
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "as-is":
        data = raw  # declared compressed, sent plain
    headers = {**(API_AUTH if path.startswith("/api/") else WEBHOOK_AUTH)}
    headers["Content-Encoding"] = encoding
    if path == PD_HOOK:
        headers["X-PagerDuty-Signature"] = signature_header(raw, SECRET)
    resp = await client.post(path, data=data, headers=headers, timeout=TIMEOUT)
    assert await check_answer(resp, framework_may_refuse=True) in (200, 400, 401, 404, 409)


# -- PagerDuty ------------------------------------------------------------------


@FUZZ
@given(envelope=pagerduty_envelopes(), delivery=st.none() | header_values)
async def test_signed_pagerduty_bodies_never_get_a_5xx(
    sidecar: tuple[Client, Components], envelope: dict[str, Any], delivery: str | None
) -> None:
    client, _ = sidecar
    raw = json.dumps(envelope).encode()
    headers = {"X-PagerDuty-Signature": signature_header(raw, SECRET)}
    if delivery is not None:
        headers["X-Webhook-Id"] = delivery
    resp = await client.post(PD_HOOK, data=raw, headers=headers, timeout=TIMEOUT)
    assert await check_answer(resp) in (200, 400)


@FUZZ
@given(envelope=pagerduty_envelopes(valid=True))
async def test_valid_signed_pagerduty_deliveries_get_200(
    sidecar: tuple[Client, Components], envelope: dict[str, Any]
) -> None:
    client, _ = sidecar
    raw = json.dumps(envelope).encode()
    headers = {"X-PagerDuty-Signature": signature_header(raw, [SECRET, "an-older-secret"])}
    resp = await client.post(PD_HOOK, data=raw, headers=headers, timeout=TIMEOUT)
    assert await check_answer(resp) == 200
    assert (await resp.json())["status"] in ("ok", "duplicate", "ignored")


@FUZZ
@given(raw=any_bodies)
async def test_signed_arbitrary_bodies_on_the_pagerduty_webhook(
    sidecar: tuple[Client, Components], raw: bytes
) -> None:
    client, _ = sidecar
    headers = {"X-PagerDuty-Signature": signature_header(raw, SECRET)}
    resp = await client.post(PD_HOOK, data=raw, headers=headers, timeout=TIMEOUT)
    assert await check_answer(resp) in (200, 400)


@FUZZ
@given(raw=any_bodies, signature=header_values)
async def test_unsigned_pagerduty_bodies_get_401(
    sidecar: tuple[Client, Components], raw: bytes, signature: str
) -> None:
    client, _ = sidecar
    resp = await client.post(
        PD_HOOK, data=raw, headers={"X-PagerDuty-Signature": signature}, timeout=TIMEOUT
    )
    assert await check_answer(resp) == 401


# -- the incidents API ----------------------------------------------------------


@FUZZ
@given(
    action=st.sampled_from(ACTIONS),
    which=st.integers(min_value=0, max_value=len(SEEDED_GROUPS)),
    other_id=st.text(min_size=1, max_size=40),
    raw=st.none()
    | any_bodies
    | st.fixed_dictionaries(
        {},
        optional={"actor": json_values | st.text(max_size=250), "message": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)
async def test_api_posts_never_get_a_5xx(
    sidecar: tuple[Client, Components],
    action: str,
    which: int,
    other_id: str,
    raw: bytes | None,
) -> None:
    client, _ = sidecar
    incidents = await client.get("/api/v1/incidents", params={"limit": "1000"}, timeout=TIMEOUT)
    known = [i["id"] for i in (await incidents.json())["incidents"]]
    incident_id = known[which % len(known)] if which < len(SEEDED_GROUPS) else other_id
    path = f"/api/v1/incidents/{quote(incident_id, safe='')}/{action}"
    resp = await client.post(path, data=raw, headers=API_AUTH, timeout=TIMEOUT)
    assert await check_answer(resp) in (200, 400, 404, 409)


@FUZZ
@given(
    action=st.sampled_from(ACTIONS),
    which=st.integers(min_value=0),
    # Valid: no NUL, which the API refuses with a 400 (no store can hold it).
    actor=st.none() | st.text(NO_NUL, min_size=1, max_size=200),
    message=st.none() | st.text(NO_NUL, max_size=4000),
)
async def test_valid_api_posts_on_known_incidents_get_200_or_409(
    sidecar: tuple[Client, Components],
    action: str,
    which: int,
    actor: str | None,
    message: str | None,
) -> None:
    client, _ = sidecar
    incidents = await client.get("/api/v1/incidents", params={"limit": "1000"}, timeout=TIMEOUT)
    known = (await incidents.json())["incidents"]
    incident = known[which % len(known)]
    payload = {k: v for k, v in (("actor", actor), ("message", message)) if v is not None}
    path = f"/api/v1/incidents/{incident['id']}/{action}"
    resp = await client.post(path, json=payload, headers=API_AUTH, timeout=TIMEOUT)
    status = await check_answer(resp)
    # 409: resolved already (or still open, for the review), or an update without a message.
    assert status in (200, 409)
    if status == 200:
        assert (await resp.json())["id"] == incident["id"]


@FUZZ
@given(
    incident_id=st.text(min_size=1, max_size=40),
    suffix=st.sampled_from(["", "/postmortem"]),
    template=st.none() | st.text(max_size=20),
)
async def test_api_reads_of_arbitrary_ids_never_get_a_5xx(
    sidecar: tuple[Client, Components], incident_id: str, suffix: str, template: str | None
) -> None:
    client, _ = sidecar
    path = f"/api/v1/incidents/{quote(incident_id, safe='')}{suffix}"
    params = {} if template is None else {"template": template}
    resp = await client.get(path, params=params, timeout=TIMEOUT)
    assert await check_answer(resp) in (200, 400, 404)


@FUZZ
@given(
    query=st.lists(
        st.tuples(
            st.sampled_from(["state", "severity", "team", "limit"]) | st.text(max_size=8),
            st.sampled_from(["open", "resolved", "P0", "P2", "sre", "db", "10", "0", "-1"])
            | st.text(max_size=20),
        ),
        max_size=6,
    )
)
async def test_incident_list_queries_never_get_a_5xx(
    sidecar: tuple[Client, Components], query: list[tuple[str, str]]
) -> None:
    client, _ = sidecar
    resp = await client.get(f"/api/v1/incidents?{urlencode(query)}", timeout=TIMEOUT)
    status = await check_answer(resp)
    assert status in (200, 400)
    if status == 200:
        assert isinstance((await resp.json())["incidents"], list)
