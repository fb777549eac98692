"""The Alertmanager webhook v4 model, against payloads shaped as Alertmanager marshals them.

Field names follow ``notify/webhook/webhook.go`` (``Message``: the embedded
``template.Data`` plus ``version``, ``groupKey``, ``truncatedAlerts``) and
``template/template.go`` (``Data`` and ``Alert``). Go marshals ``time.Time`` as
RFC 3339 with nanoseconds and the zero time as ``0001-01-01T00:00:00Z``; it
initialises every label and annotation map, so they are ``{}``, never ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from sidecar.alertmanager import (
    Alert,
    InvalidPayload,
    notification_from,
    parse_notification,
)

# A notification as Alertmanager 0.25+ posts it for a group of two alerts, one
# of them already resolved. Receiver names pass through regexp.QuoteMeta.
REAL = """
{
  "receiver": "incident\\\\.sidecar",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {
        "alertname": "KubePodCrashLooping",
        "container": "api",
        "namespace": "payments",
        "pod": "api-7d9c6b5f4-x2x9z",
        "severity": "critical"
      },
      "annotations": {
        "description": "Pod payments/api-7d9c6b5f4-x2x9z is crash looping.",
        "runbook_url": "https://runbooks.example/KubePodCrashLooping",
        "summary": "Pod is crash looping."
      },
      "startsAt": "2024-03-05T10:15:30.123456789Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus-0:9090/graph?g0.expr=max_over_time%28x%5B5m%5D%29&g0.tab=1",
      "fingerprint": "3f5c1d7e9a0b2c4d"
    },
    {
      "status": "resolved",
      "labels": {
        "alertname": "KubePodCrashLooping",
        "container": "worker",
        "namespace": "payments",
        "pod": "worker-5b7f9c8d6-abcde",
        "severity": "warning"
      },
      "annotations": {},
      "startsAt": "2024-03-05T10:10:00Z",
      "endsAt": "2024-03-05T10:20:00.5Z",
      "generatorURL": "",
      "fingerprint": "00a1b2c3d4e5f607"
    }
  ],
  "groupLabels": {"alertname": "KubePodCrashLooping", "namespace": "payments"},
  "commonLabels": {"alertname": "KubePodCrashLooping", "namespace": "payments"},
  "commonAnnotations": {},
  "externalURL": "http://alertmanager-0.alertmanager:9093",
  "version": "4",
  "groupKey": "{}/{team=\\"pay\\"}:{alertname=\\"KubePodCrashLooping\\", namespace=\\"payments\\"}",
  "truncatedAlerts": 0
}
"""


def real() -> dict[str, Any]:
    """A fresh copy of the real-shaped payload, to modify."""
    data: dict[str, Any] = json.loads(REAL)
    return data


def encode(payload: Any) -> bytes:
    """Serialise a payload as the wire body."""
    return json.dumps(payload).encode()


def test_parses_a_real_shaped_notification() -> None:
    n = parse_notification(REAL.encode())
    assert n.version == "4"
    assert n.group_key == (
        '{}/{team="pay"}:{alertname="KubePodCrashLooping", namespace="payments"}'
    )
    assert n.truncated_alerts == 0
    assert n.status == "firing"
    assert n.receiver == "incident\\.sidecar"
    assert n.group_labels == {"alertname": "KubePodCrashLooping", "namespace": "payments"}
    assert n.common_labels["namespace"] == "payments"
    assert n.common_annotations == {}
    assert n.external_url == "http://alertmanager-0.alertmanager:9093"
    first, second = n.alerts
    assert first.status == "firing"
    assert first.labels["pod"] == "api-7d9c6b5f4-x2x9z"
    assert first.annotations["summary"] == "Pod is crash looping."
    assert first.fingerprint == "3f5c1d7e9a0b2c4d"
    assert first.generator_url.startswith("http://prometheus-0:9090/graph")
    assert first.ends_at is None
    assert second.status == "resolved"
    assert second.annotations == {}
    assert second.generator_url == ""
    assert second.ends_at == datetime(2024, 3, 5, 10, 20, 0, 500000, tzinfo=UTC).timestamp()


def test_nanosecond_timestamps_keep_microseconds() -> None:
    n = parse_notification(REAL.encode())
    assert n.alerts[0].starts_at == datetime(2024, 3, 5, 10, 15, 30, 123456, tzinfo=UTC).timestamp()


def test_optional_fields_default_sensibly() -> None:
    minimal = {
        "version": "4",
        "groupKey": "{}:{}",
        "status": "firing",
        "receiver": "sidecar",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "A"},
                "startsAt": "2024-03-05T10:15:30Z",
                "fingerprint": "0123456789abcdef",
            }
        ],
    }
    n = parse_notification(encode(minimal))
    assert n.truncated_alerts == 0
    assert (n.group_labels, n.common_labels, n.common_annotations, n.external_url) == (
        {},
        {},
        {},
        "",
    )
    a = n.alerts[0]
    assert (a.annotations, a.ends_at, a.generator_url) == ({}, None, "")


def test_unknown_fields_are_accepted_at_every_level() -> None:
    payload = real()
    payload["notification_reason"] = "repeat_interval"
    payload["routeLabels"] = {"team": "payments"}
    payload["alerts"][0]["someFutureField"] = {"nested": [1, 2]}
    n = parse_notification(encode(payload))
    assert len(n.alerts) == 2
    assert n.alerts[0].fingerprint == "3f5c1d7e9a0b2c4d"


def test_truncated_alerts_is_kept() -> None:
    payload = real()
    payload["truncatedAlerts"] = 17
    assert parse_notification(encode(payload)).truncated_alerts == 17


@pytest.mark.parametrize(
    "zero", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000000Z", "0001-01-01T00:00:00+00:00"]
)
def test_go_zero_ends_at_becomes_none(zero: str) -> None:
    payload = real()
    payload["alerts"][1]["endsAt"] = zero
    assert parse_notification(encode(payload)).alerts[1].ends_at is None


def test_null_or_missing_ends_at_is_none() -> None:
    payload = real()
    payload["alerts"][0]["endsAt"] = None
    del payload["alerts"][1]["endsAt"]
    n = parse_notification(encode(payload))
    assert [a.ends_at for a in n.alerts] == [None, None]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-05T10:15:30Z", datetime(2024, 3, 5, 10, 15, 30, tzinfo=UTC)),
        ("2024-03-05T12:15:30+02:00", datetime(2024, 3, 5, 10, 15, 30, tzinfo=UTC)),
        ("2024-03-05T05:15:30-05:00", datetime(2024, 3, 5, 10, 15, 30, tzinfo=UTC)),
        ("2024-03-05t10:15:30z", datetime(2024, 3, 5, 10, 15, 30, tzinfo=UTC)),
        # No zone at all: read as UTC, the zone Alertmanager works in.
        ("2024-03-05T10:15:30", datetime(2024, 3, 5, 10, 15, 30, tzinfo=UTC)),
    ],
)
def test_times_become_the_epoch_of_the_instant_they_name(text: str, expected: datetime) -> None:
    payload = real()
    payload["alerts"][0]["startsAt"] = text
    payload["alerts"][1]["endsAt"] = text
    n = parse_notification(encode(payload))
    assert n.alerts[0].starts_at == n.alerts[1].ends_at == expected.timestamp()


def test_offset_times_convert_to_utc_correctly() -> None:
    payload = real()
    payload["alerts"][0]["startsAt"] = "2024-03-05T12:15:30.25+02:00"
    starts = parse_notification(encode(payload)).alerts[0].starts_at
    assert starts == datetime(2024, 3, 5, 10, 15, 30, 250000, tzinfo=UTC).timestamp()


def test_models_are_frozen() -> None:
    n = parse_notification(REAL.encode())
    with pytest.raises(AttributeError, match="immutable"):
        n.alerts[0].status = "resolved"  # type: ignore[misc]
    assert isinstance(n.alerts[0], Alert)


def _with(path: tuple[Any, ...], value: Any) -> bytes:
    """The real payload with one value replaced (or deleted) at ``path``."""
    payload = real()
    target = payload
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return encode(payload)


_DELETE = object()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[]", "object"),
        (b"null", "object"),
        (b'"4"', "object"),
        (_with(("version",), "3"), "version: unsupported webhook version '3', expected '4'"),
        (_with(("version",), 4), "version: unsupported webhook version 4"),
        (_with(("version",), _DELETE), "version: Field required"),
        (_with(("groupKey",), _DELETE), "groupKey: Field required"),
        (_with(("groupKey",), ""), "groupKey"),
        (
            _with(("status",), "pending"),
            "status: Invalid enum value 'pending', expected 'firing' or 'resolved'",
        ),
        (_with(("receiver",), _DELETE), "receiver: Field required"),
        (_with(("truncatedAlerts",), -1), "truncatedAlerts"),
        (_with(("truncatedAlerts",), "many"), "truncatedAlerts"),
        (_with(("alerts",), []), "alerts"),
        (_with(("alerts",), _DELETE), "alerts: Field required"),
        (_with(("alerts",), {"0": {}}), "alerts"),
        (_with(("groupLabels",), ["alertname"]), "groupLabels"),
        (_with(("commonLabels", "namespace"), 7), "commonLabels.namespace"),
        (_with(("alerts", 0, "status"), "active"), "alerts.0.status"),
        (_with(("alerts", 0, "labels"), _DELETE), "alerts.0.labels: Field required"),
        (_with(("alerts", 0, "labels"), None), "alerts.0.labels"),
        (_with(("alerts", 0, "labels", "severity"), 1), "alerts.0.labels.severity"),
        (_with(("alerts", 1, "annotations"), "text"), "alerts.1.annotations"),
        (_with(("alerts", 0, "startsAt"), _DELETE), "alerts.0.startsAt: Field required"),
        (_with(("alerts", 0, "startsAt"), "yesterday"), "alerts.0.startsAt"),
        (_with(("alerts", 0, "startsAt"), "0001-01-01T00:00:00Z"), "startsAt must be set"),
        (_with(("alerts", 1, "endsAt"), "soon"), "alerts.1.endsAt"),
        (
            _with(("alerts", 1, "endsAt"), "1969-12-31T23:00:00Z"),
            "alerts.1.endsAt: endsAt must be between 1970 and 9999",
        ),
        (
            _with(("alerts", 0, "startsAt"), "1970-01-01T00:30:00+01:00"),
            "alerts.0.startsAt: startsAt must be between 1970 and 9999",
        ),
        (_with(("alerts", 0, "fingerprint"), _DELETE), "alerts.0.fingerprint: Field required"),
        (_with(("alerts", 0, "fingerprint"), "not-hex!"), "alerts.0.fingerprint"),
        (_with(("alerts", 0, "fingerprint"), "0123456789abcdef0"), "alerts.0.fingerprint"),
    ],
)
def test_invalid_shapes_give_readable_reasons(body: bytes, expected: str) -> None:
    with pytest.raises(InvalidPayload) as err:
        parse_notification(body)
    reasons = err.value.reasons
    assert reasons
    assert any(expected in r for r in reasons), reasons
    assert all(isinstance(r, str) and r for r in reasons)
    assert str(err.value) == "; ".join(reasons)


def test_the_first_problem_of_a_payload_is_reported_with_where_it_is() -> None:
    payload = real()
    payload["status"] = "bad"
    payload["alerts"][0]["fingerprint"] = "xyz"
    with pytest.raises(InvalidPayload) as err:
        parse_notification(encode(payload))
    assert len(err.value.reasons) == 1
    assert err.value.reasons[0].startswith(("status: ", "alerts.0.fingerprint: "))


def test_nanoseconds_are_truncated_as_stored_incidents_were() -> None:
    # Rounding them would make every tracked instance look newer after an upgrade.
    payload = real()
    payload["alerts"][0]["startsAt"] = "2024-03-05T10:15:30.999999999Z"
    starts = parse_notification(encode(payload)).alerts[0].starts_at
    assert starts == datetime(2024, 3, 5, 10, 15, 30, 999999, tzinfo=UTC).timestamp()


def test_a_time_seen_before_is_the_same_epoch() -> None:
    first = parse_notification(REAL.encode())
    again = parse_notification(REAL.encode())
    assert [a.starts_at for a in again.alerts] == [a.starts_at for a in first.alerts]
    assert again.alerts[1].ends_at == first.alerts[1].ends_at
    assert again.alerts[0].ends_at is None


def test_a_nul_in_the_group_key_is_refused() -> None:
    payload = real()
    payload["groupKey"] = "a\x00b"
    with pytest.raises(InvalidPayload, match="NUL"):
        parse_notification(encode(payload))


@pytest.mark.parametrize(
    ("path", "read"),
    [
        (("receiver",), lambda n: n.receiver),
        (("externalURL",), lambda n: n.external_url),
        (("groupLabels", "alertname"), lambda n: n.group_labels["alertname"]),
        (("commonLabels", "namespace"), lambda n: n.common_labels["namespace"]),
        (("commonAnnotations", "summary"), lambda n: n.common_annotations["summary"]),
        (("alerts", 0, "labels", "alertname"), lambda n: n.alerts[0].labels["alertname"]),
        (("alerts", 1, "labels", "pod"), lambda n: n.alerts[1].labels["pod"]),
        (("alerts", 0, "annotations", "summary"), lambda n: n.alerts[0].annotations["summary"]),
        (("alerts", 1, "generatorURL"), lambda n: n.alerts[1].generator_url),
    ],
)
def test_a_nul_in_any_text_becomes_a_replacement_character(
    path: tuple[Any, ...], read: Callable[[Any], str]
) -> None:
    # PostgreSQL text cannot hold NUL: the alert is kept, the character shown replaced.
    payload = real()
    node = payload
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = "before\x00after"
    n = parse_notification(encode(payload))
    assert read(n) == "before\ufffdafter"
    # Nothing else changed, and the identities least of all.
    node[path[-1]] = "before\ufffdafter"
    assert n == parse_notification(encode(payload))


def test_a_nul_in_a_label_name_becomes_a_replacement_character() -> None:
    payload = real()
    payload["alerts"][0]["labels"]["odd\x00name"] = "x"
    n = parse_notification(encode(payload))
    assert n.alerts[0].labels["odd\ufffdname"] == "x"
    assert "\x00" not in repr(n)


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul() -> None:
    payload = real()
    payload["alerts"][0]["annotations"]["summary"] = "C:\\u0000"
    n = parse_notification(encode(payload))
    assert n.alerts[0].annotations["summary"] == "C:\\u0000"


def test_a_nul_in_a_fingerprint_is_refused_as_any_other_non_hex_digit() -> None:
    payload = real()
    payload["alerts"][0]["fingerprint"] = "0123\x00"
    with pytest.raises(InvalidPayload, match=r"alerts\.0\.fingerprint: must be hexadecimal"):
        parse_notification(encode(payload))


def test_notification_from_checks_as_a_body_does() -> None:
    payload = real()
    payload["alerts"][0]["startsAt"] = "0001-01-01T00:00:00Z"
    with pytest.raises(InvalidPayload, match="startsAt must be set"):
        notification_from(payload)
    assert notification_from(real()) == parse_notification(REAL.encode())


def test_every_bad_time_is_reported_with_its_alert() -> None:
    payload = real()
    payload["alerts"][0]["startsAt"] = "0001-01-01T00:00:00Z"
    payload["alerts"][1]["endsAt"] = "9999-12-31T23:59:59-23:59"
    with pytest.raises(InvalidPayload) as err:
        parse_notification(encode(payload))
    assert err.value.reasons == [
        "alerts.0.startsAt: startsAt must be set",
        "alerts.1.endsAt: endsAt is out of range",
    ]


def test_reasons_use_the_wire_names_not_python_names() -> None:
    with pytest.raises(InvalidPayload) as err:
        parse_notification(_with(("alerts", 0, "startsAt"), _DELETE))
    assert not any("starts_at" in r for r in err.value.reasons)


def test_invalid_payload_is_a_value_error() -> None:
    assert issubclass(InvalidPayload, ValueError)
