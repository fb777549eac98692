"""Alertmanager's webhook payload (version 4), modelled field for field.

Mirrors ``notify/webhook/webhook.go`` (``Message``) and ``template/template.go``
(``Data``, ``Alert``) of prometheus/alertmanager. Unknown fields are accepted,
since newer Alertmanagers add some (``notification_reason``, ``routeLabels``).

Decoded with msgspec straight into frozen structs: every webhook takes this
path, and msgspec decodes a body in about half the instructions pydantic took.
msgspec stops at the first problem of a body's shape; the times, checked in
one pass afterwards, are all reported.

Text is settled here too, once for every store: a NUL character (``\\u0000``) in
any label, annotation or URL becomes U+FFFD, since PostgreSQL text cannot hold
NUL and an alert must not be lost for one (see :func:`parse_notification`).
The fingerprint and the group key, an alert's and a group's identity, are never
rewritten: Alertmanager quotes the label values it puts in a group key, so a NUL
there is not Alertmanager's, and is refused. An over-long group key is kept as
sent, and the incident it opens is keyed on its hash (:func:`incident_key`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec.structs import force_setattr

# Alertmanager marshals Go's zero time for "no end yet".
_GO_ZERO_YEAR = 1
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
# A day short of the calendar's end, so that any rendering of it stays in range.
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)

_Labels = dict[str, str]


class Alert(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """One alert of a notification (``template.Alert``).

    ``starts_at`` and ``ends_at`` are seconds since the epoch (``ends_at`` None
    for "no end yet"): every reader compares them with the floats an incident
    keeps, and ``datetime.timestamp()`` cost more than decoding the alert.
    """

    status: Literal["firing", "resolved"]
    labels: _Labels
    starts_at: float
    # 1 to 16 hexadecimal digits: the length here, the digits in ``_settle``
    # (a regular expression per alert was a third of the decoding).
    fingerprint: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    annotations: _Labels = msgspec.field(default_factory=dict)
    ends_at: float | None = None
    generator_url: str = msgspec.field(default="", name="generatorURL")


class Notification(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """A webhook notification (``webhook.Message``, version 4)."""

    version: Literal["4"]
    group_key: Annotated[str, msgspec.Meta(min_length=1)]
    status: Literal["firing", "resolved"]
    receiver: str
    alerts: Annotated[list[Alert], msgspec.Meta(min_length=1)]
    truncated_alerts: Annotated[int, msgspec.Meta(ge=0)] = 0
    group_labels: _Labels = msgspec.field(default_factory=dict)
    common_labels: _Labels = msgspec.field(default_factory=dict)
    common_annotations: _Labels = msgspec.field(default_factory=dict)
    external_url: str = msgspec.field(default="", name="externalURL")

    @property
    def incident_key(self) -> str:
        """The key of the group's incident (see :func:`incident_key`)."""
        return incident_key(self.group_key)


# The longest group key, in UTF-8 bytes, that keys its incident as it is. PostgreSQL's
# btree indexes on incidents.key hold entries of up to 2,704 bytes (with the
# resolution time beside the key); a longer key failed every write, a 503 that
# Alertmanager retried for ever. Far above any group key of a usual route.
MAX_KEY_BYTES = 2048
HASHED_KEY_PREFIX = "sha256:"


def incident_key(group_key: str) -> str:
    """The incident key of a group key: itself, or ``sha256:`` and the hex digest of
    its UTF-8 bytes when these are over :data:`MAX_KEY_BYTES`.

    The same on every store, so that SQLite and PostgreSQL (and migration 13, which
    rewrites the keys of incidents stored before it) agree. The incident keeps the
    group key itself for display and PagerDuty's dedup key.
    """
    # At most 4 bytes a character: most keys are settled without encoding them.
    if len(group_key) * 4 <= MAX_KEY_BYTES:
        return group_key
    raw = group_key.encode()
    if len(raw) <= MAX_KEY_BYTES:
        return group_key
    return HASHED_KEY_PREFIX + hashlib.sha256(raw).hexdigest()


# Times arrive as RFC 3339 text, settled into epoch seconds by ``_settle``.
# ``datetime.fromisoformat`` truncates nanoseconds to microseconds, as the
# stored incidents' times were truncated; rounding them (msgspec's datetime)
# would make every tracked instance look like a newer one after an upgrade.
class _WireAlert(Alert, frozen=True, gc=False, rename="camel"):
    starts_at: str  # type: ignore[assignment]
    ends_at: str | None = None  # type: ignore[assignment]


class _WireNotification(Notification, frozen=True, gc=False, rename="camel"):
    alerts: Annotated[list[_WireAlert], msgspec.Meta(min_length=1)]  # type: ignore[assignment]


_DECODER = msgspec.json.Decoder(_WireNotification)


