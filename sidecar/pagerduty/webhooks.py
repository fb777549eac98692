"""Inbound PagerDuty webhooks v3: signature verification and event parsing.

From PagerDuty's developer documentation, "Webhooks Overview" (the envelope and
its event data types) and "Verifying Signatures": ``X-PagerDuty-Signature``
holds one or more comma-separated signatures, one per signing secret during a
rotation; ``v1`` is the hex HMAC-SHA256 of the raw body keyed by the secret,
and a delivery is authentic when any ``v1`` signature matches.

Each delivery holds one event, ``{"event": {id, event_type, resource_type,
occurred_at, agent, client, data}}``. Incident events carry an ``incident`` in
``data``; ``incident.status_update_published`` carries an
``incident_status_update`` whose ``incident`` is only a reference (so no
``incident_key``), with the update's ``message``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The event types the sidecar acts on; any other type parses too, to be ignored.
SUPPORTED_EVENT_TYPES = frozenset(
    {
        "incident.acknowledged",
        "incident.unacknowledged",
        "incident.resolved",
        "incident.reopened",
        "incident.status_update_published",
        "incident.escalated",
    }
)
STATUS_UPDATE = "incident.status_update_published"
DEFAULT_AGENT = "pagerduty"

_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """True when any ``v1=`` signature in ``header`` is the HMAC of ``body`` with any secret."""
    if not header:
        return False
    candidates = []
    for part in header.split(","):
        version, sep, value = part.strip().partition("=")
        # Other versions are skipped, as the documentation says; a value that is not
        # 64 hex digits cannot match and is not worth comparing.
        if sep and version == "v1" and _HEX_SHA256.fullmatch(value):
            candidates.append(value.lower().encode("ascii"))
    if not candidates:
        return False
    if isinstance(secrets, str):
        # A str is a Sequence[str] too: never treat its characters as secrets.
        secrets = [secrets]
    for secret in secrets:
        if not secret:
            continue
        expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
        expected_bytes = expected.encode("ascii")
        for candidate in candidates:
            if hmac.compare_digest(candidate, expected_bytes):
                return True
    return False


class InvalidWebhook(ValueError):
    """The body is not a PagerDuty webhook v3 event; ``reasons`` says why."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


class Reference(BaseModel):
    """A PagerDuty resource reference (``agent``, ``data.incident``): the fields we read."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str | None = None
    type: str | None = None
    summary: str | None = None
    html_url: str | None = None
    email: str | None = None


class EventBody(BaseModel):
    """``event`` of a webhook v3 delivery; ``data`` differs by ``event_type``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    resource_type: str = ""
    occurred_at: datetime
    agent: Reference | None = None
    client: dict[str, Any] | None = None
    data: dict[str, Any]


class WebhookEnvelope(BaseModel):
    """A webhook v3 delivery: one event."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event: EventBody


class IncidentData(BaseModel):
    """``data`` of ``incident.*`` events: the incident (its fields that we read)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1)
    type: str = "incident"
    incident_key: str | None = None
    status: str | None = None
    html_url: str | None = None
    created_at: datetime | None = None
    reopened_at: datetime | None = None


class IncidentReference(BaseModel):
    """An ``incident_reference``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1)
    html_url: str | None = None


class StatusUpdateData(BaseModel):
    """``data`` of ``incident.status_update_published``: an ``incident_status_update``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str | None = None
    incident: IncidentReference
    message: str = ""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """What the sidecar needs from one webhook v3 event."""

    event_id: str
    event_type: str
    resource_type: str
    occurred_at: datetime
    pd_incident_id: str | None
    incident_key: str | None
    agent: str
    message: str | None
    pd_incident_url: str | None = None
    pd_status: str | None = None
    # When PagerDuty created its incident, and last reopened it (``incident``
    # data only): they tell an incident from an earlier one on the same key.
    pd_created_at: datetime | None = None
    pd_reopened_at: datetime | None = None

    @property
    def supported(self) -> bool:
        """True for the event types the sidecar acts on."""
        return self.event_type in SUPPORTED_EVENT_TYPES


