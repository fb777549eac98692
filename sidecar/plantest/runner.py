"""Running plan test files: each scenario on a simulated clock, expectations compared with a diff.

Every test starts afresh: the real rules, incident book and PagerDuty planner
(:class:`~sidecar.simulate.run.Simulation`), fed by Alertmanager's grouping as
the file configures it. At each evaluation time the incidents opened so far
(in opening order) and the notifications queued so far (in order) are
compared with the expectations, on the fields the expectation gives; a
mismatch is shown as a unified diff, with the timelines of the incidents.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sidecar.durations import format_duration
from sidecar.errors import ConfigError, IncidentNotFound, InvalidRequest, InvalidTransition
from sidecar.incidents import Incident
from sidecar.matchers import parse_matchers
from sidecar.plantest.model import Action, Expectation, PlanTest, TestFile
from sidecar.simulate.alertmanager import Dispatcher, SimAlert, flat_route
from sidecar.simulate.plan import Plan, plan_from_config, plan_from_rules
from sidecar.simulate.run import Sent, Silence, Simulation
from sidecar.yamlfile import load_yaml, problems_from_validation


@dataclass(slots=True)
class Outcome:
    """What one test gave: its failures, each a readable block of text."""

    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every expectation held."""
        return not self.failures


class ActionFailed(Exception):
    """An action could not run (no incident matches, or it is resolved)."""


def load_test_file(path: Path) -> tuple[TestFile, Plan]:
    """Read and validate a test file and the plan it names; ConfigError with ``file:line``."""
    document = load_yaml(path)
    try:
        spec = TestFile.model_validate(document.data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, str(path), document.position)
        raise ConfigError(problems) from exc
    base = path.parent
    if spec.config is not None:
        plan = plan_from_config(base / spec.config)
    else:
        assert spec.rules is not None  # the model requires one of them
        plan = plan_from_rules(base / spec.rules, spec.pagerduty.routing)
    if spec.config is not None and spec.pagerduty.routing is not None:
        plan = dataclasses.replace(plan, routing_names=frozenset(spec.pagerduty.routing))
    return spec, plan


def run_file(spec: TestFile, plan: Plan) -> list[Outcome]:
    """Run every test of a file."""
    return [run_test(spec, plan, test) for test in spec.tests]


def run_test(spec: TestFile, plan: Plan, test: PlanTest) -> Outcome:
    """Run one scenario and compare each expectation."""
    start = spec.start.timestamp()
    am = test.alertmanager or spec.alertmanager
    route = flat_route(
        group_by=am.group_by,
        group_wait=am.group_wait,
        group_interval=am.group_interval,
        repeat_interval=am.repeat_interval,
    )
    sim = Simulation(
        plan.rules,
        Dispatcher(route, external_url="http://alertmanager.test"),
        start=start,
        routing_names=plan.routing_names,
        key_mode=plan.key_mode,
        dedup_window=plan.dedup_window,
        number_timezone=plan.number_timezone,
        reminders=plan.reminders,
        planners=plan.planners,
    )
    outcome = Outcome(test.name)
    try:
        for alert in test.alerts:
            sim.add_alerts(
                SimAlert(
                    dict(alert.labels),
                    start + f.from_.total_seconds(),
                    None if f.to is None else start + f.to.total_seconds(),
                    dict(alert.annotations),
                    sent_at=start + (f.from_ + alert.for_).total_seconds(),
                )
                for f in alert.firing
            )
        for action in test.actions:
            _schedule(sim, action, start, outcome)
        for expectation in sorted(test.expect, key=lambda e: e.at):
            sim.run_until(start + expectation.at.total_seconds())
            failure = _compare(sim, expectation, start)
            if failure:
                outcome.failures.append(failure)
    finally:
        sim.close()
    return outcome


def _schedule(sim: Simulation, action: Action, start: float, outcome: Outcome) -> None:
    at = start + action.at.total_seconds()
    when = format_duration(action.at)
    if action.silence is not None:
        s = action.silence
        matchers = tuple(m for line in s.matchers for m in parse_matchers(line))
        end = at + s.duration.total_seconds()
        sim.add_silence(Silence(matchers, at, end, s.created_by, s.comment))
        return

    def run(now: float) -> None:
        try:
            # A role may be given after resolution too (the review's owner comes late).
            inc = _select(sim, action.incident, resolved=action.assign_role is not None)
            sim.commit(_command(sim, action, inc, now))
        except IncidentNotFound:
            outcome.failures.append(f"action at {when}: the incident is resolved")
        except (ActionFailed, InvalidRequest, InvalidTransition) as exc:
            outcome.failures.append(f"action at {when}: {exc}")

    sim.schedule(at, run)


def _command(sim: Simulation, action: Action, inc: Incident, now: float) -> Any:
    book = sim.book
    if action.acknowledge is not None:
        a = action.acknowledge
        return book.acknowledge(inc.id, actor=a.actor, source="api", now=now, message=a.message)
    if action.resolve is not None:
        r = action.resolve
        return book.resolve(inc.id, actor=r.actor, source="api", now=now, message=r.message)
    if action.status_update is not None:
        u = action.status_update
        return book.record_update(
            inc.id, actor=u.actor, source="api", now=now, message=u.message, status=u.status
        )
    if action.assign_role is not None:
        r2 = action.assign_role
        return book.assign_roles(inc, {r2.role: r2.person}, actor=r2.actor, source="api", now=now)
    if action.change_severity is not None:
        c = action.change_severity
        return book.change_severity(
            inc.id, c.severity, actor=c.actor, source="api", now=now, reason=c.reason
        )
    if action.escalate is not None:
        e = action.escalate
        return book.escalate_to(
            inc.id, e.tier, actor=e.actor, source="api", now=now, reason=e.reason
        )
    raise ActionFailed("this action is not supported")  # the model allows no other


