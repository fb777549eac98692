"""An incident rebuilt from its stored columns and data document, its cold fields on first read.

A restart rebuilds every open incident, and most are never read again before
their next change: what the book indexes and the scheduler reads of them
(their columns, and the few *hot* fields of the data document below) is all a
restart needs. The rest of the document (title, labels, annotations, who did
what...) is kept as its stored bytes and decoded when one of those fields is
first read (``Incident.__getattr__``), as the alerts are.

The writer leaves a field out of the document while it holds its default, and
writes the hot ones first (``Incident.data_json``): a document that starts with
another field holds their defaults, and the incident is built without decoding
it. A document that starts with one (or is of an earlier version, which wrote
every field) is decoded at once, as before. Either way the incident read is the
one written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from sys import intern
from types import MappingProxyType, MemberDescriptorType
from typing import Any, TypeVar

import orjson

from sidecar.incidents.alerts import decoded_alerts, interned, shared

# The incident class (``sidecar.incidents.model.Incident``, which imports this module).
T = TypeVar("T")

NOTHING: Mapping[str, float] = MappingProxyType({})
# Escalation tier -> outcome (typed in ``model``, whose field defaults to it).
NO_OUTCOMES: Mapping[str, Any] = MappingProxyType({})
NO_ANNOTATIONS: Mapping[str, str] = MappingProxyType({})

# The data document's fields that restoring reads for every open incident (the
# scheduler's clocks, the book's breached index) are written first, and only
# once set, then ``seq``, always written: a document that starts with ``seq``
# names none of them. Documents of earlier versions start with ``group_key``,
# and those before the alerts column also hold the alerts: decoded at once.
_LAZY = b'{"seq":'
# The other fields of the data document, set by ``_fill_cold``.
COLD = (
    "group_key",
    "receiver",
    "title",
    "labels",
    "external_url",
    "acknowledged_by",
    "acknowledge_source",
    "resolved_by",
    "resolve_source",
    "seq",
    "paged_dedup_key",
    "escalation_outcomes",
    "review_done_by",
    "status",
    "status_at",
    "roles",
    "severity_set_by",
    "annotations",
    "watch_until",
    "closed_at",
    "reopens",
    "reacknowledged_at",
)


def restore(
    cls: type[T],
    id_: str,
    key: str,
    state: str,
    severity: str,
    team: str,
    started_at: float,
    triggered_at: float,
    acknowledged_at: float | None,
    resolved_at: float | None,
    review_due_at: float | None,
    review_done_at: float | None,
    number: str | None,
    doc: bytes | Mapping[str, Any],
    alerts_doc: bytes | None,
) -> T:
    """The incident of these columns and data document (bytes, or decoded: then taken over).

    ``alerts_doc`` is decoded when the alerts are first read; so is ``doc``'s
    cold part when it names no hot field.
    """
    # Every slot set here, one by one: no __init__ of 45 arguments, and the
    # cold ones left unset when their document is kept.
    inc: Any = object.__new__(cls)
    inc.id = id_
    inc.key = key
    inc.state = intern(state)
    inc.severity = intern(severity)
    inc.team = intern(team)
    inc.started_at = started_at
    inc.triggered_at = triggered_at
    inc.acknowledged_at = acknowledged_at
    inc.resolved_at = resolved_at
    inc.review_due_at = review_due_at
    inc.review_done_at = review_done_at
    inc.number = number
    inc.alerts_doc = None
    legacy = None
    if isinstance(doc, bytes) and doc.startswith(_LAZY):
        inc.last_update_at = None
        inc.breaches = NOTHING
        inc.update_breached_gap = None
        inc.update_reminded_gap = None
        inc.escalated = NOTHING
        inc.reopened_at = None
        inc.data_doc = doc
    else:
        data = doc if isinstance(doc, Mapping) else orjson.loads(doc)
        get = data.get
        inc.last_update_at = get("last_update_at")
        inc.breaches = get("breaches") or NOTHING
        inc.update_breached_gap = get("update_breached_gap")
        inc.update_reminded_gap = get("update_reminded_gap")
        inc.escalated = get("escalated") or NOTHING
        inc.reopened_at = get("reopened_at")
        inc.data_doc = None
        _fill_cold(inc, get)
        legacy = get("alerts")
    if legacy is not None:
        inc.alerts = decoded_alerts(legacy)
    elif alerts_doc is None:
        inc.alerts = {}
    else:
        inc.alerts_doc = alerts_doc  # ``alerts`` unset: decoded on first read
    result: T = inc
    return result


def unshelve(inc: Any, doc: bytes) -> None:
    """Decode the kept document into the cold fields not set since (one was first read)."""
    inc.data_doc = None
    slots = vars(type(inc))
    kept: dict[str, Any] = {}
    for name in COLD:
        slot: MemberDescriptorType = slots[name]
        try:
            kept[name] = slot.__get__(inc, type(inc))
        except AttributeError:
            continue
    _fill_cold(inc, orjson.loads(doc).get)
    for name, value in kept.items():
        setattr(inc, name, value)


def _fill_cold(inc: Any, get: Callable[..., Any]) -> None:
    """Set the cold fields from the decoded document's ``get``, as they were written."""
    key = inc.key
    group_key = get("group_key", "")
    # In group mode the two are equal: hold one string, not two.
    inc.group_key = key if group_key == key else group_key
    inc.receiver = intern(get("receiver", ""))
    inc.title = intern(get("title", ""))
    inc.labels = interned(get("labels") or {})
    inc.external_url = intern(get("external_url", ""))
    inc.acknowledged_by = get("acknowledged_by")
    inc.acknowledge_source = get("acknowledge_source")
    inc.resolved_by = get("resolved_by")
    inc.resolve_source = get("resolve_source")
    inc.seq = get("seq", 0)
    inc.paged_dedup_key = get("paged_dedup_key")
    inc.escalation_outcomes = _outcomes(get("escalation_outcomes"))
    inc.review_done_by = get("review_done_by")
    # A handful of values shared by every restored incident: one string each.
    inc.status = intern(status) if (status := get("status")) else None
    # Set when the incident opened, mostly: then one float for both.
    status_at = get("status_at")
    inc.status_at = inc.triggered_at if status_at == inc.triggered_at else status_at
    inc.roles = get("roles") or NOTHING
    inc.severity_set_by = get("severity_set_by")
    annotations = get("annotations")
    inc.annotations = shared(annotations) if annotations else NO_ANNOTATIONS
    inc.watch_until = get("watch_until")
    inc.closed_at = get("closed_at")
    inc.reopens = get("reopens", 0)
    inc.reacknowledged_at = get("reacknowledged_at")


def _outcomes(stored: Mapping[str, str] | None) -> Mapping[str, str]:
    if not stored:
        return NO_OUTCOMES
    return {tier: intern(o) for tier, o in stored.items()}
