"""Inbound PagerDuty webhooks v3: map an event to our incidents and to a command on each.

PagerDuty delivers at least once: a delivery id (``X-Webhook-Id``) is committed
with the change it causes and remembered, so a redelivery changes nothing,
even after a restart. The REST API tells the PagerDuty incident's alert keys,
which are our dedup keys, and when each alert was created; the event's
``incident_key`` (which PagerDuty may leave null on incidents the Events API
created) names only the alert that opened it, and serves when there is no API
token or the REST API fails. With alert grouping one PagerDuty incident holds several
alerts, so several of our pages: the event is about every incident behind
them, and their commands run in one submit.

Every episode of a group pages on the same dedup key (``sha256(groupKey)``, as
Alertmanager's own integration), and PagerDuty opens an incident for each
episode's trigger. The newest incident on the key is the one paged last
there; a PagerDuty alert on the key created before that incident's first
trigger there can have gone out is an earlier episode's (typically the echo
of the previous episode's resolve, sent late after an outage): the event goes
on the newest incident's timeline as ``pagerduty_ignored`` and changes
nothing. So does an event that happened more than a second before the newest
incident was triggered (all there is to go by for a status update, which
carries no creation time). The outbox rows tell when a trigger can have gone out at the
earliest: when it was queued, and when the key's earlier events were done,
as a key's events go in order; while one of those still waits, it has not
gone out at all. PagerDuty writes ``created_at`` in whole seconds, so an alert
created in the second the page went out may be its own and counts as such.
Only when the previous episode's events and the new trigger all went out
within the second PagerDuty created the old alert can the two not be told
apart; the event then acts on the newest incident, as before.

A reopened incident (recovery watch) pages again on the same dedup key, and
PagerDuty opens a new incident for it, so one dedup key then names two
PagerDuty incidents. An acknowledgment, un-acknowledgment or resolution that
happened before the reopening, or that is about a PagerDuty incident created
before it (the echo of our own resolve, delivered late or again, or a hand on
the old incident), is not about the page the reopening sent: it goes on the
timeline as ``pagerduty_ignored`` and changes nothing. The reopening time is
stored on the incident, and the outbox rows in the store, so every replica
decides the same way.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from sidecar.incidents import Change, Incident, IncidentBook
from sidecar.pagerduty.client import PagerDutyApiError, RestClient
from sidecar.pagerduty.webhooks import WebhookEvent
from sidecar.store.base import KeyPage, Store

log = logging.getLogger("sidecar.pagerduty")

SOURCE = "pagerduty"
DELIVERY_MEMORY = 100_000  # ids remembered in memory; older ones are still in the store
DELIVERY_HORIZON = 7 * 86400.0
#: Events about the PagerDuty incident that these change: only its current one counts.
STATE_EVENTS = frozenset({"incident.acknowledged", "incident.unacknowledged", "incident.resolved"})


class PagerDutyInbound:
    """State and lookups behind ``POST /webhook/pagerduty``."""

    def __init__(self, store: Store, book: IncidentBook, *, api_url: str, api_token: str | None):
        self.store = store
        self.book = book
        self.api_url = api_url
        self.api_token = api_token
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    async def start(self, now: float) -> None:
        """Load recent delivery ids from the store."""
        for delivery_id in await self.store.known_deliveries(SOURCE, now - DELIVERY_HORIZON):
            self.remember(delivery_id)

    async def stop(self) -> None:
        """Close the REST session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def seen(self, delivery_id: str) -> bool:
        """True when this delivery was already processed."""
        return delivery_id in self._seen

    def remember(self, delivery_id: str) -> None:
        """Mark a delivery processed (after its commit)."""
        self._seen[delivery_id] = None
        self._seen.move_to_end(delivery_id)
        while len(self._seen) > DELIVERY_MEMORY:
            self._seen.popitem(last=False)

    async def alert_keys(self, event: WebhookEvent) -> dict[str, datetime | None]:
        """Our dedup keys behind the PagerDuty incident of ``event``, each with its alert's birth.

        The time is when PagerDuty created the alert of the key (from the REST
        API), or the incident (from the webhook, for its ``incident_key``); None
        when unknown. The REST API is asked whenever there is a token, even when
        the event carries an ``incident_key``: that names the alert that opened
        the incident, and alert grouping may have added others. Should it fail
        then, the ``incident_key`` still serves.
        """
        known = {event.incident_key: event.pd_created_at} if event.incident_key else {}
        if not event.pd_incident_id or not self.api_token:
            return known
        if self._session is None:
            self._session = aiohttp.ClientSession()
        client = RestClient(self._session, self.api_url, self.api_token)
        try:
            keys = await client.incident_alerts(event.pd_incident_id)
        except PagerDutyApiError as exc:
            if not known:
                raise
            log.warning(
                "PagerDuty alerts lookup failed; mapping by incident_key alone",
                extra={"pd_incident_id": event.pd_incident_id, "error": str(exc)},
            )
            return known
        return {**known, **keys}

    async def find_incidents(self, event: WebhookEvent) -> list[Target]:
        """Our incidents the event is about: one per incident behind its PagerDuty incident.

        With alert grouping, one PagerDuty incident holds the pages of several
        of ours, and acknowledging or resolving it is about each of them.
        """
        targets: dict[str, Target] = {}
        for key, created in (await self.alert_keys(event)).items():
            target = await self._target(event, key, created)
            if target is None:
                continue
            known = targets.get(target.incident.id)
            # Through any key that pages it now, the incident is the event's.
            if known is None or (known.earlier is not None and target.earlier is None):
                targets[target.incident.id] = target
        return list(targets.values())

    async def _target(
        self, event: WebhookEvent, key: str, created: datetime | None
    ) -> Target | None:
        """The incident paged last with ``key``, and whether the event is an earlier episode's."""
        page = await self.store.latest_page(key)
        incident_id = (
            page.incident_id if page is not None else await self.store.incident_for_dedup_key(key)
        )
        if incident_id is None:
            return None
        inc = self.book.get_open(incident_id) or await self.store.get_incident(incident_id)
        if inc is None:
            return None
        return Target(inc, earlier_episode(event, inc, created, page))

    def command(
        self, event: WebhookEvent, targets: Sequence[Target]
    ) -> Callable[[float], list[Change]]:
        """One command for every target, run together; unknown types only go on the timeline."""
        runs = [self._command(event, target) for target in targets]

        def run(now: float) -> list[Change]:
            # One command: should one target's raise, the service puts back what
            # the others began (BookCore.all_or_nothing) and nothing is committed.
            return [change for one in runs for change in one(now)]

        return run

    def _command(self, event: WebhookEvent, target: Target) -> Callable[[float], list[Change]]:
        """The incident-book command for ``event`` on one target."""
        book, actor = self.book, event.agent
        kind = event.event_type
        incident = target.incident
        incident_id = incident.id

        def run(now: float) -> list[Change]:
            change: Change | None
            open_inc = book.get_open(incident_id)
            stale = target.earlier
            if stale is None and kind in STATE_EVENTS and open_inc is not None:
                stale = before_reopening(event, open_inc)
            if stale is not None:
                # An earlier episode's PagerDuty incident changes nothing of this one.
                if open_inc is None:
                    return []
                change = book.note(
                    incident_id,
                    kind="pagerduty_ignored",
                    actor=actor,
                    source=SOURCE,
                    now=now,
                    message=f"PagerDuty: {kind} ignored: {stale}",
                )
            elif kind == "incident.acknowledged":
                if open_inc is None:
                    return []
                change = book.acknowledge(incident_id, actor=actor, source=SOURCE, now=now)
            elif kind == "incident.resolved":
                if open_inc is None:
                    return []
                change = book.resolve(incident_id, actor=actor, source=SOURCE, now=now)
            elif kind == "incident.unacknowledged":
                if open_inc is None:
                    return []
                change = book.unacknowledge(incident_id, actor=actor, source=SOURCE, now=now)
            elif kind == "incident.reopened":
                change = book.reopen(open_inc or incident, actor=actor, source=SOURCE, now=now)
            elif kind == "incident.status_update_published":
                if open_inc is None:
                    return []
                change = book.record_update(
                    incident_id,
                    actor=actor,
                    source=SOURCE,
                    now=now,
                    message=event.message or "status update published in PagerDuty",
                )
            else:  # incident.escalated and friends: on the timeline only
                if open_inc is None:
                    return []
                change = book.note(
                    incident_id,
                    kind=kind.replace("incident.", "pagerduty_"),
                    actor=actor,
                    source=SOURCE,
                    now=now,
                    message=f"PagerDuty: {kind}",
                )
            return [change] if change else []

        return run


