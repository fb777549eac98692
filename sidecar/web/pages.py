"""Pages for people: the incident list and the incident page, with forms to act on them.

Plain HTML rendered on the server (Jinja2, :mod:`sidecar.web.present`), no
JavaScript: a responder who opens a link from PagerDuty on a phone at 3 a.m.
reads and acts on the same page. Forms post back with a CSRF token bound to
the signed-in identity, act as that identity, and redirect (303) to the page.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from aiohttp import web

from sidecar.errors import InvalidTransition
from sidecar.incidents import Incident, war_room
from sidecar.postmortem import render_postmortem
from sidecar.sla.verdict import sla_report
from sidecar.store import IncidentQuery
from sidecar.web import present
from sidecar.web.api import act, load, page_url, ticket_view
from sidecar.web.keys import COMPONENTS
from sidecar.web.signin import READERS, identity

PAGE_SIZE = 25
OPEN_LIMIT = 500  # open incidents are listed whole: a page that hides one is a hazard
MAX_MESSAGE = 4000
LIST_STATES = ("", "open", "triggered", "acknowledged", "resolved")
_HTML = "text/html"


def _bad(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason=reason)


def _page(template: str, request: web.Request, **context: Any) -> web.Response:
    text = present.render(template, who=identity(request), **context)
    return web.Response(
        text=text,
        content_type=_HTML,
        charset="utf-8",
        # Pages hold incident details: not for shared caches, never framed.
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "Referrer-Policy": "same-origin",
        },
    )


async def stylesheet(request: web.Request) -> web.StreamResponse:
    """``GET /static/style.css``: the pages' one stylesheet (package data)."""
    css = importlib.resources.files("sidecar").joinpath("templates/web/style.css").read_text()
    return web.Response(
        text=css, content_type="text/css", headers={"Cache-Control": "public, max-age=3600"}
    )


def _row(inc: Incident, c: Any, now: float) -> dict[str, Any]:
    return {
        "id": inc.id,
        "number": inc.number,
        "title": inc.title,
        "severity": inc.severity,
        "team": inc.team,
        "state": inc.state,
        "status": inc.status,
        "ic": present.holder(inc.roles.get("incident_commander")),
        "triggered": present.when(inc.triggered_at),
        "age": present.duration(now - inc.triggered_at),
        "next": present.next_deadline(inc, c.rules, now),
        "acknowledged_by": inc.acknowledged_by,
        "resolved": present.when(inc.resolved_at),
    }


async def list_page(request: web.Request) -> web.Response:
    """``GET /incidents?state=&severity=&team=&page=``: open incidents first, resolved paged."""
    c = request.app[COMPONENTS]
    q = request.query
    state, severity, team = q.get("state", ""), q.get("severity", ""), q.get("team", "")
    severities = [s.name for s in c.rules.severities]
    if state not in LIST_STATES:
        raise _bad(f"state must be one of {', '.join(s for s in LIST_STATES if s)}")
    if severity and severity not in severities:
        raise _bad(f"unknown severity {severity!r}")
    if team and team not in c.rules.teams:
        raise _bad(f"unknown team {team!r}")
    try:
        page = int(q.get("page", "1"))
    except ValueError:
        raise _bad("page must be an integer") from None
    if not 1 <= page <= 100_000:
        raise _bad("page must be between 1 and 100000")
    now = c.clock.now()
    open_rows: list[Incident] = []
    if state != "resolved":
        wanted = state or "open"
        open_rows = await c.store.list_incidents(
            IncidentQuery(wanted, severity or None, team or None, OPEN_LIMIT)
        )
        rank = {name: i for i, name in enumerate(severities)}
        open_rows.sort(key=lambda i: (rank.get(i.severity, len(rank)), -i.triggered_at))
    resolved: list[Incident] = []
    if state in ("", "resolved"):
        offset = (page - 1) * PAGE_SIZE
        resolved = await c.store.list_incidents(
            IncidentQuery("resolved", severity or None, team or None, PAGE_SIZE + 1, offset)
        )
    filters = {"state": state, "severity": severity, "team": team}
    return _page(
        "incidents.html.j2",
        request,
        open_rows=[_row(i, c, now) for i in open_rows],
        resolved_rows=[_row(i, c, now) for i in resolved[:PAGE_SIZE]],
        show_resolved=state in ("", "resolved"),
        page=page,
        has_next=len(resolved) > PAGE_SIZE,
        filters=filters,
        states=[s for s in LIST_STATES if s],
        severities=severities,
        teams=list(c.rules.teams),
        now=present.when(now),
    )


