"""A stateful property test of the paging guarantees, over the whole in-process sidecar.

Hypothesis drives the real web application (the service, the incident book,
the scheduler, the outbox worker and the silence watcher behind it) with a
fake clock, a store that can be made to fail, and the fake PagerDuty. It plays
Alertmanager's habits: HA duplicates with another ``externalURL``, late copies
of older episodes, firing notifications that never arrive, severity rises,
silences (which send no resolved notification), retries of what got a 503;
and people's: acknowledgments from the API and from PagerDuty, status updates,
resolutions by hand (the API, PagerDuty) while alerts still fire.
It also fails the store, reloads the rules and restarts the sidecar.

After every step it checks what the README promises:

- at most one open incident per key;
- per PagerDuty dedup key, each incident's events start with a trigger and
  nothing follows its resolve, and incidents on one key never interleave;
  PagerDuty itself receives them so;
- every incident opened from a firing notification queued its trigger;
- an alert instance belongs to one incident (no duplicate pages), unless a
  person resolved the earlier one while it still fired (Alertmanager pages
  again for it then);
- nothing committed is lost across a restart, and every timeline event is stored;
- each breach is counted once, in the metric as on the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from prometheus_client import CollectorRegistry

from sidecar.clock import FakeClock
from sidecar.config import load_config
from sidecar.errors import StoreUnavailable
from sidecar.notify.outbox import OutboxWorker
from sidecar.runtime import Components, build_components
from sidecar.silences import AlertStatus, GettableAlert, GettableSilence, SilenceStatus
from sidecar.store import IncidentQuery, SQLiteStore
from sidecar.web import create_app
from tests.conftest import API_TOKEN, DATA, WEBHOOK_TOKEN, write_config
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.stores import FlakyStore
from tests.payloads import alert, body, notification

T0 = 1_700_000_600.0
ROUTING_KEY = "PR0PR0UT1NGKEYPR0PR0UT1NGKEY0000"
TIER_KEY = "PR0T1ERKEYPR0T1ERKEYPR0T1ERKEY00"
SECRET = "property-webhook-secret"
GROUPS = ("Alpha", "Beta")
# Alerts of a group: the label set decides the severity in the mini rules.
KINDS = {"plain": {}, "warning": {"severity": "warning"}, "critical": {"severity": "critical"}}
# Two acknowledgment targets, both histogram buckets, so either reload applies live.
RULE_VARIANTS = ("acknowledge: 5m, update: 15m", "acknowledge: 10m, update: 15m")


def dedup_key(group_key: str) -> str:
    return hashlib.sha256(group_key.encode()).hexdigest()


@dataclass
class AlertModel:
    """What Alertmanager knows of one alert of a group."""

    fingerprint: str
    labels: dict[str, str]
    starts: float
    ends: float | None = None


@dataclass
class GroupModel:
    """One Alertmanager group: its alerts, what was sent, whether it is silenced."""

    name: str
    alerts: dict[str, AlertModel] = field(default_factory=dict)
    sent: list[bytes] = field(default_factory=list)
    silenced: bool = False
    lose_next: bool = False

    @property
    def key(self) -> str:
        return f'{{}}:{{alertname="{self.name}"}}'

    def firing(self) -> list[AlertModel]:
        return [a for a in self.alerts.values() if a.ends is None]


class PagingMachine(RuleBasedStateMachine):
    """The sidecar under Alertmanager's, PagerDuty's and people's habits."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="paging-props-"))
        self.clock = FakeClock(T0)
        self.groups = {name: GroupModel(name) for name in GROUPS}
        self.failed: list[bytes] = []  # answered 503: Alertmanager sends them again
        self.breaches_before = 0.0  # counted by earlier runs of the sidecar
        self.variant = 0
        self.pd = FakePagerDuty()
        self.components: Components | None = None
        self.store: FlakyStore | None = None
        self.client: TestClient[Any, Any] | None = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    # -- the sidecar's life ---------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.run(self.pd.start())
        rules = self.tmp / "rules.yaml"
        rules.write_text(
            (DATA / "rules-mini.yaml")
            .read_text()
            .replace(
                "sla: {detect: 5m, acknowledge: 5m, update: 15m, resolve: 1h, postmortem: 24h}}",
                "sla: {detect: 5m, acknowledge: 5m, update: 15m, resolve: 1h, postmortem: 24h}, "
                "escalation: [{after: 10m, tier: lead, while: unacknowledged}]}",
            )
        )
        write_config(
            self.tmp,
            {
                "pagerduty": {
                    "events_url": self.pd.events_url,
                    "api_url": self.pd.api_url,
                    "api_token": self.pd.api_token,
                    "webhook_secret": SECRET,
                    "routing_key": ROUTING_KEY,
                    "tier_routing_keys": {"lead": {"key": TIER_KEY}},
                    "timeout": "1s",
                    "rate_limit_per_minute": 60000,
                },
                "alertmanager": {"url": "http://127.0.0.1:9", "poll_interval": "1h"},
                "incidents": {"dedup_window": "7d"},
            },
        )
        self.run(self._boot())

    async def _boot(self) -> None:
        config = load_config(self.tmp / "config.yaml")
        assert config.sqlite_path is not None
        self.store = FlakyStore(SQLiteStore(config.sqlite_path))
        self.components = build_components(
            config, clock=self.clock, registry=CollectorRegistry(), store=self.store
        )
        self.client = TestClient(TestServer(create_app(self.components)))
        await self.client.start_server()

    async def _shutdown(self) -> None:
        if self.client is not None:
            assert self.store is not None
            self.store.down = self.store.fail_writes = False
            await self.client.close()
            self.client = None

    def teardown(self) -> None:
        try:
            self.run(self._shutdown())
            self.run(self.pd.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def c(self) -> Components:
        assert self.components is not None
        return self.components

    # -- Alertmanager ---------------------------------------------------------

    async def _post(self, payload: bytes) -> int:
        assert self.client is not None
        resp = await self.client.post(
            "/webhook/alertmanager",
            data=payload,
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
        )
        await resp.read()
        assert resp.status in (200, 503), resp.status
        if resp.status == 503:
            self.failed.append(payload)
        return resp.status

    def _send(self, group: GroupModel, status: str, alerts: list[AlertModel]) -> int | None:
        payload = body(
            notification(
                *(
                    alert(
                        group.name,
                        fingerprint=a.fingerprint,
                        status="firing" if a.ends is None else "resolved",
                        starts=a.starts,
                        ends=a.ends,
                        labels=a.labels,
                    )
                    for a in alerts
                ),
                group_key=group.key,
                status=status,
            )
        )
        group.sent.append(payload)
        if group.silenced:
            return None  # silenced alerts send no notification at all
        if status == "firing" and group.lose_next:
            group.lose_next = False  # lost on the way; a late copy may come
            return None
        status_code: int = self.run(self._post(payload))
        return status_code

    @rule(name=st.sampled_from(GROUPS), kind=st.sampled_from(sorted(KINDS)))
    def fire(self, name: str, kind: str) -> None:
        group = self.groups[name]
        fingerprint = hashlib.sha256(f"{name}/{kind}".encode()).hexdigest()[:16]
        known = group.alerts.get(fingerprint)
        if known is None or known.ends is not None:
            # Alertmanager gives an alert that fires again a new startsAt.
            starts = self.clock.now() - 30
            if known is not None and known.ends is not None:
                starts = max(starts, known.ends + 1)
            group.alerts[fingerprint] = AlertModel(fingerprint, dict(KINDS[kind]), starts)
        self._send_firing(group)

    @rule(name=st.sampled_from(GROUPS))
    def repeat(self, name: str) -> None:
        """Alertmanager's next notification of a group that fires on, unchanged."""
        group = self.groups[name]
        if group.firing():
            self._send_firing(group)

    def _send_firing(self, group: GroupModel) -> None:
        if self._send(group, "firing", group.firing()) == 200:
            # Never paged less than by Alertmanager's pagerduty_configs: what it
            # sends firing has an open incident, also after a person resolved one
            # while these alerts fired (Alertmanager's trigger pages again then).
            assert self.c.book.has_open(group.key), f"{group.key}: firing, and no incident"

    @rule(name=st.sampled_from(GROUPS))
    def resolve(self, name: str) -> None:
        group = self.groups[name]
        firing = group.firing()
        if not firing:
            return
        for a in firing:
            a.ends = max(a.starts, self.clock.now() - 5)
        self._send(group, "resolved", firing)
        group.silenced = False  # the silence expires with its alerts

    @rule(name=st.sampled_from(GROUPS))
    def lose_next_firing(self, name: str) -> None:
        self.groups[name].lose_next = True

    @rule(
        name=st.sampled_from(GROUPS),
        status=st.sampled_from(["firing", "resolved"]),
        age=st.integers(0, 2),
        peer=st.integers(1, 2),
    )
    def ha_duplicate(self, name: str, status: str, age: int, peer: int) -> None:
        """A peer's copy, or a late one, of one of the last notifications of the group."""
        sent = [p for p in reversed(self.groups[name].sent) if orjson.loads(p)["status"] == status]
        if not sent:
            return
        payload = orjson.loads(sent[min(age, len(sent) - 1)])
        payload["externalURL"] = f"http://alertmanager-{peer}.example:9093"
        self.run(self._post(orjson.dumps(payload)))

    @precondition(lambda self: bool(self.failed))
    @rule()
    def alertmanager_retries(self) -> None:
        failed, self.failed = self.failed, []
        for payload in failed:
            self.run(self._post(payload))

    # -- silences -------------------------------------------------------------

    def _listed(self) -> tuple[list[GettableAlert], dict[str, GettableSilence]]:
        listed = []
        for group in self.groups.values():
            for a in group.firing():
                silenced_by = [f"silence-{group.name}"] if group.silenced else []
                state = "suppressed" if group.silenced else "active"
                listed.append(
                    GettableAlert(
                        fingerprint=a.fingerprint,
                        status=AlertStatus(state=state, silencedBy=silenced_by),
                    )
                )
        silences = {
            f"silence-{g.name}": GettableSilence(
                id=f"silence-{g.name}", createdBy="ana", status=SilenceStatus(state="active")
            )
            for g in self.groups.values()
        }
        return listed, silences

    @rule(name=st.sampled_from(GROUPS))
    def silence(self, name: str) -> None:
        group = self.groups[name]
        if group.firing():
            group.silenced = True
        self.poll_silences()

    @rule()
    def poll_silences(self) -> None:
        watcher = self.c.silences
        assert watcher is not None
        listed, silences = self._listed()
        with contextlib.suppress(StoreUnavailable):  # polled again later
            self.run(watcher.apply(listed, silences))

    # -- people ---------------------------------------------------------------

    def _open_incident(self, name: str) -> Any:
        for inc in self.c.book.open_incidents():
            if inc.key == self.groups[name].key:
                return inc
        return None

    async def _api(self, path: str, payload: dict[str, str]) -> int:
        assert self.client is not None
        resp = await self.client.post(
            path, json=payload, headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        await resp.read()
        assert resp.status in (200, 409, 503), (path, resp.status)
        return resp.status

    @rule(name=st.sampled_from(GROUPS), action=st.sampled_from(["acknowledge", "updates"]))
    def person_uses_the_api(self, name: str, action: str) -> None:
        inc = self._open_incident(name)
        if inc is not None:
            path = f"/api/v1/incidents/{inc.id}/{action}"
            self.run(self._api(path, {"actor": "ana", "message": "looking"}))

    @rule(name=st.sampled_from(GROUPS), newest=st.booleans())
    def review_done(self, name: str, newest: bool) -> None:
        key = self.groups[name].key
        reviews = sorted(
            (inc for inc in self.c.book.pending_reviews() if inc.key == key),
            key=lambda inc: inc.triggered_at,
        )
        if reviews:
            inc = reviews[-1 if newest else 0]
            self.run(self._api(f"/api/v1/incidents/{inc.id}/postmortem", {"actor": "ana"}))

    @rule(name=st.sampled_from(GROUPS))
    def acknowledge_in_pagerduty(self, name: str) -> None:
        assert self.client is not None
        found = self.pd.open_incident(dedup_key(self.groups[name].key))
        if found is None or found.status != "triggered":
            return
        event = self.pd.acknowledge_incident(found.id)
        url = str(self.client.make_url("/webhook/pagerduty"))
        status = self.run(self.pd.deliver(url, event, SECRET))
        assert status in (200, 202, 503), status

    @rule(name=st.sampled_from(GROUPS), in_pagerduty=st.booleans(), resent=st.booleans())
    def person_resolves(self, name: str, in_pagerduty: bool, resent: bool) -> None:
        """Resolved by hand, its alerts firing or not: Alertmanager pages again for those
        still firing, at its next notification of the group (``resent``: right after)."""
        assert self.client is not None
        if not in_pagerduty:
            inc = self._open_incident(name)
            if inc is not None:
                self.run(self._api(f"/api/v1/incidents/{inc.id}/resolve", {"actor": "ana"}))
        else:
            found = self.pd.open_incident(dedup_key(self.groups[name].key))
            if found is not None:
                event = self.pd.resolve_incident(found.id)
                url = str(self.client.make_url("/webhook/pagerduty"))
                status = self.run(self.pd.deliver(url, event, SECRET))
                assert status in (200, 202, 503), status
        if resent:
            self.repeat(name)

    # -- time, deliveries and operations --------------------------------------

    @property
    def worker(self) -> OutboxWorker:
        assert self.c.outbox is not None
        return self.c.outbox

    @rule(seconds=st.sampled_from([1.0, 30.0, 301.0, 700.0, 3700.0]))
    def time_passes(self, seconds: float) -> None:
        # A send takes at most its timeout, far less than its lease: the fake
        # clock must not jump over one still in flight.
        self.run(self.worker.idle())
        self.clock.advance(seconds)
        with contextlib.suppress(StoreUnavailable):  # the scheduler tries again
            self.run(self.c.scheduler.run_due())

    @rule()
    def deliver_to_pagerduty(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # the worker tries again
            self.run(self.worker.drain())

    @rule(writes=st.booleans(), everything=st.booleans())
    def store_trouble(self, writes: bool, everything: bool) -> None:
        assert self.store is not None
        self.store.fail_writes = writes
        self.store.down = everything and writes

    @rule()
    def reload_rules(self) -> None:
        rules = self.c.config.rules_file
        old, new = RULE_VARIANTS[self.variant], RULE_VARIANTS[1 - self.variant]
        rules.write_text(rules.read_text().replace(old, new, 1))
        self.variant = 1 - self.variant
        assert self.c.reload_rules()

    @rule()
    def restart(self) -> None:
        # What is due is done before stopping, with the store's trouble over (as
        # stopping does): otherwise the next start does it, racing the comparison.
        assert self.store is not None
        self.store.down = self.store.fail_writes = False
        self.run(self.c.scheduler.run_due())
        before = self._snapshot()
        self.breaches_before += self._breaches_counted()
        self.run(self._shutdown())
        self.run(self._boot())
        assert self._snapshot() == before, "a committed change was lost across a restart"

    def _snapshot(self) -> dict[str, tuple[Any, ...]]:
        book = self.c.book
        return {
            inc.id: (
                inc.state,
                inc.severity,
                inc.seq,
                tuple(sorted(inc.breaches)),
                tuple(sorted(inc.escalated)),
            )
            for inc in [*book.open_incidents(), *book.pending_reviews()]
        }

    def _breaches_counted(self) -> float:
        total = 0.0
        for family in self.c.registry.collect():
            if family.name == "incident_sla_breaches":
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    # -- the guarantees -------------------------------------------------------

    @invariant()
    def one_open_incident_per_key(self) -> None:
        if self.components is None:
            return
        keys = Counter(inc.key for inc in self.c.book.open_incidents())
        assert all(n == 1 for n in keys.values()), keys

    @invariant()
    def what_is_stored_holds_the_guarantees(self) -> None:
        if self.components is None:
            return
        self.run(self._check_store())

    async def _check_store(self) -> None:
        assert self.store is not None
        store = self.store.inner
        incidents = await store.list_incidents(IncidentQuery(limit=100_000))
        by_key: dict[str, list[tuple[int, str, str]]] = {}
        holders: dict[tuple[str, float], list[Any]] = {}
        breach_events = 0
        for inc in incidents:
            timeline = await store.timeline(inc.id)
            assert [e.seq for e in timeline] == list(range(1, inc.seq + 1)), inc.id
            breach_events += sum(1 for e in timeline if e.kind == "sla_breached")
            once = Counter(
                e.data["sla"] for e in timeline if e.kind == "sla_breached" and e.data["sla"]
            )
            assert all(n == 1 for sla, n in once.items() if sla != "update"), once
            for instance in inc.instances():
                holders.setdefault(instance, []).append(inc)
            outbox = await store.outbox_for_incident(inc.id)
            opened = timeline[0]
            if not opened.data.get("firing_notification_missed"):
                assert any(o.action == "trigger" for o in outbox), f"{inc.id} never paged"
            for o in outbox:
                by_key.setdefault(o.dedup_key, []).append((o.id, o.incident_id, o.action))
        for (fingerprint, _), incs in holders.items():
            # One incident per alert instance (no duplicate pages), unless a person
            # resolved the earlier one while it still fired: Alertmanager's own
            # pagerduty_configs pages again for it then, and so does the sidecar.
            incs.sort(key=lambda inc: inc.triggered_at)
            for earlier in incs[:-1]:
                assert earlier.state == "resolved", "an alert instance in two incidents"
                assert earlier.alerts[fingerprint].status == "firing", (
                    "an alert instance in two incidents"
                )
        assert breach_events == self.breaches_before + self._breaches_counted()
        for key, rows in by_key.items():
            check_incident_order(key, [(incident, action) for _, incident, action in sorted(rows)])
            check_received_order(key, [e.event_action for e in self.pd.events_for(key)])


def check_incident_order(key: str, events: list[tuple[str, str]]) -> None:
    """Queued on one dedup key: each incident starts with a trigger, ends at its resolve.

    ``events`` are (incident, action) in send order; a later incident on the
    key starts only after the earlier one's resolve.
    """
    current: str | None = None
    resolved: set[str] = set()
    for incident, action in events:
        assert incident not in resolved, f"{key}: {action} after the resolve: {events}"
        if incident != current:
            assert current is None or current in resolved, f"{key}: interleaved: {events}"
            assert action == "trigger", f"{key}: {incident} starts with {action}: {events}"
            current = incident
        if action == "resolve":
            resolved.add(incident)


def check_received_order(key: str, actions: list[str]) -> None:
    """Received by PagerDuty on one dedup key: nothing but a new trigger after a resolve."""
    open_alert = False
    for action in actions:
        assert open_alert or action == "trigger", f"{key}: {action} with no open alert: {actions}"
        open_alert = action != "resolve"


PagingMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    # The same sequences on every run: CI is reproducible, and a failure here
    # is a failure everywhere. Raise max_examples locally to explore further.
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_paging_guarantees_hold_under_any_sequence = PagingMachine.TestCase
