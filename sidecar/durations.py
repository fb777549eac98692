"""Reusable annotated types for configuration: durations (``15m``) and byte sizes (``16MiB``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

# Prometheus' duration syntax: units from largest to smallest, each at most once.
_DURATION_RE = re.compile(
    r"^(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?"
    r"(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?$"
)
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

_SIZE_RE = re.compile(r"^(?P<n>\d+)\s*(?P<unit>B|KB|KiB|MB|MiB|GB|GiB)?$")
_SIZE_FACTOR = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(value: Any) -> timedelta:
    """Parse ``1h30m``, ``15m``, ``90s``, ``1w`` (or a number of seconds) into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15m, 1h or 1d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("duration must not be negative")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 15m, 1h or 1d")
    text = value.strip()
    match = _DURATION_RE.match(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise ValueError(
            f"invalid duration {value!r}: use units w, d, h, m, s, ms, as in 15m or 1h30m"
        )
    seconds = sum(int(v) * _UNIT_SECONDS[k] for k, v in match.groupdict().items() if v)
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a timedelta in the same syntax :func:`parse_duration` accepts."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        size = round(_UNIT_SECONDS[unit] * 1000)
        n, total_ms = divmod(total_ms, size)
        if n:
            parts.append(f"{n}{unit}")
    if total_ms:
        parts.append(f"{total_ms}ms")
    return "".join(parts)


def parse_size(value: Any) -> int:
    """Parse ``16MiB``, ``512KB`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16MiB")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("size must be positive")
        return value
    if not isinstance(value, str) or (match := _SIZE_RE.match(value.strip())) is None:
        raise ValueError(f"invalid size {value!r}: use B, KB, KiB, MB, MiB, GB or GiB, as in 16MiB")
    size = int(match["n"]) * _SIZE_FACTOR[match["unit"]]
    if size <= 0:
        raise ValueError("size must be positive")
    return size


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
"""A duration in Prometheus syntax (``15m``, ``1h30m``, ``1w``)."""

ByteSize = Annotated[int, BeforeValidator(parse_size)]
"""A size in bytes, written as ``16MiB`` or a plain integer."""
