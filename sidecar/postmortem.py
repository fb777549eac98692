"""Post-incident reviews: the plan's review template, pre-filled.

Each SLA's verdict comes from :func:`sidecar.sla.verdict.sla_report`, the one
implementation of "was this SLA met?". :func:`render_postmortem` fills the
post-incident review template of the plan in use (the LLM-Marketplace "PIR
Template", the Schema Registry "Post-Mortem Template", or a generic one close
to both) with everything the sidecar knows. The templates are Jinja2 files of
the package, ``sidecar/templates/postmortem/<template>.md.j2``; the sections
only people can write (root cause, what went well or wrong, action items,
lessons) keep the plan's headings with placeholders.

Every template receives these variables. Times are strings already formatted
in UTC (``2023-11-15 09:00:00 UTC``); text that comes from alerts or people is
raw, and the template escapes it with the ``inline`` filter (running text) or
the ``cell`` filter (a table cell; ``None`` and blanks become ``—``):

``incident``
    The :class:`~sidecar.incidents.Incident`: ``id``, ``number``, ``title``, ``severity``,
    ``team``, ``acknowledged_by``/``acknowledge_source``,
    ``resolved_by``/``resolve_source``, ``labels``.
``link``
    The incident's URL in the sidecar, percent-encoded for a Markdown link, or none.
``plan``, ``severity_title``
    The name of the rules in use, and the plan's title of the incident's
    severity (none when the plan does not declare that severity).
``date``, ``duration``
    The day the first alert fired; ``1h 2m 5s`` until resolution, or
    ``ongoing (5m so far)``.
``affected``
    :data:`AFFECTED_LABELS` label name to its sorted values; may be empty.
``started``, ``detected``, ``acknowledged``, ``resolved``
    When the first alert fired, the incident was declared (none when the firing
    notification never arrived), acknowledged and resolved (none: not yet).
``review_due``
    The review's deadline with a note (``(overdue)``, ``(done late)``, ...), or none.
``timeline``
    Events oldest first, led by the first alert firing: ``time`` (a clock time,
    or date and time when the events span days), ``message``, ``source``, ``actor``.
``alerts``
    ``name``, ``severity``, ``status``, ``started``, ``ended`` (none while firing)
    and ``url`` (the generator URL, percent-encoded, or none).
``slas``
    One row per SLA a plan may set, in plan order, or none when no SLA applies:
    ``name``, ``title``, ``target`` (none: the plan sets no target), ``actual``,
    ``deadline`` (either may be none) and ``status`` (``met``, ``breached``,
    ``pending``, ``not_applicable``).
``breached``
    Short names of the SLAs breached (``acknowledge``, ``update cadence``, ...).
``war_room``
    The war room the plan derives from the incident's number
    (``#incident-2026-11-30-001``), or none for an incident without one.
``pir_owner``, ``attendees``
    Who holds the PIR Owner role (or none), and everyone holding a role, each
    once, in the plan's order of roles (may be empty).

Everything here is pure: times are UTC epoch seconds and ``now`` is passed in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import quote

from sidecar.incidents import Incident, TimelineEvent, war_room
from sidecar.incidents.people import attendees
from sidecar.rules import RuleSet, SeverityPolicy
from sidecar.sla.verdict import (
    SLA_NAMES,
    SLA_TITLES,
    SlaName,
    SlaResult,
    SlaStatus,
    sla_report,
)

if TYPE_CHECKING:
    import jinja2

Template = Literal["llm-marketplace", "schema-registry", "generic"]

_SHORT_NAMES: Mapping[SlaName, str] = {
    "detect": "detect",
    "acknowledge": "acknowledge",
    "update": "update cadence",
    "resolve": "resolve",
    "postmortem": "post-incident review",
}

AFFECTED_LABELS = ("service", "component", "job", "namespace")
"""Alert labels that name what an incident affected, in the order they are shown."""

_TEMPLATE_OF_PRESET: Mapping[str, Template] = {
    "llm-marketplace": "llm-marketplace",
    "schema-registry": "schema-registry",
}
_NOT_YET = "—"


def affected_services(incident: Incident) -> dict[str, list[str]]:
    """Distinct values of :data:`AFFECTED_LABELS` across the incident and its alerts."""
    label_sets = [incident.labels, *(a.labels for a in incident.alerts.values())]
    found: dict[str, list[str]] = {}
    for key in AFFECTED_LABELS:
        values = sorted({labels[key] for labels in label_sets if labels.get(key)})
        if values:
            found[key] = values
    return found


def render_postmortem(
    incident: Incident,
    timeline: Sequence[TimelineEvent],
    rules: RuleSet,
    *,
    template: Template | None = None,
    now: float,
    incident_url: str | None = None,
) -> str:
    """The post-incident review of ``incident`` as Markdown, in its plan's template."""
    chosen = template or _TEMPLATE_OF_PRESET.get(rules.name, "generic")
    data = _data(incident, timeline, rules, now, incident_url)
    text = _environment().get_template(f"postmortem/{chosen}.md.j2").render(data)
    return text.rstrip("\n") + "\n"


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates' environment, built on first use (the CLI rarely needs it)."""
    import jinja2  # on first use too: serve starts without it (restart time)

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sidecar", "templates"),
        # Markdown, not HTML: the cell and inline filters escape what needs it.
        autoescape=False,  # noqa: S701
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(cell=cell, inline=_inline, hard_breaks=_hard_breaks)
    return env


