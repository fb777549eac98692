"""Copying SQLite's write-ahead log into the database file, off the commit path.

Left to itself, SQLite checkpoints inside the commit that takes the log past
1,000 pages (``wal_autocheckpoint``): that commit, and every request waiting
for its batch, then also waits while the log is copied into the database and
both files are synced. Measured on 50-alert notifications that open incidents,
one commit in eight did so and took 45-140 ms, against 10-30 ms for the others.

Here a thread of its own, on a connection of its own, runs a PASSIVE
checkpoint after commits, at most one every ``every`` seconds. PASSIVE never
waits for the writer or the readers, and the writer never waits for it: SQLite
lets a checkpoint run beside a write transaction. Nothing can be lost: a commit
is durable once its log frames are synced (``synchronous=FULL``), before any
checkpoint copies them, and a checkpoint cut short by a crash is redone from
the log at the next open. Often (every 0.1 s under load), because SQLite starts
the log afresh only at a write that finds all of it copied: at one checkpoint a
second, a commit landed during nearly every one and the log grew to the
backstop; at ten, it stayed under 1,400 pages and the slowest commit under
load went from 105 ms to 65 ms.

The writer's own automatic checkpoint stays as a backstop at ``BACKSTOP_PAGES``:
should the thread fall behind, it bounds the log, and copies only what is left.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("sidecar.store")

# 40 MB of 4 KB pages: reached only if the thread falls seconds behind.
BACKSTOP_PAGES = 10_000


class Checkpointer:
    """A thread that checkpoints the log after commits; ``wrote`` wakes it."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, every: float) -> None:
        self._connect = connect
        self.every = every
        self._wrote = threading.Event()
        self._stopping = threading.Event()
        self._done = threading.Condition()
        # Commits told of, and how many of them the last finished checkpoint began after.
        self._commits = 0
        self._covered = 0
        # The last checkpoint's (busy, log frames, checkpointed frames).
        self.last: tuple[int, int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        """Start the thread (after the database exists and is migrated); once, however
        often the store is opened."""
        if self._thread.ident is None:
            self._thread.start()

    def wrote(self) -> None:
        """A commit happened: checkpoint soon (many commits, one checkpoint)."""
        with self._done:
            self._commits += 1
        self._wrote.set()

    def stop(self) -> None:
        """Stop the thread and close its connection (a checkpoint under way finishes)."""
        self._stopping.set()
        self._wrote.set()
        if self._thread.is_alive():
            self._thread.join()

    def settle(self) -> None:
        """Block until a checkpoint begun after every commit so far finished (or the
        thread stopped)."""
        with self._done:
            target = self._commits
            self._done.wait_for(lambda: self._covered >= target or not self._thread.is_alive())

    def _run(self) -> None:
        try:
            con = self._connect()
        except sqlite3.Error:
            log.exception("no checkpoint connection; commits checkpoint at the backstop")
            return
        try:
            while True:
                self._wrote.wait()
                if self._stopping.is_set():
                    return
                self._wrote.clear()
                self._checkpoint(con)
                if self._stopping.wait(self.every):
                    return
        finally:
            con.close()
            with self._done:
                self._done.notify_all()

    def _checkpoint(self, con: sqlite3.Connection) -> None:
        with self._done:
            covering = self._commits
        try:
            row = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # The next commit wakes the thread again; the backstop bounds the log meanwhile.
            log.warning("wal checkpoint failed", extra={"error": str(exc)})
            row = None
        with self._done:
            self._covered = covering
            self.last = None if row is None else (int(row[0]), int(row[1]), int(row[2]))
            self._done.notify_all()