async def incident_page(request: web.Request) -> web.Response:
    """``GET /incidents/{id or number}``: clocks, timeline, alerts, notifications, review."""
    c = request.app[COMPONENTS]
    inc = await load(request)
    now = c.clock.now()
    events = await c.store.timeline(inc.id)
    results = sla_report(inc, events, c.rules, now, reviewed_at=inc.review_done_at)
    outbox = await c.store.outbox_for_incident(inc.id)
    review = _review(request, inc, events, now)
    alerts = [
        {
            "status": a.status,
            "severity": a.severity,
            "labels": sorted(a.labels.items()),
            "starts": present.when(a.starts_at),
            "ends": present.when(a.ends_at),
            "source": present.safe_href(a.generator_url),
            "alertmanager": present.alertmanager_link(inc, a),
        }
        for a in sorted(inc.alerts.values(), key=lambda a: (a.status, a.starts_at))
    ]
    notifications = [
        {
            "integration": item.integration,
            "action": item.action,
            "routing": item.routing,
            "state": item.state,
            "attempts": item.attempts,
            "queued": present.when(item.created_at),
            "done": present.when(item.done_at),
            "error": item.last_error or "",
        }
        for item in outbox
    ]
    tickets = [
        {"key": t["key"], "href": present.safe_href(t["url"])}
        for item in outbox
        if (t := ticket_view(item)) is not None
    ]
    return _page(
        "incident.html.j2",
        request,
        inc=inc,
        war_room=war_room(inc.number),
        tickets=tickets,
        status_changed=present.when(inc.status_at),
        roles=present.roles(inc),
        statuses=list(c.rules.statuses),
        times=[
            ("Started", present.when(inc.started_at), ""),
            ("Declared", present.when(inc.triggered_at), ""),
            (
                "Acknowledged",
                present.when(inc.acknowledged_at),
                _by(inc.acknowledged_by, inc.acknowledge_source),
            ),
            ("Resolved", present.when(inc.resolved_at), _by(inc.resolved_by, inc.resolve_source)),
            ("Review due", present.when(inc.review_due_at), ""),
            ("Review done", present.when(inc.review_done_at), inc.review_done_by or ""),
        ],
        clocks=present.clocks(results, now),
        timeline=[present.event_line(e) for e in events],
        alerts=alerts,
        notifications=notifications,
        dead=[n for n in notifications if n["state"] == "dead"],
        review_html=present.markdown_html(review),
        csrf=request.app[READERS].csrf_token(identity(request)),
        now=present.when(now),
    )


def _by(actor: str | None, source: str | None) -> str:
    return " / ".join(x for x in (actor, source) if x)


def _review(request: web.Request, inc: Incident, events: Any, now: float) -> str:
    c = request.app[COMPONENTS]
    return render_postmortem(inc, events, c.rules, now=now, incident_url=page_url(request, inc.id))


async def review_download(request: web.Request) -> web.Response:
    """``GET /incidents/{id}/review.md``: the review's Markdown, as a file to save."""
    c = request.app[COMPONENTS]
    inc = await load(request)
    text = _review(request, inc, await c.store.timeline(inc.id), c.clock.now())
    return web.Response(
        text=text,
        content_type="text/markdown",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="incident-{inc.id}-review.md"'},
    )


async def _form_action(request: web.Request, action: str) -> web.StreamResponse:
    who = identity(request)
    # The pages' forms send URL-encoded bodies; nothing else is read.
    if request.content_type != "application/x-www-form-urlencoded":
        raise _bad("expected a form body (application/x-www-form-urlencoded)")
    try:
        form = await request.post()
    except ValueError as exc:
        raise _bad(f"cannot read the form: {exc}") from None
    token = form.get("csrf")
    if not isinstance(token, str) or not request.app[READERS].csrf_ok(who, token):
        raise web.HTTPForbidden(
            reason="the form's CSRF token is missing or not yours: reload the page"
        )
    message = form.get("message", "")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE:
        raise _bad(f"message must be text of at most {MAX_MESSAGE} characters")
    if "\x00" in message:  # PostgreSQL text cannot hold it (see api.read_body)
        raise _bad("message must not contain NUL characters")
    message = message.strip()
    status = _status(request, form.get("status", "")) if action == "update" else None
    if action == "update" and not message:
        raise InvalidTransition("a status update needs a message")
    inc = await act(request, action, actor=who, message=message, status=status, source="web")
    raise web.HTTPSeeOther(f"/incidents/{inc.id}")


def _status(request: web.Request, value: object) -> str | None:
    """The form's plan status: None to leave it as it is, else one of the rules' statuses."""
    if value == "":
        return None
    statuses = request.app[COMPONENTS].rules.statuses
    if not isinstance(value, str) or value not in statuses:
        raise _bad(f"status must be one of {', '.join(statuses) or '(none declared)'}")
    return value


async def acknowledge_form(request: web.Request) -> web.StreamResponse:
    """``POST /incidents/{id}/acknowledge`` (form): acknowledge as the signed-in identity."""
    return await _form_action(request, "acknowledge")


async def update_form(request: web.Request) -> web.StreamResponse:
    """``POST /incidents/{id}/update`` (form): a status update."""
    return await _form_action(request, "update")


async def resolve_form(request: web.Request) -> web.StreamResponse:
    """``POST /incidents/{id}/resolve`` (form): resolve by hand."""
    return await _form_action(request, "resolve")
