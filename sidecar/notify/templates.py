"""The messages' templates: Jinja2 files of the package, one set per preset, overridable.

A template is looked up in the user's directory (``templates.directory``) first,
then in the preset's set (``sidecar/templates/messages/<preset>/``), then in the
generic set: a preset only carries the messages its plan words differently
(plan 000's "INCIDENT DECLARED" and "INCIDENT UPDATE", plan 002's "INCIDENT
ALERT" and "INCIDENT RESOLVED"), a user only the ones they change. Every
template receives ``incident`` (see :func:`sidecar.notify.lifecycle.incident_data`),
``event`` (the lifecycle event, or None for the thread's head) and ``plan``.

Slack text is escaped as Slack asks (``&``, ``<``, ``>``), except mentions.
Templates are checked at start against a sample incident, so that a broken
override refuses to start, naming its file and line, rather than failing a
command; a template that still fails at run time falls back to a plain line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from sidecar.config.integrations import TEMPLATE_PRESETS
from sidecar.errors import ConfigProblem
from sidecar.incidents import AlertState, Incident
from sidecar.notify.lifecycle import incident_data
from sidecar.sla import Target

log = logging.getLogger("sidecar.notify")

PRESETS: tuple[str, ...] = TEMPLATE_PRESETS

#: Every template, by what it renders.
SLACK_HEAD = "slack/incident.txt.j2"
SLACK_REPLIES: Mapping[str, str] = {
    kind: f"slack/{kind}.txt.j2"
    for kind in (
        "status_update",
        "severity_raised",
        "severity_lowered",
        "escalated",
        "breached",
        "reminder",
        "reopened",
        "resolved",
        "review_due",
    )
}
JIRA_SUMMARY = "jira/summary.txt.j2"
JIRA_DESCRIPTION = "jira/description.txt.j2"
TEMPLATE_NAMES = (SLACK_HEAD, *SLACK_REPLIES.values(), JIRA_SUMMARY, JIRA_DESCRIPTION)


class Mention(str):
    """Text that a Slack message must keep as it is (``<@U123>``), never escaped."""

    __slots__ = ()


def slack_escape(value: Any) -> Any:
    """Escape ``&``, ``<`` and ``>`` as Slack's message formatting asks, but in mentions."""
    if value is None:
        return ""
    if isinstance(value, Mention) or not isinstance(value, str):
        return value
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(value: Any) -> Any:
    return "" if value is None else value


class MessageTemplates:
    """The templates of one preset, with the user's overrides in front."""

    def __init__(self, preset: str | None = None, directory: Path | None = None) -> None:
        self.preset = preset if preset in PRESETS else "generic"
        self.directory = directory
        # (where, loader), first match wins.
        self._loaders: list[tuple[str, jinja2.BaseLoader]] = []
        if directory is not None:
            self._loaders.append((str(directory), jinja2.FileSystemLoader(str(directory))))
        for name in dict.fromkeys((self.preset, "generic")):
            package = f"templates/messages/{name}"
            self._loaders.append((f"sidecar/{package}", jinja2.PackageLoader("sidecar", package)))
        loader = jinja2.ChoiceLoader([found for _, found in self._loaders])
        options: dict[str, Any] = {
            "loader": loader,
            # Plain text and Slack mrkdwn, not HTML: escaping is the finalizer's.
            "autoescape": False,
            "undefined": jinja2.StrictUndefined,
            "trim_blocks": True,
            "lstrip_blocks": True,
            "keep_trailing_newline": False,
        }
        self._slack = jinja2.Environment(finalize=slack_escape, **options)  # noqa: S701
        self._plain = jinja2.Environment(finalize=_plain, **options)  # noqa: S701

    def source(self, name: str) -> str:
        """Where ``name`` is read from: the user's file, or the package's set."""
        for where, loader in self._loaders:
            try:
                loader.get_source(self._plain, name)
            except jinja2.TemplateNotFound:
                continue
            return f"{where}/{name}"
        return name

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """``name`` filled with ``context``; raises Jinja2's errors."""
        env = self._slack if name.startswith("slack/") else self._plain
        return env.get_template(name).render(context).strip()

    def render_or_fallback(self, name: str, context: Mapping[str, Any], fallback: str) -> str:
        """Like :meth:`render`, but a template that fails gives ``fallback`` (and a log line).

        A message must never fail the command that causes it: the incident's
        change, and PagerDuty's page, matter more than its wording.
        """
        try:
            return self.render(name, context)
        except Exception as exc:
            log.error(
                "message template failed; sending a plain message",
                extra={"template": name, "error": f"{type(exc).__name__}: {exc}"},
            )
            return fallback

    def check(self, config_file: str) -> list[ConfigProblem]:
        """Every template rendered against a sample incident; its problems as ``file:line``."""
        problems: list[ConfigProblem] = []
        for name in TEMPLATE_NAMES:
            event = SAMPLE_EVENT if name in SLACK_REPLIES.values() else None
            for resolved in (False, True):
                try:
                    self.render(name, sample_context(event, resolved=resolved))
                except jinja2.TemplateSyntaxError as exc:
                    where = exc.filename or self.source(name)
                    problems.append(ConfigProblem(where, f"line {exc.lineno}", exc.message or ""))
                    break
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    problems.append(ConfigProblem(self.source(name), "", reason))
                    break
        return problems


SAMPLE_EVENT: Mapping[str, Any] = {
    "kind": "status_update",
    "at": "2026-11-19T14:35:00Z",
    "source": "api",
    "actor": "john.doe",
    "message": "Rolled back the search index deploy; latency recovering.",
    "data": {"tier": "secondary", "sla": "update", "outcome": "paged", "from": "P2", "to": "P1"},
}


def sample_incident(now: float = 1_763_560_800.0) -> Incident:
    """An incident to preview and check templates with (plan 000's example)."""
    labels = {"alertname": "SearchLatencyHigh", "service": "discovery", "team": "search"}
    return Incident(
        id="01JD0000000000000000000000",
        key='{}:{alertname="SearchLatencyHigh"}',
        group_key='{}:{alertname="SearchLatencyHigh"}',
        receiver="sidecar",
        state="acknowledged",
        severity="P1",
        team="search",
        title="Discovery Service High Latency",
        labels=labels,
        external_url="http://alertmanager.example:9093",
        started_at=now - 300,
        triggered_at=now,
        acknowledged_at=now + 120,
        acknowledged_by="john.doe",
        number="2025-11-19-001",
        status="Identified",
        roles={"incident_commander": "john.doe", "smes": ["jane.roe"], "scribe": "sam"},
        alerts={
            "1a2b3c4d5e6f7a8b": AlertState(
                "1a2b3c4d5e6f7a8b", "firing", now - 300, None, "P1", labels
            )
        },
        annotations={
            "summary": "Search functionality slow for all users",
            "impact": "100% of search queries > 5s latency",
        },
    )


def sample_context(
    event: Mapping[str, Any] | None = None, *, resolved: bool = False
) -> dict[str, Any]:
    """The context a template gets, for the sample incident (resolved an hour later)."""
    inc = sample_incident()
    if resolved:
        inc.state = "resolved"
        inc.resolved_at = inc.triggered_at + 3600
        inc.review_due_at = inc.resolved_at + 7 * 86400
    data = incident_data(
        inc,
        update=Target(1800.0),
        incident_url="https://sidecar.example/api/v1/incidents/01JD0000000000000000000000",
        people={"john.doe": Mention("<@U024BE7LH>")},
    )
    return {"incident": data, "event": None if event is None else dict(event), "plan": "sample"}
