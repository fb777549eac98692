"""Inbound webhooks: Alertmanager (v4)."""

from __future__ import annotations

from aiohttp import web

from sidecar.alertmanager import InvalidPayload, parse_notification
from sidecar.web.auth import require
from sidecar.web.keys import COMPONENTS


async def alertmanager(request: web.Request) -> web.Response:
    """``POST /webhook/alertmanager``: 200 only once the change is durably committed."""
    c = request.app[COMPONENTS]
    require(
        request,
        c.config.secrets.webhook_token,
        disabled=c.config.settings.server.insecure_disable_auth,
        allow_basic=True,
    )
    body = await request.read()
    try:
        notification = parse_notification(body)
    except InvalidPayload as exc:
        return web.json_response(
            {"error": "invalid Alertmanager webhook payload", "reasons": exc.reasons}, status=400
        )
    changes = await c.service.submit(lambda now: c.book.apply_notification(notification, now))
    return web.json_response(
        {
            "status": "ok",
            "changed": [
                {"id": ch.incident.id, "state": ch.incident.state, "severity": ch.incident.severity}
                for ch in changes
            ],
        }
    )
