"""What the pages show: incidents turned into plain values for the HTML templates.

Everything an incident carries (labels, annotations, messages) reaches the page
through Jinja2 with autoescaping on; Markdown is rendered by markdown-it-py
with raw HTML disabled; a link is a link only when it is ``http(s)``.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from sidecar.clock import to_datetime
from sidecar.incidents import AlertState, Incident, TimelineEvent
from sidecar.incidents.people import ROLES
from sidecar.rules import RuleSet
from sidecar.sla.verdict import SlaResult, sla_report

if TYPE_CHECKING:
    import jinja2
    from markdown_it import MarkdownIt

SLA_TITLES = {
    "detect": "Time to detect",
    "acknowledge": "Time to acknowledge",
    "update": "Status update cadence",
    "resolve": "Time to resolve",
    "postmortem": "Post-incident review",
}


def duration(seconds: float | None) -> str:
    """``3725`` -> ``1h 2m``: two units at most, whole seconds below a minute."""
    if seconds is None:
        return ""
    total = int(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def when(epoch: float | None) -> str:
    """A UTC time to the second, as people read it."""
    dt = to_datetime(epoch)
    return "" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def safe_href(url: str | None) -> str | None:
    """``url`` when it is an absolute http(s) link, else None (no ``javascript:``)."""
    if not url:
        return None
    parsed = urllib.parse.urlsplit(url)
    return url if parsed.scheme in ("http", "https") and parsed.netloc else None


@dataclass(frozen=True, slots=True)
class Clock:
    """One SLA row of the incident page."""

    name: str
    title: str
    target: str
    deadline: str
    measured: str
    left: str
    status: str
    # The time counted against the target; the page shows it when it is business time
    # (``calendar`` set), since on the wall clock it repeats measured and left.
    elapsed: str = ""
    calendar: str | None = None


def clocks(results: Sequence[SlaResult], now: float) -> list[Clock]:
    """Each SLA's target, deadline, measured time, time left (or over) and verdict."""
    rows = []
    for r in results:
        left = ""
        if r.status == "pending" and r.deadline is not None:
            left = f"{duration(r.deadline - now)} left"
        elif r.status == "breached" and r.actual_seconds is None and r.deadline is not None:
            left = f"{duration(now - r.deadline)} over"
        elif r.status == "breached" and r.actual_seconds is not None:
            left = f"{duration(r.actual_seconds - r.target_seconds)} over"
        rows.append(
            Clock(
                name=r.name,
                title=SLA_TITLES.get(r.name, r.name),
                target=duration(r.target_seconds),
                deadline=when(r.deadline),
                measured=duration(r.actual_seconds),
                left=left,
                status=r.status.replace("_", " "),
                elapsed=duration(r.elapsed_seconds),
                calendar=r.calendar,
            )
        )
    return rows


def holder(value: object) -> str:
    """A role's holder as text: a name, names joined, or empty when nobody holds it."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def roles(inc: Incident) -> list[tuple[str, str]]:
    """Each of the plan's roles, by its title, with who holds it (empty: nobody yet)."""
    return [(title, holder(inc.roles.get(role))) for role, title in ROLES.items()]


def next_deadline(inc: Incident, rules: RuleSet, now: float) -> str:
    """The list's column: the nearest pending SLA deadline, or the first one running over."""
    results = sla_report(inc, (), rules, now, reviewed_at=inc.review_done_at)
    pending = [r for r in results if r.status == "pending" and r.deadline is not None]
    overdue = [
        r
        for r in results
        if r.status == "breached" and r.actual_seconds is None and r.deadline is not None
    ]
    if inc.is_open and overdue:
        r = min(overdue, key=lambda r: r.deadline or 0.0)
        return f"{SLA_TITLES[r.name].lower()}: {duration(now - (r.deadline or now))} over"
    if pending:
        r = min(pending, key=lambda r: r.deadline or 0.0)
        return f"{SLA_TITLES[r.name].lower()}: {duration((r.deadline or now) - now)} left"
    return ""


def alertmanager_link(inc: Incident, alert: AlertState) -> str | None:
    """The alert in its Alertmanager's UI, filtered by its labels."""
    base = safe_href(inc.external_url)
    if base is None:
        return None
    matchers = ",".join(f'{k}="{_quote_value(v)}"' for k, v in sorted(alert.labels.items()))
    query = urllib.parse.urlencode({"silenced": "false", "filter": "{" + matchers + "}"})
    return f"{base.rstrip('/')}/#/alerts?{query}"


def _quote_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@functools.cache
def _markdown() -> MarkdownIt:
    # Imported on first use, as jinja2 below: serve starts without them (restart time).
    from markdown_it import MarkdownIt

    # CommonMark with raw HTML off: an annotation's <script> shows as text.
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_html(text: str) -> Markup:
    """Markdown to HTML, raw HTML escaped and unsafe link schemes refused."""
    return Markup(_markdown().render(text))  # noqa: S704 - markdown-it escapes, html is off


@functools.cache
def environment() -> jinja2.Environment:
    """The pages' templates (package data), autoescaped."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sidecar", "templates/web"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = duration
    env.filters["when"] = when
    env.filters["href"] = safe_href
    return env


def render(template: str, **context: Any) -> str:
    """Render one page."""
    return environment().get_template(template).render(**context)


def event_line(ev: TimelineEvent) -> dict[str, Any]:
    """A timeline row."""
    return {
        "at": when(ev.at),
        "kind": ev.kind.replace("_", " "),
        "who": " / ".join(x for x in (ev.actor, ev.source) if x),
        "message": ev.message,
    }
