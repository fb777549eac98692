"""The one retry policy: how long to wait before trying a failed delivery again.

Integrations only classify an outcome (retry, rate limited, rejected) and pass
on what the answer advised (``Retry-After``); the waiting is decided here, with
tenacity's waits, so every outbound integration backs off the same way. The
outbox persists the next attempt time, so the policy holds across restarts too.

Two kinds of failure wait differently, because they mean different things:

- a server failure (5xx, timeout, network error) says the receiver is unwell:
  back off exponentially with jitter, up to a cap, counting only such failures;
- a 429 says "not now": wait what the receiver advises (its ``Retry-After``),
  else a fixed pause (PagerDuty suggests 30 s), whatever failed before, so a
  page that met a few 5xx first is not held back minutes by its own history.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Literal

from tenacity import RetryCallState, wait_exponential, wait_fixed, wait_random
from tenacity.wait import wait_base

Failure = Literal["retry", "rate_limited"]

_DELAY_SECONDS = re.compile(r"[0-9]+")
# A 429's pause gets up to this share on top, so that events throttled together
# do not all come back in the same instant.
_RATE_LIMITED_JITTER = 0.1


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for server failures; a fixed pause for 429s."""

    initial: float = 1.0
    maximum: float = 300.0
    rate_limited: float = 30.0

    def delay(self, attempt: int, outcome: Failure, retry_after: float | None = None) -> float:
        """Seconds to wait after a failure; never more than ``maximum``.

        For ``retry`` (5xx, timeout, network error) ``attempt`` is how many such
        failures the event has met (1-based); a 429 (``rate_limited``) waits
        ``retry_after`` when the answer gave one, else ``rate_limited``, and
        ignores ``attempt``.
        """
        wait: wait_base
        if outcome == "rate_limited":
            pause = self.rate_limited if retry_after is None else retry_after
            pause = min(max(0.0, pause), self.maximum)
            wait = wait_fixed(pause) + wait_random(0, pause * _RATE_LIMITED_JITTER)
        else:
            # Full jitter of one initial step on top of the doubling: replicas and
            # keys that failed together do not retry together.
            wait = wait_exponential(multiplier=self.initial, max=self.maximum) + wait_random(
                0, self.initial
            )
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        return min(float(wait(state)), self.maximum)


def retry_after_seconds(value: str | None, *, now: float, date: str | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110 10.2.3), or None.

    The header holds either delay-seconds or an HTTP-date. A date counts from
    the answer's own ``Date`` header when it has one (the server's clock against
    the server's clock), else from ``now``; a date in the past means no wait.
    Anything else is ignored, as if the header were absent.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        # Enormous values are only capped later; int() of thousands of digits raises.
        return float(value) if len(value) <= 12 else math.inf
    when = _http_date(value)
    if when is None:
        return None
    origin = _http_date(date) if date else None
    return max(0.0, when - (now if origin is None else origin))


def _http_date(value: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    # HTTP-dates are always GMT; a naive result ("-0000") means the same.
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
