"""Slack: one thread per incident, kept current, through the official ``slack_sdk``.

The planner (:class:`SlackPlanner`, run by the incident book inside each
command) turns a change into outbox rows for each channel the incident goes to
(its team's, else its severity's, else the default; and the plan's stakeholder
channel for the severities that name it, in a thread of its own):

- ``post``: the thread's head, the plan's declared or alert message, when the
  incident opens (or when a raised severity brings in the stakeholder channel);
- ``reply``: a thread reply for a status update, a raised severity, an
  escalation, a breach, an update reminder, a reopening and the resolution;
- ``update``: the head re-rendered in place (``chat.update``) after anything that
  changes it: acknowledged by whom, status, severity, resolution.

Messages are rendered when planned, from the incident as the change left it.
Every row of a thread shares its dedup key, so the outbox sends them in order;
the head's ``channel`` and ``ts`` are its delivery's receipt, which the
replies and updates after it read (:class:`SlackSender`). A thread whose head
was refused (``channel_not_found``) dead-letters its replies with that reason.
Sends of a channel share a budget of Slack's rate (about one message a second
per channel), across replicas; a 429 waits its ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import aiohttp
import orjson
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from sidecar.clock import Clock
from sidecar.config.integrations import SlackConfig
from sidecar.incidents import Change, Incident
from sidecar.metrics import Metrics
from sidecar.notify.lifecycle import Lifecycle, incident_data, lifecycle_events
from sidecar.notify.pagerduty import Policies
from sidecar.notify.result import SendResult
from sidecar.notify.retry import retry_after_seconds
from sidecar.notify.templates import SLACK_HEAD, SLACK_REPLIES, Mention, MessageTemplates
from sidecar.store.base import OutboxItem, RateBudget, Store
from sidecar.store.rows import SLACK, OutboxRow

ACTIONS = ("post", "reply", "update")
#: What changes the thread's head, so that it is re-rendered in place.
_HEAD_CHANGES = frozenset(
    {
        "acknowledged",
        "status_update",
        "severity_raised",
        "severity_lowered",
        "roles_changed",
        "resolved",
        "reopened",
    }
)
#: What the stakeholder channel hears of (the plan's "broad updates"): no internals.
_STAKEHOLDER_REPLIES = frozenset({"status_update", "resolved", "reopened"})
#: Slack errors worth trying again (Slack's "Errors" of chat.postMessage and chat.update).
_TRANSIENT = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
     "request_timeout"}
)  # fmt: skip
#: A budget counts sends over the window plus this (see ``RATE_WINDOW_MARGIN``).
_WINDOW_MARGIN = 0.1


class SlackPlanner:
    """Plans each change's Slack messages (a planner of the incident book)."""

    def __init__(
        self,
        rules: Policies,
        config: SlackConfig,
        templates: MessageTemplates,
        *,
        external_url: str | None = None,
        plan: str = "",
    ) -> None:
        self.rules = rules
        self.plan_name = plan
        self.config = config
        self.templates = templates
        self.external_url = external_url.rstrip("/") if external_url else None
        self.people = {name: Mention(f"<@{uid}>") for name, uid in config.users.items()}

    def set_rules(self, rules: Policies) -> None:
        """Plan by these rules from now on (a rules reload)."""
        self.rules = rules

    def channel_for(self, inc: Incident) -> str | None:
        """The incident's channel: its team's, else its severity's, else the default."""
        return self._main(inc.team, inc.severity)

    def _main(self, team: str, severity: str) -> str | None:
        c = self.config.channels
        return c.teams.get(team) or c.severities.get(severity) or c.default

    def _stakeholders(self, severity: str) -> str | None:
        c = self.config.channels
        return c.stakeholders if severity in c.stakeholder_severities else None

    def plan(self, change: Change, now: float) -> None:
        """Add the change's Slack messages to its outbox rows."""
        events = lifecycle_events(change)
        if not events:
            return
        inc = change.incident
        context = self._context(inc)
        main = self.channel_for(inc)
        if main is not None:
            change.outbox += self._thread(inc, main, events, context, now, everything=True)
        stakeholders = self._stakeholders(inc.severity)
        if stakeholders is not None and stakeholders != main:
            change.outbox += self._thread(inc, stakeholders, events, context, now, everything=False)
        # A raise into another severity's channel: the old thread hears of it, last.
        for ev in events:
            before = ev.data.get("from")
            if ev.kind != "severity_raised" or not isinstance(before, str):
                continue
            old = self._main(inc.team, before)
            if old is not None and old not in (main, stakeholders):
                change.outbox += self._thread(inc, old, [ev], context, now, everything=True)

    def _context(self, inc: Incident) -> dict[str, Any]:
        url = f"{self.external_url}/api/v1/incidents/{inc.id}" if self.external_url else None
        data = incident_data(
            inc,
            update=self.rules.policy(inc.severity).clocks.update,
            incident_url=url,
            people=self.people,
        )
        return {"incident": data, "event": None, "plan": self.plan_name}

    def _thread(
        self,
        inc: Incident,
        channel: str,
        events: list[Lifecycle],
        context: dict[str, Any],
        now: float,
        *,
        everything: bool,
    ) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        head_changed = False
        for ev in events:
            if ev.kind == "opened" or (
                ev.kind == "severity_raised" and self._joins(inc, ev, channel)
            ):
                rows.append(self._row(inc, channel, "post", self._head(context), now))
                continue
            if ev.kind in _HEAD_CHANGES:
                head_changed = True
            template = SLACK_REPLIES.get(ev.kind)
            if template is None or not (everything or ev.kind in _STAKEHOLDER_REPLIES):
                continue
            text = self.templates.render_or_fallback(
                template, {**context, "event": ev.to_json()}, f"{inc.title}: {ev.message}"
            )
            rows.append(self._row(inc, channel, "reply", text, now))
        if head_changed and not any(r.action == "post" for r in rows):
            rows.append(self._row(inc, channel, "update", self._head(context), now))
        return rows

    def _joins(self, inc: Incident, ev: Lifecycle, channel: str) -> bool:
        """Whether a raised severity brings ``channel`` in (the stakeholders', another
        severity's): the incident's thread there starts now."""
        before = ev.data.get("from")
        if not isinstance(before, str):
            return False
        return channel not in (self._main(inc.team, before), self._stakeholders(before))

    def _head(self, context: dict[str, Any]) -> str:
        inc = context["incident"]
        fallback = f"{inc['severity']} incident: {inc['title']} ({inc['status']})"
        return self.templates.render_or_fallback(SLACK_HEAD, context, fallback)

    @staticmethod
    def _row(inc: Incident, channel: str, action: str, text: str, now: float) -> OutboxRow:
        return OutboxRow(
            integration=SLACK,
            incident_id=inc.id,
            # One thread per incident and channel, sent in order.
            dedup_key=f"{inc.id}:{channel}",
            routing=channel,
            action=action,
            body=orjson.dumps({"channel": channel, "text": text}),
            created_at=now,
        )


