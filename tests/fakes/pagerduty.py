"""A fake PagerDuty for tests: Events API v2, the REST incident lookups, webhooks v3.

It is a real aiohttp server on 127.0.0.1 (port 0), written from PagerDuty's own
documentation, which was read for it:

- Events API v2 overview (response codes and retry logic, 512 KB size limit, PD-CEF):
  https://developer.pagerduty.com/docs/events-api-v2/overview/
  https://github.com/PagerDuty/developer-docs/blob/main/docs/events-API-v2/01-Overview.md
- Send an alert event (fields, limits, de-duplication, event action behaviour):
  https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
  https://github.com/PagerDuty/developer-docs/blob/main/docs/events-API-v2/02-Trigger-Events.md
- Events API rate limits (about 120 events a minute per integration key, counted over a
  60 second window looking back from the current time; then 429 "Request Limit Exceeded"
  and the event is not ingested; retrying about 30 s later is suggested):
  https://github.com/PagerDuty/developer-docs/blob/main/docs/events-API-v2/05-Rate-Limits.md
- Events API v2 OpenAPI (the success body, the error body and its example):
  https://github.com/PagerDuty/api-schema/blob/main/reference/events-v2/openapiv3.json
- REST API authentication, errors, pagination, "List alerts for an incident", "Get an incident":
  https://github.com/PagerDuty/developer-docs/blob/main/docs/REST-API/02-Authentication.md
  https://github.com/PagerDuty/developer-docs/blob/main/docs/REST-API/14-Errors.md
  https://github.com/PagerDuty/developer-docs/blob/main/docs/REST-API/09-Pagination.md
  https://github.com/PagerDuty/api-schema/blob/main/reference/REST/openapiv3.json
- Webhooks v3 overview (envelope, event types, data types), behaviour, signatures:
  https://developer.pagerduty.com/docs/webhooks-overview
  https://github.com/PagerDuty/developer-docs/blob/main/docs/webhooks/01-Overview.md
  https://github.com/PagerDuty/developer-docs/blob/main/docs/webhooks/02-Behavior.md
  https://developer.pagerduty.com/docs/verifying-signatures
  https://github.com/PagerDuty/developer-docs/blob/main/docs/webhooks/04-Signatures.md
- Webhook request headers (``User-Agent: PagerDuty-Webhook/V3.0``, ``X-Webhook-Subscription``):
  https://support.pagerduty.com/docs/webhooks

Usage, the sidecar pointed at the fake (``pagerduty.events_url = pd.events_url``,
``pagerduty.api_url = pd.api_url``, ``pagerduty.api_token = pd.api_token``)::

    async with FakePagerDuty() as pd:
        pd.fail_next(2)                       # then 202: the sidecar must retry
        pd.timeout_next(seconds=30)           # longer than the sidecar's client timeout
        ...                                   # make the sidecar page
        await pd.wait_for_events(1)
        assert [e.event_action for e in pd.events_for(dedup_key)] == ["trigger"]
        pd.subscribe(sidecar_url + "/webhook/pagerduty", webhook_secret)
        pd.acknowledge_incident(pd.open_incident(dedup_key).id)  # a responder acks
        await pd.drain_webhooks()             # incident.acknowledged delivered, signed

Documented behaviour the fake reproduces:

- ``POST /v2/enqueue``: 202 ``{"status": "success", "message": "Event processed",
  "dedup_key": ...}``; a trigger without ``dedup_key`` gets a generated UUID. 400 for an
  invalid event, with ``{"status", "message", "errors": [...]}``; a body that is not a
  JSON object gets the documented example ``{"status": "Unrecognized object", "message":
  "Event object format is unrecognized", "errors": ["JSON parse error"]}``. 429 when
  rate limited, 5xx on server errors (both retryable; 400 never is). With
  ``rate_limit_per_minute`` set, each routing key's accepted events are counted over a
  rolling window (``rate_limit_window``, 60 s as documented; a test may scale the window
  and the rate down together) and the rest answered 429, without ``Retry-After``, which
  the Events API documents nowhere (``rate_limit_next(retry_after=...)`` adds one, as a
  proxy in front of PagerDuty might).
- Alerts are keyed by (routing_key, dedup_key). A trigger opens an alert or is applied to
  the open one; acknowledge and resolve without an open alert (or sent with another
  routing key) are accepted and dropped; after a resolve, a trigger opens a new alert.
  With no alert grouping each new alert opens its own incident; with
  ``alert_grouping`` (time-based grouping with an unbounded window) new alerts of a routing
  key join its unresolved incident, which resolves when all its alerts have.
- REST: ``Authorization: Token token=...``; errors ``{"error": {"message", "code"}}``
  (2006 "Authentication failed"); classic pagination ``limit`` (default 25, at most
  100), ``offset``, ``more``, ``total`` (null unless ``total=true``); filters ``alert_key``
  and ``statuses[]``. The versioning ``Accept`` header is recorded, not required.
- Webhooks v3: one event per delivery, ``{"event": {id, event_type, resource_type,
  occurred_at, agent, client, data}}``; ``X-PagerDuty-Signature`` is ``v1=`` and the hex
  HMAC-SHA256 of the raw body keyed by the subscription secret, one per secret,
  comma-separated; ``X-Webhook-Id`` is repeated on every attempt of one webhook. Retried
  on no response, 5xx and 429; dropped on any other 4xx. ``incident.status_update_published``
  carries an ``incident_status_update``, not an incident.

Not documented, so chosen here (tests must not depend on the exact wording):

- The wording of each entry of ``errors`` (only the shape is documented).
- 512 KB is enforced as 512,000 bytes, the stricter reading, which is also what
  Alertmanager's own PagerDuty integration truncates to; an oversized event gets 400
  (the only non-retryable code the documentation lists); both are constructor options.
- The bodies of 429 and 5xx answers.
- Whether a call answered 429 counts against the rate limit: it does not here.
- Urgency follows severity (critical and error high, warning and info low), as with a
  service set to "use alert severity"; ``incident_key`` of an Events API incident is
  null unless ``incident_key_is_dedup_key`` is set (the sidecar must map incidents
  back through ``GET /incidents/{id}/alerts``).
- The agent of webhooks caused by Events API calls is the service reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import string
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from aiohttp import web

JSON = dict[str, Any]
Api = Literal["events", "rest"]

EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_DEDUP_KEY_CHARS = 255
MAX_SUMMARY_CHARS = 1024
MAX_EVENT_BYTES = 512_000
REST_DEFAULT_LIMIT = 25
REST_MAX_LIMIT = 100
WEBHOOK_USER_AGENT = "PagerDuty-Webhook/V3.0"
WEBHOOK_TIMEOUT_SECONDS = 5.0
# The incident event types the sidecar consumes; PagerDuty has more (see the overview).
INCIDENT_EVENT_TYPES = (
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.escalated",
    "incident.reopened",
    "incident.resolved",
    "incident.status_update_published",
)

INVALID_EVENT = "invalid event"
INVALID_EVENT_MESSAGE = "Event object is invalid"
UNRECOGNIZED = {
    "status": "Unrecognized object",
    "message": "Event object format is unrecognized",
    "errors": ["JSON parse error"],
}


def sign(body: bytes, secret: str | bytes) -> str:
    """Sign a webhook body as PagerDuty does: ``v1=`` + hex HMAC-SHA256 keyed by the secret."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return "v1=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_header(body: bytes, secrets: str | Sequence[str]) -> str:
    """The ``X-PagerDuty-Signature`` value: one signature per secret, comma-separated."""
    if isinstance(secrets, str):
        secrets = [secrets]
    return ",".join(sign(body, secret) for secret in secrets)