class InvalidPayload(ValueError):
    """The body is not a valid Alertmanager webhook; ``reasons`` says why."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


def parse_notification(body: bytes) -> Notification:
    """Parse and validate a raw webhook body, raising InvalidPayload with readable reasons."""
    try:
        wire = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidPayload([_reason(str(exc), body)]) from exc
    except msgspec.DecodeError as exc:
        raise InvalidPayload([f"malformed JSON: {exc}"]) from exc
    notification = _settle(wire)
    # JSON text holds a NUL only escaped (a raw one is malformed): a body without
    # the escape has none, and costs one scan of its bytes.
    if b"\\u0000" in body:
        _replace_nul(notification)
    return notification


def notification_from(data: Mapping[str, Any]) -> Notification:
    """A notification from its decoded JSON (simulations, tests): the same checks as a body."""
    return parse_notification(orjson.dumps(data))


def _settle(wire: _WireNotification) -> Notification:
    """Refuse a NUL in the group key and unset or impossible times; settle the rest.

    One pass per notification: the structs are frozen for everyone else;
    these are still being built, and their fields are written directly.
    """
    if "\x00" in wire.group_key:
        # It becomes a text key in the store, and PostgreSQL text cannot hold
        # NUL: refuse it here (400) rather than fail every retry at the store (503).
        raise InvalidPayload(["groupKey: groupKey must not contain NUL characters"])
    problems: list[str] = []
    epochs = _EPOCHS
    for i, alert in enumerate(wire.alerts):
        if alert.fingerprint.strip(_HEX):
            problems.append(f"alerts.{i}.fingerprint: must be hexadecimal digits")
        starts = epochs.get(alert.starts_at) or _learn(alert.starts_at, "startsAt", problems, i)
        if starts == _ZERO:
            problems.append(f"alerts.{i}.startsAt: startsAt must be set")
        force_setattr(alert, "starts_at", starts)
        if alert.ends_at is not None:
            ends = epochs.get(alert.ends_at) or _learn(alert.ends_at, "endsAt", problems, i)
            force_setattr(alert, "ends_at", None if ends == _ZERO else ends)
    if problems:
        raise InvalidPayload(problems)
    # The same objects, now holding what Alert and Notification declare.
    return wire


_HEX = "0123456789abcdefABCDEF"


def _replace_nul(n: Notification) -> None:
    """Replace NUL with U+FFFD in every text of ``n`` but its fingerprints and group key.

    PostgreSQL text refuses NUL, and it reaches text columns (timeline messages
    are made of the alertname and summary): the write failed, a 503 retried for
    ever. Refusing the notification (400) would lose the alert for a stray byte;
    U+FFFD keeps it, and shows where the byte was. Done here, once, for every
    store, so that SQLite and PostgreSQL, and replicas, hold the same text. No
    identity changes: alerts are known by fingerprint, groups by group key.
    """
    for name in ("receiver", "external_url"):
        force_setattr(n, name, _text(getattr(n, name)))
    for name in ("group_labels", "common_labels", "common_annotations"):
        force_setattr(n, name, _texts(getattr(n, name)))
    for alert in n.alerts:
        force_setattr(alert, "labels", _texts(alert.labels))
        force_setattr(alert, "annotations", _texts(alert.annotations))
        force_setattr(alert, "generator_url", _text(alert.generator_url))


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd")


def _texts(values: _Labels) -> _Labels:
    return {_text(k): _text(v) for k, v in values.items()}


# Time text -> epoch seconds. Alertmanager resends the same instants again and
# again (an alert keeps its startsAt while it fires, and the alerts of one rule
# evaluation share it), so most of a body's times are known. Bounded: a flood
# of distinct times must not grow it for ever.
_EPOCHS: dict[str, float] = {}
_EPOCHS_MAX = 65_536
# Go's zero time (no end yet, or an unset start), which no real time can be.
_ZERO = -1.0


def _learn(text: str, field: str, problems: list[str], i: int) -> float:
    """The epoch of ``text`` (``_ZERO`` for Go's zero time), remembered; 0 if refused."""
    try:
        epoch = _epoch(text, field)
    except ValueError as exc:
        problems.append(f"alerts.{i}.{field}: {exc}")
        return 0.0
    if len(_EPOCHS) >= _EPOCHS_MAX:
        _EPOCHS.clear()
    _EPOCHS[text] = epoch
    return epoch


def _epoch(text: str, field: str) -> float:
    """Seconds since the epoch of a time in range (UTC if it names no zone), or ``_ZERO``."""
    try:
        # RFC 3339 allows a lower-case "t" and "z"; fromisoformat does not.
        value = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValueError(f"{field} is not an RFC 3339 time: {text[:40]!r}") from None
    if value.year <= _GO_ZERO_YEAR:
        return _ZERO
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{field} is out of range") from None
    if not _EARLIEST <= value <= _LATEST:
        raise ValueError(f"{field} must be between 1970 and 9999")
    return value.timestamp()


# "Expected `str`, got `int` - at `$.alerts[0].labels[...]`"
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def _reason(message: str, body: bytes) -> str:
    """msgspec's message with the location first, in the payload's own names."""
    m = _AT.match(message)
    assert m is not None  # the pattern matches any text
    msg, path = m["msg"], m["path"] or ""
    loc = re.sub(r"\[(\d+)\]", r".\1", path).replace("[...]", "").lstrip(".")
    missing = _MISSING.match(msg)
    if missing:
        return f"{'.'.join(p for p in (loc, missing['field']) if p)}: Field required"
    if loc == "version":
        version = orjson.loads(body).get("version")
        return f"version: unsupported webhook version {version!r}, expected '4'"
    if msg.startswith("Invalid enum value") and loc.rpartition(".")[2] == "status":
        msg += ", expected 'firing' or 'resolved'"
    if path.endswith("[...]"):
        # A label or annotation value: name its key, as the payload spells it.
        loc = ".".join(p for p in (loc, _first_not_text(body, loc)) if p)
    return f"{loc}: {msg}" if loc else msg


def _first_not_text(body: bytes, loc: str) -> str:
    """The first key of the map at ``loc`` whose value is not text (only on the error path)."""
    node: Any = orjson.loads(body)
    for part in loc.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return next((k for k, v in node.items() if not isinstance(v, str)), "")
