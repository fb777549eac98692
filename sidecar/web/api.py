"""The incidents API: list, read, acknowledge, resolve, update, review.

Incidents are named by id or by plan number; the Incident Commander's actions
(roles, severity, escalation) are :mod:`sidecar.web.leading`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from sidecar.clock import isoformat
from sidecar.errors import IncidentNotFound, InvalidTransition
from sidecar.incidents import Incident, TimelineEvent, is_number, war_room
from sidecar.incidents.people import ROLES
from sidecar.postmortem import render_postmortem
from sidecar.rules import RuleSet
from sidecar.sla.verdict import sla_report
from sidecar.store import IncidentQuery
from sidecar.store.base import OutboxItem
from sidecar.store.codec import incident_from_row, incident_row
from sidecar.store.rows import JIRA, PAGERDUTY
from sidecar.web.answers import json_answer
from sidecar.web.auth import require_api_token
from sidecar.web.keys import COMPONENTS

STATES = ("open", "triggered", "acknowledged", "resolved")
TEMPLATES = ("llm-marketplace", "schema-registry", "generic")
MAX_LIMIT = 1000


def sla_view(
    inc: Incident, rules: RuleSet, now: float, timeline: Sequence[TimelineEvent] = ()
) -> dict[str, Any]:
    """Each SLA of the incident's severity: target, deadline, actual, met/breached/pending."""
    report = sla_report(inc, timeline, rules, now, reviewed_at=inc.review_done_at)
    return {r.name: r.to_json() for r in report}


def incident_view(
    inc: Incident, rules: RuleSet, now: float, timeline: Sequence[TimelineEvent] = ()
) -> dict[str, Any]:
    """The public JSON shape of an incident."""
    return {
        "id": inc.id,
        "number": inc.number,
        "war_room": war_room(inc.number),
        "key": inc.key,
        "group_key": inc.group_key,
        "receiver": inc.receiver,
        "state": inc.state,
        "severity": inc.severity,
        # Who set the severity by hand (None: the alerts' severity).
        "severity_set_by": inc.severity_set_by,
        "team": inc.team,
        "title": inc.title,
        "status": inc.status,
        "status_changed_at": isoformat(inc.status_at),
        "roles": {role: inc.roles.get(role) for role in ROLES},
        "labels": inc.labels,
        "started_at": isoformat(inc.started_at),
        "triggered_at": isoformat(inc.triggered_at),
        "acknowledged_at": isoformat(inc.acknowledged_at),
        "acknowledged_by": inc.acknowledged_by,
        "acknowledge_source": inc.acknowledge_source,
        "resolved_at": isoformat(inc.resolved_at),
        "resolved_by": inc.resolved_by,
        "resolve_source": inc.resolve_source,
        "alerts": [
            {
                "fingerprint": a.fingerprint,
                "status": a.status,
                "severity": a.severity,
                "labels": a.labels,
                "starts_at": isoformat(a.starts_at),
                "ends_at": isoformat(a.ends_at),
                "generator_url": a.generator_url,
            }
            for a in inc.alerts.values()
        ],
        "sla": sla_view(inc, rules, now, timeline),
        "breaches": {kind: isoformat(at) for kind, at in inc.breaches.items()},
        "escalated": {tier: isoformat(at) for tier, at in inc.escalated.items()},
        # Outcome None: escalated before outcomes were kept.
        "escalations": {
            tier: {"at": isoformat(at), "outcome": inc.escalation_outcomes.get(tier)}
            for tier, at in inc.escalated.items()
        },
        "recovery_watch": {
            "until": isoformat(inc.watch_until),
            "watching": inc.is_watching,
            "closed_at": isoformat(inc.closed_at),
        },
        "reopens": inc.reopens,
        "reopened_at": isoformat(inc.reopened_at),
        "review": {
            "due_at": isoformat(inc.review_due_at),
            "done_at": isoformat(inc.review_done_at),
            "done_by": inc.review_done_by,
        },
    }


def notification_view(item: OutboxItem) -> dict[str, Any]:
    """One queued notification of any integration, as the API shows it."""
    return {
        "integration": item.integration,
        "action": item.action,
        "routing": item.routing,
        "state": item.state,
        "attempts": item.attempts,
        "queued_at": isoformat(item.created_at),
        "done_at": isoformat(item.done_at),
        "last_error": item.last_error,
    }