# -- what the templates are filled with ------------------------------------


class _Event(NamedTuple):
    time: str
    message: str
    source: str
    actor: str | None


class _Alert(NamedTuple):
    name: str
    severity: str
    status: str
    started: str
    ended: str | None
    url: str | None


class _Sla(NamedTuple):
    name: SlaName
    title: str
    target: str | None
    actual: str | None
    deadline: str | None
    status: SlaStatus


def _data(
    inc: Incident,
    timeline: Sequence[TimelineEvent],
    rules: RuleSet,
    now: float,
    incident_url: str | None,
) -> dict[str, Any]:
    """The variables every template receives, as the module docstring lists them."""
    policy = _policy(rules, inc.severity)
    report = sla_report(inc, timeline, rules, now)
    missed = any(
        e.kind == "opened" and e.data.get("firing_notification_missed") is True for e in timeline
    )
    if inc.resolved_at is not None:
        duration = _duration(inc.resolved_at - inc.started_at)
    else:
        duration = f"ongoing ({_duration(now - inc.started_at)} so far)"
    return {
        "incident": inc,
        "link": None if incident_url is None else _link_target(incident_url),
        "plan": rules.name,
        "severity_title": None if policy is None else policy.title,
        "date": _date(inc.started_at),
        "duration": duration,
        "affected": affected_services(inc),
        "started": _timestamp(inc.started_at),
        "detected": None if missed else _timestamp(inc.triggered_at),
        "acknowledged": _maybe(_timestamp, inc.acknowledged_at),
        "resolved": _maybe(_timestamp, inc.resolved_at),
        "review_due": _review_due(next((r for r in report if r.name == "postmortem"), None)),
        "timeline": _timeline_rows(inc, timeline),
        "alerts": _alert_rows(inc),
        "slas": None if policy is None else _sla_rows(report),
        "breached": [_SHORT_NAMES[r.name] for r in report if r.status == "breached"],
        "war_room": war_room(inc.number),
        "pir_owner": inc.roles.get("pir_owner"),
        "attendees": attendees(inc.roles),
    }


def _review_due(review: SlaResult | None) -> str | None:
    if review is None or review.deadline is None:
        return None
    done = review.actual_seconds is not None
    note = {
        ("met", True): " (done in time)",
        ("breached", True): " (done late)",
        ("breached", False): " (overdue)",
    }.get((review.status, done), "")
    return _timestamp(review.deadline) + note


def _policy(rules: RuleSet, severity: str) -> SeverityPolicy | None:
    try:
        return rules.policy(severity)
    except KeyError:
        return None


