"""Operational endpoints: Prometheus exposition, liveness and readiness."""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.errors import StoreUnavailable
from sidecar.web.answers import json_answer
from sidecar.web.keys import COMPONENTS


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``."""
    body = request.app[COMPONENTS].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """``GET /openapi.yaml``: the OpenAPI document of this API."""
    text = resources.files("sidecar.web").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return web.Response(text=text, content_type="application/yaml")


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process answers and none of its loops has died.

    A dead loop (commits, deadlines, paging) leaves a process that answers
    and does nothing; 503 makes Kubernetes restart it.
    """
    failed = request.app[COMPONENTS].failed_tasks()
    if failed:
        reason = f"background loops died: {', '.join(failed)}"
        return json_answer({"status": "failed", "error": reason, "failed": failed}, status=503)
    return json_answer({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: the store answers and incidents are loaded."""
    c = request.app[COMPONENTS]
    try:
        await c.store.ping()
    except StoreUnavailable as exc:
        return json_answer({"status": "unavailable", "error": str(exc)}, status=503)
    if not c.service.running:
        return json_answer({"status": "starting"}, status=503)
    return json_answer({"status": "ready", "open_incidents": len(c.book)})
