"""Builds the service's parts from a configuration, each injectable for tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from sidecar.clock import Clock, SystemClock
from sidecar.config import Config
from sidecar.errors import ConfigError, ConfigProblem
from sidecar.incidents import IncidentBook
from sidecar.metrics import Metrics
from sidecar.outbox import OutboxWorker
from sidecar.pagerduty.inbound import PagerDutyInbound
from sidecar.paging import Pager
from sidecar.replay import ReplayCache
from sidecar.retry import RetryPolicy
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

    def reload_rules(self) -> bool:
        """Reload the rules file; on any problem keep the last good rules and return False."""
        path = self.config.rules_file
        try:
            rules = load_rules(path)
            _check_compatible(self.rules, rules, str(path))
        except ConfigError as exc:
            log.error(
                "rules reload refused; keeping the last good rules",
                extra={"problems": [str(p) for p in exc.problems]},
            )
            return False
        self.rules = rules
        self.book.set_classifier(rules)
        log.info("rules reloaded", extra={"rules_file": str(path), "preset": rules.name})
        return True


def _check_compatible(old: RuleSet, new: RuleSet, file: str) -> None:
    # Severities and teams are metric label values and SLA buckets fixed at
    # start; changing them needs a restart, rules and ownership do not.
    problems = []
    if [s.name for s in old.severities] != [s.name for s in new.severities]:
        problems.append(ConfigProblem(file, "severities", "changing severities needs a restart"))
    if set(new.teams) - set(old.teams):
        problems.append(ConfigProblem(file, "teams", "adding teams needs a restart"))
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
    """Wire rules, store, metrics, incident book and service together (nothing started)."""
    rules = rules or load_rules(config.rules_file)
    clock = clock or SystemClock()
    registry = registry if registry is not None else CollectorRegistry()
    s = config.settings
    store = store or open_store(
        s.store.url, sqlite_path=config.sqlite_path, synchronous=s.store.synchronous
    )
    tiers = sorted({step.tier for sev in rules.severities for step in sev.escalation})
    metrics = Metrics(
        registry,
        severities=[sev.name for sev in rules.severities],
        teams=rules.teams,
        tiers=tiers,
        sla_thresholds=rules.sla_thresholds(),
    )
    book = IncidentBook(
        rules, key_mode=s.incidents.key, dedup_window=s.incidents.dedup_window.total_seconds()
    )
    metrics.track_open_incidents(lambda: book.open_counts)
    metrics.track_open_breached(book.breached_counts)
    _check_routing(config, rules)
    pd = s.pagerduty
    pager = Pager(
        book,
        routing_names=set(config.secrets.routing_keys),
        external_url=s.server.external_url,
    )
    service = IncidentService(book, store, metrics, clock, max_batch=s.store.max_batch, pager=pager)
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
    service.on_reload.append(scheduler.rebuild)
    outbox = None
    if pager.enabled:
        outbox = OutboxWorker(
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
        service.on_outbox = outbox.wake
        worker = outbox
        metrics.track_outbox_pending(lambda: float(worker.pending))
    else:
        metrics.track_outbox_pending(lambda: 0.0)
    inbound = PagerDutyInbound(
        store, book, api_url=pd.api_url, api_token=config.secrets.pagerduty_api_token
    )
    return Components(
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
    )


def _check_routing(config: Config, rules: RuleSet) -> None:
    pd = config.settings.pagerduty
    tiers = {step.tier for sev in rules.severities for step in sev.escalation}
    problems = [
        ConfigProblem(
            str(config.path),
            f"pagerduty.team_routing_keys.{team}",
            f"team {team!r} is not declared in {config.rules_file}",
        )
        for team in pd.team_routing_keys
        if team not in rules.teams
    ] + [
        ConfigProblem(
            str(config.path),
            f"pagerduty.tier_routing_keys.{tier}",
            f"tier {tier!r} is not used by any escalation step in {config.rules_file}",
        )
        for tier in pd.tier_routing_keys
        if tier not in tiers
    ]
    if problems:
        raise ConfigError(problems)
