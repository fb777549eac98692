"""Inbound webhooks: Alertmanager (v4) and PagerDuty (v3)."""

from __future__ import annotations

import orjson
from aiohttp import web

from sidecar.alertmanager import InvalidPayload, parse_notification
from sidecar.pagerduty.client import PagerDutyApiError
from sidecar.pagerduty.webhooks import parse_webhook, verify_signature
from sidecar.store.rows import DeliveryRow
from sidecar.web.answers import encoded_answer, json_answer
from sidecar.web.auth import require_webhook_token
from sidecar.web.keys import COMPONENTS

_UNCHANGED = orjson.dumps({"status": "ok", "changed": []})


async def alertmanager(request: web.Request) -> web.Response:
    """``POST /webhook/alertmanager``: 200 only once the change is durably committed."""
    c = request.app[COMPONENTS]
    require_webhook_token(request)
    body = await request.read()
    digest = c.replays.digest(body)
    if c.replays.seen(digest, c.clock.now()):
        # Byte for byte a body already committed: applying it again changes nothing.
        return encoded_answer(_UNCHANGED)
    try:
        notification = parse_notification(body)
    except InvalidPayload as exc:
        return json_answer(
            {"error": "invalid Alertmanager webhook payload", "reasons": exc.reasons}, status=400
        )
    generation = c.replays.generation
    changes = await c.service.submit(
        lambda now: c.book.apply_notification(notification, now),
        keys=c.book.keys_of(notification),
        unchanged=lambda: c.book.repeats_open(notification),
    )
    c.replays.add(digest, c.clock.now(), generation=generation)
    if not changes:
        return encoded_answer(_UNCHANGED)
    return json_answer(
        {
            "status": "ok",
            "changed": [
                {"id": ch.incident.id, "state": ch.incident.state, "severity": ch.incident.severity}
                for ch in changes
            ],
        }
    )


async def pagerduty(request: web.Request) -> web.Response:
    """``POST /webhook/pagerduty``: webhooks v3, signature verified over the raw body."""
    c = request.app[COMPONENTS]
    body = await request.read()
    secret = c.config.secrets.webhook_secret
    if not c.config.settings.server.insecure_disable_auth:
        if secret is None:
            raise web.HTTPUnauthorized(reason="pagerduty.webhook_secret is not configured")
        if not verify_signature(body, request.headers.get("X-PagerDuty-Signature"), [secret]):
            raise web.HTTPUnauthorized(reason="invalid or missing X-PagerDuty-Signature")
    try:
        event = parse_webhook(body)
    except ValueError as exc:
        return json_answer({"error": f"invalid PagerDuty webhook: {exc}"}, status=400)
    inbound = c.inbound
    delivery_id = request.headers.get("X-Webhook-Id") or event.event_id
    if inbound.seen(delivery_id):
        return json_answer({"status": "duplicate", "delivery": delivery_id})
    try:
        targets = await inbound.find_incidents(event)
    except PagerDutyApiError as exc:
        # PagerDuty retries a delivery that fails; the lookup may work then.
        return json_answer({"error": f"PagerDuty REST lookup failed: {exc}"}, status=503)
    now = c.clock.now()
    delivery = (DeliveryRow(delivery_id, "pagerduty", now),)
    if not targets:
        await c.service.submit(lambda _now: [], deliveries=delivery)
        inbound.remember(delivery_id)
        return json_answer({"status": "ignored", "reason": "no matching incident"})
    # One submit for every incident behind the PagerDuty incident (alert
    # grouping): committed together, with the one delivery row.
    ids = [t.incident.id for t in targets]
    changes = await c.service.submit(inbound.command(event, targets), ids=ids, deliveries=delivery)
    inbound.remember(delivery_id)
    return json_answer(
        {
            "status": "ok",
            "incident_id": ids[0],
            "incident_ids": ids,
            "changed": [{"id": ch.incident.id, "state": ch.incident.state} for ch in changes],
        }
    )
