"""The incident book's state: the open incidents, their indexes, undo, and the store's truth.

:class:`BookCore` holds every open incident in memory (restored from the store
at start), indexed by key and id, with the counts the gauges read, the
resolved incidents whose review is pending or whose recovery watch runs, and
the log of closed episodes.
Every command begins with :meth:`BookCore._begin` (a copy to undo with) and
ends with :meth:`BookCore._finish` (re-indexed as it now is); the service
undoes the changes of a batch whose commit failed, and runs each command
within :meth:`BookCore.all_or_nothing`, so one that raises midway leaves
nothing. The commands themselves live beside it: :mod:`~sidecar.incidents.grouping` (Alertmanager
notifications), :mod:`~sidecar.incidents.stepping` (deadlines) and
:mod:`~sidecar.incidents.commands` (people and integrations).
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from sidecar.errors import IncidentNotFound, InvalidTransition
from sidecar.incidents.closed import ClosedEpisode, ClosedLog
from sidecar.incidents.model import Change, Incident, Undo, timeline_event
from sidecar.incidents.numbers import Numbering
from sidecar.incidents.planning import CommandFailed as CommandFailed
from sidecar.incidents.planning import Planner as Planner
from sidecar.incidents.planning import planned as planned

if TYPE_CHECKING:
    from sidecar.rules import RuleEscalation, SeverityPolicy


class ClassificationLike(Protocol):
    """What the incident book needs from a rule match."""

    @property
    def severity(self) -> str: ...
    @property
    def team(self) -> str: ...
    @property
    def dropped(self) -> bool: ...
    @property
    def unmatched(self) -> tuple[str, ...]: ...


class Classifier(Protocol):
    """Maps an alert's labels and annotations to a severity and team (see ``sidecar.rules``)."""

    def classify(
        self, labels: Mapping[str, str], annotations: Mapping[str, str]
    ) -> ClassificationLike: ...

    def rank(self, severity: str) -> int: ...

    def policy(self, severity: str) -> SeverityPolicy: ...

    @property
    def statuses(self) -> Sequence[str]:
        """The plan's statuses (the first is an incident's at opening); may be empty."""
        ...

    def recovery_watch(self, severity: str) -> float | None: ...

    def longest_recovery_watch(self) -> float: ...

    def escalations_each(
        self, alerts: Iterable[tuple[Mapping[str, str], Mapping[str, str]]]
    ) -> Sequence[Sequence[RuleEscalation]]: ...


@dataclass(slots=True)
class _Begun:
    undo: Undo
    incident_id: str | None  # None until a new incident is finished