def slack_error(exc: SlackApiError) -> str:
    """Slack's own error text (``channel_not_found``), as a dead letter shows it."""
    data = getattr(exc.response, "data", None)
    if isinstance(data, Mapping) and isinstance(data.get("error"), str):
        return str(data["error"])
    return str(exc).splitlines()[0][:200]


class SlackSender:
    """The outbox's Slack sender: ``chat.postMessage`` and ``chat.update``, classified."""

    name = SLACK

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        clock: Clock,
        *,
        token: str,
        api_url: str,
        channels: Collection[str],
        timeout: float = 10.0,
        messages_per_channel: int = 1,
        rate_window: float = 1.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.token = token
        self.api_url = api_url
        self.timeout = timeout
        self.budget: RateBudget | None = RateBudget(
            per_window=messages_per_channel,
            window=rate_window + _WINDOW_MARGIN,
            buckets={channel: channel for channel in channels},
        )
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None

    async def open(self) -> None:
        """Open the HTTP session and the Web API client (retrying nothing itself)."""
        self._session = aiohttp.ClientSession()
        self._client = AsyncWebClient(
            token=self.token,
            base_url=self.api_url,
            timeout=max(1, round(self.timeout)),
            session=self._session,
            # The outbox retries, with the one policy; the client must not.
            retry_handlers=[],
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = self._client = None

    async def send(self, item: OutboxItem) -> SendResult:
        """Post, reply or update; the head's receipt locates replies and updates."""
        assert self._client is not None, "open() first"
        body: dict[str, Any] = orjson.loads(item.body)
        text = str(body["text"])
        try:
            if item.action == "post":
                answer = await self._client.chat_postMessage(
                    channel=body["channel"], text=text, unfurl_links=False
                )
                receipt = orjson.dumps({"channel": answer["channel"], "ts": answer["ts"]})
                return SendResult("accepted", answer.status_code, "ok", receipt=receipt.decode())
            head = await self._head(item)
            if isinstance(head, SendResult):
                return head
            if item.action == "reply":
                answer = await self._client.chat_postMessage(
                    channel=head["channel"], thread_ts=head["ts"], text=text
                )
            else:
                answer = await self._client.chat_update(
                    channel=head["channel"], ts=head["ts"], text=text
                )
            return SendResult("accepted", answer.status_code, "ok")
        except SlackApiError as exc:
            return self._classify(exc)
        except TimeoutError:
            return SendResult("retry", None, f"no answer within {self.timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return SendResult("retry", None, f"{type(exc).__name__}: {exc}")

    async def _head(self, item: OutboxItem) -> dict[str, str] | SendResult:
        """The channel and ts of the item's thread head, or why there is none."""
        thread = [
            i
            for i in await self.store.outbox_for_incident(item.incident_id)
            if i.integration == SLACK and i.dedup_key == item.dedup_key and i.action == "post"
        ]
        delivered = [i for i in thread if i.state == "delivered" and i.receipt]
        if delivered:
            found: dict[str, str] = orjson.loads(delivered[-1].receipt or "{}")
            return found
        dead = [i for i in thread if i.state == "dead"]
        why = f": {dead[-1].last_error}" if dead else ""
        return SendResult("rejected", None, f"the thread's first message was not posted{why}")

    def _classify(self, exc: SlackApiError) -> SendResult:
        status = getattr(exc.response, "status_code", None)
        error = slack_error(exc)
        if status == 429:
            headers = getattr(exc.response, "headers", None) or {}
            advice = _header(headers, "Retry-After")
            wait = retry_after_seconds(advice, now=self.clock.now())
            return SendResult("rate_limited", status, error, retry_after=wait)
        if (isinstance(status, int) and status >= 500) or error in _TRANSIENT:
            return SendResult("retry", status, error)
        return SendResult("rejected", status, error)

    def count(self, action: str, result: str) -> None:
        """``notifications_total{integration="slack",action,result}``."""
        self.metrics.count_notification(SLACK, action, result)


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value)
    return None


def slack_channels(config: SlackConfig) -> list[str]:
    """Every channel the configuration names (the per-channel budgets)."""
    c = config.channels
    named = [*c.teams.values(), *c.severities.values(), c.default, c.stakeholders]
    return sorted({ch for ch in named if ch})
