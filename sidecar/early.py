"""Answers without a batch: a notification that only repeats what its open incidents hold.

Most of what Alertmanager sends for an open group says nothing new: a
``repeat_interval`` resend, an HA peer's copy, refreshed annotations. Applying
it changes nothing, so there is nothing to commit, and queueing it behind the
batch in flight only makes it wait for that batch's fsync. It is answered at
once when the check holds on state that is committed: no queued or in-flight
command has any of its keys, and no command by incident id is queued or in
flight at all (a PagerDuty reopening, a silence resolving alerts, a scheduler
step: any of them can change what the check reads of a key, without naming it).
A command counts until its batch is committed or undone, whatever its caller
does meanwhile.

With replicas (PostgreSQL), what this one holds may lag what another committed
by the time its notification takes to arrive. The ``gate`` is the follower's word
that none is known to be on its way (it listens, and has re-read every change it
was told of; see :mod:`sidecar.follow`); else the batch decides, on a read under
the keys' locks (:mod:`sidecar.readonly`). Within that lag, a notification that
repeats an open incident's alert instances is a no-op on whatever another
replica made of the incident: acknowledged, escalated, resolved (its instances
are then a late copy of the closed episode, or of the watch), reopened by a newer
instance, joined by others. It carries nothing the replicas had not applied
already, which is what the replay cache's answer to a byte-identical body rests
on too. The one difference: when a person resolved the incident meanwhile while
those alerts fired, the locked read would open an incident for them (or reopen
it in its watch) and page, as Alertmanager's own resend would; the early answer
is the one a resend arriving a moment before that resolve gets, and the next
resend pages.

A batch that failed on a shared store may have committed all the same (its
COMMIT's answer lost): memory was undone, the store was not, and the follower
skips this process's own changes. Its keys are in doubt until a read under their
locks re-reads them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("sidecar.incidents")


class EarlyAnswers:
    """The keys of queued and in-flight batches, and answers for keys free of them."""

    def __init__(self, gate: Callable[[], bool] | None = None) -> None:
        """``gate``: False while the committed state may be ahead of this process's."""
        self.gate = gate
        self._busy: dict[str, int] = {}
        self._doubted: set[str] = set()
        # Commands that name no key (by incident id, or none): while any is
        # queued or in flight, no key is known to be as committed.
        self._others = 0
        self.answered = 0

    def unchanged(self, keys: tuple[str, ...], check: Callable[[], bool]) -> bool:
        """True when no command may hold ``keys`` uncommitted and ``check`` says applying
        changes nothing."""
        busy = self._busy
        if not keys or self._others or any(k in busy for k in keys):
            return False
        doubted = self._doubted
        if doubted and any(k in doubted for k in keys):
            return False
        gate = self.gate
        if gate is not None and not gate():
            return False
        try:
            if not check():
                return False
        except Exception:  # a bug in the check: the batch answers, as ever
            log.exception("checking a notification for an early answer failed")
            return False
        self.answered += 1
        return True

    def doubt(self, keys: Iterable[str]) -> None:
        """These keys' memory may differ from the store (a batch failed, maybe committed)."""
        self._doubted.update(keys)

    def trust(self, keys: Iterable[str]) -> None:
        """These keys were just re-read from the store under their locks."""
        if self._doubted:
            self._doubted.difference_update(keys)

    def hold(self, keys: tuple[str, ...], by_id: bool, future: asyncio.Future[Any]) -> None:
        """Count a command's ``keys`` busy (all keys, when it acts ``by_id`` or names none)
        until ``future`` is done: committed, or rejected and undone. The service never
        cancels it (callers wait on it shielded)."""
        if by_id or not keys:
            self._others += 1
            future.add_done_callback(self._release_other)
            return
        busy = self._busy
        for k in keys:
            busy[k] = busy.get(k, 0) + 1
        future.add_done_callback(functools.partial(self._release, keys))

    def _release_other(self, future: asyncio.Future[Any]) -> None:
        self._others -= 1
        _retrieved(future)

    def _release(self, keys: tuple[str, ...], future: asyncio.Future[Any]) -> None:
        _retrieved(future)
        busy = self._busy
        for k in keys:
            left = busy[k] - 1
            if left:
                busy[k] = left
            else:
                del busy[k]


def _retrieved(future: asyncio.Future[Any]) -> None:
    # A caller cancelled while it waited no longer reads its answer: mark the
    # error read, so that asyncio does not log it as never retrieved.
    if not future.cancelled():
        future.exception()
