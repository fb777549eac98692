"""A fake Slack Web API for tests: ``chat.postMessage``, ``chat.update``, ``auth.test``.

A real aiohttp server on 127.0.0.1 (port 0); ``slack_sdk``'s ``AsyncWebClient``
is pointed at it through ``base_url`` (``fake.api_url``). Written from Slack's
documentation:

- Web API basics: methods are ``POST https://slack.com/api/<method>``; the token
  goes in ``Authorization: Bearer xoxb-...``; bodies are JSON
  (``application/json; charset=utf-8``) or form-encoded; every answer is HTTP 200
  with ``{"ok": true, ...}`` or ``{"ok": false, "error": "<code>"}``:
  https://api.slack.com/web
- ``chat.postMessage``: ``channel`` (an ID or a name), ``text``, ``thread_ts`` (the
  parent's ``ts`` to reply in its thread); answers ``{"ok", "channel": <ID>,
  "ts", "message"}``; errors include ``channel_not_found``, ``not_in_channel``,
  ``is_archived``, ``msg_too_long``, ``no_text``, ``invalid_auth``,
  ``not_authed``, ``token_revoked``, ``account_inactive``, ``ratelimited``:
  https://api.slack.com/methods/chat.postMessage
- ``chat.update``: ``channel`` (the channel's ID) and ``ts`` of the message;
  answers ``{"ok", "channel", "ts", "text"}``; errors ``message_not_found``,
  ``cant_update_message``, ``channel_not_found``, ``edit_window_closed``:
  https://api.slack.com/methods/chat.update
- ``auth.test``: ``{"ok", "url", "team", "user", "team_id", "user_id", "bot_id"}``.
- Rate limits: past its limit a method answers HTTP 429 with a ``Retry-After``
  header (seconds) and ``{"ok": false, "error": "ratelimited"}``;
  ``chat.postMessage`` allows about one message per second per channel, short
  bursts tolerated: https://api.slack.com/docs/rate-limits
- Message formatting: ``&``, ``<`` and ``>`` are escaped in text; ``<@U123>``
  mentions a user: https://api.slack.com/reference/surfaces/formatting

Usage::

    async with FakeSlack(channels={"incidents": "C0INCIDENT"}) as slack:
        slack.fail_next("channel_not_found")         # the next call answers this error
        slack.rate_limit_next(retry_after=1)          # the next call: 429, Retry-After: 1
        slack.server_error_next()                     # the next call: HTTP 500
        slack.revoke(slack.token)                     # token_revoked from now on
        ...
        thread = slack.thread("C0INCIDENT", ts)       # the head and its replies
        slack.requests                                # every call, failures included

Not documented, so chosen here: ``thread_ts`` naming no message is accepted as
Slack does for any ts (the reply is kept with that ts); the ``ts`` values are
the fake's own increasing counter; with ``per_channel_per_second`` set, a
channel's second message within a second answers 429 ``Retry-After: 1``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes.server import LoopbackServer

JSON = dict[str, Any]
DEFAULT_TOKEN = "xoxb-1111-2222-fake-bot-token"
MAX_TEXT_CHARS = 40_000


@dataclass
class Message:
    """A message as the fake keeps it: its text now, and every text it had."""

    channel: str
    ts: str
    text: str
    thread_ts: str | None = None
    edits: list[str] = field(default_factory=list)


@dataclass
class Call:
    """One Web API call, failures included, with what the fake answered."""

    method: str
    args: JSON
    token: str | None
    status: int
    answer: JSON
    at: float


@dataclass
class _Fault:
    kind: str  # "error", "ratelimited", "server"
    error: str = ""
    retry_after: int = 1


class FakeSlack(LoopbackServer):
    """A Slack workspace's Web API on loopback, with failure injection."""

    def __init__(
        self,
        *,
        channels: dict[str, str] | None = None,
        token: str = DEFAULT_TOKEN,
        per_channel_per_second: int | None = None,
    ) -> None:
        super().__init__()
        # Channel name (without '#') -> ID.
        self.channels = dict(channels or {"incidents": "C0INCIDENTS"})
        self.token = token
        self.tokens = {token}
        self.revoked: set[str] = set()
        self.per_channel_per_second = per_channel_per_second
        self.messages: dict[tuple[str, str], Message] = {}
        self.calls: list[Call] = []
        self._faults: deque[_Fault] = deque()
        self._sent_at: dict[str, list[float]] = {}
        self._next_ts = 1_700_000_000
        self._changed = asyncio.Condition()
        self.app.router.add_post("/api/{method}", self._handle)

    @property
    def api_url(self) -> str:
        """What ``slack.api_url`` (slack_sdk's ``base_url``) must be."""
        return f"{self.base_url}/api/"

    # -- failure injection ------------------------------------------------

    def fail_next(self, error: str, times: int = 1) -> None:
        """The next ``times`` calls answer ``{"ok": false, "error": error}``."""
        self._faults.extend(_Fault("error", error) for _ in range(times))

    def rate_limit_next(self, retry_after: int = 1, times: int = 1) -> None:
        """The next ``times`` calls answer 429 with ``Retry-After``."""
        self._faults.extend(_Fault("ratelimited", retry_after=retry_after) for _ in range(times))

    def server_error_next(self, times: int = 1) -> None:
        """The next ``times`` calls answer HTTP 500 (Slack unwell)."""
        self._faults.extend(_Fault("server") for _ in range(times))

    def clear_faults(self) -> None:
        """Forget the failures still planned (Slack is back)."""
        self._faults.clear()

    def revoke(self, token: str) -> None:
        """The token is revoked: every call with it answers ``token_revoked``."""
        self.revoked.add(token)

    # -- reading what was sent ----------------------------------------------

    def channel_messages(self, channel_id: str) -> list[Message]:
        """Top-level messages of a channel, oldest first."""
        return [
            m for (c, _), m in sorted(self.messages.items()) if c == channel_id and not m.thread_ts
        ]

    def replies(self, channel_id: str, ts: str) -> list[Message]:
        """The thread replies of a message, oldest first."""
        return [
            m
            for (c, _), m in sorted(self.messages.items())
            if c == channel_id and m.thread_ts == ts
        ]

    def accepted(self, method: str) -> list[Call]:
        """The calls of ``method`` answered ok."""
        return [c for c in self.calls if c.method == method and c.answer.get("ok")]

    async def wait_for(self, predicate: Any) -> None:
        """Wait until ``predicate()`` holds (after any call); callers bound the wait."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    # -- the API ----------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._args(request)
        token = _bearer(request) or args.pop("token", None)
        status, answer, headers = self._answer(method, args, token)
        self.calls.append(Call(method, args, token, status, answer, time.monotonic()))
        async with self._changed:
            self._changed.notify_all()
        return web.json_response(answer, status=status, headers=headers)

    @staticmethod
    async def _args(request: web.Request) -> JSON:
        raw = await request.read()
        if request.content_type == "application/json":
            data = json.loads(raw or b"{}")
            return dict(data) if isinstance(data, dict) else {}
        return dict(parse_qsl(raw.decode("utf-8")))

    def _answer(
        self, method: str, args: JSON, token: str | None
    ) -> tuple[int, JSON, dict[str, str]]:
        if self._faults:
            fault = self._faults.popleft()
            if fault.kind == "ratelimited":
                headers = {"Retry-After": str(fault.retry_after)}
                return 429, {"ok": False, "error": "ratelimited"}, headers
            if fault.kind == "server":
                return 500, {"ok": False, "error": "internal_error"}, {}
            return 200, {"ok": False, "error": fault.error}, {}
        if token is None:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if token in self.revoked:
            return 200, {"ok": False, "error": "token_revoked"}, {}
        if token not in self.tokens:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        if method == "auth.test":
            return (
                200,
                {
                    "ok": True,
                    "url": "https://fake.slack.com/",
                    "team": "Fake",
                    "user": "sidecar",
                    "team_id": "T0FAKE",
                    "user_id": "U0SIDECAR",
                    "bot_id": "B0SIDECAR",
                },
                {},
            )
        if method == "chat.postMessage":
            return self._post(args)
        if method == "chat.update":
            return self._update(args)
        return 200, {"ok": False, "error": "unknown_method"}, {}

    def _channel_id(self, channel: Any, *, names: bool) -> str | None:
        if not isinstance(channel, str):
            return None
        if channel in self.channels.values():
            return channel
        return self.channels.get(channel.lstrip("#")) if names else None

    def _post(self, args: JSON) -> tuple[int, JSON, dict[str, str]]:
        channel = self._channel_id(args.get("channel"), names=True)
        if channel is None:
            return 200, {"ok": False, "error": "channel_not_found"}, {}
        text = args.get("text")
        if not text:
            return 200, {"ok": False, "error": "no_text"}, {}
        if len(text) > MAX_TEXT_CHARS:
            return 200, {"ok": False, "error": "msg_too_long"}, {}
        if self._over_rate(channel):
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}
        self._next_ts += 1
        ts = f"{self._next_ts}.000100"
        thread_ts = args.get("thread_ts") or None
        self.messages[(channel, ts)] = Message(channel, ts, text, thread_ts)
        message = {"type": "message", "text": text, "ts": ts, "bot_id": "B0SIDECAR"}
        if thread_ts:
            message["thread_ts"] = thread_ts
        return 200, {"ok": True, "channel": channel, "ts": ts, "message": message}, {}

    def _update(self, args: JSON) -> tuple[int, JSON, dict[str, str]]:
        channel = self._channel_id(args.get("channel"), names=False)
        if channel is None:
            return 200, {"ok": False, "error": "channel_not_found"}, {}
        message = self.messages.get((channel, str(args.get("ts"))))
        if message is None:
            return 200, {"ok": False, "error": "message_not_found"}, {}
        text = args.get("text")
        if not text:
            return 200, {"ok": False, "error": "no_text"}, {}
        message.edits.append(message.text)
        message.text = text
        return 200, {"ok": True, "channel": channel, "ts": message.ts, "text": text}, {}

    def _over_rate(self, channel: str) -> bool:
        if self.per_channel_per_second is None:
            return False
        now = time.monotonic()
        sent = [t for t in self._sent_at.get(channel, []) if now - t < 1.0]
        if len(sent) >= self.per_channel_per_second:
            self._sent_at[channel] = sent
            return True
        self._sent_at[channel] = [*sent, now]
        return False


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    return value.removeprefix("Bearer ").strip() or None if value.startswith("Bearer ") else None