def ticket_view(item: OutboxItem) -> dict[str, Any] | None:
    """The Jira issue a delivered ticket created: its key and link."""
    if item.integration != JIRA or item.state != "delivered" or not item.receipt:
        return None
    receipt = orjson.loads(item.receipt)
    return {"key": receipt.get("key"), "url": receipt.get("url"), "system": "jira"}


def event_view(ev: TimelineEvent) -> dict[str, Any]:
    """The public JSON shape of a timeline event."""
    return {
        "seq": ev.seq,
        "at": isoformat(ev.at),
        "kind": ev.kind,
        "source": ev.source,
        "actor": ev.actor,
        "message": ev.message,
        "data": ev.data,
    }


def bad(reason: str) -> web.HTTPBadRequest:
    """A 400 with ``reason``."""
    return web.HTTPBadRequest(reason=reason)


async def list_incidents(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents?state=&severity=&team=&limit=``."""
    c = request.app[COMPONENTS]
    q = request.query
    state, severity, team = q.get("state"), q.get("severity"), q.get("team")
    if state is not None and state not in STATES:
        raise bad(f"state must be one of {', '.join(STATES)}")
    if severity is not None and severity not in {s.name for s in c.rules.severities}:
        raise bad(f"unknown severity {severity!r}")
    if team is not None and team not in c.rules.teams:
        raise bad(f"unknown team {team!r}")
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise bad("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise bad(f"limit must be between 1 and {MAX_LIMIT}")
    found = await c.store.list_incidents(IncidentQuery(state, severity, team, limit))
    now = c.clock.now()
    return json_answer({"incidents": [incident_view(i, c.rules, now) for i in found]})


def page_url(request: web.Request, incident_id: str) -> str:
    """The incident's page, at ``server.external_url`` when set (links that leave the sidecar)."""
    base = request.app[COMPONENTS].config.settings.server.external_url
    if base:
        return f"{base.rstrip('/')}/incidents/{incident_id}"
    return str(request.url.with_path(f"/incidents/{incident_id}").with_query(None))


async def load(request: web.Request) -> Incident:
    """The incident the path names by its id or its plan number (``2026-11-30-001``)."""
    c = request.app[COMPONENTS]
    incident_id = request.match_info["id"]
    if is_number(incident_id):
        found = await c.store.incident_id_for_number(incident_id)
        if found is None:
            raise IncidentNotFound(incident_id)
        incident_id = found
    # Only what is committed: wait out a batch in flight, and take the open
    # incident as the store holds it, since the next batch changes the book's
    # copy in place while this request reads the timeline.
    await c.service.settled()
    inc = c.book.get_open(incident_id)
    if inc is not None:
        inc = incident_from_row(incident_row(inc, c.clock.now()))
    else:
        inc = await c.store.get_incident(incident_id)
    if inc is None:
        raise IncidentNotFound(incident_id)
    return inc


async def get_incident(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents/{id}``: the incident, its timeline and SLA deadlines."""
    c = request.app[COMPONENTS]
    inc = await load(request)
    events = await c.store.timeline(inc.id)
    view = incident_view(inc, c.rules, c.clock.now(), events)
    view["timeline"] = [event_view(e) for e in events]
    items = await c.store.outbox_for_incident(inc.id)
    view["pagerduty"] = {
        "dedup_key": inc.paged_dedup_key,
        "events": [
            {k: v for k, v in notification_view(item).items() if k != "integration"}
            for item in items
            if item.integration == PAGERDUTY
        ],
    }
    # Every integration's notifications: a dead letter shows the service's own words.
    view["notifications"] = [notification_view(item) for item in items]
    view["tickets"] = [ticket for item in items if (ticket := ticket_view(item)) is not None]
    return json_answer(view)


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (empty without a body); 400 for anything else."""
    if not request.can_read_body:
        return {}
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad('body must be JSON: {"actor": "...", "message": "..."}') from None
    if not isinstance(body, dict):
        raise bad("body must be a JSON object")
    # PostgreSQL text cannot hold NUL, and what people write reaches the timeline:
    # refused here (the writer sees why and can send it again) rather than a 503 at
    # the store. Alertmanager's alerts are kept instead (sidecar.alertmanager).
    if b"\\u0000" in raw and _holds_nul(body):
        raise bad("text must not contain NUL characters (\\u0000)")
    return body


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


async def _actor(request: web.Request) -> tuple[str, str]:
    return actor_and_message(await read_body(request))


def actor_and_message(body: dict[str, Any]) -> tuple[str, str]:
    """The body's ``actor`` (``api`` when absent) and ``message``, checked; 400 when bad."""
    actor, message = body.get("actor", "api"), body.get("message", "")
    if not isinstance(actor, str) or not actor or len(actor) > 200:
        raise bad("actor must be a non-empty string of at most 200 characters")
    if not isinstance(message, str) or len(message) > 4000:
        raise bad("message must be a string of at most 4000 characters")
    return actor, message


async def _transition(request: web.Request, action: str) -> web.Response:
    c = request.app[COMPONENTS]
    require_api_token(request)
    body = await read_body(request)
    actor, message = actor_and_message(body)
    status = body.get("status")
    if action == "update" and status is not None and not isinstance(status, str):
        raise bad(f"status must be one of {', '.join(c.rules.statuses) or '(none declared)'}")
    inc = await act(request, action, actor=actor, message=message, status=status, source="api")
    return json_answer(incident_view(inc, c.rules, c.clock.now()))


async def act(
    request: web.Request,
    action: str,
    *,
    actor: str,
    message: str,
    source: str,
    status: str | None = None,
) -> Incident:
    """Acknowledge, update (optionally with a plan status) or resolve as ``actor``; the result."""
    c = request.app[COMPONENTS]
    # With replicas, another one may have opened it: the store knows.
    known = await load(request)
    incident_id = known.id
    if not known.is_open:
        raise InvalidTransition(f"incident {incident_id} is {known.state}; cannot {action} it")

    def command(now: float) -> list[Any]:
        if action == "acknowledge":
            change = c.book.acknowledge(
                incident_id, actor=actor, source=source, now=now, message=message
            )
            return [change] if change else []
        if action == "update":
            if not message:
                raise InvalidTransition("a status update needs a message")
            return [
                c.book.record_update(
                    incident_id,
                    actor=actor,
                    source=source,
                    now=now,
                    message=message,
                    status=status,
                )
            ]
        return [c.book.resolve(incident_id, actor=actor, source=source, now=now, message=message)]

    await c.service.submit(command, ids=[incident_id])
    return await load(request)


async def acknowledge(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/acknowledge`` with ``{"actor", "message"}``."""
    return await _transition(request, "acknowledge")


async def resolve(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/resolve`` with ``{"actor", "message"}``."""
    return await _transition(request, "resolve")


async def post_update(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/updates`` with ``{"actor", "message", "status"}``.

    A status update; ``status``, when given, is one of the plan's statuses.
    """
    return await _transition(request, "update")


async def get_postmortem(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents/{id}/postmortem``: the plan's review template, pre-filled."""
    c = request.app[COMPONENTS]
    inc = await load(request)
    timeline = await c.store.timeline(inc.id)
    template = request.query.get("template")
    if template is not None and template not in TEMPLATES:
        raise bad(f"template must be one of {', '.join(TEMPLATES)}")
    text = render_postmortem(
        inc,
        timeline,
        c.rules,
        template=template,  # type: ignore[arg-type]
        now=c.clock.now(),
        incident_url=page_url(request, inc.id),
    )
    return web.Response(text=text, content_type="text/markdown", charset="utf-8")


async def complete_postmortem(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/postmortem``: mark the review done."""
    c = request.app[COMPONENTS]
    require_api_token(request)
    actor, message = await _actor(request)
    inc = await load(request)
    if inc.is_open:
        raise InvalidTransition(f"incident {inc.id} is {inc.state}; review it once resolved")

    def command(now: float) -> list[Any]:
        change = c.book.complete_review(inc, actor=actor, source="api", now=now, message=message)
        return [change] if change else []

    await c.service.submit(command, ids=[inc.id])
    return json_answer(incident_view(await load(request), c.rules, c.clock.now()))
