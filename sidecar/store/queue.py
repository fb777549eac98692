"""The outbox as every store keeps it: items, who claims them, outcomes and the send budget.

Each integration (PagerDuty first) has its own queue in the outbox: its workers
claim only its items, the oldest pending item of each dedup key first, so that
per key the events go out in the order they were queued.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.store.rows import PAGERDUTY, OutboxRow


@dataclass(frozen=True, slots=True)
class OutboxItem(OutboxRow):
    """A queued row, waiting in (or done with) the outbox, with where its delivery stands."""

    id: int
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    done_at: float | None
    # 5xx, timeouts and network errors met so far (429s not counted): the
    # exponent of the backoff, so that a 429 does not lengthen a later one.
    server_failures: int = 0
    # What an accepted send left for the items after it (a Slack message's
    # channel and ts, a Jira issue's key and link); None until then.
    receipt: str | None = None


@dataclass(frozen=True, slots=True)
class KeyPage:
    """The incident paged last on a dedup key, and when its page there can have gone out.

    A dedup key pages every episode of a group, and PagerDuty opens an incident
    for each episode's trigger: what PagerDuty created before ``sent_from`` was
    not created by this incident's page.
    """

    incident_id: str
    # No send of its first trigger on the key began before this: it was queued
    # then, and the key's earlier events were done (a key's events go in order);
    # infinity while one of them still waits, as the trigger has not gone out.
    sent_from: float
    # True when another incident was paged on the key before it.
    follows: bool


def outbox_item(row: Iterable[Any]) -> OutboxItem:
    """The item a row of :class:`OutboxItem`'s columns, in order, holds."""
    return OutboxItem(*row)


@dataclass(frozen=True, slots=True)
class RateBudget:
    """How many events each routing key may send per rolling window, all replicas together.

    ``buckets`` maps a routing name to the budget it draws from: names that hold
    the same routing key share one, since PagerDuty limits per key. An event of
    a name missing from it (no longer configured) draws from none.
    """

    per_window: int
    window: float
    buckets: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Claimant:
    """A worker that claims outbox items: whose lease, for how long, within what budget.

    A lease lasts until the worker records the item's outcome or for
    ``lease_seconds``, whichever comes first: a worker that dies loses its items
    to the others once its leases run out.
    """

    owner: str
    lease_seconds: float
    budget: RateBudget | None = None
    integration: str = PAGERDUTY


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt to send an item came to, recorded at ``at``.

    ``state`` is ``delivered``, ``dead`` or ``pending`` (to try again at
    ``next_attempt_at``); ``attempts`` and ``server_failures`` count every attempt so far.
    """

    state: str
    attempts: int
    next_attempt_at: float
    error: str | None
    at: float
    server_failures: int = 0
    receipt: str | None = None

    @property
    def done_at(self) -> float | None:
        """When the item left the queue, if it did."""
        return None if self.state == "pending" else self.at


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`Store.claim_outbox` leased, and when a spent budget lets more go."""

    items: list[OutboxItem]
    # The earliest time a head held back by a spent budget may be claimed; None
    # when the budget held nothing back.
    held_until: float | None = None


def take_within_budget(
    heads: Sequence[OutboxItem],
    limit: int,
    budget: RateBudget | None,
    sent: Mapping[str, Sequence[float]],
    now: float,
) -> Claim:
    """The oldest ``heads`` (at most ``limit``) that each bucket's budget lets go now.

    ``sent`` holds, per bucket, the times (ascending) of the sends counted in the
    window ending at ``now``; each head taken counts as a send at ``now``. Every
    store picks through this, so they share one rule.
    """
    taken: list[OutboxItem] = []
    counted = {bucket: sorted(times) for bucket, times in sent.items()}
    held: set[str] = set()
    for item in sorted(heads, key=lambda i: i.id):
        if len(taken) >= limit:
            break
        bucket = budget.buckets.get(item.routing) if budget is not None else None
        if bucket is None:
            taken.append(item)
            continue
        assert budget is not None
        times = counted.setdefault(bucket, [])
        if len(times) >= budget.per_window:
            held.add(bucket)
            continue
        times.append(now)
        taken.append(item)
    held_until = None
    if held and budget is not None:
        # A bucket frees once enough of its sends leave the window.
        held_until = min(
            counted[b][len(counted[b]) - budget.per_window] + budget.window for b in held
        )
    return Claim(taken, held_until)
