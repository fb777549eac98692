"""Durations (``15m``, ``1h30m``) and byte sizes (``16MiB``): parsing and formatting."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sidecar.durations import ByteSize, Duration, format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", timedelta(minutes=15)),
        ("90s", timedelta(seconds=90)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        (
            "1w2d3h4m5s6ms",
            timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5, milliseconds=6),
        ),
        ("250ms", timedelta(milliseconds=250)),
        ("0s", timedelta(0)),
        ("90m", timedelta(minutes=90)),  # a unit may exceed the next one, as in Prometheus
        ("  15m  ", timedelta(minutes=15)),  # YAML block scalars can carry spaces
        (90, timedelta(seconds=90)),  # a bare number is seconds
        (1.5, timedelta(seconds=1.5)),
        (0, timedelta(0)),
        (timedelta(minutes=5), timedelta(minutes=5)),
    ],
)
def test_parse_duration_accepts(text: Any, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "15",  # a string needs a unit
        "15 m",
        "1h 30m",
        "15min",
        "15M",
        "1.5h",  # Prometheus durations are integers per unit
        "-5m",
        "30m1h",  # units largest first
        "1h1h",  # each unit at most once
        "m",
        "1y",
        "P1D",  # ISO 8601 is not the syntax here
        -1,
        -0.5,
        True,
        None,
        [],
        {"minutes": 5},
    ],
)
def test_parse_duration_refuses(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(bad)


def test_parse_duration_error_names_the_value_and_the_units() -> None:
    with pytest.raises(ValueError) as err:
        parse_duration("15min")
    message = str(err.value)
    assert "'15min'" in message
    assert "15m" in message  # an example of the right syntax


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=1), "1s"),
        (timedelta(minutes=15), "15m"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(hours=24), "1d"),
        (timedelta(days=3), "3d"),
        (timedelta(days=7), "1w"),
        (timedelta(days=8, hours=1), "1w1d1h"),
        (timedelta(milliseconds=1500), "1s500ms"),
        (timedelta(milliseconds=5), "5ms"),
        (timedelta(weeks=2, seconds=1), "2w1s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


@given(st.integers(min_value=0, max_value=10**12))
def test_format_then_parse_is_the_identity_to_the_millisecond(ms: int) -> None:
    value = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16MiB", 16 * 1024 * 1024),
        ("512KB", 512_000),
        ("512KiB", 512 * 1024),
        ("1MB", 1_000_000),
        ("2GB", 2_000_000_000),
        ("1GiB", 1024**3),
        ("100B", 100),
        ("100", 100),
        ("10 MiB", 10 * 1024 * 1024),
        (" 1KiB ", 1024),
        (4096, 4096),
    ],
)
def test_parse_size_accepts(text: Any, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "MiB",
        "0",
        "0B",
        "0MiB",
        "-1",
        "1.5MiB",
        "16 Mebibytes",
        "16TB",
        "16XiB",
        0,
        -5,
        True,
        1.5,
        None,
    ],
)
def test_parse_size_refuses(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"size"):
        parse_size(bad)


class _Model(BaseModel):
    window: Duration
    limit: ByteSize


def test_annotated_types_validate_and_serialise_in_a_model() -> None:
    model = _Model.model_validate({"window": "1h30m", "limit": "1MiB"})
    assert model.window == timedelta(minutes=90)
    assert model.limit == 1024 * 1024
    # The duration serialises back to the syntax a user writes in YAML.
    assert model.model_dump(mode="json") == {"window": "1h30m", "limit": 1024 * 1024}


def test_annotated_types_report_readable_errors_in_a_model() -> None:
    with pytest.raises(ValidationError) as err:
        _Model.model_validate({"window": "soon", "limit": "lots"})
    by_field = {e["loc"][0]: e["msg"] for e in err.value.errors()}
    assert "invalid duration 'soon'" in by_field["window"]
    assert "invalid size 'lots'" in by_field["limit"]
