"""``GET /runbooks/{alert}``: the shipped alert rules' runbooks, served by the sidecar itself.

The runbooks are Markdown files in the package (``sidecar/runbooks/<alert>.md``, linked from
``docs/runbooks/``), so the ``runbook_url`` of every shipped alert points at the sidecar the
user already runs and cannot drift from the version deployed. They are open like ``/metrics``:
people follow these links from Prometheus, Alertmanager and PagerDuty.

Every runbook is read and rendered once per process, on the first request for one (not at
start: markdown-it and the rendering were restart time spent on pages few ever open); a
request only looks its name up in that table, so no part of the path ever reaches the
filesystem. Rendering uses markdown-it's CommonMark with raw HTML off (escaped) and its link
validation (no ``javascript:`` links), and answers carry a Content-Security-Policy that allows
no scripts.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from html import escape
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType

from aiohttp import web

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'"
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · incident-sla-sidecar runbook</title>
<style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem;
line-height:1.5}}code{{background:#f3f3f3;padding:0 .2em}}</style>
</head>
<body>
{body}
<p><a href="./">All runbooks</a></p>
</body>
</html>
"""


def render_runbooks(directory: Traversable) -> dict[str, str]:
    """Every ``<alert>.md`` of ``directory`` as an HTML page, by alert name."""
    from markdown_it import MarkdownIt

    markdown = MarkdownIt("commonmark", {"html": False})
    pages = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".md"):
            continue
        alert = entry.name.removesuffix(".md")
        body = markdown.render(entry.read_text(encoding="utf-8"))
        pages[alert] = _PAGE.format(title=escape(alert), body=body)
    return pages


@functools.cache
def load_runbooks() -> Mapping[str, str]:
    """The package's runbooks, rendered once per process (some 30 ms), read-only."""
    return MappingProxyType(render_runbooks(resources.files("sidecar").joinpath("runbooks")))


def _html(text: str) -> web.Response:
    return web.Response(
        text=text,
        content_type="text/html",
        headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
    )


async def runbook(request: web.Request) -> web.Response:
    """``GET /runbooks/{alert}``: the alert's runbook as HTML; 404 for an alert without one."""
    alert = request.match_info["alert"]
    page = load_runbooks().get(alert)
    if page is None:
        raise web.HTTPNotFound(text=f"no runbook for alert {alert!r}")
    return _html(page)


async def index(request: web.Request) -> web.Response:
    """``GET /runbooks/``: the list of runbooks."""
    pages = load_runbooks()
    items = "".join(
        f'<li><a href="{escape(name)}">{escape(name)}</a></li>' for name in sorted(pages)
    )
    return _html(_PAGE.format(title="Runbooks", body=f"<h1>Runbooks</h1><ul>{items}</ul>"))
