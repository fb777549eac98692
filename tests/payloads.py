"""Builders of Alertmanager webhook v4 payloads, shaped as ``notify/webhook/webhook.go`` does."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def ts(epoch: float) -> str:
    """RFC 3339 as Alertmanager writes it."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def alert(
    name: str = "DBDown",
    *,
    fingerprint: str = "0123456789abcdef",
    status: str = "firing",
    starts: float = 1_700_000_000.0,
    ends: float | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One alert of a notification."""
    return {
        "status": status,
        "labels": {"alertname": name, **(labels or {})},
        "annotations": annotations or {"summary": f"{name} is happening"},
        "startsAt": ts(starts),
        "endsAt": ts(ends) if ends is not None else GO_ZERO_TIME,
        "generatorURL": f"http://prometheus.example:9090/graph?g0.expr={name}",
        "fingerprint": fingerprint,
    }


def notification(
    *alerts: dict[str, Any],
    group_key: str = '{}:{alertname="DBDown"}',
    status: str | None = None,
    truncated: int = 0,
    receiver: str = "sidecar",
) -> dict[str, Any]:
    """A webhook body; ``status`` defaults to firing if any alert fires."""
    if status is None:
        status = "firing" if any(a.get("status") == "firing" for a in alerts) else "resolved"
    common = dict(alerts[0]["labels"]) if alerts else {}
    for a in alerts[1:]:
        common = {k: v for k, v in common.items() if a["labels"].get(k) == v}
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": truncated,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": common.get("alertname", "")} if "alertname" in common else {},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }


def body(payload: dict[str, Any]) -> bytes:
    """Serialise a payload."""
    return json.dumps(payload).encode()
