"""The one retry policy: how long to wait before trying a failed delivery again.

Integrations only classify an outcome (retry, rate limited, rejected); the
waiting is decided here, with tenacity's exponential backoff and jitter, so
every outbound integration backs off the same way. The outbox persists the
next attempt time, so the policy holds across restarts too.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenacity import RetryCallState, wait_exponential, wait_random


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter; a longer start for rate-limited (429) answers."""

    initial: float = 1.0
    maximum: float = 300.0
    rate_limited_initial: float = 30.0

    def delay(self, attempt: int, *, rate_limited: bool = False) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based)."""
        initial = self.rate_limited_initial if rate_limited else self.initial
        # Full jitter of one initial step on top of the doubling: replicas and
        # keys that failed together do not retry together.
        wait = wait_exponential(multiplier=initial, max=max(self.maximum, initial)) + wait_random(
            0, initial
        )
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        return float(wait(state))
