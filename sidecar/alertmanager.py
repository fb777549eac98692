"""Alertmanager's webhook payload (version 4), modelled field for field.

Mirrors ``notify/webhook/webhook.go`` (``Message``) and ``template/template.go``
(``Data``, ``Alert``) of prometheus/alertmanager. Unknown fields are accepted,
since newer Alertmanagers add some (``notification_reason``, ``routeLabels``).

Decoded with msgspec straight into frozen structs: every webhook takes this
path, and it decodes a 50-alert body in about 0.6x the time pydantic took
(and its datetimes carry the standard library's UTC, whose ``timestamp()`` the
grouping calls twice per alert, a third of the cost of pydantic's zone).
msgspec stops at the first problem of a body's shape; the times, checked in
one pass afterwards, are all reported.
"""

from __future__ import annotations

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
_FIRST_YEAR, _LAST_YEAR = _EARLIEST.year, _LATEST.year

_Labels = dict[str, str]


class Alert(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """One alert of a notification (``template.Alert``).

    ``starts_at`` and ``ends_at`` arrive as text and are settled by
    ``parse_notification`` (see ``_settle_times``); after it they are aware
    datetimes, and ``ends_at`` is None for "no end yet".
    """

    status: Literal["firing", "resolved"]
    labels: _Labels
    starts_at: datetime
    fingerprint: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{1,16}$")]
    annotations: _Labels = msgspec.field(default_factory=dict)
    ends_at: datetime | None = None
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


# Times are decoded as text and parsed by ``datetime.fromisoformat``, which
# truncates nanoseconds to microseconds as the stored incidents were parsed;
# rounding them (msgspec's datetime) would make every tracked instance look
# like a newer one after an upgrade.
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
    return _settle(wire)


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
    problems = []
    for i, alert in enumerate(wire.alerts):
        try:
            starts = _time(alert.starts_at, "startsAt")
            if starts is None:
                raise ValueError("startsAt must be set")
            force_setattr(alert, "starts_at", starts)
        except ValueError as exc:
            problems.append(f"alerts.{i}.startsAt: {exc}")
        try:
            ends = None if alert.ends_at is None else _time(alert.ends_at, "endsAt")
            force_setattr(alert, "ends_at", ends)
        except ValueError as exc:
            problems.append(f"alerts.{i}.endsAt: {exc}")
    if problems:
        raise InvalidPayload(problems)
    # The same objects, now holding what Alert and Notification declare.
    return wire


def _time(text: str, field: str) -> datetime | None:
    """An aware time in range, or None for Go's zero time."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{field} is not an RFC 3339 time: {text[:40]!r}") from None
    if value.year <= _GO_ZERO_YEAR:
        return None
    # The usual case, kept as parsed: aware, well within range. Years only:
    # comparing aware times would call into the zone of each.
    if value.tzinfo is not None and _FIRST_YEAR < value.year < _LAST_YEAR:
        return value
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{field} is out of range") from None
    if not _EARLIEST <= value <= _LATEST:
        raise ValueError(f"{field} must be between 1970 and 9999")
    return value


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