def encode_event(envelope: Mapping[str, Any]) -> bytes:
    """Serialize a webhook envelope to the UTF-8 JSON bytes that are signed and sent."""
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def iso_seconds(moment: datetime) -> str:
    """Format like the REST API's ``created_at``: ``2015-10-06T21:30:42Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_millis(moment: datetime) -> str:
    """Format like a webhook's ``occurred_at``: ``2020-10-02T18:45:22.169Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class AcceptedEvent:
    """An event answered 202, in arrival order; ``outcome`` says what it did to the alert."""

    routing_key: str
    event_action: str
    dedup_key: str
    body: JSON
    outcome: Literal["opened", "deduplicated", "acknowledged", "resolved", "unchanged", "dropped"]
    incident_id: str | None
    received_at: datetime


@dataclass
class RequestRecord:
    """Any request the fake received, failures included; ``status`` is what it answered."""

    api: Api
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    fault: str | None = None
    status: int | None = None
    # When it arrived, on the fake's ``monotonic`` clock (the one its rate limit counts on).
    at: float = 0.0


@dataclass
class Alert:
    """An alert: what a trigger opens, keyed by (routing_key, dedup_key) while open."""

    id: str
    routing_key: str
    dedup_key: str
    incident_id: str
    summary: str
    severity: str
    source: str
    created_at: datetime
    custom_details: Any = None
    links: list[JSON] = field(default_factory=list)
    images: list[JSON] = field(default_factory=list)
    status: Literal["triggered", "resolved"] = "triggered"
    trigger_count: int = 1


@dataclass
class Incident:
    """An incident with its alerts, status and the people working on it."""

    id: str
    number: int
    title: str
    urgency: str
    created_at: datetime
    updated_at: datetime
    incident_key: str | None
    alert_ids: list[str] = field(default_factory=list)
    status: Literal["triggered", "acknowledged", "resolved"] = "triggered"
    escalation_level: int = 1
    acknowledged_by: JSON | None = None
    resolved_at: datetime | None = None
    reopened_at: datetime | None = None
    status_updates: list[str] = field(default_factory=list)


@dataclass
class Fault:
    """One planned failure for the next request to an API."""

    kind: Literal["status", "timeout", "drop"]
    status: int = 500
    body: JSON | None = None
    seconds: float = 0.0
    process: bool = False
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DeliveryAttempt:
    """One attempt to deliver a webhook to a subscription; ``status`` None: no answer."""

    webhook_id: str
    event_type: str
    attempt: int
    status: int | None
    error: str | None = None