def _timeline_rows(inc: Incident, timeline: Sequence[TimelineEvent]) -> list[_Event]:
    """The real events, oldest first, led by the moment the first alert fired."""
    rows: list[tuple[float, int, str, str, str | None]] = [
        (inc.started_at, -1, "First alert started firing", "alertmanager", None)
    ]
    rows += [(e.at, e.seq, e.message or e.kind, e.source, e.actor) for e in timeline]
    rows.sort(key=lambda row: (row[0], row[1]))
    with_date = len({_date(row[0]) for row in rows}) > 1
    return [
        _Event(_timestamp(at, zone=False) if with_date else _clock(at), message, source, actor)
        for at, _, message, source, actor in rows
    ]


def _alert_rows(inc: Incident) -> list[_Alert]:
    return [
        _Alert(
            a.labels.get("alertname", a.fingerprint),
            a.severity,
            a.status,
            _timestamp(a.starts_at, zone=False),
            None if a.ends_at is None else _timestamp(a.ends_at, zone=False),
            _link_target(a.generator_url) if a.generator_url else None,
        )
        for a in sorted(inc.alerts.values(), key=lambda a: (a.starts_at, a.fingerprint))
    ]


def _sla_rows(report: Iterable[SlaResult]) -> list[_Sla]:
    """One row for every SLA a plan may set, those this severity does not set included."""
    by_name = {r.name: r for r in report}
    rows = []
    for name in SLA_NAMES:
        result = by_name.get(name)
        if result is None:
            rows.append(_Sla(name, SLA_TITLES[name], None, None, None, "not_applicable"))
            continue
        target = _duration(result.target_seconds)
        actual = _maybe(_duration, result.actual_seconds)
        if result.calendar is not None:
            # Business time: the wall time alone would read as a breach.
            target += f" of business time ({result.calendar})"
            if actual is not None and result.elapsed_seconds is not None:
                actual += f" ({_duration(result.elapsed_seconds)} of business time)"
        rows.append(
            _Sla(
                name,
                SLA_TITLES[name],
                target,
                actual,
                _maybe(lambda t: _timestamp(t, zone=False), result.deadline),
                result.status,
            )
        )
    return rows


# -- Markdown and time helpers ------------------------------------------------


def cell(text: str | None) -> str:
    """``text`` safe inside a Markdown table cell: pipes escaped, line breaks as ``<br>``."""
    lines = _escape(text or "").replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    return "<br>".join(line.strip() for line in lines) or _NOT_YET


def _inline(text: str) -> str:
    """``text`` safe in running Markdown on one line (headings, fields)."""
    return " ".join(_escape(text).split())


def _escape(text: str) -> str:
    # Backslashes first, so an escaped pipe cannot be un-escaped by the text's own
    # backslash; angle brackets so that payload text never becomes raw HTML.
    for char in ("\\", "|", "<", ">"):
        text = text.replace(char, "\\" + char)
    return text


def _link_target(url: str) -> str:
    """A URL percent-encoded so it cannot end a Markdown link or autolink early."""
    return quote(url.strip(), safe=":/?#[]@!$&'*+,;=%~")


def _hard_breaks(text: str) -> str:
    """Consecutive field lines, each ending in a Markdown hard line break but the last."""
    return "  \n".join(text.rstrip("\n").split("\n")) + "\n"


def _maybe(render: Callable[[float], str], value: float | None) -> str | None:
    return None if value is None else render(value)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _date(epoch: float) -> str:
    return _dt(epoch).strftime("%Y-%m-%d")


def _clock(epoch: float) -> str:
    return _dt(epoch).strftime("%H:%M:%S")


def _timestamp(epoch: float, *, zone: bool = True) -> str:
    return _dt(epoch).strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if zone else "")


def _duration(seconds: float) -> str:
    """``3725`` as ``1h 2m 5s``; whole seconds, largest units first, zero parts left out."""
    total = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts) or "0s"
