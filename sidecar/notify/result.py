"""What one send came to, as every integration's sender reports it to the outbox.

A sender only classifies the service's answer (Alertmanager's ``Retrier.Check``):
accepted, retry (5xx, timeouts, network errors), rate limited (429, with the
``Retry-After`` it advised) or rejected (never worth sending again). The outbox
worker decides what follows with the one retry policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import aiohttp

Outcome = Literal["accepted", "retry", "rate_limited", "rejected"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of one send: the service's answer, classified.

    ``message`` is the service's own words (an error text is what a dead letter
    shows); ``retry_after`` the wait in seconds a ``Retry-After`` asked for;
    ``receipt`` what an accepted send must remember for the items after it (a
    Slack message's channel and ``ts``, a Jira issue's key), kept with the item.
    """

    outcome: Outcome
    status: int | None
    message: str
    dedup_key: str | None = None
    retry_after: float | None = None
    receipt: str | None = None

    @property
    def retryable(self) -> bool:
        """True when sending the same event again later may succeed."""
        return self.outcome in ("retry", "rate_limited")


class SessionSender:
    """The opening and closing of a sender that posts over one aiohttp session."""

    _session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Open the HTTP session."""
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
