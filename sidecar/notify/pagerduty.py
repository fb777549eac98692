"""Which PagerDuty events an incident change causes, by the severity's paging policy.

Policies: ``page`` and ``notify`` send a trigger (with the severity's PagerDuty
severity: critical/error wake someone, warning/info do not); ``ticket`` sends
nothing and records a ticket on the timeline; ``none`` records nothing. A
trigger goes out when an incident opens, reopens within its recovery watch
(on the same dedup key), or its severity rises; acknowledge and resolve follow
from any source, PagerDuty included, to every page of an incident that was
paged (a responder in PagerDuty acts on one page, the team's or an escalation
tier's, and the others must stop escalating too). An escalation step pages its
tier's key only when the incident book recorded its outcome as ``paged`` (the
book decides, with the change). The events are written to the outbox in the
same transaction as the change that causes them, planned by the command itself
(the book runs its planners before a command returns), so a page is never lost
and never sent for a change that was not committed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiohttp
import orjson

from sidecar.clock import Clock
from sidecar.incidents import Change, Incident
from sidecar.incidents.model import timeline_event
from sidecar.metrics import Metrics
from sidecar.notify.outbox import OutboxWorker
from sidecar.notify.result import SendResult
from sidecar.notify.retry import RetryPolicy
from sidecar.pagerduty.client import EventsClient
from sidecar.pagerduty.events import (
    build_acknowledge,
    build_resolve,
    build_trigger,
    dedup_key_for_alert,
    dedup_key_for_group,
)
from sidecar.routing import DEFAULT, routing_for_team, team_routing, tier_routing
from sidecar.store.base import OutboxItem, RateBudget, Store
from sidecar.store.rows import PAGERDUTY, OutboxRow

if TYPE_CHECKING:
    from sidecar.rules import SeverityPolicy


def tier_dedup_key(dedup_key: str, tier: str) -> str:
    """The dedup key of an escalation tier's page: its own PagerDuty alert, same incident."""
    return f"{dedup_key}:{tier}"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One Events API v2 body to deliver, without its routing key."""

    incident_id: str
    dedup_key: str
    routing: str
    action: str
    body: Mapping[str, Any]

    def row(self, now: float) -> OutboxRow:
        """The outbox row that queues this event for PagerDuty at ``now``."""
        return OutboxRow(
            integration=PAGERDUTY,
            incident_id=self.incident_id,
            dedup_key=self.dedup_key,
            routing=self.routing,
            action=self.action,
            body=orjson.dumps(dict(self.body)),
            created_at=now,
        )


class Policies(Protocol):
    """The severities' paging policies (``sidecar.rules.RuleSet``)."""

    def policy(self, severity: str) -> SeverityPolicy: ...


