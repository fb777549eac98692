"""Who is asking: reads are protected by default, on the pages and ``GET /api/v1/*`` alike.

A request is let in when it carries, in this order:

- the API token as a bearer token (scripts; it also allows the API's writes);
- HTTP basic auth of a user of ``server.web_config_file`` (bcrypt, as
  Prometheus' ``web.config.file``), which browsers prompt for;
- the header named by ``server.trusted_user_header``, set by an authenticating
  proxy in front (oauth2-proxy's ``X-Forwarded-User``). Trusting it is an
  explicit opt-out: anyone who reaches the pod directly can set it.

``/metrics``, ``/healthz``, ``/readyz``, the OpenAPI document, the
stylesheet and the runbooks (shipped documentation) stay open, as exporters'
do; webhooks check their own credentials.
The identity found is the actor of what the pages' forms do, and the subject of
their CSRF tokens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import bcrypt
from aiohttp import web

from sidecar.runtime import Components
from sidecar.web.keys import COMPONENTS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz", "/openapi.yaml", "/static/style.css"})
"""Answered without credentials."""
OPEN_PREFIXES = ("/webhook/", "/runbooks/")
"""Answered without read credentials: webhooks check their own, runbooks are documentation."""

IDENTITY = web.RequestKey("identity", str)
"""Where the middleware leaves the identity on the request."""

API_IDENTITY = "api"
ANONYMOUS = "anonymous"
_CACHE_SIZE = 1024
# Password checks waiting at most; more are refused at once. bcrypt runs on a
# thread of its own, not the loop's default executor, which aiohttp's DNS
# lookups for PagerDuty, Slack and Jira share: bad passwords must not delay a page.
_MAX_CHECKS_WAITING = 16
_MAX_USER = 200


class Readers:
    """Checks read credentials; remembers good basic-auth passwords, as exporter-toolkit does.

    bcrypt is slow by design (tens of milliseconds at cost 10), so a check runs
    off the event loop and a good password is remembered by a digest of user,
    password and hash, never in clear; a changed hash misses the cache.
    """

    def __init__(self, components: Components) -> None:
        config = components.config
        self.settings = config.settings.server
        self.api_token = config.secrets.api_token
        self.users = config.secrets.users
        self._good: set[bytes] = set()
        self._dummy: bytes | None = None
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
        self._waiting = 0
        # A CSRF token is an HMAC of the identity: replicas that share the API
        # token accept each other's forms; without one, a process's own key.
        token = self.api_token or config.secrets.webhook_token
        self._csrf_key = (
            hashlib.sha256(b"incident-sla-sidecar csrf\0" + token.encode()).digest()
            if token
            else secrets.token_bytes(32)
        )

    @property
    def realm_challenge(self) -> str:
        """The ``WWW-Authenticate`` answer: Basic when people can sign in, so browsers prompt."""
        scheme = "Basic" if self.users else "Bearer"
        return f'{scheme} realm="incident-sla-sidecar", charset="UTF-8"'

    async def identify(self, request: web.Request) -> str | None:
        """The identity of the request's credentials, or None when it has none that hold."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.api_token is not None:
            if hmac.compare_digest(value.strip().encode(), self.api_token.encode()):
                return API_IDENTITY
        elif scheme == "basic" and self.users:
            user = await self._basic(value.strip())
            if user is not None:
                return user
        header = self.settings.trusted_user_header
        if header is not None:
            user = request.headers.get(header, "").strip()
            if user and len(user) <= _MAX_USER:
                return user
        if self.settings.insecure_disable_auth:
            return ANONYMOUS
        return None

    async def _basic(self, value: str) -> str | None:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        hashed = self.users.get(user)
        digest = hashlib.sha256(
            b"\0".join((user.encode(), password.encode(), hashed or b""))
        ).digest()
        if hashed is not None and digest in self._good:
            return user
        # An unknown user costs a bcrypt check too, so timing does not tell who exists.
        if hashed is None:
            hashed = self._dummy_hash()
        if self._waiting >= _MAX_CHECKS_WAITING:
            return None
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            ok = await loop.run_in_executor(self._checker, _checkpw, password.encode(), hashed)
        finally:
            self._waiting -= 1
        if not ok or user not in self.users:
            return None
        if len(self._good) >= _CACHE_SIZE:
            self._good.clear()
        self._good.add(digest)
        return user

    def _dummy_hash(self) -> bytes:
        if self._dummy is None:
            self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(10))
        return self._dummy

    def csrf_token(self, identity: str) -> str:
        """The token a form of ``identity`` carries."""
        return hmac.new(self._csrf_key, identity.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, identity: str, token: str) -> bool:
        """Whether ``token`` is ``identity``'s (constant time)."""
        return hmac.compare_digest(self.csrf_token(identity).encode(), token.encode())


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a hash bcrypt cannot read
        return False


READERS = web.AppKey("readers", Readers)


def identity(request: web.Request) -> str:
    """The identity the middleware let in (only on protected routes)."""
    found = request.get(IDENTITY)
    if not isinstance(found, str):
        raise web.HTTPUnauthorized(reason="missing or invalid credentials")
    return found


def protects(path: str) -> bool:
    """Whether ``path`` (a route's or a request's) needs read credentials."""
    return not (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES))


def guarded(handler: Handler) -> Handler:
    """``handler`` behind read credentials: 401 without them."""
    return functools.partial(_guarded, handler=handler)


async def _guarded(request: web.Request, *, handler: Handler) -> web.StreamResponse:
    readers = request.app[READERS]
    who = await readers.identify(request)
    if who is None:
        raise web.HTTPUnauthorized(
            reason="missing or invalid credentials",
            headers={"WWW-Authenticate": readers.realm_challenge},
        )
    request[IDENTITY] = who
    return await handler(request)


def install(app: web.Application) -> None:
    """Put the readers on ``app`` (before its middlewares run)."""
    app[READERS] = Readers(app[COMPONENTS])
