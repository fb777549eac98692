"""The Incident Commander's API: assign roles, change the severity, escalate by hand.

Each action names the incident by id or plan number, takes an ``actor``, and
answers the incident as committed. What the plan does not declare (a role, a
severity, a tier) is a 400 that lists what it does declare.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from sidecar.errors import InvalidTransition
from sidecar.incidents import Change, Incident
from sidecar.routing import tier_routing
from sidecar.web.answers import json_answer
from sidecar.web.api import actor_and_message, bad, incident_view, load, read_body
from sidecar.web.auth import require_api_token
from sidecar.web.keys import COMPONENTS

MAX_REASON = 4000

Command = Callable[[Incident, float], Change | None]


def _reason(body: dict[str, Any], *, required: bool) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise bad(f"reason must be a string of at most {MAX_REASON} characters")
    if required and not reason.strip():
        raise bad("reason is required: say why (it goes on the timeline)")
    return reason


async def _run(request: web.Request, inc: Incident, command: Command) -> web.Response:
    """Submit ``command`` for ``inc``; answer the incident as committed."""
    c = request.app[COMPONENTS]
    await c.service.submit(lambda now: [ch for ch in [command(inc, now)] if ch], ids=[inc.id])
    return json_answer(incident_view(await load(request), c.rules, c.clock.now()))


async def assign_roles(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/roles`` with ``{"actor", "roles": {role: name}}``."""
    c = request.app[COMPONENTS]
    require_api_token(request)
    body = await read_body(request)
    actor, _ = actor_and_message(body)
    roles = body.get("roles")
    if not isinstance(roles, dict) or not roles:
        raise bad('roles must be an object such as {"incident_commander": "alice"}')
    return await _run(
        request,
        await load(request),
        lambda inc, now: c.book.assign_roles(inc, roles, actor=actor, source="api", now=now),
    )


async def _open(request: web.Request, refusal: str) -> Incident:
    """The incident the path names, which must still be open (else ``refusal``)."""
    inc = await load(request)
    if not inc.is_open:
        raise InvalidTransition(f"incident {inc.id} is {inc.state}; {refusal}")
    return inc


async def change_severity(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/severity`` with ``{"actor", "severity", "reason"}``."""
    c = request.app[COMPONENTS]
    require_api_token(request)
    body = await read_body(request)
    actor, _ = actor_and_message(body)
    severity = body.get("severity")
    names = [s.name for s in c.rules.severities]
    if severity not in names:
        raise bad(f"severity must be one of {', '.join(names)}; got {severity!r}")
    reason = _reason(body, required=True)
    return await _run(
        request,
        await _open(request, "its severity is final"),
        lambda inc, now: c.book.change_severity(
            inc.id, severity, actor=actor, source="api", now=now, reason=reason
        ),
    )


async def escalate(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/escalate`` with ``{"actor", "tier", "reason"}``: pages it."""
    c = request.app[COMPONENTS]
    require_api_token(request)
    body = await read_body(request)
    actor, _ = actor_and_message(body)
    tier = body.get("tier")
    ladders = {step.tier for sev in c.rules.severities for step in sev.escalation}
    ladders |= {rule.tier for rule in c.rules.spec.escalation_rules}
    tiers = sorted(ladders | c.book.routed_tiers)
    if not isinstance(tier, str) or tier not in tiers:
        known = ", ".join(tiers) or "none (no ladder names a tier, no tier has a routing key)"
        raise bad(f"unknown escalation tier {tier!r}; the tiers are: {known}")
    if c.pager.enabled and tier not in c.book.routed_tiers:
        raise InvalidTransition(
            f"tier {tier!r} has no PagerDuty routing key ({tier_routing(tier)}): escalating "
            f"would page nobody; add pagerduty.tier_routing_keys.{tier} to the configuration"
        )
    reason = _reason(body, required=False)
    return await _run(
        request,
        await _open(request, "cannot escalate it"),
        lambda inc, now: c.book.escalate_to(
            inc.id, tier, actor=actor, source="api", now=now, reason=reason
        ),
    )
