"""Typed application keys, kept in one module."""

from __future__ import annotations

from aiohttp import web

from sidecar.runtime import Components

COMPONENTS = web.AppKey("components", Components)
