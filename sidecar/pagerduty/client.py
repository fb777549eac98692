"""HTTP clients of PagerDuty: the Events API v2 sender and the REST incident lookup.

Neither retries nor sleeps: the sender classifies each answer as Alertmanager's
``notify/util.go`` ``Retrier.Check`` does for its PagerDuty integration (2xx ok,
5xx retry, plus PagerDuty's 429), following PagerDuty's "API response codes &
retry logic" (Events API v2 overview): 202 accepted, 400 never retried, 429 and
5xx retried. PagerDuty documents no ``Retry-After`` on the Events API, but a
proxy in front of it may send one: it is read (``SendResult.retry_after``) and
honoured by the one retry policy of the sidecar (:mod:`sidecar.notify.retry`), which
the outbox worker applies.

REST errors, documented once::

    PagerDutyApiError          base; ``status`` is the HTTP code or None
    ├── ApiAuthError           401 or 403: the API token is wrong or lacks access
    ├── ApiNotFound            404: no such incident
    ├── ApiUnavailable         5xx, 429, timeouts, network errors (``retryable``)
    └── ApiProtocolError       any other answer, or one that cannot be read

Neither the routing key nor the API token ever appears in a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from sidecar.clock import Clock, SystemClock
from sidecar.errors import SidecarError
from sidecar.notify.result import Outcome, SendResult
from sidecar.notify.retry import retry_after_seconds
from sidecar.pagerduty.events import MAX_EVENT_BYTES, encode_event

#: PagerDuty's largest page for classic pagination (REST API "Pagination").
REST_PAGE_LIMIT = 100
#: Pages followed at most for one incident (10,000 alerts) before giving up.
REST_MAX_PAGES = 100
REST_ACCEPT = "application/vnd.pagerduty+json;version=2"
_MAX_MESSAGE_CHARS = 2000
_REDACTED = "<redacted>"


class EventsClient:
    """Sends Events API v2 events one at a time and classifies PagerDuty's answer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        events_url: str,
        *,
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self._session = session
        self.events_url = events_url
        self.timeout = timeout
        # Only to read a Retry-After date when the answer carries no Date of its own.
        self.clock = clock or SystemClock()

    async def send(self, body: Mapping[str, Any], routing_key: str) -> SendResult:
        """POST ``body`` with ``routing_key`` added; never raises for HTTP or network failures."""
        data = encode_event(body, routing_key)
        dedup_key = body.get("dedup_key")
        if len(data) > MAX_EVENT_BYTES:
            # PagerDuty refuses it with 400; no need to spend a request on it.
            return SendResult(
                "rejected",
                None,
                f"event is {len(data)} bytes, over PagerDuty's limit of {MAX_EVENT_BYTES}",
                dedup_key if isinstance(dedup_key, str) else None,
            )
        try:
            async with self._session.post(
                self.events_url,
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
                retry_after = retry_after_seconds(
                    response.headers.get("Retry-After"),
                    now=self.clock.now(),
                    date=response.headers.get("Date"),
                )
        except TimeoutError:
            # Checked before ClientError: aiohttp's timeouts are both.
            return SendResult("retry", None, f"no answer within {self.timeout:g} s", None)
        except (aiohttp.ClientError, OSError) as exc:
            message = _redact(f"{type(exc).__name__}: {exc}", routing_key)
            return SendResult("retry", None, message, None)
        return _classify(status, raw, routing_key, retry_after)


def _classify(
    status: int, raw: bytes, routing_key: str, retry_after: float | None = None
) -> SendResult:
    answer = _json_object(raw)
    dedup_key = answer.get("dedup_key")
    key = dedup_key if isinstance(dedup_key, str) else None
    if 200 <= status < 300:
        return SendResult("accepted", status, _describe(answer, status, routing_key), key)
    if status == 429:
        outcome: Outcome = "rate_limited"
    elif status >= 500 or status == 408:
        outcome = "retry"
    else:
        # 400 is documented as never retryable; 401, 403, 404 and 413 will not
        # change by themselves either (wrong URL, proxy refusal, too large).
        outcome = "rejected"
    # Only a retryable answer's advice matters; a 202 or a 400 has nothing to wait for.
    advice = retry_after if outcome in ("retry", "rate_limited") else None
    return SendResult(outcome, status, _describe(answer, status, routing_key), key, advice)


def _describe(answer: Mapping[str, Any], status: int, routing_key: str) -> str:
    """PagerDuty's ``message`` and ``errors`` (as Alertmanager's ``errDetails``), else the code."""
    message = answer.get("message")
    text = message if isinstance(message, str) and message else f"HTTP {status}"
    errors = answer.get("errors")
    if isinstance(errors, list) and errors:
        text += ": " + ", ".join(str(e) for e in errors)
    return _redact(text, routing_key)


def _redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text[:_MAX_MESSAGE_CHARS]


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class PagerDutyApiError(SidecarError):
    """A PagerDuty REST API call failed; ``status`` is the HTTP code, None without answer."""

    retryable = False

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiAuthError(PagerDutyApiError):
    """The API token was refused (401) or lacks access (403)."""


class ApiNotFound(PagerDutyApiError):
    """PagerDuty has no such resource (404)."""


class ApiUnavailable(PagerDutyApiError):
    """PagerDuty did not answer usefully right now (5xx, 429, timeout, network); retry later."""

    retryable = True


class ApiProtocolError(PagerDutyApiError):
    """An answer that is neither success nor a documented error, or cannot be read."""


class RestClient:
    """The few REST API v2 calls the sidecar needs, with a read-only API token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        api_token: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._session = session
        self.api_url = api_url.rstrip("/")
        self._token = api_token
        self.timeout = timeout

    async def incident_alert_keys(self, incident_id: str) -> list[str]:
        """The ``alert_key`` (our dedup key) of every alert of a PagerDuty incident."""
        return list(await self.incident_alerts(incident_id))

    async def incident_alerts(self, incident_id: str) -> dict[str, datetime | None]:
        """Each ``alert_key`` of a PagerDuty incident, and when its newest alert was created.

        With alert grouping an incident holds alerts created after it was, and
        may hold two alerts of one key (an episode's alert resolved, the next
        episode's grouped into the same incident). Unreadable times are None.
        """
        if not incident_id:
            raise ValueError("incident id is empty")
        path = f"/incidents/{quote(incident_id, safe='')}/alerts"
        keys: dict[str, datetime | None] = {}  # ordered and without duplicates
        offset = 0
        for _ in range(REST_MAX_PAGES):
            page = await self._get(path, {"limit": REST_PAGE_LIMIT, "offset": offset})
            alerts = page.get("alerts")
            if not isinstance(alerts, list):
                raise ApiProtocolError(f"GET {path}: the answer has no 'alerts' list", 200)
            for alert in alerts:
                if not isinstance(alert, dict):
                    continue
                key = alert.get("alert_key")
                if isinstance(key, str) and key:
                    created = _created_at(alert.get("created_at"))
                    known = keys.get(key)
                    keys[key] = created if known is None else max(known, created or known)
            if page.get("more") is not True or not alerts:
                return keys
            offset += len(alerts)
        raise ApiProtocolError(f"GET {path}: more than {REST_MAX_PAGES} pages of alerts", 200)

    async def _get(self, path: str, params: Mapping[str, int]) -> dict[str, Any]:
        headers = {"Authorization": f"Token token={self._token}", "Accept": REST_ACCEPT}
        try:
            async with self._session.get(
                self.api_url + path,
                params=dict(params),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError as exc:
            raise ApiUnavailable(f"GET {path}: no answer within {self.timeout:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            text = _redact(f"GET {path}: {type(exc).__name__}: {exc}", self._token)
            raise ApiUnavailable(text) from exc
        answer = _json_object(raw)
        if status == 200:
            if not answer:
                raise ApiProtocolError(f"GET {path}: the answer is not a JSON object", status)
            return answer
        text = _redact(f"GET {path}: HTTP {status}{_rest_reason(answer)}", self._token)
        if status in (401, 403):
            raise ApiAuthError(text, status)
        if status == 404:
            raise ApiNotFound(text, status)
        if status >= 500 or status in (408, 429):
            raise ApiUnavailable(text, status)
        raise ApiProtocolError(text, status)


def _rest_reason(answer: Mapping[str, Any]) -> str:
    """The REST API's ``{"error": {"message", "code"}}`` as text (REST API "Errors")."""
    error = answer.get("error")
    if not isinstance(error, dict):
        return ""
    message = error.get("message")
    code = error.get("code")
    reason = message if isinstance(message, str) else ""
    if code is not None:
        reason += f" (code {code})"
    return f": {reason}" if reason else ""


def _created_at(value: Any) -> datetime | None:
    """An ISO 8601 time of the REST API (``2015-10-06T21:30:42Z``), in UTC; None if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when
