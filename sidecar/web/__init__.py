"""The HTTP edge: a thin aiohttp layer over the domain (see :func:`create_app`)."""

from sidecar.web.app import create_app

__all__ = ["create_app"]
