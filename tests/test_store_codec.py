"""The codec: an incident written as its row and read back is the same incident, every field."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from sidecar.incidents import AlertState, Incident
from sidecar.store.codec import incident_from_row, incident_row

T0 = 1_700_000_000.0

# A distinct value for every field of an incident, so that a field read back into
# another one's place (the decoder builds incidents positionally) cannot go unnoticed.
EVERY_FIELD: dict[str, Any] = {
    "id": "inc-1",
    "key": "key-1",
    "group_key": "group-1",
    "receiver": "receiver-1",
    "state": "acknowledged",
    "severity": "P1",
    "team": "payments",
    "title": "title-1",
    "labels": {"alertname": "Err", "service": "api"},
    "external_url": "http://am.example:9093",
    "started_at": T0 + 1,
    "triggered_at": T0 + 2,
    "acknowledged_at": T0 + 3,
    "acknowledged_by": "alice",
    "acknowledge_source": "api",
    "resolved_at": T0 + 4,
    "resolved_by": "bob",
    "resolve_source": "web",
    "last_update_at": T0 + 5,
    "alerts": {
        "f1": AlertState("f1", "firing", T0, None, "P1", {"alertname": "Err"}, "http://prom/g")
    },
    "seq": 7,
    "paged_dedup_key": "dedup-1",
    "breaches": {"acknowledge": T0 + 6},
    "update_breached_gap": T0 + 7,
    "update_reminded_gap": T0 + 8,
    "escalated": {"lead": T0 + 9},
    "escalation_outcomes": {"lead": "paged"},
    "review_due_at": T0 + 10,
    "review_done_at": T0 + 11,
    "review_done_by": "carol",
    "number": "2026-11-30-001",
    "status": "Identified",
    "status_at": T0 + 12,
    "roles": {"incident_commander": "dave", "smes": ["erin"]},
    "severity_set_by": "frank",
    "annotations": {"summary": "it broke"},
    "watch_until": T0 + 13,
    "closed_at": T0 + 14,
    "reopened_at": T0 + 15,
    "reopens": 2,
    "reacknowledged_at": T0 + 16,
}


def test_every_field_of_an_incident_is_given_a_value_here() -> None:
    stored = {f.name for f in dataclasses.fields(Incident)} - {"alerts_doc", "data_doc"}
    assert stored == set(EVERY_FIELD)
    # Distinct values, so that two fields swapped on the way back would differ.
    values = [
        orjson.dumps(v, option=orjson.OPT_SORT_KEYS, default=AlertState.to_json)
        for v in EVERY_FIELD.values()
    ]
    assert len(set(values)) == len(values)


def test_an_incident_with_every_field_set_round_trips() -> None:
    original = Incident(**EVERY_FIELD)
    restored = incident_from_row(incident_row(original, T0 + 20))
    assert restored.alerts_doc is not None  # shelved until first read
    for name, value in EVERY_FIELD.items():
        assert getattr(restored, name) == value, name
    assert restored == original


def test_a_round_trip_of_defaults_keeps_them() -> None:
    original = Incident(
        "inc-2", "k", "k", "r", "triggered", "P3", "t", "x", {}, "", T0, T0, alerts={}
    )
    restored = incident_from_row(incident_row(original, T0))
    assert restored == original
    assert restored.group_key is restored.key  # one string held in group mode
    # A restored incident's alerts are its own: changing one leaves the others be.
    other = incident_from_row(incident_row(original, T0))
    restored.alerts["f"] = EVERY_FIELD["alerts"]["f1"]
    assert other.alerts == {}