class Pager:
    """Plans the PagerDuty events of a change, inside the command that makes it.

    A planner of the incident book (see ``sidecar.incidents.core.planned``):
    it reads the change and the rules, never the book.
    """

    def __init__(
        self,
        rules: Policies,
        *,
        key_mode: Literal["group", "alert"] = "group",
        routing_names: Collection[str],
        external_url: str | None = None,
    ) -> None:
        self.rules = rules
        self.key_mode = key_mode
        self.routing_names = frozenset(routing_names)
        self.external_url = external_url.rstrip("/") if external_url else None

    def set_rules(self, rules: Policies) -> None:
        """Page by these rules from now on (a rules reload)."""
        self.rules = rules

    def plan(self, change: Change, now: float) -> None:
        """Add the change's PagerDuty events to its outbox rows (nothing when PagerDuty is off)."""
        if self.enabled:
            change.outbox.extend(e.row(now) for e in self.events_for(change, now))

    @property
    def enabled(self) -> bool:
        """True when at least one routing key is configured."""
        return bool(self.routing_names)

    def dedup_key(self, inc: Incident) -> str:
        """The dedup key of an incident: sha256(groupKey), as Alertmanager's own integration."""
        if self.key_mode == "alert":
            return dedup_key_for_alert(inc.group_key, inc.key)
        return dedup_key_for_group(inc.group_key)

    def routing_for(self, inc: Incident) -> str | None:
        """The routing key name for an incident's owning team, or the default."""
        return routing_for_team(inc.team, self.routing_names)

    def events_for(self, change: Change, now: float) -> list[OutboxEvent]:
        """Outbox events for a change; may add paging notes to the change's timeline."""
        inc = change.incident
        out: list[OutboxEvent] = []
        # Reopened and resolved again in one change (the re-fire was over by
        # the time it was reported): PagerDuty was not triggered again, and
        # has nothing to acknowledge or resolve.
        flapped = not inc.is_open and any(e.kind == "reopened" for e in change.effects)
        for effect in change.effects:
            if effect.kind == "opened" and inc.is_open:
                out += self._trigger(change, now, reason="opened")
            elif effect.kind == "reopened" and inc.is_open:
                # The same dedup key: PagerDuty opens a new alert on it, which
                # pages the on-call; the tiers already paged are not paged again.
                out += self._trigger(change, now, reason="reopened within its recovery watch")
            elif effect.kind == "severity_raised" and inc.is_open:
                out += self._trigger(change, now, reason=f"severity raised to {inc.severity}")
            elif (
                effect.kind == "escalated"
                and effect.outcome == "paged"
                and effect.detail is not None
                and inc.is_open
            ):
                # The book decided the outcome with the change; only a paged
                # step sends anything.
                out += self._escalate(change, now, effect.detail)
            elif effect.kind in ("acknowledged", "resolved") and not flapped:
                action = "acknowledge" if effect.kind == "acknowledged" else "resolve"
                build = build_acknowledge if action == "acknowledge" else build_resolve
                # The team's page and every escalation tier's page follow, also
                # when a responder acted in PagerDuty: that was on one page, and
                # PagerDuty would go on escalating the others. The effect does
                # not say which page it was, so that one gets the event too,
                # which PagerDuty takes without changing it; the webhooks the
                # others' events cause find the incident acknowledged or
                # resolved already, change nothing and so plan nothing.
                for dedup, routing in self._pages(inc):
                    out.append(OutboxEvent(inc.id, dedup, routing, action, build(dedup)))
        return out

    def _pages(self, inc: Incident) -> list[tuple[str, str]]:
        """(dedup key, routing name) of every PagerDuty alert this incident opened."""
        pages: list[tuple[str, str]] = []
        if inc.paged_dedup_key is None:
            return pages
        routing = self.routing_for(inc)
        if routing is not None:
            pages.append((inc.paged_dedup_key, routing))
        for tier in inc.escalated:
            routing = tier_routing(tier)
            # Rows from before outcomes were kept have none: their tier was
            # paged when it had a key.
            outcome = inc.escalation_outcomes.get(tier, "paged")
            if outcome == "paged" and routing in self.routing_names:
                pages.append((tier_dedup_key(inc.paged_dedup_key, tier), routing))
        return pages

    def _escalate(self, change: Change, now: float, tier: str) -> list[OutboxEvent]:
        inc = change.incident
        routing = tier_routing(tier)
        if inc.paged_dedup_key is None:
            inc.paged_dedup_key = self.dedup_key(inc)
        dedup = tier_dedup_key(inc.paged_dedup_key, tier)
        message = f"PagerDuty page to escalation tier {tier} queued"
        return [self._queue_trigger(change, now, dedup, routing, message)]

    def _queue_trigger(
        self, change: Change, now: float, dedup: str, routing: str, message: str
    ) -> OutboxEvent:
        """The trigger of ``change``'s incident on ``dedup``, noted on its timeline."""
        inc = change.incident
        body = build_trigger(
            inc,
            pagerduty_severity=self.rules.policy(inc.severity).pagerduty_severity,
            dedup_key=dedup,
            # The notification's externalURL is the one people can open.
            alertmanager_url=inc.external_url or None,
            incident_url=self._incident_url(inc),
        )
        change.events.append(
            timeline_event(
                inc,
                now,
                "pagerduty_queued",
                "sidecar",
                None,
                message,
                {"action": "trigger", "routing": routing, "dedup_key": dedup},
            )
        )
        return OutboxEvent(inc.id, dedup, routing, "trigger", body)

    def _incident_url(self, inc: Incident) -> str | None:
        # The incident page, which a responder opens from PagerDuty.
        return f"{self.external_url}/incidents/{inc.id}" if self.external_url else None

    def _trigger(self, change: Change, now: float, *, reason: str) -> list[OutboxEvent]:
        inc = change.incident
        policy = self.rules.policy(inc.severity)
        if policy.paging == "none":
            return []
        if policy.paging == "ticket":
            if reason == "opened":
                change.events.append(
                    timeline_event(
                        inc,
                        now,
                        "ticket",
                        "sidecar",
                        None,
                        f"{inc.severity} policy is ticket: recorded, nobody paged",
                    )
                )
            return []
        routing = self.routing_for(inc)
        if routing is None:
            return []
        dedup = self.dedup_key(inc)
        inc.paged_dedup_key = dedup
        verb = "page" if policy.paging == "page" else "notification (no page)"
        message = (
            f"PagerDuty {verb} queued ({reason}; severity {policy.pagerduty_severity}, "
            f"routing {routing})"
        )
        return [self._queue_trigger(change, now, dedup, routing, message)]


