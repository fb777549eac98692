"""Request bodies for the benchmark: Alertmanager webhook v4 notifications and API v2 alert lists.

Every body is a template with ``@@KEY@@`` where the group goes and ``@@VAL@@`` in
one annotation of its first alert; the wrk script fills both per request, so one
template serves the three mixes: a changed annotation value in an open group (what
Alertmanager mostly sends: a resend with refreshed annotations), byte-identical
repeats (HA duplicates), and a new group every request (a new incident).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

KEY = "@@KEY@@"
VALUE = "@@VAL@@"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
# Alerts start this long before the body is built: well within every detect
# SLA (an old startsAt would breach "detect" on every incident opened).
STARTED_AGO = 60.0


def rfc3339(epoch: float) -> str:
    """RFC 3339 with a ``Z``, as Alertmanager writes times."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def alert_labels(i: int, group: str = KEY) -> dict[str, str]:
    """Labels of alert ``i`` of a group: they walk most of the preset's rules (P2, team api)."""
    return {
        "alertname": "HighErrorRate",
        "service": "consumption-service",
        "environment": "production",
        "severity": "warning",
        "instance": f"consumption-{i}.marketplace.svc:8080",
        "bench_group": group,
    }


def alert_annotations(i: int) -> dict[str, str]:
    """Annotations of alert ``i`` (the numeric one is below the P1 error-rate threshold).

    The first alert's ``value`` is the placeholder the "changed" mix varies, as a
    ``{{ $value }}`` annotation changes between resends; the other mixes fill it with 0.
    """
    annotations = {
        "summary": f"Error rate above 5% on consumption-{i}",
        "error_rate_percent": "12",
    }
    if i == 0:
        annotations["value"] = VALUE
    return annotations


def recent() -> float:
    """A start time a minute ago, whole seconds (one per body, so repeats stay identical)."""
    return float(int(time.time() - STARTED_AGO))


def webhook_alert(i: int, *, starts: float | None = None, group: str = KEY) -> dict[str, Any]:
    """One firing alert of a webhook notification."""
    starts = recent() if starts is None else starts
    return {
        "status": "firing",
        "labels": alert_labels(i, group),
        "annotations": alert_annotations(i),
        "startsAt": rfc3339(starts),
        "endsAt": GO_ZERO_TIME,
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=job%3Aerrors%3Arate5m",
        "fingerprint": f"{i + 1:016x}",
    }


def notification(
    alerts: int,
    *,
    group: str = KEY,
    starts: float | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A firing webhook v4 notification of ``alerts`` alerts in group ``group``."""
    starts = recent() if starts is None else starts
    items = [webhook_alert(i, starts=starts, group=group) for i in range(alerts)]
    if labels:
        for a in items:
            a["labels"].update(labels)
    common = {k: v for k, v in items[0]["labels"].items() if k != "instance"}
    if alerts == 1:
        common = dict(items[0]["labels"])
    return {
        "version": "4",
        "groupKey": f'{{}}:{{bench_group="{group}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "incident-sla-sidecar",
        "groupLabels": {"bench_group": group},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": items,
    }


def api_alerts(
    alerts: int, *, group: str = KEY, starts: float | None = None
) -> list[dict[str, Any]]:
    """The same alerts in Alertmanager API v2's ``postableAlerts`` shape."""
    starts = recent() if starts is None else starts
    return [
        {
            "labels": alert_labels(i, group),
            "annotations": alert_annotations(i),
            "startsAt": rfc3339(starts),
            "endsAt": GO_ZERO_TIME,
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=job%3Aerrors%3Arate5m",
        }
        for i in range(alerts)
    ]


def render(template: Any, key: str, value: str = "0") -> bytes:
    """A template with its group and value filled in (what the wrk script sends)."""
    raw = orjson.dumps(template).replace(KEY.encode(), key.encode())
    return raw.replace(VALUE.encode(), value.encode())
