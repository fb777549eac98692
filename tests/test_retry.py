"""The one retry policy: exponential backoff for server failures, PagerDuty's pause for 429s."""

from __future__ import annotations

import math

import pytest

from sidecar.notify.retry import Failure, RetryPolicy, retry_after_seconds

DEFAULTS = RetryPolicy()  # 1 s initial, 5 min cap, 30 s after a 429: the shipped defaults
SAMPLES = 500  # jitter is random: every bound must hold for each of many draws


def draws(
    policy: RetryPolicy, attempt: int, outcome: Failure, retry_after: float | None = None
) -> list[float]:
    """Many delays for the same failure."""
    return [policy.delay(attempt, outcome, retry_after) for _ in range(SAMPLES)]


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 1, 2), (2, 2, 3), (3, 4, 5), (4, 8, 9), (6, 32, 33), (8, 128, 129), (9, 256, 257)],
)
def test_server_failures_back_off_exponentially_with_jitter(
    attempt: int, low: float, high: float
) -> None:
    waits = draws(DEFAULTS, attempt, "retry")
    assert all(low <= w <= high for w in waits)
    assert len({round(w, 6) for w in waits}) > 1, "no jitter"


@pytest.mark.parametrize("attempt", [10, 11, 50, 10_000])
def test_server_failure_backoff_is_capped(attempt: int) -> None:
    assert all(w == DEFAULTS.maximum for w in draws(DEFAULTS, attempt, "retry"))


@pytest.mark.parametrize("attempt", [1, 2, 3, 7, 50])
def test_a_429_waits_about_30_s_whatever_failed_before(attempt: int) -> None:
    waits = draws(DEFAULTS, attempt, "rate_limited")
    assert all(30.0 <= w <= 33.0 for w in waits)
    assert len({round(w, 6) for w in waits}) > 1, "no jitter"


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        (7.0, 7.0, 7.7),  # as advised, plus at most a tenth
        (0.0, 0.0, 0.0),  # "now"
        (120.0, 120.0, 132.0),  # longer than our own pause: still honoured
        (1e9, 300.0, 300.0),  # absurd: capped at the longest wait
        (math.inf, 300.0, 300.0),
    ],
)
def test_a_429_honours_retry_after_within_the_cap(
    retry_after: float, low: float, high: float
) -> None:
    waits = draws(DEFAULTS, 4, "rate_limited", retry_after)
    assert all(low <= w <= high for w in waits)


def test_retry_after_is_ignored_for_server_failures() -> None:
    assert all(1 <= w <= 2 for w in draws(DEFAULTS, 1, "retry", retry_after=200.0))


def test_500_503_429_in_a_row_wait_less_than_a_minute_in_all() -> None:
    totals = [
        DEFAULTS.delay(1, "retry")  # after the 500
        + DEFAULTS.delay(2, "retry")  # after the 503
        + DEFAULTS.delay(3, "rate_limited")  # after the 429: not 4x its pause
        for _ in range(SAMPLES)
    ]
    assert max(totals) <= 2 + 3 + 33 < 60


def test_a_cap_below_the_429_pause_wins() -> None:
    policy = RetryPolicy(initial=0.05, maximum=0.3, rate_limited=5.0)
    assert all(w == 0.3 for w in draws(policy, 1, "rate_limited"))
    assert all(w <= 0.3 for w in draws(policy, 30, "retry"))


NOW = 1_445_412_420.0  # Wed, 21 Oct 2015 07:27:00 GMT


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        (None, None, None),
        ("120", None, 120.0),
        (" 5 ", None, 5.0),
        ("0", None, 0.0),
        ("9" * 5000, None, math.inf),  # capped by the policy, not an error
        ("-5", None, None),
        ("1.5", None, None),  # delay-seconds is a whole number
        ("soon", None, None),
        ("", None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None, 60.0),  # from our clock
        ("Wed, 21 Oct 2015 07:26:00 GMT", None, 0.0),  # already past
        # From the answer's own Date: the server's clock against the server's clock.
        ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:27:50 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", "not a date", 60.0),
        ("Wednesday, 21-Oct-15 07:28:00 GMT", None, 60.0),  # RFC 850, still allowed
    ],
)
def test_retry_after_seconds(value: str | None, date: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value, now=NOW, date=date) == expected
