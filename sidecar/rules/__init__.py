"""Severity rules: a plan's severities, SLAs, escalation and team ownership, and the engine.

A rules file (see ``rules/*.yaml`` for documented examples) declares the
severities highest first, each with its paging policy, SLA table and
escalation ladder; the teams; and two ordered rule lists, ``severity_rules`` and
``ownership_rules``. A rule matches when all its Alertmanager matchers match
the alert's labels and all its numeric conditions hold; the first matching rule
wins, and the defaults apply when none does.

The ``severity_floor`` maps values of the alert's own ``severity`` label (the
Prometheus convention) to the lowest plan severity the alert may get: the
severity rules can raise an alert above its floor but lower it only when the
matching rule says ``below_floor: true``, so a ``critical`` alert pages unless
a rule explicitly decides otherwise. A severity rule may ``drop`` alerts
instead of giving a severity (``severity="none"``: Watchdog, InfoInhibitor);
dropping is going below any floor, so it too needs ``below_floor`` on an alert
that has one.

- :mod:`~sidecar.rules.model`: the file as written, field by field;
- :mod:`~sidecar.rules.intervals`: its calendars of business time, in
  Alertmanager's ``time_intervals`` syntax, which SLA targets and escalation
  steps may name to count business time instead of wall time;
- :mod:`~sidecar.rules.checks`: the cross-references between its fields;
- :mod:`~sidecar.rules.engine`: :class:`RuleSet`, which classifies alerts;
- :mod:`~sidecar.rules.load`: reading a file and reporting every problem by line.

A severity may keep a resolved incident under a ``recovery_watch``, in which a
re-fire reopens it, and ``escalation_rules`` page a named tier when an alert's
labels or annotations match, beside the time-based ladders.

The rules read the SLA clocks (:mod:`sidecar.sla`), never the reverse.
"""

from sidecar.rules.checks import semantic_problems
from sidecar.rules.engine import DROP, Classification, RuleEscalation, RuleSet
from sidecar.rules.load import load_rules, parse_rules
from sidecar.rules.model import (
    DEFAULT_RULE,
    FLOOR_LABEL,
    SLA,
    EscalationRule,
    EscalationStep,
    MatcherLine,
    Name,
    NumericCondition,
    OwnershipRule,
    RulesFile,
    SeverityPolicy,
    SeverityRule,
    parse_number,
)

__all__ = [
    "DEFAULT_RULE",
    "DROP",
    "FLOOR_LABEL",
    "SLA",
    "Classification",
    "EscalationRule",
    "EscalationStep",
    "MatcherLine",
    "Name",
    "NumericCondition",
    "OwnershipRule",
    "RuleEscalation",
    "RuleSet",
    "RulesFile",
    "SeverityPolicy",
    "SeverityRule",
    "load_rules",
    "parse_number",
    "parse_rules",
    "semantic_problems",
]
