"""Typed application keys, kept in one module."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from sidecar.runtime import Components

COMPONENTS = web.AppKey("components", Components)
# The shipped runbooks, rendered once: alert name -> HTML page.
RUNBOOKS = web.AppKey("runbooks", Mapping[str, str])
