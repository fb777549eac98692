"""An alert instance within an incident, and the stored form of an incident's alerts.

Identity of an alert *instance* is ``(fingerprint, startsAt)``: Alertmanager
gives a re-firing alert a new ``startsAt``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from sys import intern
from typing import Any, Literal

import msgspec
import orjson

from sidecar.alertmanager import Alert


class AlertState(msgspec.Struct, frozen=True, gc=False):
    """One alert instance within an incident, as last reported.

    Out of the cyclic garbage collector's sight (``gc=False``): it holds only
    text, numbers and a mapping of text, so it can never be part of a cycle,
    and every open incident holds one per alert. Tracked, they were most of
    what a full collection walked: with 1,000 incidents of 50 alerts opened
    since the start, 50,000 of its 58,000 objects, 40-60 ms of CPU each time,
    the tail of the latency. A mapping that holds only these is untracked too.
    Frozen: a state is replaced, never changed in place (see ``ended``).
    """

    fingerprint: str
    status: Literal["firing", "resolved"]
    starts_at: float
    ends_at: float | None
    severity: str
    labels: dict[str, str]
    generator_url: str = ""

    def ended(self, ends_at: float) -> AlertState:
        """This instance, resolved at ``ends_at``: a new state, never this one changed.

        An incident's alert states are replaced, never changed in place, so that the
        copy a command keeps to undo with (``BookCore._begin``) shares them instead
        of copying every one: with fifty alerts that copy was most of what applying
        a notification cost.
        """
        return AlertState(
            self.fingerprint,
            "resolved",
            self.starts_at,
            ends_at,
            self.severity,
            self.labels,
            self.generator_url,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain form for storage and the API."""
        return {
            "fingerprint": self.fingerprint,
            "status": self.status,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "severity": self.severity,
            "labels": self.labels,
            "generator_url": self.generator_url,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertState:
        """Inverse of :meth:`to_json`."""
        return cls(
            fingerprint=data["fingerprint"],
            status=intern(data["status"]),  # type: ignore[arg-type]
            starts_at=data["starts_at"],
            ends_at=data["ends_at"],
            severity=intern(data["severity"]),
            labels=interned(data["labels"]),
            # One Prometheus rule gives all its alerts the same generatorURL.
            generator_url=intern(data.get("generator_url", "")),
        )


def decoded_alerts(alerts: Iterable[Mapping[str, Any]] | None) -> dict[str, AlertState]:
    """The alerts of an incident from their plain form (see :meth:`AlertState.to_json`)."""
    # AlertState.from_json, inlined: the first change of an incident after a commit
    # or a restart decodes every alert of it, and the calls were most of that cost.
    out: dict[str, AlertState] = {}
    for a in alerts or ():
        labels = a["labels"]
        fingerprint = a["fingerprint"]
        out[fingerprint] = AlertState(
            fingerprint,
            intern(a["status"]),  # type: ignore[arg-type]
            a["starts_at"],
            a["ends_at"],
            intern(a["severity"]),
            {intern(k): intern(v) for k, v in labels.items()},
            # One Prometheus rule gives all its alerts the same generatorURL.
            intern(a.get("generator_url", "")),
        )
    return out


_ENCODE = msgspec.json.Encoder().encode


def alerts_document(alerts: Iterable[AlertState]) -> bytes:
    """The stored JSON document of an incident's alerts: each one's :meth:`AlertState.to_json`,
    in order, encoded in one call (no dict per alert)."""
    # 240,000 instructions for fifty alerts, against 360,000 for orjson over
    # each one's to_json() (valgrind).
    return _ENCODE(list(alerts))


def decode_alerts(doc: bytes) -> dict[str, AlertState]:
    """The alerts of an incident from their stored JSON document."""
    return decoded_alerts(orjson.loads(doc))


def interned(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels with their names and values interned.

    A hundred thousand open incidents repeat the same few label names and
    values (alertname, service, job...): one string each instead of one per
    incident is most of what an open incident costs in memory.
    """
    # A comprehension: for the few labels an incident has, several times faster than
    # dict(zip(map(...), map(...))), and a restart interns every open incident's.
    return {intern(k): intern(v) for k, v in labels.items()}


def repeats(tracked: Mapping[str, AlertState], alerts: Iterable[Alert]) -> bool:
    """Whether every alert is an instance in ``tracked``, with nothing new to say of it.

    Same start, and not a firing instance now resolved (firing again after it
    resolved is an out-of-order duplicate: the resolution stays). Merging such
    alerts into their incident adds no event, so it changes nothing.
    """
    for alert in alerts:
        known = tracked.get(alert.fingerprint)
        if known is None or known.starts_at != alert.starts_at:
            return False
        if known.status == "firing" and alert.status == "resolved":
            return False
    return True


#: The annotations messages quote; only these are kept (every open incident holds them).
QUOTED_ANNOTATIONS = ("impact", "summary", "description", "runbook_url")


def quoted(annotations: Mapping[str, str]) -> Mapping[str, str]:
    """What the notifications quote of ``annotations`` (a group's shared ones, else those of
    the alert that set the severity); one mapping for every incident that quotes the same."""
    return shared({k: annotations[k] for k in QUOTED_ANNOTATIONS if annotations.get(k)})


def shared(mapping: Mapping[str, str]) -> Mapping[str, str]:
    """A mapping equal to ``mapping``, the same object for the same content.

    Incidents opened by one alerting rule quote the same annotations (a summary
    templated from the rule, a runbook link): one mapping for all of them, not a
    dict and its strings each, which was a fifth of what an open incident cost.
    Shared, so never to be changed in place (typed ``Mapping``, it cannot be).
    """
    return _shared(tuple(mapping.items()))


# Bounded, as what it keeps alive after the incidents are gone is: an incident
# keeps its mapping when the cache lets it go, only incidents after it no
# longer share it. A plain dict: annotations unique to each incident (a
# templated value) then cost what they did before.
@lru_cache(maxsize=1024)
def _shared(items: tuple[tuple[str, str], ...]) -> Mapping[str, str]:
    return {intern(k): intern(v) for k, v in items}


def alert_name(st: AlertState) -> str:
    """An alert's name for the timeline (its fingerprint if it has none)."""
    return st.labels.get("alertname", st.fingerprint)
