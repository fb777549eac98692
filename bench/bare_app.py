"""The framework's limit: an aiohttp app that only reads and parses the JSON body (orjson, uvloop).

Run as ``python bench/bare_app.py PORT``; ``GET /readyz`` answers 200 once it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable

import orjson
from aiohttp import web


async def ingest(request: web.Request) -> web.Response:
    """Parse the body and answer with a small JSON document, like the sidecar's 200."""
    data = orjson.loads(await request.read())
    alerts = data.get("alerts", data) if isinstance(data, dict) else data
    return web.Response(
        body=orjson.dumps({"status": "ok", "alerts": len(alerts)}),
        content_type="application/json",
    )


async def ready(request: web.Request) -> web.Response:
    """Readiness for the harness."""
    return web.Response(text="ok")


def main() -> None:
    """Serve on 127.0.0.1:PORT until killed."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/webhook/alertmanager", ingest)
    app.router.add_get("/readyz", ready)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop  # as the sidecar does when the "fast" extra is installed

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, int(sys.argv[1])))


async def _serve(app: web.Application, port: int) -> None:
    r = web.AppRunner(app, access_log=None)
    await r.setup()
    await web.TCPSite(r, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
