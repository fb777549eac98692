"""The compiled rules: classify an alert, with its severity floor, and rank and explain.

A rule matches when all its Alertmanager matchers match the alert's labels and
all its numeric conditions hold; the first matching rule of each list wins, and
the defaults apply when none does. The floor then keeps the result at or above
the lowest severity the alert's own ``severity`` label allows, unless the rule
says ``below_floor: true``; a dropping rule goes below any floor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from sidecar.errors import ConfigProblem
from sidecar.matchers import Matcher, parse_matchers
from sidecar.rules.checks import semantic_problems
from sidecar.rules.keys import key_reader
from sidecar.rules.model import (
    DEFAULT_RULE,
    FLOOR_LABEL,
    NumericCondition,
    RulesFile,
    SeverityPolicy,
)
from sidecar.yamlfile import Position, format_loc, problem_at

_CACHE_SIZE = 4096

K = TypeVar("K")
V = TypeVar("V")

DROP = "drop"
"""What ``Classification.raised_from`` holds when a floor kept an alert a rule dropped."""


@dataclass(frozen=True, slots=True)
class Classification:
    """The severity and team of an alert, the rules that chose them, and the floor's part.

    ``severity`` is the final severity, the empty string when ``dropped``.
    ``floor`` is the lowest severity the alert's ``severity`` label allows (None:
    no floor); ``raised_from`` what the rule gave (a severity, or ``drop``) when
    the floor raised it; ``below_floor`` is true when the rule went below the
    floor, as it explicitly allowed.
    """

    severity: str
    team: str
    severity_rule: str
    team_rule: str
    floor: str | None = None
    raised_from: str | None = None
    below_floor: bool = False
    dropped: bool = False
    #: The rule lists of which no rule matched: the defaults decided.
    unmatched: tuple[Literal["severity", "ownership"], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Read for every new alert instance, and a classification is cached:
        # worked out once here rather than at every read.
        out: list[Literal["severity", "ownership"]] = []
        if self.severity_rule == DEFAULT_RULE:
            out.append("severity")
        if self.team_rule == DEFAULT_RULE:
            out.append("ownership")
        object.__setattr__(self, "unmatched", tuple(out))


@dataclass(frozen=True, slots=True)
class RuleEscalation:
    """An escalation rule that matched: its name, the tier it pages, and whether only recorded."""

    rule: str
    tier: str
    record_only: bool = False


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    name: str
    result: str  # a severity, a team or a tier; DROP for a rule that drops
    matchers: tuple[Matcher, ...]
    conditions: tuple[NumericCondition, ...]
    drop: bool = False
    below_floor: bool = False
    annotation_matchers: tuple[Matcher, ...] = ()
    record_only: bool = False

    def failed(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> list[str]:
        """The matchers and conditions that do not hold (empty: the rule matches)."""
        return (
            [str(m) for m in self.matchers if not m.matches(labels)]
            + [f"annotation {m}" for m in self.annotation_matchers if not m.matches(annotations)]
            + [str(c) for c in self.conditions if not c.holds(labels, annotations)]
        )

    def matches(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> bool:
        return (
            all(m.matches(labels) for m in self.matchers)
            and all(m.matches(annotations) for m in self.annotation_matchers)
            and all(c.holds(labels, annotations) for c in self.conditions)
        )


def _remember(cache: dict[K, V], key: K, value: V) -> None:
    """Keep ``value`` for ``key``; bounded: a flood of distinct values must not grow
    the cache for ever, and starting over costs a few misses (the rules are pure)."""
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


def _compile(
    name: str,
    result: str,
    match: Iterable[str],
    when: Iterable[NumericCondition],
    *,
    drop: bool = False,
    below_floor: bool = False,
) -> _CompiledRule:
    matchers = tuple(m for line in match for m in parse_matchers(line))
    return _CompiledRule(name, result, matchers, tuple(when), drop, below_floor)


class RuleSet:
    """A validated rules file, ready to classify alerts.

    ``source`` names the file and ``position`` maps a location in it, such as
    ``("severities", 0, "escalation", 1, "tier")``, to its line and column, so
    that checks made later (routing against the configuration) can point at
    the line to change.
    """

    def __init__(
        self,
        spec: RulesFile,
        *,
        source: str = "<rules>",
        position: Position | None = None,
    ) -> None:
        problems = semantic_problems(spec.model_dump(by_alias=True, mode="json"))
        if problems:
            raise ValueError("; ".join(f"{format_loc(loc)}: {reason}" for loc, reason in problems))
        self.spec = spec
        self.source = source
        self._position = position
        self.name = spec.name
        self.description = spec.description
        self.severities: tuple[SeverityPolicy, ...] = tuple(spec.severities)
        self.teams: tuple[str, ...] = tuple(spec.teams)
        self.default_severity = spec.default_severity
        self.default_team = spec.default_team
        self.statuses: tuple[str, ...] = tuple(spec.statuses)
        self._ranks = {p.name: i for i, p in enumerate(self.severities)}
        self._policies = {p.name: p for p in self.severities}
        self.severity_floor: Mapping[str, str] = dict(spec.severity_floor)
        self._severity_rules = tuple(
            _compile(
                r.name,
                DROP if r.severity is None else r.severity,
                r.match,
                r.when,
                drop=r.drop,
                below_floor=r.below_floor,
            )
            for r in spec.severity_rules
        )
        self._ownership_rules = tuple(
            _compile(r.name, r.team, r.match, r.when) for r in spec.ownership_rules
        )
        self._escalation_rules = tuple(
            _CompiledRule(
                r.name,
                r.tier,
                tuple(m for line in r.match for m in parse_matchers(line)),
                tuple(r.when),
                annotation_matchers=tuple(
                    m for line in r.match_annotations for m in parse_matchers(line)
                ),
                record_only=r.record_only,
            )
            for r in spec.escalation_rules
        )
        rules = self._severity_rules + self._ownership_rules
        self._label_keys = tuple(
            sorted(
                {m.name for r in rules for m in r.matchers}
                | {c.label for r in rules for c in r.conditions if c.label is not None}
                | ({FLOOR_LABEL} if self.severity_floor else set())
            )
        )
        self._annotation_keys = tuple(
            sorted({c.annotation for r in rules for c in r.conditions if c.annotation is not None})
        )
        # Keyed only on the values the rules read, so label sets that differ in
        # irrelevant labels (instance, pod) share one entry.
        self._classified: dict[tuple[str | None, ...], Classification] = {}
        self._class_key = key_reader(self._label_keys, self._annotation_keys)
        esc = self._escalation_rules
        self._escalation_label_keys = tuple(
            sorted(
                {m.name for r in esc for m in r.matchers}
                | {c.label for r in esc for c in r.conditions if c.label is not None}
            )
        )
        self._escalation_annotation_keys = tuple(
            sorted(
                {m.name for r in esc for m in r.annotation_matchers}
                | {c.annotation for r in esc for c in r.conditions if c.annotation is not None}
            )
        )
        # The same for escalation rules: every new firing alert asks, and the
        # alerts of one group mostly differ only in labels no rule reads.
        self._escalations_of: dict[tuple[str | None, ...], tuple[RuleEscalation, ...]] = {}
        self._escalation_key = key_reader(
            self._escalation_label_keys, self._escalation_annotation_keys
        )

    def classify(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> Classification:
        """Severity and team of an alert with these labels and annotations."""
        # This runs for every alert of every new notification: one tuple of the
        # values the rules read (sidecar.rules.keys) and one dict lookup
        # (lru_cache's bookkeeping and its key of two tuples cost more).
        key = self._class_key(labels, annotations)
        found = self._classified.get(key)
        if found is None:
            n = len(self._label_keys)
            found = self._classify_key(key[:n], key[n:])
            _remember(self._classified, key, found)
        return found

    def _classify_key(
        self, label_values: tuple[str | None, ...], annotation_values: tuple[str | None, ...]
    ) -> Classification:
        # A missing label reads as the empty string, as in Prometheus.
        labels = {
            k: "" if v is None else v for k, v in zip(self._label_keys, label_values, strict=True)
        }
        annotations = {
            k: v
            for k, v in zip(self._annotation_keys, annotation_values, strict=True)
            if v is not None
        }
        chosen: _CompiledRule | None = None
        for rule in self._severity_rules:
            if rule.matches(labels, annotations):
                chosen = rule
                break
        team, team_rule = self.default_team, DEFAULT_RULE
        for rule in self._ownership_rules:
            if rule.matches(labels, annotations):
                team, team_rule = rule.result, rule.name
                break
        if chosen is None:
            chosen = _CompiledRule(DEFAULT_RULE, self.default_severity, (), ())
        floor = self.severity_floor.get(labels.get(FLOOR_LABEL, ""))
        below = False
        if floor is not None:
            # Dropping goes below any floor.
            below = chosen.drop or self._ranks[chosen.result] > self._ranks[floor]
            if below and not chosen.below_floor:
                return Classification(floor, team, chosen.name, team_rule, floor, chosen.result)
        return Classification(
            "" if chosen.drop else chosen.result,
            team,
            chosen.name,
            team_rule,
            floor,
            below_floor=below,
            dropped=chosen.drop,
        )

    def escalations(
        self, labels: Mapping[str, str], annotations: Mapping[str, str]
    ) -> tuple[RuleEscalation, ...]:
        """Every escalation rule that matches an alert (each pages its tier)."""
        if not self._escalation_rules:
            return ()
        key = self._escalation_key(labels, annotations)
        found = self._escalations_of.get(key)
        if found is None:
            n = len(self._escalation_label_keys)
            found = self._escalations_key(key[:n], key[n:])
            _remember(self._escalations_of, key, found)
        return found

    def escalations_each(
        self, alerts: Iterable[tuple[Mapping[str, str], Mapping[str, str]]]
    ) -> list[tuple[RuleEscalation, ...]]:
        """:meth:`escalations` of each (labels, annotations), once per distinct set of the
        values the rules read, in the order first seen, leaving out those that match none.

        A new incident asks for every firing alert of it, and its alerts mostly
        differ only in labels no rule reads: one call, not one per alert.
        """
        if not self._escalation_rules:
            return []
        read = self._escalation_key
        keys = dict.fromkeys([read(labels, notes) for labels, notes in alerts])
        out = []
        cache = self._escalations_of
        n = len(self._escalation_label_keys)
        for key in keys:
            found = cache.get(key)
            if found is None:
                found = self._escalations_key(key[:n], key[n:])
                _remember(cache, key, found)
            if found:
                out.append(found)
        return out

    def _escalations_key(
        self, label_values: tuple[str | None, ...], annotation_values: tuple[str | None, ...]
    ) -> tuple[RuleEscalation, ...]:
        # What the rules read, and nothing else: a missing label or annotation
        # stays missing (a matcher reads it as "", a condition as no number).
        labels = {
            k: v
            for k, v in zip(self._escalation_label_keys, label_values, strict=True)
            if v is not None
        }
        annotations = {
            k: v
            for k, v in zip(self._escalation_annotation_keys, annotation_values, strict=True)
            if v is not None
        }
        return tuple(
            RuleEscalation(r.name, r.result, r.record_only)
            for r in self._escalation_rules
            if r.matches(labels, annotations)
        )

    def recovery_watch(self, severity: str) -> float | None:
        """The recovery watch of ``severity`` in seconds; None when it has none."""
        watch = self._policies[severity].recovery_watch
        return None if watch is None else watch.total_seconds()

    def longest_recovery_watch(self) -> float:
        """The longest recovery watch of any severity, in seconds (0 when none has one)."""
        return max((self.recovery_watch(p.name) or 0.0 for p in self.severities), default=0.0)

    def problem(self, loc: Sequence[int | str], reason: str) -> ConfigProblem:
        """A problem at ``loc`` of this rules file, with its line when known."""
        return problem_at(self.source, loc, reason, self._position)

    def rank(self, severity: str) -> int:
        """Position of ``severity``, 0 being the highest; ``KeyError`` if undeclared."""
        return self._ranks[severity]

    def policy(self, severity: str) -> SeverityPolicy:
        """The policy of ``severity``; ``KeyError`` if undeclared."""
        return self._policies[severity]

    def sla_thresholds(self) -> list[float]:
        """Every SLA duration of every severity, in seconds, sorted and unique."""
        seconds = {
            value.total_seconds()
            for policy in self.severities
            for value in (getattr(policy.sla, name) for name in type(policy.sla).model_fields)
            if value is not None
        }
        return sorted(seconds)

    def explain(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> list[str]:
        """Human-readable lines saying how each rule fared, for ``test-rules``."""
        lines = []
        kinds = (
            ("severity", self._severity_rules),
            ("team", self._ownership_rules),
            ("escalation", self._escalation_rules),
        )
        for kind, compiled in kinds:
            for rule in compiled:
                failed = rule.failed(labels, annotations)
                verdict = "matches" if not failed else "no: " + ", ".join(failed)
                may = " (below_floor)" if rule.below_floor else ""
                may += " (record_only)" if rule.record_only else ""
                lines.append(f"{kind} rule {rule.name} -> {rule.result}{may}: {verdict}")
        value = labels.get(FLOOR_LABEL, "")
        floor = self.severity_floor.get(value)
        if floor is not None:
            lines.append(f'severity floor {FLOOR_LABEL}="{value}" -> {floor}')
        elif self.severity_floor:
            lines.append(f'severity floor {FLOOR_LABEL}="{value}": none')
        return lines
