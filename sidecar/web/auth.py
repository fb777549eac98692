"""Credentials for mutating endpoints: bearer tokens, or basic auth as Alertmanager sends it.

Secrets are compared in constant time. With ``server.insecure_disable_auth``
the check is skipped; that is an explicit opt-out, never the default.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web

from sidecar.config import Config
from sidecar.web.keys import COMPONENTS


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def check_credentials(request: web.Request, expected: str | None, *, allow_basic: bool) -> bool:
    """True when the request carries ``expected`` as a bearer token (or basic-auth password)."""
    if expected is None:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return _equal(value.strip(), expected)
    if scheme == "basic" and allow_basic:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, _, password = decoded.partition(":")
        return _equal(password, expected)
    return False


def _require(
    request: web.Request, config: Config, expected: str | None, *, allow_basic: bool
) -> None:
    if config.settings.server.insecure_disable_auth:
        return
    if not check_credentials(request, expected, allow_basic=allow_basic):
        raise web.HTTPUnauthorized(
            reason="missing or invalid credentials",
            headers={"WWW-Authenticate": 'Bearer realm="incident-sla-sidecar"'},
        )


def require_webhook_token(request: web.Request) -> None:
    """401 unless Alertmanager's credentials (bearer or basic) are the webhook token."""
    config = request.app[COMPONENTS].config
    _require(request, config, config.secrets.webhook_token, allow_basic=True)


def require_api_token(request: web.Request) -> None:
    """401 unless the bearer token is the API token."""
    config = request.app[COMPONENTS].config
    _require(request, config, config.secrets.api_token, allow_basic=False)
