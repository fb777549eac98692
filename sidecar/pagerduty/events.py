"""Events API v2 bodies: dedup keys, trigger, acknowledge and resolve events.

Bodies are built without ``routing_key``: the worker adds the secret at send time
(:func:`encode_event`), so what is stored in the outbox never holds a secret.

Limits follow PagerDuty's Events API v2 documentation ("Send an Alert Event"):
``dedup_key`` at most 255 characters, ``payload.summary`` at most 1024, and the
whole event at most 512 KB, enforced here as 512,000 bytes, the stricter reading,
which is also Alertmanager's own limit (``maxEventSize`` in
``notify/pagerduty/pagerduty.go``). Sizes are measured on :func:`encode_event`'s
output, the exact bytes the client sends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, urlsplit, urlunsplit

import orjson

from sidecar.incidents import AlertState, Incident, war_room

MAX_EVENT_BYTES = 512_000
MAX_DEDUP_KEY_CHARS = 255
MAX_SUMMARY_CHARS = 1024
SEVERITIES = ("critical", "error", "warning", "info")
CLIENT = "incident-sla-sidecar"

#: Longest label value, label name or short payload field kept; longer ones are cut.
MAX_FIELD_CHARS = 1024
#: Generator URLs linked from one event; an alert group rarely has more distinct rules.
MAX_GENERATOR_LINKS = 20
#: Longer URLs are left out rather than cut, since a cut URL is a broken link.
MAX_URL_CHARS = 8192
#: Bytes kept free for ``"routing_key":"…",`` added at send time (keys are 32 characters).
ROUTING_KEY_RESERVE = 512

_ELLIPSIS = "…"


def dedup_key_for_group(group_key: str) -> str:
    """The dedup key of a group-mode incident: hex SHA-256 of the Alertmanager groupKey."""
    # The same key as Alertmanager's own integration: notify/pagerduty/pagerduty.go
    # sends ``DedupKey: key.Hash()``, and notify/notify.go ``Key.Hash`` is the
    # lower-case hex SHA-256 of the groupKey's bytes (Go strings are UTF-8). A sidecar
    # that replaces ``pagerduty_configs`` therefore updates the same PagerDuty alerts.
    if not group_key:
        raise ValueError("group key is empty")
    return hashlib.sha256(group_key.encode("utf-8")).hexdigest()


def dedup_key_for_alert(group_key: str, fingerprint: str) -> str:
    """The dedup key of an alert-mode incident: hex SHA-256 of the alert's fingerprint.

    The fingerprint alone (lower-cased, as Alertmanager prints it) identifies the
    alert, exactly as the incident key does in alert mode, so the key stays the same
    when routes or ``group_by`` change and the alert lands in another group; the
    ``group_key`` is accepted for symmetry with :func:`dedup_key_for_group` and
    deliberately not part of the key. Hashing gives every dedup key the same 64-hex
    shape, and a fingerprint (16 hex digits) can never equal a groupKey (which
    always contains ``:{``), so the two schemes cannot collide.
    """
    del group_key  # see the docstring: not part of the key, on purpose
    if not fingerprint:
        raise ValueError("fingerprint is empty")
    return hashlib.sha256(fingerprint.lower().encode("utf-8")).hexdigest()


def encode_event(body: Mapping[str, Any], routing_key: str | None = None) -> bytes:
    """The bytes sent to PagerDuty: compact UTF-8 JSON, with ``routing_key`` when given."""
    event = dict(body)
    if routing_key is not None:
        event["routing_key"] = routing_key
    return orjson.dumps(event)


def build_trigger(
    incident: Incident,
    *,
    pagerduty_severity: str,
    dedup_key: str,
    alertmanager_url: str | None,
    incident_url: str | None,
) -> dict[str, Any]:
    """A trigger event for ``incident`` (without ``routing_key``), kept under the size limit.

    ``alertmanager_url`` is Alertmanager's user-facing URL; when None the
    notification's ``externalURL`` is used. When the event would be too large,
    alert details are dropped (resolved ones first, then the latest-starting
    firing ones) and ``custom_details.alerts_omitted`` says how many.
    """
    if pagerduty_severity not in SEVERITIES:
        raise ValueError(f"PagerDuty severity must be one of {', '.join(SEVERITIES)}")
    _check_dedup_key(dedup_key)
    am_base = _public_url(alertmanager_url or incident.external_url)
    inc_url = _public_url(incident_url)
    firing = sorted((a for a in incident.alerts.values() if a.status == "firing"), key=_alert_order)
    resolved = sorted(
        (a for a in incident.alerts.values() if a.status != "firing"), key=_alert_order
    )
    ranked = firing + resolved
    alertname = _alertname(incident)
    am_link = _alertmanager_link(am_base, incident.receiver)
    links = _links(ranked, am_link, incident, inc_url)

    payload: dict[str, Any] = {
        "summary": _summary(incident, alertname),
        "source": _source(incident, am_base),
        "severity": pagerduty_severity,
        "timestamp": _iso(incident.started_at),
    }
    component = _label(incident, "service") or _label(incident, "component")
    if component:
        payload["component"] = _cap(component)
    if incident.team:
        payload["group"] = _cap(incident.team)
    if alertname:
        payload["class"] = _cap(alertname)
    body: dict[str, Any] = {
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": payload,
        "links": links,
        "client": CLIENT,
    }
    client_url = inc_url or am_link
    if client_url:
        body["client_url"] = client_url

    labels = _cap_labels(incident.labels)
    base_details: dict[str, Any] = {
        "incident_id": incident.id,
        "incident_number": incident.number,
        "war_room": war_room(incident.number),
        "severity": incident.severity,
        "team": incident.team,
        "state": incident.state,
        "started_at": _iso(incident.started_at),
        "triggered_at": _iso(incident.triggered_at),
        "alert_counts": {
            "firing": len(firing),
            "resolved": len(resolved),
            "total": len(ranked),
        },
    }
    if inc_url:
        base_details["incident_url"] = inc_url
    # Alert details are built lazily, in order: a group of thousands of alerts only
    # pays for the ones that fit.
    details: list[dict[str, Any]] = []
    sizes: list[int] = []

    def detail(index: int) -> int:
        """Build the details of ``ranked[index]`` if needed; return their encoded size."""
        while len(details) <= index:
            details.append(_alert_details(ranked[len(details)]))
            sizes.append(len(orjson.dumps(details[-1])))
        return sizes[index]

    def with_alerts(kept: int, *, keep_labels: bool = True) -> dict[str, Any]:
        custom = dict(base_details)
        custom["labels"] = labels if keep_labels else {}
        custom["firing"] = details[: min(kept, len(firing))]
        custom["resolved"] = details[len(firing) : kept]
        if kept < len(ranked):
            custom["alerts_omitted"] = len(ranked) - kept
        if not keep_labels:
            custom["labels_omitted"] = len(labels)
        payload["custom_details"] = custom
        return body

    def most_alerts(*, keep_labels: bool) -> int | None:
        """The largest number of alert details that fits; None when not even zero does."""
        used = _size(with_alerts(0, keep_labels=keep_labels))
        if used > _BUDGET:
            return None
        # Each alert adds its details and a comma; the "alerts_omitted" count only
        # shrinks as alerts are added, so ``used`` never underestimates the size.
        kept = 0
        while kept < len(ranked) and used + detail(kept) + 1 <= _BUDGET:
            used += sizes[kept] + 1
            kept += 1
        while kept > 0 and not _fits(with_alerts(kept, keep_labels=keep_labels)):
            kept -= 1  # not expected (see above); keeps the limit a guarantee
        return kept

    kept = most_alerts(keep_labels=True)
    if kept is not None:
        return with_alerts(kept)
    # Not even the incident's own labels fit (thousands of group labels): drop them
    # too. Every other field is capped, so what remains is far below the limit.
    return with_alerts(most_alerts(keep_labels=False) or 0, keep_labels=False)


def build_acknowledge(dedup_key: str) -> dict[str, Any]:
    """An acknowledge event for the alert with this dedup key (without ``routing_key``)."""
    _check_dedup_key(dedup_key)
    return {"event_action": "acknowledge", "dedup_key": dedup_key}


def build_resolve(dedup_key: str) -> dict[str, Any]:
    """A resolve event for the alert with this dedup key (without ``routing_key``)."""
    _check_dedup_key(dedup_key)
    return {"event_action": "resolve", "dedup_key": dedup_key}


def _check_dedup_key(dedup_key: str) -> None:
    if not dedup_key:
        raise ValueError("dedup key is empty")
    if len(dedup_key) > MAX_DEDUP_KEY_CHARS:
        raise ValueError(f"dedup key is longer than {MAX_DEDUP_KEY_CHARS} characters")


_BUDGET = MAX_EVENT_BYTES - ROUTING_KEY_RESERVE


def _size(body: Mapping[str, Any]) -> int:
    return len(encode_event(body))


def _fits(body: Mapping[str, Any]) -> bool:
    return _size(body) <= _BUDGET


def _cap(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def _cap_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {_cap(name): _cap(value) for name, value in sorted(labels.items())}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _alert_order(alert: AlertState) -> tuple[float, str]:
    return (alert.starts_at, alert.fingerprint)


def _common(alerts: Iterable[AlertState], name: str) -> str | None:
    values = {a.labels.get(name) for a in alerts}
    if len(values) == 1:
        return values.pop()
    return None


def _label(incident: Incident, name: str) -> str | None:
    return incident.labels.get(name) or _common(incident.alerts.values(), name)


def _alertname(incident: Incident) -> str:
    name = _label(incident, "alertname")
    if name:
        return name
    for alert in sorted(incident.alerts.values(), key=_alert_order):
        if alert.labels.get("alertname"):
            return alert.labels["alertname"]
    return ""


def _summary(incident: Incident, alertname: str) -> str:
    title = incident.title.strip() or alertname or f"incident {incident.id}"
    # The plan's number first, as responders name the incident (and its war room).
    number = f"#{incident.number} " if incident.number else ""
    return _cap(f"[{incident.severity}] {number}{title}", MAX_SUMMARY_CHARS)


def _source(incident: Incident, am_base: str | None) -> str:
    """Where the alert comes from: Alertmanager's host, else the receiver, never empty."""
    host = urlsplit(am_base).netloc if am_base else ""
    return _cap(host or incident.receiver.strip() or CLIENT)


def _public_url(url: str | None) -> str | None:
    """The http(s) URL without user information (never send credentials), or None."""
    if not url or len(url) > MAX_URL_CHARS:
        return None
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return None
    netloc = parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("http", "https") or not netloc:
        return None
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _alertmanager_link(am_base: str | None, receiver: str) -> str | None:
    """Alertmanager's own link for a notification: its alerts view filtered on the receiver.

    As ``__alertmanagerURL`` in Alertmanager's default.tmpl.
    """
    if not am_base:
        return None
    href = am_base.rstrip("/") + "/"
    if receiver:
        href += f"#/alerts?receiver={quote_plus(receiver)}"
    return href


def _links(
    ranked: list[AlertState], am_link: str | None, incident: Incident, inc_url: str | None
) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(href: str, text: str) -> None:
        if href not in seen:
            seen.add(href)
            links.append({"href": href, "text": _cap(text)})

    checked: set[str] = set()
    for alert in ranked:
        if len(links) >= MAX_GENERATOR_LINKS:
            break
        # Alerts of one rule share their generator URL: parse each URL once.
        if alert.generator_url in checked:
            continue
        checked.add(alert.generator_url)
        href = _public_url(alert.generator_url)
        if href:
            add(href, f"Source of {alert.labels.get('alertname') or alert.fingerprint}")
    if inc_url:
        add(inc_url, f"Incident {incident.id} in {CLIENT}")
    if am_link:
        add(am_link, "Alertmanager")
    return links


def _alert_details(alert: AlertState) -> dict[str, Any]:
    return {
        "fingerprint": alert.fingerprint,
        "status": alert.status,
        "severity": alert.severity,
        "starts_at": _iso(alert.starts_at),
        "ends_at": _iso(alert.ends_at) if alert.ends_at is not None else None,
        "labels": _cap_labels(alert.labels),
        "generator_url": _cap(alert.generator_url, MAX_URL_CHARS),
    }
