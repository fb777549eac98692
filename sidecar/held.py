"""Replicas: which stored version of its row each open incident in memory was read from.

Under the keys' locks a replica reads the rows it is about to decide on, every
batch; decoding a row costs more than reading it (and a 50-alert document far
more). So the service remembers, per open incident, the version of the row its
memory was decoded from (PostgreSQL: the row's ``xmin``, the transaction that
wrote it, with its ``updated_at``), and passes those to the locked read: a row
still at that version comes back without its documents and is not decoded, the
incident in memory stands for it.

Why the incident in memory is then the row: it was decoded from that version,
and only commands change it. A command that changes it returns a change, and
the version is forgotten then (written or undone alike: the next read decodes).
Any other writer of the row makes a new version: a new transaction id (they are
not reused until four billion transactions later, and then ``updated_at``,
the writer's clock at the write, must match to the bit as well). A reload
forgets everything.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sidecar.incidents import Change, IncidentBook
from sidecar.store.base import LockedRead, Version


class HeldVersions:
    """The versions of the rows the open incidents in memory were read from."""

    def __init__(self) -> None:
        self._versions: dict[str, Version] = {}
        # How many rows were taken as unchanged, and how many decoded (for tests).
        self.kept = 0
        self.decoded = 0

    def known(
        self, book: IncidentBook, keys: Collection[str], ids: Collection[str]
    ) -> dict[str, Version]:
        """The versions held for the open incidents of these keys and ids."""
        if not self._versions:
            return {}
        known = {}
        for inc in (*map(book.open_for, keys), *map(book.get_open, ids)):
            if inc is not None and (version := self._versions.get(inc.id)) is not None:
                known[inc.id] = version
        return known

    def refresh(self, book: IncidentBook, read: LockedRead) -> set[str]:
        """Refresh the book from ``read``; the ids whose incident may have changed."""
        incidents = list(read.incidents)
        for incident_id in read.unchanged:
            held = book.get_open(incident_id)
            if held is None:
                # A bug: a version was passed for an incident not in memory, and the
                # row came without its documents. Read everything again next time.
                self.clear()
                raise RuntimeError(f"incident {incident_id} held by version is not in memory")
            incidents.append(held)
        same = read.unchanged
        self.kept += len(same)
        self.decoded += len(incidents) - len(same)
        touched = book.refresh(read.keys, read.ids, incidents, read.recently_closed)
        for incident_id in touched:
            if book.get_open(incident_id) is None:
                self._versions.pop(incident_id, None)
        for incident_id, version in read.versions.items():
            if book.get_open(incident_id) is not None:
                self._versions[incident_id] = version
        # Kept as it was: its deadlines have not moved.
        return touched - same

    def forget(self, changes: Iterable[Change]) -> None:
        """These incidents were changed in memory: their next read decodes them."""
        for change in changes:
            self._versions.pop(change.incident.id, None)

    def clear(self) -> None:
        """Forget every version (the book was reloaded)."""
        self._versions.clear()
