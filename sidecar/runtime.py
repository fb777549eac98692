"""Builds the service's parts from a configuration, each injectable for tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from sidecar.clock import Clock, SystemClock
from sidecar.config import Config
from sidecar.early import EarlyAnswers
from sidecar.errors import ConfigError, ConfigProblem
from sidecar.follow import ChangeFeed, ReplicaFollower
from sidecar.incidents import IncidentBook, Numbering, escalation_outcome
from sidecar.metrics import Metrics
from sidecar.notify.outbox import OutboxWorker
from sidecar.notify.pagerduty import Pager, pagerduty_outbox
from sidecar.notify.retry import RetryPolicy
from sidecar.notify.wiring import (
    build_integrations,
    integration_problems,
    notification_actions,
    reminder_leads,
    wake_all,
)
from sidecar.pagerduty.inbound import PagerDutyInbound
from sidecar.replay import ReplayCache
from sidecar.routing import routed_tiers, routing_problems, routing_warnings
from sidecar.rules import RuleSet, load_rules
from sidecar.scheduler import DeadlineScheduler
from sidecar.service import IncidentService
from sidecar.silences import SilenceWatcher
from sidecar.store import Store, open_store

log = logging.getLogger("sidecar")


@dataclass(slots=True)
class Components:
    """Everything a running sidecar is made of."""

    config: Config
    rules: RuleSet
    store: Store
    clock: Clock
    registry: CollectorRegistry
    metrics: Metrics
    book: IncidentBook
    service: IncidentService
    pager: Pager
    outbox: OutboxWorker | None
    inbound: PagerDutyInbound
    scheduler: DeadlineScheduler
    silences: SilenceWatcher | None
    replays: ReplayCache
    # Replicas on one PostgreSQL: what the others commit, read as it commits.
    follower: ReplicaFollower | None = None

    # Called with the new rules once a reload is accepted, in order: the book
    # classifies with them, the scheduler moves every deadline to them.
    on_reload: list[Callable[[RuleSet], None]] = field(default_factory=list)
    # Every integration's outbox worker, PagerDuty's (``outbox``) included.
    outboxes: list[OutboxWorker] = field(default_factory=list)

    def failed_tasks(self) -> list[str]:
        """Names of the background loops that died (liveness fails on any)."""
        tasks = [*self.service.tasks, *self.scheduler.tasks]
        for part in (*self.outboxes, self.silences, self.follower):
            if part is not None:
                tasks += part.tasks
        return [task.name for task in tasks if task.died]

    def reload_rules(self) -> bool:
        """Reload the rules file (SIGHUP); on any problem keep the last good rules, return False.

        A reload applies whole or not at all: what cannot change while running
        (severities, teams, SLA thresholds that are no histogram bucket) is
        refused with the reason, and so is a page or escalation that would reach nobody.
        """
        path = self.config.rules_file
        m = self.metrics
        try:
            rules = load_rules(path)
            _check_live_change(self.rules, rules, str(path), m.buckets)
            # The same refusal as at start: no page or escalation may reach nobody.
            problems = routing_problems(self.config, rules)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            m.rules_reload_successful.set(0)
            reasons = [str(p) for p in exc.problems]
            log.error(
                "rules reload refused; keeping the last good rules", extra={"problems": reasons}
            )
            return False
        self.rules = rules
        for hook in self.on_reload:
            hook(rules)
        m.rules_reload_successful.set(1)
        m.rules_reload_timestamp.set(self.clock.now())
        log.info("rules reloaded", extra={"rules_file": str(path), "preset": rules.name})
        return True


def _check_live_change(old: RuleSet, new: RuleSet, file: str, buckets: Collection[float]) -> None:
    """Refuse what a running sidecar cannot take: metric label values and buckets are fixed."""
    problems = []
    if [s.name for s in old.severities] != [s.name for s in new.severities]:
        problems.append(ConfigProblem(file, "severities", "changing severities needs a restart"))
    added = sorted(set(new.teams) - set(old.teams))
    if added:
        problems.append(
            ConfigProblem(file, "teams", f"adding teams ({', '.join(added)}) needs a restart")
        )
    for policy in new.severities:
        for name in type(policy.sla).model_fields:
            value = getattr(policy.sla, name)
            if value is not None and value.total_seconds() not in buckets:
                problems.append(
                    ConfigProblem(
                        file,
                        f"severities.{policy.name}.sla.{name}",
                        f"{value.total_seconds():g}s is no histogram bucket yet "
                        "(the le= series could not count it): a new threshold needs a restart",
                    )
                )
    if problems:
        raise ConfigError(problems)


def build_components(
    config: Config,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    store: Store | None = None,
    rules: RuleSet | None = None,
) -> Components:
    """Wire rules, store, metrics, incident book and service together (nothing started).

    Refuses (:class:`ConfigError`) a configuration whose pages or escalations
    would reach nobody (see :func:`sidecar.routing.routing_problems`); without
    any PagerDuty key, logs one warning per escalation tier that would page.
    """
    rules = rules or load_rules(config.rules_file)
    problems = routing_problems(config, rules)
    problems += integration_problems(
        config, rules.name, [sev.name for sev in rules.severities], rules.teams
    )
    if problems:
        raise ConfigError(problems)
    for warning in routing_warnings(config, rules):
        log.warning(warning, extra={"rules_file": rules.source})
    clock = clock or SystemClock()
    registry = registry if registry is not None else CollectorRegistry()
    s = config.settings
    store = store or open_store(
        s.store.url, sqlite_path=config.sqlite_path, synchronous=s.store.synchronous
    )
    names = set(config.secrets.routing_keys)
    routed = routed_tiers(names)
    # (severity, tier, outcome) of each ladder step, and of each escalation
    # rule at every severity (a rule escalates whatever the severity).
    steps = {
        (sev.name, step.tier, escalation_outcome(step.record_only, step.tier in routed))
        for sev in rules.severities
        for step in sev.escalation
    } | {
        (sev.name, rule.tier, escalation_outcome(rule.record_only, rule.tier in routed))
        for sev in rules.severities
        for rule in rules.spec.escalation_rules
    }
    tiers = sorted({tier for _, tier, _ in steps})
    metrics = Metrics(
        registry,
        severities=[sev.name for sev in rules.severities],
        teams=rules.teams,
        tiers=tiers,
        # The one outcome each step can have with this configuration.
        escalation_outcomes=sorted(steps),
        sla_thresholds=rules.sla_thresholds(),
        notifications=notification_actions(config),
    )
    pager = Pager(
        rules, key_mode=s.incidents.key, routing_names=names, external_url=s.server.external_url
    )
    integrations = build_integrations(config, rules, rules.name, store, metrics, clock)
    book = IncidentBook(
        rules,
        key_mode=s.incidents.key,
        dedup_window=s.incidents.dedup_window.total_seconds(),
        routed_tiers=routed,
        # Commands plan their own notifications: the service only commits them.
        planners=[pager, *integrations.planners],
        numbering=Numbering(ZoneInfo(s.incidents.number_timezone)),
        reminders=reminder_leads(config, [sev.name for sev in rules.severities]),
    )
    metrics.track_open_incidents(lambda: book.open_counts)
    metrics.track_open_breached(book.breached_counts)
    pd = s.pagerduty
    service = IncidentService(book, store, metrics, clock, max_batch=s.store.max_batch)
    scheduler = DeadlineScheduler(book, service, clock)
    silences = None
    if s.alertmanager.url and s.alertmanager.silences_acknowledge:
        silences = SilenceWatcher(
            book,
            service,
            clock,
            url=s.alertmanager.url,
            interval=s.alertmanager.poll_interval.total_seconds(),
            comment_prefix=s.alertmanager.silence_comment_prefix,
        )
    service.on_commit.append(scheduler.on_commit)
    service.on_restore.append(scheduler.rebuild)
    service.on_refresh.append(scheduler.on_refresh)
    follower = None
    if store.shared and isinstance(store, ChangeFeed):
        follower = ReplicaFollower(store, service)
        service.early = EarlyAnswers(gate=follower.current)
    outbox = None
    if pager.enabled:
        outbox = pagerduty_outbox(
            store,
            metrics,
            clock,
            events_url=pd.events_url,
            routing_keys=config.secrets.routing_keys,
            timeout=pd.timeout.total_seconds(),
            rate_limit_per_minute=pd.rate_limit_per_minute,
            rate_limit_window=pd.rate_limit_window.total_seconds(),
            retry=RetryPolicy(
                initial=pd.retry.initial.total_seconds(),
                maximum=pd.retry.max.total_seconds(),
                rate_limited=pd.retry.rate_limited.total_seconds(),
            ),
        )
        worker = outbox
        metrics.track_outbox_pending(lambda: float(worker.pending))
    else:
        metrics.track_outbox_pending(lambda: 0.0)
    workers = [w for w in (outbox, *integrations.workers) if w is not None]
    service.on_outbox = wake_all(workers)
    metrics.track_notifications_pending(lambda: {w.sender.name: float(w.pending) for w in workers})
    inbound = PagerDutyInbound(
        store, book, api_url=pd.api_url, api_token=config.secrets.pagerduty_api_token
    )
    metrics.rules_reload_timestamp.set(clock.now())
    components = Components(
        config,
        rules,
        store,
        clock,
        registry,
        metrics,
        book,
        service,
        pager,
        outbox,
        inbound,
        scheduler,
        silences,
        # Remember bodies no longer than incidents are remembered against duplicates.
        ReplayCache(ttl=min(3600.0, s.incidents.dedup_window.total_seconds())),
        follower=follower,
        outboxes=workers,
    )
    components.on_reload += [
        book.set_classifier,
        pager.set_rules,
        *(planner.set_rules for planner in integrations.planners),
        lambda _rules: scheduler.rebuild(),
        # A body that changed nothing may change something now (an alert no longer dropped).
        lambda _rules: components.replays.clear(),
    ]
    forget = _replays_forgetter(book, components.replays)
    service.on_commit.append(forget)
    service.on_refresh.append(forget)  # another replica's (incidents.closed counts it too)
    service.on_restore.append(forget)
    return components


def _replays_forgetter(book: IncidentBook, replays: ReplayCache) -> Callable[..., None]:
    """A hook that forgets the bodies applied once an incident closed with alerts firing.

    A person resolved it while they fired: Alertmanager's next resend of them,
    byte for byte a body applied before, now opens an incident and pages (see
    ``incidents.closed``), so it must not be answered as a repeat. Rare enough
    that the whole cache goes.
    """
    seen = book.closed.closed_firing

    def forget(*_args: object) -> None:
        nonlocal seen
        if book.closed.closed_firing != seen:
            seen = book.closed.closed_firing
            replays.clear()

    return forget