@dataclass(frozen=True, slots=True)
class Target:
    """One of our incidents a webhook event is about."""

    incident: Incident
    # Why the event's PagerDuty incident is an earlier episode's, not this
    # incident's page; None when it may be its.
    earlier: str | None = None


def earlier_episode(
    event: WebhookEvent, inc: Incident, created: datetime | None, page: KeyPage | None
) -> str | None:
    """Why ``event`` is about a PagerDuty incident of an episode before ``inc``; None if not.

    ``created`` is when PagerDuty created the alert on the key, ``page`` how
    ``inc`` was paged there (from the outbox). PagerDuty writes ``created_at``
    in whole seconds: the alert was created within the second it names, so it
    is an earlier page's only when ``inc``'s page cannot have gone out before
    that second ended. Decided from stored rows, so every replica agrees.
    """
    pd_incident = event.pd_incident_id or "?"
    triggered = datetime.fromtimestamp(inc.triggered_at, UTC)
    if event.occurred_at.timestamp() < inc.triggered_at - 1.0:
        return (
            f"it happened at {event.occurred_at.isoformat()} on PagerDuty incident "
            f"{pd_incident}, before this incident was triggered at {triggered.isoformat()}"
        )
    if created is None or page is None or not page.follows or page.incident_id != inc.id:
        return None
    if page.sent_from < int(created.timestamp()) + 1:
        return None
    went = (
        "it has not yet"
        if math.isinf(page.sent_from)
        else f"at {datetime.fromtimestamp(page.sent_from, UTC).isoformat()} or later"
    )
    return (
        f"PagerDuty incident {pd_incident} was created at {created.isoformat()}, before "
        f"this incident's page went out ({went}): it is an earlier episode's"
    )


def before_reopening(event: WebhookEvent, inc: Incident) -> str | None:
    """Why ``event`` is about PagerDuty's incident before ``inc`` reopened; None if it is not.

    PagerDuty writes ``created_at`` in whole seconds: a PagerDuty incident
    created within the second of the reopening may be the new one, so only an
    earlier second counts as the old one.
    """
    if inc.reopened_at is None:
        return None
    reopened = datetime.fromtimestamp(inc.reopened_at, UTC)
    pd_incident = event.pd_incident_id or "?"
    if event.occurred_at < reopened:
        return (
            f"it happened at {event.occurred_at.isoformat()} on PagerDuty incident "
            f"{pd_incident}, before the reopening at {reopened.isoformat()}"
        )
    created, pd_reopened = event.pd_created_at, event.pd_reopened_at
    if (
        created is not None
        and created.timestamp() < int(inc.reopened_at)
        and (pd_reopened is None or pd_reopened.timestamp() < int(inc.reopened_at))
    ):
        return (
            f"PagerDuty incident {pd_incident} was created at {created.isoformat()}, "
            f"before the reopening at {reopened.isoformat()}: the reopening paged a new one"
        )
    return None
