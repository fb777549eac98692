"""A webhook receiver for tests: a real HTTP server that records signed deliveries.

It verifies ``X-Incident-SLA-Signature`` as a receiver should (HMAC-SHA256 of
the raw body, ``v1=``, constant time) and answers 401 when it does not match.
``fail_next(status, retry_after=...)`` answers the next deliveries with an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer


@dataclass
class Delivery:
    """One request received, with whether its signature matched."""

    headers: dict[str, str]
    body: bytes
    signed: bool
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver(LoopbackServer):
    """Records deliveries on loopback; checks their signature with ``secret``."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self._faults: deque[tuple[int, dict[str, str], str]] = deque()
        self.app.router.add_post("/hook", self._hook)

    @property
    def url(self) -> str:
        """Where the sidecar's webhook must post."""
        return f"{self.base_url}/hook"

    def fail_next(
        self, status: int, *, retry_after: int | None = None, times: int = 1, text: str = "nope"
    ) -> None:
        """Answer the next ``times`` deliveries with ``status`` and ``text``."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        self._faults.extend((status, headers, text) for _ in range(times))

    @property
    def accepted(self) -> list[Delivery]:
        """Deliveries answered 2xx, in order."""
        return [d for d in self.deliveries if 200 <= d.status < 300]

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "v1=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        given = request.headers.get("X-Incident-SLA-Signature", "")
        signed = any(hmac.compare_digest(expected, g.strip()) for g in given.split(","))
        status, headers, text = (401, {}, "nope") if not signed else (204, {}, "")
        if signed and self._faults:
            status, headers, text = self._faults.popleft()
        self.deliveries.append(Delivery(dict(request.headers), body, signed, status))
        return web.Response(status=status, headers=headers, text="" if status < 300 else text)