def _select(sim: Simulation, selector: dict[str, str], *, resolved: bool = False) -> Incident:
    """The open incident whose labels (or one of whose alerts' labels) match ``selector``.

    With ``resolved``, the latest matching incident, open or resolved.
    """
    found = [
        inc
        for inc in sim.incidents.values()
        if (resolved or inc.is_open)
        and (
            _has(inc.labels, selector) or any(_has(a.labels, selector) for a in inc.alerts.values())
        )
    ]
    what = f"incident {selector}" if selector else "incident"
    if not found:
        raise ActionFailed(f"no {'' if resolved else 'open '}{what} to act on")
    if resolved:
        return found[-1]
    if len(found) > 1:
        raise ActionFailed(f"{len(found)} open incidents match; select one with incident: {{...}}")
    return found[0]


def _has(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _compare(sim: Simulation, expectation: Expectation, start: float) -> str:
    """An empty string when the expectation holds, else the failure's text with a diff."""
    blocks: list[str] = []
    if expectation.incidents is not None:
        reminders: Counter[str] = Counter(
            change.incident.id
            for _, change in sim.changes
            for event in change.events
            if event.kind == "update_reminder"
        )
        actual = [_incident(inc, reminders) for inc in sim.incidents.values()]
        wanted = [e.model_dump(exclude_none=True) for e in expectation.incidents]
        blocks += _diff("incidents", wanted, actual)
    if expectation.notifications is not None:
        sent = [_sent(s, start) for s in sim.sent]
        wanted = []
        for n in expectation.notifications:
            item = n.model_dump(exclude_none=True)
            if n.at is not None:
                item["at"] = format_duration(n.at)
            wanted.append(item)
        blocks += _diff("notifications", wanted, sent)
    if not blocks:
        return ""
    when = format_duration(expectation.at)
    timelines = [_timeline(sim, inc, start) for inc in sim.incidents.values()]
    return "\n".join([f"at {when}:", *blocks, *timelines])


def _incident(inc: Incident, reminders: Counter[str]) -> dict[str, Any]:
    return {
        "severity": inc.severity,
        "team": inc.team,
        "state": inc.state,
        "breaches": sorted(inc.breaches),
        "escalations": sorted(inc.escalated),
        "status": inc.status,
        "number": inc.number,
        "roles": dict(inc.roles),
        "reminders": reminders.get(inc.id, 0),
    }


def _sent(sent: Sent, start: float) -> dict[str, Any]:
    item: dict[str, Any] = {
        "at": format_duration(timedelta(seconds=round(sent.at - start, 3))),
        "integration": sent.integration,
        "action": sent.action,
        "routing": sent.routing,
    }
    if sent.tier is not None:
        item["tier"] = sent.tier
    if sent.severity is not None:
        item["severity"] = sent.severity
    return item


def _diff(what: str, wanted: list[dict[str, Any]], actual: list[dict[str, Any]]) -> list[str]:
    """A unified diff of ``what`` when it differs, each actual item cut to the keys expected."""
    shown = []
    for i, item in enumerate(actual):
        keys = wanted[i].keys() if i < len(wanted) else item.keys()
        shown.append({k: item.get(k) for k in keys})
    if shown == wanted:
        return []
    lines = difflib.unified_diff(
        _yaml(wanted), _yaml(shown), f"expected {what}", f"actual {what}", lineterm=""
    )
    return [f"  {what} differ:", *(f"    {line}" for line in lines)]


def _yaml(items: list[dict[str, Any]]) -> list[str]:
    text = yaml.safe_dump(items, sort_keys=False, default_flow_style=None, width=200)
    return text.splitlines() if items else ["[]"]


def _timeline(sim: Simulation, inc: Incident, start: float) -> str:
    lines = [f"  timeline of {inc.severity} incident {inc.title!r}:"]
    for ev in sim.timeline(inc.id):
        at = format_duration(timedelta(seconds=round(ev.at - start)))
        lines.append(f"    {at:>8}  {ev.kind:<17} {ev.message}")
    return "\n".join(lines)


def run_paths(paths: list[Path], out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """``test-plan``: run every file, print the result; 0 when everything passed, else 1."""
    failed = False
    for path in paths:
        try:
            spec, plan = load_test_file(path)
        except ConfigError as exc:
            for problem in exc.problems:
                err(str(problem))
            err(f"{path}: FAILED to load")
            failed = True
            continue
        outcomes = run_file(spec, plan)
        bad = [o for o in outcomes if not o.passed]
        for o in bad:
            err(f"{path}: FAILED {o.name!r}")
            for failure in o.failures:
                err(failure)
        if bad:
            failed = True
            err(f"{path}: {len(bad)} of {len(outcomes)} tests failed")
        else:
            out(f"{path}: SUCCESS ({len(outcomes)} tests)")
    return 1 if failed else 0