def parse_webhook(body: bytes) -> WebhookEvent:
    """Parse and validate a raw delivery, raising InvalidWebhook with readable reasons."""
    try:
        envelope = WebhookEnvelope.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidWebhook(_reasons(exc)) from None
    event = envelope.event
    fields = _incident_fields(event)
    parsed = WebhookEvent(
        event_id=event.id,
        event_type=event.event_type,
        resource_type=event.resource_type,
        occurred_at=_utc(event.occurred_at),
        agent=_agent(event.agent),
        pd_incident_id=fields.get("pd_incident_id"),
        incident_key=fields.get("incident_key") or None,
        message=fields.get("message"),
        pd_incident_url=fields.get("pd_incident_url"),
        pd_status=fields.get("pd_status"),
        pd_created_at=fields.get("pd_created_at"),
        pd_reopened_at=fields.get("pd_reopened_at"),
    )
    # JSON holds a NUL only escaped: most bodies are settled by this one scan.
    return _without_nul(parsed) if b"\\u0000" in body else parsed


# PostgreSQL text cannot hold NUL (a 503 on every delivery). PagerDuty's ids never hold
# one: refused. What people wrote (a name, an update) is kept, the NUL shown as U+FFFD,
# as the Alertmanager payload's text (sidecar.alertmanager).
_ID_FIELDS = ("event_id", "pd_incident_id", "incident_key")
_TEXT_FIELDS = ("agent", "message", "pd_incident_url")


def _without_nul(event: WebhookEvent) -> WebhookEvent:
    wrong = [
        f"{name}: must not contain NUL"
        for name in _ID_FIELDS
        if "\x00" in (getattr(event, name) or "")
    ]
    if wrong:
        raise InvalidWebhook(wrong)
    texts = {
        name: value.replace("\x00", "\ufffd")
        for name in _TEXT_FIELDS
        if (value := getattr(event, name)) is not None
    }
    return dataclasses.replace(event, **texts)


def _utc(when: datetime) -> datetime:
    """``when``, a naive timestamp taken as UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _incident_fields(event: EventBody) -> dict[str, Any]:
    """The incident's fields of a :class:`WebhookEvent`, from ``data``."""
    data = event.data
    supported = event.event_type in SUPPORTED_EVENT_TYPES
    try:
        if event.event_type == STATUS_UPDATE:
            update = StatusUpdateData.model_validate(data)
            return {
                "pd_incident_id": update.incident.id,
                "message": update.message or None,
                "pd_incident_url": update.incident.html_url,
            }
        if supported or data.get("type") == "incident":
            incident = IncidentData.model_validate(data)
            return {
                "pd_incident_id": incident.id,
                "incident_key": incident.incident_key,
                "pd_incident_url": incident.html_url,
                "pd_status": incident.status,
                "pd_created_at": incident.created_at and _utc(incident.created_at),
                "pd_reopened_at": incident.reopened_at and _utc(incident.reopened_at),
            }
        if isinstance(data.get("incident"), dict):
            # Other incident.* events (notes, responders, ...) reference their incident.
            reference = IncidentReference.model_validate(data["incident"])
            return {"pd_incident_id": reference.id, "pd_incident_url": reference.html_url}
    except ValidationError as exc:
        if supported:
            raise InvalidWebhook(
                [f"event.data ({event.event_type}): {r}" for r in _reasons(exc)]
            ) from None
    return {}


def _agent(agent: Reference | None) -> str:
    """A display name for who acted: the reference's summary, email or id."""
    if agent is None:
        return DEFAULT_AGENT
    for value in (agent.summary, agent.email, agent.id):
        if value and value.strip():
            return value.strip()
    return DEFAULT_AGENT


def _reasons(exc: ValidationError) -> list[str]:
    reasons = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        reasons.append(f"{where}: {error['msg']}" if where else error["msg"])
    return reasons