@dataclass
class Subscription:
    """A webhook v3 subscription: where to send, with which secrets, which event types."""

    id: str
    url: str
    secrets: tuple[str, ...]
    events: frozenset[str] | None
    retry_delays: tuple[float, ...]
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    queue: asyncio.Queue[JSON] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class FakePagerDuty:
    """PagerDuty's Events API v2, REST incident lookups and webhooks v3, with failure injection."""

    def __init__(
        self,
        *,
        api_token: str = "fake-api-token",
        routing_keys: Iterable[str] | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        oversize_status: int = 400,
        rate_limit_per_minute: int | None = None,
        rate_limit_window: float = 60.0,
        incident_key_is_dedup_key: bool = False,
        alert_grouping: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        self.api_token = api_token
        self.routing_keys = None if routing_keys is None else frozenset(routing_keys)
        self.max_event_bytes = max_event_bytes
        self.oversize_status = oversize_status
        self.rate_limit_per_minute = rate_limit_per_minute
        self.rate_limit_window = rate_limit_window
        self.incident_key_is_dedup_key = incident_key_is_dedup_key
        self.alert_grouping = alert_grouping
        self.clock = clock
        self.monotonic = monotonic
        self._random = random.Random(seed)
        self._ids: set[str] = set()

        self.events: list[AcceptedEvent] = []
        self.requests: list[RequestRecord] = []
        self.alerts: dict[str, Alert] = {}
        self.incidents: dict[str, Incident] = {}
        self.webhook_events: list[JSON] = []
        self.subscriptions: list[Subscription] = []
        self._open_alerts: dict[tuple[str, str], Alert] = {}
        self._faults: dict[Api, deque[Fault]] = {"events": deque(), "rest": deque()}
        self._down: tuple[int, JSON] | None = None
        self._calls: dict[str, deque[float]] = {}

        self.service = self._reference("service", "Sidecar test service", "service-directory")
        self.escalation_policy = self._reference(
            "escalation_policy", "Default", "escalation_policies"
        )
        self.team = self._reference("team", "Engineering", "teams")
        self.users = [
            self._reference("user", "Primary On-call", "users"),
            self._reference("user", "Secondary On-call", "users"),
            self._reference("user", "Engineering Manager", "users"),
        ]
        self.integration = self._reference(
            "events_api_v2_inbound_integration", "Events API V2", "integrations"
        )

        self.app = web.Application(client_max_size=8 * max(max_event_bytes, 1 << 20))
        self.app.router.add_post("/v2/enqueue", self._enqueue)
        self.app.router.add_get("/incidents/{id}/alerts", self._list_alerts)
        self.app.router.add_get("/incidents/{id}", self._get_incident)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing: asyncio.Event | None = None
        self._changed: asyncio.Condition | None = None
        self.base_url = ""

    # lifecycle

    async def start(self) -> None:
        """Serve on 127.0.0.1 on a free port."""
        self._closing = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def close(self) -> None:
        """Release held requests, stop webhook deliveries and the server."""
        if self._closing is not None:
            self._closing.set()
        for subscription in self.subscriptions:
            if subscription.task is not None:
                subscription.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await subscription.task
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def events_url(self) -> str:
        """What to configure as ``pagerduty.events_url``."""
        return f"{self.base_url}/v2/enqueue"

    @property
    def api_url(self) -> str:
        """What to configure as ``pagerduty.api_url`` (the REST API's base)."""
        return self.base_url

    # failure injection

    def fail_next(self, n: int = 1, *, status: int = 500, api: Api = "events") -> None:
        """Answer the next ``n`` requests with ``status`` (5xx: PagerDuty's server errors)."""
        body: JSON = {"status": "error", "message": "Internal Server Error"}
        if api == "rest":
            body = _rest_error("An internal error has occurred", 2000)
        self._plan(api, n, Fault("status", status=status, body=body))

    def rate_limit_next(
        self, n: int = 1, *, api: Api = "events", retry_after: str | None = None
    ) -> None:
        """Answer the next ``n`` requests with 429 (with ``Retry-After: retry_after`` if given)."""
        headers = () if retry_after is None else (("Retry-After", retry_after),)
        self._plan(api, n, Fault("status", status=429, body=_throttled(api), headers=headers))

    def reject_next(self, n: int = 1, *, api: Api = "events") -> None:
        """Answer the next ``n`` requests with 400 and an invalid-event body."""
        body = _invalid(["Rejected by fault injection"])
        if api == "rest":
            body = _rest_error("Invalid Input Provided", 2001)
        self._plan(api, n, Fault("status", status=400, body=body))

    def timeout_next(
        self, n: int = 1, *, seconds: float = 30.0, process: bool = False, api: Api = "events"
    ) -> None:
        """Hold the next ``n`` requests ``seconds`` (set it above the client's timeout).

        With ``process`` the event is accepted first, as when PagerDuty took it but the
        answer was lost, and the late answer is the normal one; without, nothing is
        recorded and the late answer is 504.
        """
        self._plan(api, n, Fault("timeout", seconds=seconds, process=process))

    def drop_next(self, n: int = 1, *, api: Api = "events") -> None:
        """Close the connection of the next ``n`` requests without answering (network error)."""
        self._plan(api, n, Fault("drop"))

    def go_down(self, status: int = 503) -> None:
        """Answer every request with ``status`` until ``come_back`` (faults planned wait)."""
        self._down = (status, {"status": "error", "message": "Service Unavailable"})

    def come_back(self) -> None:
        """End ``go_down``."""
        self._down = None

    def pending_faults(self, api: Api = "events") -> int:
        """How many planned faults have not been used yet."""
        return len(self._faults[api])

    def _plan(self, api: Api, n: int, fault: Fault) -> None:
        for _ in range(n):
            self._faults[api].append(fault)

    # queries for tests

    def events_for(self, dedup_key: str, routing_key: str | None = None) -> list[AcceptedEvent]:
        """The accepted events of one dedup key, in arrival order."""
        return [
            event
            for event in self.events
            if event.dedup_key == dedup_key
            and (routing_key is None or event.routing_key == routing_key)
        ]

    def incidents_for(self, dedup_key: str) -> list[Incident]:
        """The incidents opened by alerts with this dedup key, oldest first."""
        seen = {alert.incident_id for alert in self.alerts.values() if alert.dedup_key == dedup_key}
        return sorted((self.incidents[i] for i in seen), key=lambda incident: incident.number)

    def open_incident(self, dedup_key: str, routing_key: str | None = None) -> Incident | None:
        """The incident of the open alert with this dedup key, if any."""
        for (key_routing, key_dedup), alert in self._open_alerts.items():
            if key_dedup == dedup_key and routing_key in (None, key_routing):
                return self.incidents[alert.incident_id]
        return None

    # The waits carry their own bound so that a forgotten one cannot hang the suite.
    async def wait_for_events(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[AcceptedEvent]:
        """Wait until at least ``count`` events were accepted; TimeoutError otherwise."""
        assert self._changed is not None, "start() first"
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.events) >= count)
        return list(self.events)

    async def wait_for_requests(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[RequestRecord]:
        """Wait until at least ``count`` requests were answered; TimeoutError otherwise."""
        assert self._changed is not None, "start() first"

        def answered() -> int:
            return sum(1 for record in self.requests if record.status is not None)

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: answered() >= count)
        return list(self.requests)

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    # Events API v2

    async def _enqueue(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = RequestRecord(
            "events", request.method, request.path, dict(request.headers), body, at=self.monotonic()
        )
        self.requests.append(record)
        try:
            return await self._answer_enqueue(request, record, body)
        finally:
            await self._notify()

    async def _answer_enqueue(
        self, request: web.Request, record: RequestRecord, body: bytes
    ) -> web.StreamResponse:
        injected = self._injected(record, "events")
        if injected is not None:
            return injected
        fault = self._faults["events"].popleft() if self._faults["events"] else None
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "status":
                return _json(record, fault.status, fault.body or {}, dict(fault.headers))
            if fault.kind == "drop":
                return self._drop(request, record)
            answer = self._process(record, body) if fault.process else None
            await self._hold(fault.seconds)
            if answer is not None:
                return answer
            return _json(record, 504, {"status": "error", "message": "Gateway Timeout"})
        return self._process(record, body)

    def _process(self, record: RequestRecord, body: bytes) -> web.Response:
        if len(body) > self.max_event_bytes:
            return _json(
                record,
                self.oversize_status,
                _invalid([f"Event is {len(body)} bytes; the limit is {self.max_event_bytes}"]),
            )
        try:
            event = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _json(record, 400, UNRECOGNIZED)
        if not isinstance(event, dict):
            return _json(record, 400, UNRECOGNIZED)
        errors = validate_event(event)
        routing_key = event.get("routing_key")
        if not errors and self.routing_keys is not None and routing_key not in self.routing_keys:
            errors = ["Invalid routing key"]
        if errors:
            return _json(record, 400, _invalid(errors))
        assert isinstance(routing_key, str)
        if self._throttled(routing_key):
            return _json(record, 429, _throttled("events"))
        action: str = event["event_action"]
        dedup_key = event.get("dedup_key") or uuid.UUID(int=self._random.getrandbits(128)).hex
        outcome, incident_id = self._apply(event, routing_key, action, dedup_key)
        self.events.append(
            AcceptedEvent(
                routing_key=routing_key,
                event_action=action,
                dedup_key=dedup_key,
                body=event,
                outcome=outcome,
                incident_id=incident_id,
                received_at=self.clock(),
            )
        )
        success = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        return _json(record, 202, success)

    @property
    def rate_limit_per_window(self) -> int:
        """Events accepted per routing key in any ``rate_limit_window`` (the rate, scaled)."""
        assert self.rate_limit_per_minute is not None
        return max(1, int(self.rate_limit_per_minute * self.rate_limit_window / 60.0))

    def _throttled(self, routing_key: str) -> bool:
        if self.rate_limit_per_minute is None:
            return False
        now = self.monotonic()
        calls = self._calls.setdefault(routing_key, deque())
        while calls and calls[0] <= now - self.rate_limit_window:
            calls.popleft()
        if len(calls) >= self.rate_limit_per_window:
            return True
        calls.append(now)
        return False

    def _apply(
        self, event: JSON, routing_key: str, action: str, dedup_key: str
    ) -> tuple[
        Literal["opened", "deduplicated", "acknowledged", "resolved", "unchanged", "dropped"],
        str | None,
    ]:
        alert = self._open_alerts.get((routing_key, dedup_key))
        if action == "trigger":
            if alert is not None:
                alert.trigger_count += 1
                return "deduplicated", alert.incident_id
            incident = self._open(event, routing_key, dedup_key)
            return "opened", incident.id
        if alert is None:
            return "dropped", None
        incident = self.incidents[alert.incident_id]
        if action == "acknowledge":
            if incident.status != "triggered":
                return "unchanged", incident.id
            self._set_status(incident, "acknowledged", agent=self.service)
            return "acknowledged", incident.id
        alert.status = "resolved"
        del self._open_alerts[(routing_key, dedup_key)]
        if all(self.alerts[a].status == "resolved" for a in incident.alert_ids):
            self._set_status(incident, "resolved", agent=self.service)
        return "resolved", incident.id

    def _open(self, event: JSON, routing_key: str, dedup_key: str) -> Incident:
        payload: JSON = event["payload"]
        now = self.clock()
        grouped_into = self._grouping_incident(routing_key) if self.alert_grouping else None
        incident = grouped_into or Incident(
            id=self._new_id(),
            number=len(self.incidents) + 1,
            title=payload["summary"],
            urgency="high" if payload["severity"] in ("critical", "error") else "low",
            created_at=now,
            updated_at=now,
            incident_key=dedup_key if self.incident_key_is_dedup_key else None,
        )
        alert = Alert(
            id=self._new_id(),
            routing_key=routing_key,
            dedup_key=dedup_key,
            incident_id=incident.id,
            summary=payload["summary"],
            severity=payload["severity"],
            source=payload["source"],
            created_at=now,
            custom_details=payload.get("custom_details"),
            links=list(event.get("links") or []),
            images=list(event.get("images") or []),
        )
        incident.alert_ids.append(alert.id)
        self.incidents[incident.id] = incident
        self.alerts[alert.id] = alert
        self._open_alerts[(routing_key, dedup_key)] = alert
        if grouped_into is None:
            self._emit(self.webhook_event("incident.triggered", incident.id, agent=self.service))
        return incident

    def _grouping_incident(self, routing_key: str) -> Incident | None:
        for incident in reversed(self.incidents.values()):
            if incident.status != "resolved" and any(
                self.alerts[a].routing_key == routing_key for a in incident.alert_ids
            ):
                return incident
        return None

    # what people do in PagerDuty's web app, each emitting its webhook

    def acknowledge_incident(self, incident_id: str, user: int = 0) -> JSON:
        """Acknowledge as a responder; returns the ``incident.acknowledged`` event."""
        incident = self.incidents[incident_id]
        incident.acknowledged_by = self.users[user]
        return self._set_status(incident, "acknowledged", agent=self.users[user], client=_WEB)

    def unacknowledge_incident(self, incident_id: str) -> JSON:
        """Let the acknowledgement time out; returns the ``incident.unacknowledged`` event."""
        incident = self.incidents[incident_id]
        incident.acknowledged_by = None
        return self._set_status(incident, "triggered", "incident.unacknowledged", agent=None)

    def resolve_incident(self, incident_id: str, user: int = 0) -> JSON:
        """Resolve as a responder (its alerts too); returns the ``incident.resolved`` event."""
        incident = self.incidents[incident_id]
        for alert_id in incident.alert_ids:
            alert = self.alerts[alert_id]
            if alert.status == "triggered":
                alert.status = "resolved"
                self._open_alerts.pop((alert.routing_key, alert.dedup_key), None)
        return self._set_status(incident, "resolved", agent=self.users[user], client=_WEB)

    def reopen_incident(self, incident_id: str, user: int = 0) -> JSON:
        """Reopen a resolved incident; returns the ``incident.reopened`` event."""
        incident = self.incidents[incident_id]
        incident.reopened_at = self.clock()
        incident.resolved_at = None
        return self._set_status(
            incident, "triggered", "incident.reopened", agent=self.users[user], client=_WEB
        )

    def escalate_incident(self, incident_id: str) -> JSON:
        """Escalate to the next level; returns the ``incident.escalated`` event."""
        incident = self.incidents[incident_id]
        incident.escalation_level = min(incident.escalation_level + 1, len(self.users))
        incident.updated_at = self.clock()
        return self._emit(self.webhook_event("incident.escalated", incident_id, agent=None))

    def publish_status_update(self, incident_id: str, message: str, user: int = 0) -> JSON:
        """Post a status update; returns the ``incident.status_update_published`` event."""
        incident = self.incidents[incident_id]
        incident.status_updates.append(message)
        incident.updated_at = self.clock()
        event = self.webhook_event(
            "incident.status_update_published",
            incident_id,
            agent=self.users[user],
            client=_WEB,
            message=message,
        )
        return self._emit(event)

    def _set_status(
        self,
        incident: Incident,
        status: Literal["triggered", "acknowledged", "resolved"],
        event_type: str | None = None,
        *,
        agent: JSON | None,
        client: JSON | None = None,
    ) -> JSON:
        incident.status = status
        incident.updated_at = self.clock()
        if status == "resolved":
            incident.resolved_at = incident.updated_at
        if status == "acknowledged" and incident.acknowledged_by is None:
            incident.acknowledged_by = agent
        event_type = event_type or f"incident.{status}"
        return self._emit(self.webhook_event(event_type, incident.id, agent=agent, client=client))

    # webhooks v3

    def webhook_event(
        self,
        event_type: str,
        incident_id: str,
        *,
        agent: JSON | None = None,
        client: JSON | None = None,
        message: str = "",
        occurred_at: datetime | None = None,
    ) -> JSON:
        """Build the v3 envelope PagerDuty would send for ``event_type`` on this incident."""
        incident = self.incidents[incident_id]
        data: JSON
        if event_type == "incident.status_update_published":
            data = {
                "incident": self._incident_reference(incident),
                "id": self._new_id(),
                "message": message,
                "trimmed": False,
                "type": "incident_status_update",
            }
        else:
            data = self.incident_data(incident)
        return {
            "event": {
                "id": str(uuid.UUID(int=self._random.getrandbits(128), version=4)),
                "event_type": event_type,
                "resource_type": event_type.split(".", 1)[0],
                "occurred_at": iso_millis(occurred_at or self.clock()),
                "agent": agent,
                "client": client,
                "data": data,
            }
        }

    def incident_data(self, incident: Incident) -> JSON:
        """The ``incident`` data type of webhooks v3."""
        level = incident.escalation_level
        return {
            "id": incident.id,
            "type": "incident",
            "self": f"{self.api_url}/incidents/{incident.id}",
            "html_url": f"{_HTML}/incidents/{incident.id}",
            "number": incident.number,
            "status": incident.status,
            "incident_key": incident.incident_key,
            "created_at": iso_seconds(incident.created_at),
            "reopened_at": iso_seconds(incident.reopened_at) if incident.reopened_at else None,
            "title": incident.title,
            "incident_type": {"name": "incident_default"},
            "service": self.service,
            "assignees": [] if incident.status == "resolved" else [self.users[level - 1]],
            "escalation_policy": self.escalation_policy,
            "teams": [self.team],
            "priority": None,
            "urgency": incident.urgency,
            "conference_bridge": None,
            "resolve_reason": None,
        }

    def subscribe(
        self,
        url: str,
        secrets: str | Sequence[str],
        *,
        events: Iterable[str] | None = None,
        retry_delays: Sequence[float] = (0.05, 0.2, 0.5),
    ) -> Subscription:
        """Deliver every webhook event from now on to ``url``, in order, retrying like PagerDuty.

        Retries (after each of ``retry_delays``) on no answer, 5xx and 429; any other 4xx
        drops the webhook. PagerDuty retries for 48 hours; tests need less.
        """
        subscription = Subscription(
            id=self._new_id(),
            url=url,
            secrets=(secrets,) if isinstance(secrets, str) else tuple(secrets),
            events=None if events is None else frozenset(events),
            retry_delays=tuple(retry_delays),
        )
        subscription.task = asyncio.create_task(self._deliver_all(subscription))
        self.subscriptions.append(subscription)
        return subscription

    async def drain_webhooks(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until every subscription has delivered or dropped all its webhooks."""
        async with asyncio.timeout(timeout):
            for subscription in self.subscriptions:
                await subscription.queue.join()

    def _emit(self, event: JSON) -> JSON:
        self.webhook_events.append(event)
        for subscription in self.subscriptions:
            if subscription.events is None or event["event"]["event_type"] in subscription.events:
                subscription.queue.put_nowait(event)
        return event

    async def _deliver_all(self, subscription: Subscription) -> None:
        while True:
            event = await subscription.queue.get()
            try:
                await self._deliver_with_retries(subscription, event)
            finally:
                subscription.queue.task_done()

    async def _deliver_with_retries(self, subscription: Subscription, event: JSON) -> None:
        webhook_id = str(uuid.uuid4())
        event_type = event["event"]["event_type"]
        delays = (0.0, *subscription.retry_delays)
        for attempt, delay in enumerate(delays, start=1):
            await asyncio.sleep(delay)
            status: int | None = None
            error: str | None = None
            try:
                status = await self.deliver(
                    subscription.url,
                    event,
                    subscription.secrets,
                    webhook_id=webhook_id,
                    subscription_id=subscription.id,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = type(exc).__name__
            subscription.attempts.append(
                DeliveryAttempt(webhook_id, event_type, attempt, status, error)
            )
            if status is not None and status < 500 and status != 429:
                return

    async def deliver(
        self,
        url: str,
        event: Mapping[str, Any],
        secrets: str | Sequence[str],
        *,
        webhook_id: str | None = None,
        subscription_id: str | None = None,
        body: bytes | None = None,
        # PagerDuty's own wait for an answer, part of the protocol being faked.
        timeout: float = WEBHOOK_TIMEOUT_SECONDS,  # noqa: ASYNC109
    ) -> int:
        """POST one webhook as PagerDuty does and return the status of the answer.

        The signature covers the encoded ``event``; pass ``body`` to send other bytes
        under that signature (tampering). Raises ``aiohttp.ClientError`` or
        ``TimeoutError`` when there is no answer within ``timeout`` (PagerDuty waits 5 s).
        """
        signed = encode_event(event)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": WEBHOOK_USER_AGENT,
            "X-PagerDuty-Signature": signature_header(signed, secrets),
            "X-Webhook-Id": webhook_id or str(uuid.uuid4()),
            "X-Webhook-Subscription": subscription_id or "PSUBSCR",
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            url,
            data=signed if body is None else body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            await response.read()
            return response.status

    # REST API

    async def _list_alerts(self, request: web.Request) -> web.StreamResponse:
        record = self._rest_record(request)
        try:
            refused = await self._rest_refusal(request, record)
            if refused is not None:
                return refused
            incident = self._find_incident(request.match_info["id"])
            if incident is None:
                return _json(record, 404, _rest_error("Not Found", 2100))
            try:
                limit = int(request.query.get("limit", REST_DEFAULT_LIMIT))
                offset = int(request.query.get("offset", 0))
            except ValueError:
                return _json(record, 400, _rest_error("Invalid Input Provided", 2001))
            if limit < 1 or offset < 0:
                return _json(record, 400, _rest_error("Invalid Input Provided", 2001))
            limit = min(limit, REST_MAX_LIMIT)
            alerts = [self.alerts[a] for a in incident.alert_ids]
            if "alert_key" in request.query:
                alerts = [a for a in alerts if a.dedup_key == request.query["alert_key"]]
            statuses = request.query.getall("statuses[]", [])
            if statuses:
                alerts = [a for a in alerts if a.status in statuses]
            page = alerts[offset : offset + limit]
            return _json(
                record,
                200,
                {
                    "alerts": [self._alert_json(alert) for alert in page],
                    "limit": limit,
                    "offset": offset,
                    "more": offset + limit < len(alerts),
                    "total": len(alerts) if request.query.get("total") == "true" else None,
                },
            )
        finally:
            await self._notify()

    async def _get_incident(self, request: web.Request) -> web.StreamResponse:
        record = self._rest_record(request)
        try:
            refused = await self._rest_refusal(request, record)
            if refused is not None:
                return refused
            incident = self._find_incident(request.match_info["id"])
            if incident is None:
                return _json(record, 404, _rest_error("Not Found", 2100))
            return _json(record, 200, {"incident": self._incident_json(incident)})
        finally:
            await self._notify()

    def _rest_record(self, request: web.Request) -> RequestRecord:
        record = RequestRecord(
            "rest", request.method, request.path_qs, dict(request.headers), b"", at=self.monotonic()
        )
        self.requests.append(record)
        return record

    async def _rest_refusal(
        self, request: web.Request, record: RequestRecord
    ) -> web.StreamResponse | None:
        injected = self._injected(record, "rest")
        if injected is not None:
            return injected
        fault = self._faults["rest"].popleft() if self._faults["rest"] else None
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "drop":
                return self._drop(request, record)
            if fault.kind == "timeout":
                await self._hold(fault.seconds)
                return _json(record, 504, _rest_error("The request took too long to process", 2016))
            return _json(record, fault.status, fault.body or {}, dict(fault.headers))
        expected = f"Token token={self.api_token}"
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
            return _json(record, 401, _rest_error("Authentication failed", 2006))
        return None

    def _injected(self, record: RequestRecord, api: Api) -> web.StreamResponse | None:
        if self._down is None:
            return None
        record.fault = "down"
        status, body = self._down
        if api == "rest":
            body = _rest_error("Service Unavailable", 2000)
        return _json(record, status, body)

    def _find_incident(self, id_or_number: str) -> Incident | None:
        if id_or_number in self.incidents:
            return self.incidents[id_or_number]
        for incident in self.incidents.values():
            if str(incident.number) == id_or_number:
                return incident
        return None

    def _alert_json(self, alert: Alert) -> JSON:
        contexts = [{"type": "link", **link} for link in alert.links] + [
            {"type": "image", **image} for image in alert.images
        ]
        return {
            "id": alert.id,
            "type": "alert",
            "summary": alert.summary,
            "self": f"{self.api_url}/incidents/{alert.incident_id}/alerts/{alert.id}",
            "html_url": f"{_HTML}/alerts/{alert.id}",
            "created_at": iso_seconds(alert.created_at),
            "status": alert.status,
            "alert_key": alert.dedup_key,
            "service": self.service,
            "body": {
                "type": "alert_body",
                "contexts": contexts,
                "details": alert.custom_details,
                "cef_details": {
                    "source_origin": alert.source,
                    "severity": alert.severity,
                    "description": alert.summary,
                    "dedup_key": alert.dedup_key,
                },
            },
            "incident": {"id": alert.incident_id, "type": "incident_reference"},
            "suppressed": False,
            "severity": alert.severity,
            "integration": self.integration,
        }

    def _incident_json(self, incident: Incident) -> JSON:
        alerts = [self.alerts[a] for a in incident.alert_ids]
        triggered = sum(1 for alert in alerts if alert.status == "triggered")
        assignments = (
            []
            if incident.status == "resolved"
            else [
                {
                    "at": iso_seconds(incident.updated_at),
                    "assignee": self.users[incident.escalation_level - 1],
                }
            ]
        )
        acknowledgements = (
            [{"at": iso_seconds(incident.updated_at), "acknowledger": incident.acknowledged_by}]
            if incident.status == "acknowledged" and incident.acknowledged_by is not None
            else []
        )
        return {
            "id": incident.id,
            "type": "incident",
            "summary": f"[#{incident.number}] {incident.title}",
            "self": f"{self.api_url}/incidents/{incident.id}",
            "html_url": f"{_HTML}/incidents/{incident.id}",
            "incident_number": incident.number,
            "title": incident.title,
            "created_at": iso_seconds(incident.created_at),
            "updated_at": iso_seconds(incident.updated_at),
            "status": incident.status,
            "incident_key": incident.incident_key,
            "service": self.service,
            "assignments": assignments,
            "assigned_via": "escalation_policy",
            "last_status_change_at": iso_seconds(incident.updated_at),
            "resolved_at": iso_seconds(incident.resolved_at) if incident.resolved_at else None,
            "alert_counts": {
                "all": len(alerts),
                "triggered": triggered,
                "resolved": len(alerts) - triggered,
            },
            "escalation_policy": self.escalation_policy,
            "teams": [self.team],
            "acknowledgements": acknowledgements,
            "priority": None,
            "urgency": incident.urgency,
            "resolve_reason": None,
            "conference_bridge": None,
        }

    def _incident_reference(self, incident: Incident) -> JSON:
        return {
            "html_url": f"{_HTML}/incidents/{incident.id}",
            "id": incident.id,
            "self": f"{self.api_url}/incidents/{incident.id}",
            "summary": incident.title,
            "type": "incident_reference",
        }

    # plumbing

    async def _hold(self, seconds: float) -> None:
        assert self._closing is not None
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            pass

    def _drop(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        record.status = 0
        if request.transport is not None:
            request.transport.abort()
        # Nothing reaches the client once the transport is aborted.
        return web.Response(status=500)

    def _new_id(self) -> str:
        alphabet = string.ascii_uppercase + string.digits
        while True:
            candidate = "P" + "".join(self._random.choice(alphabet) for _ in range(6))
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def _reference(self, kind: str, summary: str, html_path: str) -> JSON:
        ident = self._new_id()
        api_path = {"service": "services", "user": "users", "team": "teams"}.get(kind, html_path)
        return {
            "html_url": f"{_HTML}/{html_path}/{ident}",
            "id": ident,
            # The base URL is unknown before start(); references point at the public API.
            "self": f"https://api.pagerduty.com/{api_path}/{ident}",
            "summary": summary,
            "type": f"{kind}_reference",
        }


_HTML = "https://fake.pagerduty.invalid"
# The ``client`` of events caused by people in PagerDuty's web app (the overview's example).
_WEB: JSON = {"name": "PagerDuty"}


def validate_event(event: Mapping[str, Any]) -> list[str]:
    """Check an Events API v2 alert event against the documented fields; return the errors."""
    errors: list[str] = []
    routing_key = event.get("routing_key")
    if not isinstance(routing_key, str) or not routing_key:
        errors.append("'routing_key' is missing or blank")
    action = event.get("event_action")
    if action not in EVENT_ACTIONS:
        errors.append("'event_action' must be one of trigger, acknowledge, resolve")
    dedup_key = event.get("dedup_key")
    if dedup_key is not None and not isinstance(dedup_key, str):
        errors.append("'dedup_key' must be a string")
    elif isinstance(dedup_key, str) and len(dedup_key) > MAX_DEDUP_KEY_CHARS:
        errors.append(f"'dedup_key' is longer than {MAX_DEDUP_KEY_CHARS} characters")
    elif action in ("acknowledge", "resolve") and not dedup_key:
        errors.append(f"'dedup_key' is required for {action} events")
    for name in ("client", "client_url"):
        if name in event and not isinstance(event[name], str):
            errors.append(f"'{name}' must be a string")
    errors += _context_errors(event, "links", "href")
    errors += _context_errors(event, "images", "src")
    if action == "trigger":
        errors += _payload_errors(event.get("payload"))
    return errors


def _payload_errors(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors: list[str] = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        errors.append("'payload.summary' is missing or blank")
    elif len(summary) > MAX_SUMMARY_CHARS:
        errors.append(f"'payload.summary' is longer than {MAX_SUMMARY_CHARS} characters")
    source = payload.get("source")
    if not isinstance(source, str) or not source.strip():
        errors.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' must be one of critical, error, warning, info")
    if "timestamp" in payload:
        timestamp = payload["timestamp"]
        try:
            if not isinstance(timestamp, str):
                raise ValueError(timestamp)
            datetime.fromisoformat(timestamp)
        except ValueError:
            errors.append("'payload.timestamp' is not an ISO 8601 timestamp")
    for name in ("component", "group", "class"):
        if name in payload and not isinstance(payload[name], str):
            errors.append(f"'payload.{name}' must be a string")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("'payload.custom_details' must be an object")
    return errors


def _context_errors(event: Mapping[str, Any], name: str, required: str) -> list[str]:
    if name not in event:
        return []
    items = event[name]
    if not isinstance(items, list):
        return [f"'{name}' must be an array of objects"]
    errors: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(required), str):
            errors.append(f"'{name}[{index}].{required}' is missing")
    return errors


def _invalid(errors: list[str]) -> JSON:
    return {"status": INVALID_EVENT, "message": INVALID_EVENT_MESSAGE, "errors": errors}


def _throttled(api: Api) -> JSON:
    if api == "rest":
        return _rest_error("Rate Limit Exceeded", 2020)
    return {"status": "throttle event", "message": "Request Limit Exceeded"}


def _rest_error(message: str, code: int) -> JSON:
    return {"error": {"message": message, "code": code}}


def _json(
    record: RequestRecord,
    status: int,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    record.status = status
    return web.json_response(body, status=status, headers=headers)
