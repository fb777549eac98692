"""The codec: an incident written as its row and read back is the same incident, every field."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from sidecar.incidents import AlertState, Incident
from sidecar.incidents.model import decode_alerts
from sidecar.store.codec import incident_from_row, incident_row
from sidecar.store.rows import IncidentRow

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


def _old_format_data(inc: Incident) -> dict[str, Any]:
    """The data document as versions before the slim one wrote it: these keys first, in
    this order, nulls and empties too, then the ones written only once set."""
    data: dict[str, Any] = {
        name: (dict(v) if isinstance(v := getattr(inc, name), Mapping) else v)
        for name in (
            "group_key",
            "receiver",
            "title",
            "labels",
            "external_url",
            "acknowledged_by",
            "acknowledge_source",
            "resolved_by",
            "resolve_source",
            "last_update_at",
            "seq",
            "paged_dedup_key",
            "breaches",
            "update_breached_gap",
            "escalated",
            "review_done_by",
        )
    }
    return {**data, **inc.data_json()}


def _fresh() -> Incident:
    """An incident as it opens: nothing acknowledged, breached, escalated or updated."""
    return Incident(
        "inc-3",
        "key-3",
        "group-3",
        "receiver-3",
        "triggered",
        "P2",
        "payments",
        "title-3",
        {"alertname": "Err", "service": "api"},
        "http://am.example:9093",
        T0,
        T0 + 1,
        seq=1,
        status="Investigating",
        status_at=T0 + 1,
        annotations={"summary": "it broke"},
        alerts={},
    )


def test_only_the_fields_that_are_set_are_written() -> None:
    data = orjson.loads(incident_row(_fresh(), T0).data)
    assert set(data) == {
        "group_key",
        "receiver",
        "title",
        "labels",
        "external_url",
        "seq",
        "status",
        "status_at",
        "annotations",
    }


@pytest.mark.parametrize("fields", [{}, EVERY_FIELD])
def test_a_row_in_the_old_format_with_every_key_reads_as_the_same_incident(
    fields: dict[str, Any],
) -> None:
    original = Incident(**fields) if fields else _fresh()
    row = incident_row(original, T0 + 20)
    old = row._replace(data=orjson.dumps(_old_format_data(original)))
    if not fields:
        assert len(old.data) > len(row.data)
    restored = incident_from_row(old)
    assert restored.data_doc is None  # names the scheduler's fields: decoded at once
    assert restored == original
    for field in dataclasses.fields(Incident):
        if field.compare:
            assert getattr(restored, field.name) == getattr(original, field.name), field.name


def test_a_fresh_incident_keeps_its_cold_fields_undecoded_until_one_is_read() -> None:
    original = _fresh()
    restored = incident_from_row(incident_row(original, T0))
    assert restored.data_doc is not None
    # What restoring and the scheduler read is there without decoding.
    assert (restored.breaches, restored.escalated, restored.last_update_at) == ({}, {}, None)
    assert restored.update_breached_gap is None and restored.reopened_at is None
    assert restored.data_doc is not None
    assert restored.labels == {"alertname": "Err", "service": "api"}
    assert restored.data_doc is None
    assert restored == original
    assert restored.status_at is restored.triggered_at  # one float held, as before


def test_a_cold_field_set_before_the_first_read_is_kept() -> None:
    restored = incident_from_row(incident_row(_fresh(), T0))
    restored.acknowledged_by = "alice"
    restored.seq = 5
    assert restored.data_doc is not None
    assert restored.title == "title-3"  # decodes the rest, around what was set
    assert (restored.acknowledged_by, restored.seq) == ("alice", 5)
    assert restored.labels == {"alertname": "Err", "service": "api"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("breaches", {"acknowledge": T0 + 6}),
        ("escalated", {"lead": T0 + 9}),
        ("last_update_at", T0 + 5),
        ("update_breached_gap", T0 + 7),
        ("update_reminded_gap", T0 + 8),
        ("reopened_at", T0 + 15),
    ],
)
def test_a_document_naming_a_field_restoring_reads_is_decoded_at_once(
    name: str, value: Any
) -> None:
    original = _fresh()
    setattr(original, name, value)
    restored = incident_from_row(incident_row(original, T0))
    assert restored.data_doc is None
    assert getattr(restored, name) == value
    assert restored == original


def test_names_of_those_fields_elsewhere_in_the_document_change_nothing() -> None:
    original = _fresh()
    original.labels = {"breaches": "escalated", "seq": '{"seq":'}
    original.title = '{"seq":1,"breaches":{}}'
    restored = incident_from_row(incident_row(original, T0))
    assert restored.data_doc is not None
    assert (restored.breaches, restored.escalated) == ({}, {})
    assert restored == original


def test_a_copy_of_a_shelved_incident_has_every_field() -> None:
    original = _fresh()
    restored = incident_from_row(incident_row(original, T0))
    assert copy.copy(restored) == original


def test_a_row_the_previous_version_wrote_reads_as_it_did() -> None:
    # Copied from a store the previous version seeded: every key, nulls and empties too.
    data = (
        b'{"group_key":"{}:{bench_group=\\"seed-0\\"}","receiver":"incident-sla-sidecar",'
        b'"title":"HighErrorRate: Error rate above 5% on consumption-0","labels":{"bench_group":'
        b'"seed-0"},"external_url":"http://alertmanager.example:9093","acknowledged_by":null,'
        b'"acknowledge_source":null,"resolved_by":null,"resolve_source":null,"last_update_at":'
        b'null,"seq":1,"paged_dedup_key":null,"breaches":{},"update_breached_gap":null,'
        b'"escalated":{},"review_done_by":null,"status":"Investigating","status_at":'
        b'1796036913.3092325,"annotations":{"summary":"Error rate above 5% on consumption-0"}}'
    )
    key = '{}:{bench_group="seed-0"}'
    t = 1796036913.3092325
    row = IncidentRow(
        "01a22c24689dc35103bc", key, "triggered", "P2", "publishing", t - 60, t,
        None, None, None, None, None, t, data, b"[]",
    )  # fmt: skip
    restored = incident_from_row(row)
    assert restored.data_doc is None
    expected = Incident(
        "01a22c24689dc35103bc", key, key, "incident-sla-sidecar", "triggered", "P2",
        "publishing", "HighErrorRate: Error rate above 5% on consumption-0",
        {"bench_group": "seed-0"}, "http://alertmanager.example:9093", t - 60, t, seq=1,
        status="Investigating", status_at=t,
        annotations={"summary": "Error rate above 5% on consumption-0"},
    )  # fmt: skip
    assert restored == expected
    # Written again, it is the slim document, and reads back the same without decoding.
    again = incident_from_row(incident_row(restored, t))
    assert again.data_doc is not None
    assert again == expected


def test_the_alerts_document_is_each_alert_state_as_json_in_order() -> None:
    # Rows written before the alerts were encoded as structs hold the same
    # document: one JSON object per alert, AlertState.to_json's keys in order.
    inc = Incident(**EVERY_FIELD)
    inc.alerts = {
        "f1": AlertState("f1", "firing", T0, None, "P1", {"alertname": "Err"}, "http://prom/g"),
        "f2": AlertState("f2", "resolved", T0 + 0.25, T0 + 60.5, "P3", {}, ""),
    }
    expected = orjson.dumps([a.to_json() for a in inc.alerts.values()])
    assert inc.alerts_json() == expected
    assert decode_alerts(inc.alerts_json()) == inc.alerts
