"""The aiohttp application factory, its middlewares and its lifecycle.

Domain errors are translated into HTTP here and only here; every error answer
is JSON with a reason, so Alertmanager's logs and curl users see why.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from sidecar.errors import IncidentNotFound, InvalidRequest, InvalidTransition, StoreUnavailable
from sidecar.metrics import Metrics
from sidecar.runtime import Components
from sidecar.web import api, leading, ops, pages, runbooks, signin, webhooks
from sidecar.web.answers import json_answer
from sidecar.web.keys import COMPONENTS

log = logging.getLogger("sidecar.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths whose answers are counted in incident_sla_webhook_requests_total.
WEBHOOK_SOURCES = {"/webhook/alertmanager": "alertmanager", "/webhook/pagerduty": "pagerduty"}


def _error(status: int, reason: str) -> web.Response:
    return json_answer({"error": reason}, status=status)


def _route(path: str, handler: Handler, metrics: Metrics) -> Handler:
    """``handler`` inside the layers every answer goes through, decided once per route.

    aiohttp's middlewares would add three coroutine layers (its own included) and
    path tests to every request; on the webhook path that showed in the profiles.
    """
    source = WEBHOOK_SOURCES.get(path)
    inner = signin.guarded(handler) if signin.protects(path) else handler
    if source is None:
        return functools.partial(_answer, handler=inner)
    return functools.partial(_counted, handler=inner, source=source, metrics=metrics)


async def _counted(
    request: web.Request, *, handler: Handler, source: str, metrics: Metrics
) -> web.StreamResponse:
    """Answer as ``_answer`` does, and count the answer in the webhook requests metric."""
    status = 500  # unless an answer or an HTTP error says otherwise
    try:
        response = await _answer(request, handler=handler)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.child(metrics.webhook_requests_total, source, str(status)).inc()


async def _unrouted(request: web.Request) -> web.StreamResponse:
    """What no route answers: 405 with the methods a path has, else 404 (after credentials)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def _anywhere(request: web.Request) -> web.StreamResponse:
    # Unknown paths are protected and counted as the paths they name would be.
    source = WEBHOOK_SOURCES.get(request.path)
    inner = signin.guarded(_unrouted) if signin.protects(request.path) else _unrouted
    if source is None:
        return await _answer(request, handler=inner)
    metrics = request.app[COMPONENTS].metrics
    return await _counted(request, handler=inner, source=source, metrics=metrics)


async def _answer(request: web.Request, *, handler: Handler) -> web.StreamResponse:
    """Turn domain errors and aiohttp's own HTTP errors into JSON answers."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        log.warning("store unavailable", extra={"path": request.path, "error": str(exc)})
        return _error(503, f"store unavailable, retry later: {exc}")
    except IncidentNotFound as exc:
        return _error(404, f"no incident with id or number {exc}")
    except InvalidTransition as exc:
        return _error(409, str(exc))
    except InvalidRequest as exc:
        return _error(400, str(exc))
    except (RequestPayloadError, HttpProcessingError) as exc:
        # A body that cannot be read (a Content-Encoding it does not have, a
        # truncated stream) is the client's fault, and retrying will not help.
        return _error(400, f"cannot read the request body: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        # aiohttp's own errors (413, 405, 404) carry their detail in the text.
        text = exc.text or ""
        reason = text if text and not text.startswith(f"{exc.status}:") else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k in ("WWW-Authenticate", "Allow")}
        return json_answer({"error": reason}, status=exc.status, headers=headers)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    c = app[COMPONENTS]
    async with contextlib.AsyncExitStack() as stack:
        # Started in dependency order, stopped in reverse, whatever fails.
        await c.store.open()
        stack.push_async_callback(c.store.close)
        if c.follower is not None:
            await c.follower.prime()  # the feed's position before the load, not after
        await c.service.start()
        stack.push_async_callback(c.service.stop)
        if c.follower is not None:
            await c.follower.start()
            stack.push_async_callback(c.follower.stop)
        await c.inbound.start(c.clock.now())
        stack.push_async_callback(c.inbound.stop)
        await c.scheduler.start()
        stack.push_async_callback(c.scheduler.stop)
        for worker in (*c.outboxes, c.silences):
            if worker is not None:
                await worker.start()
                stack.push_async_callback(worker.stop)
        yield


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/webhook/alertmanager", webhooks.alertmanager),
    ("POST", "/webhook/pagerduty", webhooks.pagerduty),
    ("GET", "/api/v1/incidents", api.list_incidents),
    ("GET", "/api/v1/incidents/{id}", api.get_incident),
    ("POST", "/api/v1/incidents/{id}/acknowledge", api.acknowledge),
    ("POST", "/api/v1/incidents/{id}/resolve", api.resolve),
    ("POST", "/api/v1/incidents/{id}/updates", api.post_update),
    ("POST", "/api/v1/incidents/{id}/roles", leading.assign_roles),
    ("POST", "/api/v1/incidents/{id}/severity", leading.change_severity),
    ("POST", "/api/v1/incidents/{id}/escalate", leading.escalate),
    ("GET", "/api/v1/incidents/{id}/postmortem", api.get_postmortem),
    ("POST", "/api/v1/incidents/{id}/postmortem", api.complete_postmortem),
    ("GET", "/metrics", ops.metrics),
    ("GET", "/healthz", ops.healthz),
    ("GET", "/openapi.yaml", ops.openapi),
    ("GET", "/readyz", ops.readyz),
    ("GET", "/static/style.css", pages.stylesheet),
    ("GET", "/incidents", pages.list_page),
    ("GET", "/incidents/{id}", pages.incident_page),
    ("GET", "/incidents/{id}/review.md", pages.review_download),
    ("POST", "/incidents/{id}/acknowledge", pages.acknowledge_form),
    ("POST", "/incidents/{id}/update", pages.update_form),
    ("POST", "/incidents/{id}/resolve", pages.resolve_form),
    ("GET", "/runbooks/", runbooks.index),
    ("GET", "/runbooks/{alert}", runbooks.runbook),
)
"""Every route: method, path and handler (the OpenAPI document describes each)."""


def create_app(components: Components) -> web.Application:
    """Build the application around already-built components."""
    # No middlewares: each route is wrapped once in what they would do (see _route).
    app = web.Application(client_max_size=components.config.settings.server.max_body_size)
    app[COMPONENTS] = components
    signin.install(app)
    app.cleanup_ctx.append(_lifecycle)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, _route(path, handler, components.metrics))
    # Last, so that it only answers what no route does, as JSON like every error.
    app.router.add_route("*", "/{unrouted:.*}", _anywhere)
    return app