class BookCore:
    """Every open incident, indexed, and the bookkeeping every command shares."""

    def __init__(
        self,
        classifier: Classifier,
        *,
        key_mode: Literal["group", "alert"] = "group",
        dedup_window: float = 6 * 3600.0,
        routed_tiers: Collection[str] = frozenset(),
        planners: Sequence[Planner] = (),
        numbering: Numbering | None = None,
        reminders: Mapping[str, float] | None = None,
    ) -> None:
        self.classifier = classifier
        # Plan numbers for the incidents a batch opens (the service begins and ends it).
        self.numbering = numbering or Numbering()
        # Severity -> seconds before an update deadline that a reminder is due
        # (only with an integration to carry it: Slack or webhooks).
        self.reminders = dict(reminders or {})
        # Integrations that plan the notifications a change causes (PagerDuty's
        # pager), run by every command before it returns: see ``planned``.
        self.planners = list(planners)
        self._depth = 0
        # Every incident begun inside ``all_or_nothing``, to put back if it raises.
        self._begun: list[_Begun] | None = None
        self.key_mode = key_mode
        self.dedup_window = dedup_window
        # Escalation tiers with a PagerDuty routing key: a due step's outcome
        # is decided here, with the change, not guessed later by the pager.
        self.routed_tiers = frozenset(routed_tiers)
        self._open: dict[str, Incident] = {}
        self._by_id: dict[str, Incident] = {}
        self.closed = ClosedLog(self.retention)
        self.open_counts: Counter[tuple[str, str]] = Counter()
        # Open incidents with a recorded breach, and resolved ones whose review
        # is still to do: small sets, so the gauges never scan every incident.
        self._breached: dict[str, Incident] = {}
        self._reviews: dict[str, Incident] = {}
        # Resolved incidents in their recovery watch, by key and by id: the
        # newest of a key is the one a re-fire reopens.
        self._watching: dict[str, Incident] = {}
        self._watching_ids: dict[str, Incident] = {}

    @property
    def retention(self) -> float:
        """How long resolved incidents are remembered: the dedup window, or a longer watch.

        The store's recently closed incidents are read this far back, so that
        an incident still in its watch is known after a restart and to every
        replica.
        """
        return max(self.dedup_window, self.classifier.longest_recovery_watch())

    def watching(self) -> Iterable[Incident]:
        """Resolved incidents still in their recovery watch."""
        return self._watching_ids.values()

    def _unwatch(self, incident_id: str) -> None:
        known = self._watching_ids.pop(incident_id, None)
        if known is not None and self._watching.get(known.key) is known:
            del self._watching[known.key]

    def _watch(self, inc: Incident) -> None:
        """Index ``inc`` as in its watch, or out of it, as it now is."""
        self._unwatch(inc.id)
        if not inc.is_watching:
            return
        current = self._watching.get(inc.key)
        if current is not None and current.triggered_at > inc.triggered_at:
            return  # a newer episode of the key is the one a re-fire reopens
        if current is not None:
            self._watching_ids.pop(current.id, None)
        self._watching[inc.key] = inc
        self._watching_ids[inc.id] = inc

    def held(self, incident: Incident) -> Incident:
        """The book's own copy of ``incident`` (open, watched or awaiting review), else it.

        A copy read while in its watch that the book no longer holds is out of
        date: the watch ended since, and writing it back would reopen it.
        """
        inc = (
            self._by_id.get(incident.id)
            or self._watching_ids.get(incident.id)
            or self._reviews.get(incident.id)
        )
        if inc is not None:
            return inc
        if incident.is_watching:
            raise InvalidTransition(f"incident {incident.id} closed meanwhile; try again")
        return incident

    def open_incidents(self) -> Iterable[Incident]:
        """Every open incident."""
        return self._by_id.values()

    def get_open(self, incident_id: str) -> Incident | None:
        """The open incident with that id, if any."""
        return self._by_id.get(incident_id)

    def open_for(self, key: str) -> Incident | None:
        """The open incident of that key, if any."""
        return self._open.get(key)

    def has_open(self, key: str) -> bool:
        """Whether an incident of that key is open (a notification for it opens none)."""
        return key in self._open

    def __len__(self) -> int:
        return len(self._by_id)

    def restore(
        self,
        open_incidents: Iterable[Incident],
        closed: Iterable[Incident],
        reviews: Iterable[Incident] = (),
    ) -> None:
        """Load state from the store at start."""
        for inc in closed:
            self._remember_closed(inc)
        incs = list(open_incidents)  # indexed in bulk (what _index does): a restart has them all
        self._open.update({inc.key: inc for inc in incs})
        self._by_id.update({inc.id: inc for inc in incs})
        self.open_counts.update((inc.severity, inc.state) for inc in incs)
        self._breached.update((inc.id, inc) for inc in incs if inc.breaches)
        for inc in reviews:
            self._finish(inc)

    def reset(
        self,
        open_incidents: Iterable[Incident],
        closed: Iterable[Incident],
        reviews: Iterable[Incident] = (),
    ) -> None:
        """Forget everything and load this state (a reload from a shared store)."""
        self._open.clear()
        self._by_id.clear()
        self.closed.clear()
        self._breached.clear()
        self._reviews.clear()
        self._watching.clear()
        self._watching_ids.clear()
        self.open_counts.clear()
        self.restore(open_incidents, closed, reviews)

    def refresh(
        self,
        keys: Iterable[str],
        ids: Iterable[str],
        incidents: Iterable[Incident],
        recently_closed: Iterable[Incident],
    ) -> set[str]:
        """Replace what is known of these keys and ids by the store's rows (replicas).

        Called under the keys' locks, right before commands on them: another
        replica may have opened, changed or closed these incidents since.
        Returns the ids of every incident it dropped or replaced (their
        deadlines may have moved).
        """
        touched = set(ids)
        for key in keys:
            cached = self._open.get(key)
            if cached is not None:
                self._unindex(cached)
                touched.add(cached.id)
            self.closed.forget(key)
            watched = self._watching.pop(key, None)
            if watched is not None:
                self._watching_ids.pop(watched.id, None)
        for incident_id in ids:
            cached = self._by_id.get(incident_id)
            if cached is not None:
                self._unindex(cached)
            self._reviews.pop(incident_id, None)
            self._unwatch(incident_id)
        for inc in recently_closed:
            self._remember_closed(inc)
        for inc in incidents:
            current = self._open.get(inc.key)
            if inc.is_open and current is not None and current.id != inc.id:
                self._unindex(current)
                touched.add(current.id)
            self._finish(inc)
            touched.add(inc.id)
        return touched

    def pending_reviews(self) -> Iterable[Incident]:
        """Resolved incidents whose post-incident review is not done yet."""
        return self._reviews.values()

    def get_review(self, incident_id: str) -> Incident | None:
        """A resolved incident with its review still to do."""
        return self._reviews.get(incident_id)

    def set_classifier(self, classifier: Classifier) -> None:
        """Swap the rules (reload); open incidents keep the severity they have.

        Resolved incidents keep the watch they were given at resolution.
        """
        self.classifier = classifier
        self.closed.retention = self.retention

    def _index(self, inc: Incident) -> None:
        self._open[inc.key] = inc
        self._by_id[inc.id] = inc
        self.open_counts[(inc.severity, inc.state)] += 1
        if inc.breaches:
            self._breached[inc.id] = inc

    def _unindex(self, inc: Incident) -> None:
        self._open.pop(inc.key, None)
        self._by_id.pop(inc.id, None)
        self.open_counts[(inc.severity, inc.state)] -= 1
        self._breached.pop(inc.id, None)

    def _require_open(self, incident_id: str) -> Incident:
        inc = self._by_id.get(incident_id)
        if inc is None:
            raise IncidentNotFound(incident_id)
        return inc

    def _begin(self, key: str, inc: Incident | None) -> Undo:
        before = None
        if inc is not None:
            before = copy.copy(inc)
            # The mappings are changed in place: copy them too. Their alert states
            # are replaced, never changed (AlertState.ended): shared, not copied.
            before.alerts = dict(inc.alerts)
            before.labels = dict(inc.labels)
            if inc.is_open:
                self._unindex(inc)
        undo = Undo(key, before, self.closed.get(key))
        if self._begun is not None:
            self._begun.append(_Begun(undo, None if before is None else before.id))
        return undo

    def _finish(self, inc: Incident) -> None:
        if self._begun is not None:
            # A new incident's id is known only now.
            for begun in reversed(self._begun):
                if begun.incident_id is None and begun.undo.key == inc.key:
                    begun.incident_id = inc.id
                    break
        if inc.is_open:
            self._watch(inc)  # a reopened incident leaves its watch
            self._index(inc)
            return
        self._remember_closed(inc)
        if inc.review_due_at is not None and inc.review_done_at is None:
            self._reviews[inc.id] = inc
        else:
            self._reviews.pop(inc.id, None)

    def _remember_closed(self, inc: Incident) -> None:
        """Remember a resolved incident against late duplicates, unless a newer one is.

        Only the newest episode of a key matters: a late HA duplicate can only
        repeat what was sent last. Finishing an older episode (its review done,
        or restored after the newer one) must not make the newer one forgettable.
        Alerts still firing (resolved by hand) are told apart: sent firing
        again, they page again (see :mod:`~sidecar.incidents.closed`).
        """
        if inc.resolved_at is None:
            return
        episode = ClosedEpisode(
            inc.instances(), inc.resolved_at, inc.triggered_at, inc.firing_instances()
        )
        self.closed.remember(inc.key, episode)
        self._watch(inc)

    @contextlib.contextmanager
    def all_or_nothing(self) -> Iterator[None]:
        """A command run within it that raises leaves memory as it found it.

        Every incident it began is put back, in reverse order: a bug midway (a
        rule, a planner, the third of several deadlines) must not leave an
        incident out of the index while the store still holds it open, nor
        changes in memory that no batch writes.
        """
        self._begun = []
        try:
            yield
        except BaseException:
            for begun in reversed(self._begun):
                self._revert(begun.undo, begun.incident_id)
            raise
        finally:
            self._begun = None

    def undo(self, change: Change) -> None:
        """Revert a change that could not be committed (apply in reverse order)."""
        self._revert(change.undo, change.incident.id)

    def _revert(self, undo: Undo, incident_id: str | None) -> None:
        # ``incident_id`` None: a new incident the command never finished (never indexed).
        if incident_id is not None:
            current = self._open.get(undo.key)
            if current is not None and current.id == incident_id:
                self._unindex(current)
            self._reviews.pop(incident_id, None)
            self._unwatch(incident_id)
        before = undo.before
        if before is not None:
            self._watch(before)  # back in its watch, if it was
            if before.is_open:
                self._index(before)
            elif before.review_due_at is not None and before.review_done_at is None:
                self._reviews[before.id] = before
        self.closed.put_back(undo.key, undo.closed_before)

    def expire_closed(self, now: float) -> int:
        """Forget resolved incidents older than the dedup window; returns how many."""
        return self.closed.expire(now)

    # A new timeline event of an incident, numbered after its last one.
    event = staticmethod(timeline_event)
