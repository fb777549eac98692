"""Notification batches that change nothing, answered from one locked read (replicas).

Most of what Alertmanager resends changes nothing an incident records: a refreshed
annotation, a repeat. With replicas on PostgreSQL such a batch still costs a
transaction under :meth:`Store.locked`: BEGIN, the locked read, COMMIT, three round
trips, paid on the database's side too. So a batch of notifications alone is first
applied on :meth:`ReadsUnderLock.read_locked`: the keys' locks are taken (waiting
for any replica writing them to commit), their rows read after that, and the locks
let go, in one statement. If the batch changes nothing, that is its answer; if it
changes anything, it is undone and runs again from the start under ``locked``.

Why that is safe:

- What was read is the store's state at a moment the keys were locked, read after
  every writer of those keys committed. Commands touch only the keys they name, so
  they decide on the same state a locked transaction would have read then.
- A batch that changes nothing writes nothing: no incident, no outbox row, no page.
  A locked transaction would have committed nothing either, so answering it is
  answering after the (empty) commit; the answer is the one that moment gave.
- A batch that changes something is never written from this read: its changes are
  undone as a failed commit's are, and every command runs again on the rows read
  under the transaction's locks, which are held until its commit. Running a
  notification again after an undo is what a failed commit and Alertmanager's
  resend already do.
- A batch that may open an incident, or that names incident ids, delivery ids or a
  reload, is never tried: numbers and deliveries are written under the lock.

When most tries change something, trying costs one round trip more per batch, so
the service tries only while at least a third of recent tries were read-only, and
looks again every few batches.
"""

from __future__ import annotations

from sidecar.store.base import ReadsUnderLock

# Below this share of read-only tries (a moving average), trying costs more than it
# saves: a read-only try saves two round trips, a failed one costs one.
WORTH = 0.3
# How fast the average follows, and how many batches go untried before one more try.
WEIGHT = 0.1
LOOK_AGAIN = 16


class ReadOnlyFirst:
    """When to try notification batches on a locked read first, and how it went."""

    def __init__(self, store: ReadsUnderLock) -> None:
        self.store = store
        self.score = 1.0
        self._untried = 0
        # Counts, for tests and profiles.
        self.answered = 0
        self.rerun = 0

    def worth_trying(self) -> bool:
        """True when this batch should be tried read-only first."""
        if self.score >= WORTH:
            return True
        self._untried += 1
        if self._untried >= LOOK_AGAIN:
            self._untried = 0
            return True
        return False

    def record(self, read_only: bool) -> None:
        """Count a try: answered from the read, or run again under the lock."""
        if read_only:
            self.answered += 1
        else:
            self.rerun += 1
        self.score += WEIGHT * (float(read_only) - self.score)
