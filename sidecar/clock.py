"""Injected clocks: the system clock for the service, a settable one for tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Tells the time as UTC epoch seconds."""

    def now(self) -> float:
        """Current time, seconds since the epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        """Current wall-clock time."""
        return time.time()


class FakeClock:
    """A clock that moves only when told to; SLA tests move time, they do not sleep."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        """The time the test last set."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += seconds

    def set(self, when: float) -> None:
        """Jump to an absolute time."""
        self._now = when


def to_datetime(epoch: float | None) -> datetime | None:
    """Epoch seconds to an aware UTC datetime (None stays None)."""
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def isoformat(epoch: float | None) -> str | None:
    """Epoch seconds to RFC 3339 with a ``Z`` suffix, as Alertmanager writes times."""
    dt = to_datetime(epoch)
    return None if dt is None else dt.isoformat().replace("+00:00", "Z")