#: The budget counts sends over PagerDuty's window plus this, so that a send which
#: arrives a moment after its claim still falls inside the count that allowed it.
RATE_WINDOW_MARGIN = 1.0


def rate_buckets(routing_keys: Mapping[str, str]) -> dict[str, str]:
    """The budget of each routing name: names that hold the same key share one.

    PagerDuty limits per routing key; the bucket is named after the first of its
    names (never the key itself, which is a secret and stays out of the store).
    """
    first: dict[str, str] = {}
    for name in sorted(routing_keys):
        first.setdefault(routing_keys[name], name)
    return {name: first[key] for name, key in routing_keys.items()}


class PagerDutySender:
    """The outbox's PagerDuty sender: an Events API v2 body with its routing key, classified."""

    name = PAGERDUTY

    def __init__(
        self,
        metrics: Metrics,
        clock: Clock,
        *,
        events_url: str,
        routing_keys: Mapping[str, str],
        timeout: float = 10.0,
        rate_limit_per_minute: int = 120,
        rate_limit_window: float = 60.0,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.events_url = events_url
        self.routing_keys = routing_keys
        self.timeout = timeout
        self.budget: RateBudget | None = RateBudget(
            per_window=max(1, int(rate_limit_per_minute * rate_limit_window / 60.0)),
            window=rate_limit_window + RATE_WINDOW_MARGIN,
            buckets=rate_buckets(routing_keys),
        )
        self._session: aiohttp.ClientSession | None = None
        self._client: EventsClient | None = None

    async def open(self) -> None:
        """Open the HTTP session."""
        self._session = aiohttp.ClientSession()
        self._client = EventsClient(
            self._session, self.events_url, timeout=self.timeout, clock=self.clock
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = self._client = None

    async def send(self, item: OutboxItem) -> SendResult:
        """POST the item's body with its routing key (looked up now, never stored)."""
        assert self._client is not None, "open() first"
        key = self.routing_keys.get(item.routing)
        if key is None and item.routing.startswith(team_routing("")):
            # The team's own key was removed from the configuration since this was
            # queued: its page goes where the team's pages go now, never nowhere.
            key = self.routing_keys.get(DEFAULT)
        if key is None:
            # The routing key was removed from the configuration since.
            reason = f"no routing key named {item.routing!r} configured"
            return SendResult("rejected", None, reason, None)
        body: dict[str, Any] = orjson.loads(item.body)
        return await self._client.send(body, key)

    def count(self, action: str, result: str) -> None:
        """``pagerduty_events_total{action,result}`` and ``notifications_total``."""
        self.metrics.pagerduty_events_total.labels(action, result).inc()
        self.metrics.count_notification(PAGERDUTY, action, result)


def pagerduty_outbox(
    store: Store,
    metrics: Metrics,
    clock: Clock,
    *,
    retry: RetryPolicy | None = None,
    concurrency: int = 8,
    poll_interval: float = 1.0,
    **sender: Any,
) -> OutboxWorker:
    """The outbox worker of PagerDuty (``sender`` are :class:`PagerDutySender`'s options)."""
    return OutboxWorker(
        store,
        clock,
        PagerDutySender(metrics, clock, **sender),
        retry=retry,
        concurrency=concurrency,
        poll_interval=poll_interval,
    )
