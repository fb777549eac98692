"""Outbound webhooks: each lifecycle event of an incident as signed JSON, to configured URLs.

Teams connect status pages, chat tools or ticketing to the sidecar this way.
The planner (:class:`WebhookPlanner`) adds one outbox row per endpoint and
lifecycle event it subscribes to; the sender POSTs it. Every request carries

- ``X-Incident-SLA-Signature: v1=<hex HMAC-SHA256 of the raw body, keyed by the
  endpoint's secret>``, in the style of PagerDuty's ``X-PagerDuty-Signature``
  (verify it by computing the same over the bytes received and comparing in
  constant time; several ``v1=`` values, comma-separated, may come in future
  during a secret's rotation: accept any match);
- ``X-Incident-SLA-Event`` (the lifecycle event) and ``X-Incident-SLA-Delivery``
  (the same on every attempt of one event: receivers deduplicate on it, since
  delivery is at least once).

The body is ``{"version": "1", "delivery": ..., "event": {kind, at, source,
actor, message, data}, "incident": {...}}`` where ``incident`` is the data model
of the message templates. 2xx is delivered; 408, 429 (with its
``Retry-After``) and 5xx are retried with the one retry policy; any other
answer is a dead letter with the receiver's status and the start of its body.

The ``ticket`` event also stands in for Jira: with no ``jira`` section, an
incident whose severity's policy is ``ticket`` sends it when it opens.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from sidecar.clock import Clock
from sidecar.config.integrations import WebhookEndpoint
from sidecar.incidents import Change
from sidecar.metrics import Metrics
from sidecar.notify.lifecycle import Lifecycle, incident_data, lifecycle_events
from sidecar.notify.pagerduty import Policies
from sidecar.notify.result import SendResult, SessionSender
from sidecar.notify.retry import retry_after_seconds
from sidecar.store.base import OutboxItem, RateBudget
from sidecar.store.rows import WEBHOOK, OutboxRow

SIGNATURE_HEADER = "X-Incident-SLA-Signature"
EVENT_HEADER = "X-Incident-SLA-Event"
DELIVERY_HEADER = "X-Incident-SLA-Delivery"
USER_AGENT = "incident-sla-sidecar-webhook/1"
_MAX_ERROR_BODY = 300


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: ``v1=`` and the hex HMAC-SHA256 of ``body``."""
    return "v1=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str, secret: str) -> bool:
    """Whether any ``v1=`` signature of ``header`` matches ``body`` (constant time)."""
    expected = sign(body, secret)
    candidates = [part.strip() for part in header.split(",")]
    return any(hmac.compare_digest(expected, c) for c in candidates if c.startswith("v1="))


class WebhookPlanner:
    """Plans each change's lifecycle events for every subscribed endpoint."""

    def __init__(
        self,
        rules: Policies,
        endpoints: Sequence[WebhookEndpoint],
        *,
        tickets: bool,
        external_url: str | None = None,
    ) -> None:
        self.rules = rules
        self.endpoints = list(endpoints)
        # True when no Jira is configured: the ``ticket`` policy goes out here.
        self.tickets = tickets
        self.external_url = external_url.rstrip("/") if external_url else None

    def set_rules(self, rules: Policies) -> None:
        """Plan by these rules from now on (a rules reload)."""
        self.rules = rules

    def events_of(self, change: Change) -> list[Lifecycle]:
        """The change's lifecycle events, with the ticket a ``ticket`` policy asks for."""
        events = lifecycle_events(change)
        inc = change.incident
        wants_ticket = (
            self.tickets
            and any(e.kind == "opened" for e in events)
            and not any(e.kind == "ticket" for e in events)
            and self.rules.policy(inc.severity).paging == "ticket"
        )
        if wants_ticket:
            opened = next(e for e in events if e.kind == "opened")
            message = f"{inc.severity} policy is ticket: a ticket is requested"
            events.append(Lifecycle("ticket", opened.at, "sidecar", None, message))
        return events

    def plan(self, change: Change, now: float) -> None:
        """Add the change's webhook rows to its outbox rows."""
        if not self.endpoints:
            return
        events = self.events_of(change)
        if not events:
            return
        inc = change.incident
        url = f"{self.external_url}/api/v1/incidents/{inc.id}" if self.external_url else None
        data = incident_data(
            inc, update=self.rules.policy(inc.severity).clocks.update, incident_url=url
        )
        for n, ev in enumerate(events):
            # Unique per event and stable across retries: the incident's timeline
            # position of this change and the event's place in it.
            delivery = f"{inc.id}:{inc.seq}:{n}"
            body = orjson.dumps(
                {"version": "1", "delivery": delivery, "event": ev.to_json(), "incident": data}
            )
            for endpoint in self.endpoints:
                if ev.kind not in endpoint.events:
                    continue
                change.outbox.append(
                    OutboxRow(
                        integration=WEBHOOK,
                        incident_id=inc.id,
                        dedup_key=f"{inc.id}:{endpoint.name}",
                        routing=endpoint.name,
                        action=ev.kind,
                        body=body,
                        created_at=now,
                    )
                )


class WebhookSender(SessionSender):
    """The outbox's webhook sender: a signed POST, its answer classified."""

    name = WEBHOOK
    budget: RateBudget | None = None

    def __init__(
        self,
        metrics: Metrics,
        clock: Clock,
        *,
        endpoints: Sequence[WebhookEndpoint],
        secrets: Mapping[str, str],
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.endpoints = {e.name: e for e in endpoints}
        self.secrets = secrets
        self.timeout = max([e.timeout.total_seconds() for e in endpoints] or [10.0])

    async def send(self, item: OutboxItem) -> SendResult:
        """POST the event, signed with the endpoint's secret (looked up now)."""
        assert self._session is not None, "open() first"
        endpoint = self.endpoints.get(item.routing)
        secret = self.secrets.get(item.routing)
        if endpoint is None or secret is None:
            return SendResult("rejected", None, f"no webhook named {item.routing!r} configured")
        delivery: Any = orjson.loads(item.body).get("delivery", "")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(item.body, secret),
            EVENT_HEADER: item.action,
            DELIVERY_HEADER: str(delivery),
        }
        timeout = endpoint.timeout.total_seconds()
        try:
            async with self._session.post(
                endpoint.url,
                data=item.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                text = (await response.text(errors="replace"))[:_MAX_ERROR_BODY]
                advice = retry_after_seconds(
                    response.headers.get("Retry-After"),
                    now=self.clock.now(),
                    date=response.headers.get("Date"),
                )
        except TimeoutError:
            return SendResult("retry", None, f"no answer within {timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return SendResult("retry", None, f"{type(exc).__name__}: {exc}")
        message = f"HTTP {status}: {text.strip()}" if text.strip() else f"HTTP {status}"
        if 200 <= status < 300:
            return SendResult("accepted", status, message)
        if status == 429:
            return SendResult("rate_limited", status, message, retry_after=advice)
        if status >= 500 or status == 408:
            return SendResult("retry", status, message, retry_after=advice)
        return SendResult("rejected", status, message)

    def count(self, action: str, result: str) -> None:
        """``notifications_total{integration="webhook",action,result}``."""
        self.metrics.count_notification(WEBHOOK, action, result)
