"""Tickets: the ``ticket`` policy creates a Jira Cloud issue (REST API v3, create issue).

The planner (:class:`JiraPlanner`) queues one ``create`` when an incident
whose severity's policy is ``ticket`` opens, with the issue's fields built from
the incident (project, issue type, summary, a description in Atlassian Document
Format, labels) by the ``jira/`` templates. The sender posts it with basic auth
(the account's email and an API token) and keeps the answer's ``key``, ``id``
and a browse link as the item's receipt, which the incident's API view shows.

Jira answers 201 with ``{"id", "key", "self"}``; 400 with ``{"errorMessages":
[...], "errors": {field: message}}``, which becomes the dead letter's reason word
for word; 401, 403 and 404 are dead letters too (a wrong token or project will
not fix itself); 429 waits its ``Retry-After``; 5xx and timeouts are retried. A
create is not idempotent: it repeats only if the sidecar dies between Jira's
answer and recording it (the outbox's documented crash window).
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import orjson

from sidecar.clock import Clock
from sidecar.config.integrations import JiraConfig
from sidecar.incidents import Change
from sidecar.incidents.model import timeline_event
from sidecar.metrics import Metrics
from sidecar.notify.lifecycle import incident_data, lifecycle_events
from sidecar.notify.pagerduty import Policies
from sidecar.notify.result import SendResult, SessionSender
from sidecar.notify.retry import retry_after_seconds
from sidecar.notify.templates import JIRA_DESCRIPTION, JIRA_SUMMARY, MessageTemplates
from sidecar.store.base import OutboxItem, RateBudget
from sidecar.store.rows import JIRA, OutboxRow

ACTIONS = ("create",)
CREATE_PATH = "/rest/api/3/issue"
MAX_SUMMARY_CHARS = 255


def adf(text: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document Format document: a paragraph per line."""
    paragraphs = [
        {"type": "paragraph", "content": [{"type": "text", "text": line}]}
        for line in text.splitlines()
        if line.strip()
    ]
    return {"type": "doc", "version": 1, "content": paragraphs}


class JiraPlanner:
    """Plans a Jira issue for each incident that opens under a ``ticket`` policy."""

    def __init__(
        self,
        rules: Policies,
        config: JiraConfig,
        templates: MessageTemplates,
        *,
        external_url: str | None = None,
    ) -> None:
        self.rules = rules
        self.config = config
        self.templates = templates
        self.external_url = external_url.rstrip("/") if external_url else None

    def set_rules(self, rules: Policies) -> None:
        """Plan by these rules from now on (a rules reload)."""
        self.rules = rules

    def plan(self, change: Change, now: float) -> None:
        """Queue the ticket of a change that opens a ``ticket`` incident."""
        inc = change.incident
        if self.rules.policy(inc.severity).paging != "ticket":
            return
        if not any(e.kind == "opened" for e in lifecycle_events(change)):
            return
        url = f"{self.external_url}/api/v1/incidents/{inc.id}" if self.external_url else None
        data = incident_data(
            inc, update=self.rules.policy(inc.severity).clocks.update, incident_url=url
        )
        context = {"incident": data, "event": None, "plan": ""}
        summary = self.templates.render_or_fallback(JIRA_SUMMARY, context, inc.title)
        description = self.templates.render_or_fallback(JIRA_DESCRIPTION, context, inc.title)
        c = self.config
        fields = {
            "project": {"key": c.project},
            "issuetype": {"name": c.issue_type},
            "summary": " ".join(summary.split())[:MAX_SUMMARY_CHARS],
            "description": adf(description),
            "labels": list(c.labels),
        }
        change.outbox.append(
            OutboxRow(
                integration=JIRA,
                incident_id=inc.id,
                dedup_key=inc.id,
                routing=c.project,
                action="create",
                body=orjson.dumps({"fields": fields}),
                created_at=now,
            )
        )
        change.events.append(
            timeline_event(
                inc,
                now,
                "ticket_queued",
                "sidecar",
                None,
                f"Jira issue queued in project {c.project}",
                {"project": c.project},
            )
        )


def jira_error(raw: bytes) -> str:
    """Jira's error collection as one line: its ``errorMessages``, then ``field: message``."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip()[:300]
    if not isinstance(answer, dict):
        return str(answer)[:300]
    parts = [str(m) for m in answer.get("errorMessages") or []]
    errors = answer.get("errors") or {}
    if isinstance(errors, dict):
        parts += [f"{field}: {message}" for field, message in sorted(errors.items())]
    return "; ".join(parts)[:1000] or str(answer)[:300]


class JiraSender(SessionSender):
    """The outbox's Jira sender: create the issue, keep its key and link."""

    name = JIRA
    budget: RateBudget | None = None

    def __init__(
        self, metrics: Metrics, clock: Clock, *, config: JiraConfig, api_token: str
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.site = config.url.rstrip("/")
        self.timeout = config.timeout.total_seconds()
        credentials = f"{config.email}:{api_token}".encode()
        self._auth = "Basic " + base64.b64encode(credentials).decode("ascii")

    async def send(self, item: OutboxItem) -> SendResult:
        """POST the issue; its key and browse link become the receipt."""
        assert self._session is not None, "open() first"
        headers = {
            "Authorization": self._auth,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        try:
            async with self._session.post(
                self.site + CREATE_PATH,
                data=item.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
                advice = retry_after_seconds(
                    response.headers.get("Retry-After"), now=self.clock.now()
                )
        except TimeoutError:
            return SendResult("retry", None, f"no answer within {self.timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return SendResult("retry", None, f"{type(exc).__name__}: {exc}")
        if status == 201:
            return self._created(status, raw)
        message = f"HTTP {status}: {jira_error(raw)}"
        if status == 429:
            return SendResult("rate_limited", status, message, retry_after=advice)
        if status >= 500:
            return SendResult("retry", status, message, retry_after=advice)
        return SendResult("rejected", status, message)

    def _created(self, status: int, raw: bytes) -> SendResult:
        try:
            answer = orjson.loads(raw)
            key = str(answer["key"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            # Created, but the answer cannot say which: do not create it twice.
            return SendResult("accepted", status, "created; the answer named no key")
        receipt = {
            "key": key,
            "id": str(answer.get("id", "")),
            "self": str(answer.get("self", "")),
            "url": f"{self.site}/browse/{key}",
        }
        return SendResult("accepted", status, key, receipt=orjson.dumps(receipt).decode())

    def count(self, action: str, result: str) -> None:
        """``notifications_total{integration="jira",action,result}``."""
        self.metrics.count_notification(JIRA, action, result)
