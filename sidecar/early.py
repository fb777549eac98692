"""Answers without a batch: a notification that only repeats what its open incidents hold.

Most of what Alertmanager sends for an open group says nothing new: a
``repeat_interval`` resend, an HA peer's copy, refreshed annotations. Applying
it changes nothing, so there is nothing to commit, and queueing it behind the
batch in flight only makes it wait for that batch's fsync. It is answered at
once when the check holds on state that is committed: no queued or in-flight
batch has any of its keys. A batch's uncommitted changes to a key can only come
from a notification with that key (commands by incident id close or annotate
incidents, which makes the check fail, and an undo returns to committed state),
so keys free of batches are keys whose open incidents the store holds as they are.

Only for a store of this process alone: with replicas, another one may have
changed a key since (see :mod:`sidecar.readonly` for their way).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sidecar.incidents")


class EarlyAnswers:
    """The keys of queued and in-flight batches, and answers for keys free of them."""

    def __init__(self) -> None:
        self._busy: dict[str, int] = {}
        self.answered = 0

    def unchanged(self, keys: tuple[str, ...], check: Callable[[], bool]) -> bool:
        """True when no batch holds ``keys`` and ``check`` says applying changes nothing."""
        busy = self._busy
        if not keys or any(k in busy for k in keys):
            return False
        try:
            if not check():
                return False
        except Exception:  # a bug in the check: the batch answers, as ever
            log.exception("checking a notification for an early answer failed")
            return False
        self.answered += 1
        return True

    def hold(self, keys: tuple[str, ...], future: asyncio.Future[Any]) -> None:
        """Count ``keys`` busy until ``future`` is done (committed, or rejected and undone)."""
        busy = self._busy
        for k in keys:
            busy[k] = busy.get(k, 0) + 1
        future.add_done_callback(functools.partial(self._release, keys))

    def _release(self, keys: tuple[str, ...], _future: asyncio.Future[Any]) -> None:
        busy = self._busy
        for k in keys:
            left = busy[k] - 1
            if left:
                busy[k] = left
            else:
                del busy[k]
