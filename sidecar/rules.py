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
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from sidecar.durations import Duration
from sidecar.errors import ConfigError, ConfigProblem
from sidecar.matchers import Matcher, parse_matchers
from sidecar.sla import Clocks
from sidecar.yamlfile import format_loc, load_yaml, problems_from_validation

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CACHE_SIZE = 4096

DEFAULT_RULE = "default"
"""The rule name a classification reports when no rule of a list matched."""
FLOOR_LABEL = "severity"
"""The label whose value ``severity_floor`` maps (Prometheus' convention)."""
DROP = "drop"
"""What ``Classification.raised_from`` holds when a floor kept an alert a rule dropped."""


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use letters, digits, '_', '.', ':' and '-', "
            "starting with a letter or digit"
        )
    return value


def _check_matchers(value: str) -> str:
    parse_matchers(value)
    return value


Name = Annotated[str, AfterValidator(_check_name)]
MatcherLine = Annotated[str, AfterValidator(_check_matchers)]
"""One Alertmanager ``matchers:`` entry; it may hold several comma-separated matchers."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SLA(_Strict):
    """Per-severity SLA durations; ``None`` means the plan sets no such target."""

    detect: Duration | None = None
    acknowledge: Duration | None = None
    update: Duration | None = None
    resolve: Duration | None = None
    postmortem: Duration | None = None


class EscalationStep(_Strict):
    """Page ``tier`` once ``after`` has passed since ``triggered_at``, if ``while`` still holds.

    A ``record_only`` step pages nobody by design: it is written on the
    timeline, so that the plan's step shows, and needs no routing key.
    """

    after: Duration
    tier: Name
    while_: Literal["unacknowledged", "unresolved"] = Field(alias="while")
    # Strict: "yes" or 1 would pass a lax bool, and a typo here decides whether
    # anybody is woken.
    record_only: StrictBool = False


class SeverityPolicy(_Strict):
    """One severity of the plan: how it pages, its SLAs and its escalation ladder."""

    name: Name
    title: str
    description: str = ""
    paging: Literal["page", "notify", "ticket", "none"]
    pagerduty_severity: Literal["critical", "error", "warning", "info"]
    sla: SLA = SLA()
    escalation: list[EscalationStep] = []

    @functools.cached_property
    def clocks(self) -> Clocks:
        """The SLA and escalation durations in seconds (see :class:`sidecar.sla.Clocks`)."""
        return Clocks.of(self)


class NumericCondition(_Strict):
    """A bound on the number in one label or annotation, e.g. ``error_rate_percent > 10``."""

    label: str | None = None
    annotation: str | None = None
    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one_source_some_bound(self) -> NumericCondition:
        if (self.label is None) == (self.annotation is None):
            raise ValueError("give exactly one of label or annotation")
        if all(b is None for b in (self.above, self.at_least, self.below, self.at_most)):
            raise ValueError("give at least one of above, at_least, below, at_most")
        return self

    def holds(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> bool:
        """Whether the value is a number within every bound; a missing value never holds."""
        raw = labels.get(self.label) if self.label is not None else None
        if self.annotation is not None:
            raw = annotations.get(self.annotation)
        number = parse_number(raw)
        if number is None:
            return False
        return (
            (self.above is None or number > self.above)
            and (self.at_least is None or number >= self.at_least)
            and (self.below is None or number < self.below)
            and (self.at_most is None or number <= self.at_most)
        )

    def __str__(self) -> str:
        source = (
            f"label {self.label}" if self.label is not None else f"annotation {self.annotation}"
        )
        pairs = ((">", self.above), (">=", self.at_least), ("<", self.below), ("<=", self.at_most))
        bounds = [f"{op} {bound:g}" for op, bound in pairs if bound is not None]
        return f"{source} {' and '.join(bounds)}"


class _Rule(_Strict):
    name: str = Field(min_length=1)
    match: list[MatcherLine] = []
    when: list[NumericCondition] = []


class SeverityRule(_Rule):
    """Gives ``severity`` to alerts that match, or drops them (``drop: true``).

    The result never goes below the alert's severity floor unless ``below_floor``.
    """

    severity: str | None = None
    drop: bool = False
    below_floor: bool = False

    @model_validator(mode="after")
    def _severity_or_drop(self) -> SeverityRule:
        if (self.severity is None) != self.drop:
            raise ValueError("give either severity or drop: true")
        return self


class OwnershipRule(_Rule):
    """Gives ``team`` to alerts that match."""

    team: str


class RulesFile(_Strict):
    """The rules file as written."""

    name: Name
    description: str = ""
    severities: list[SeverityPolicy] = Field(min_length=1)
    teams: list[Name] = Field(min_length=1)
    default_severity: str
    default_team: str
    # Keys are values of the `severity` label (Prometheus' convention), values plan severities.
    severity_floor: dict[Annotated[str, Field(min_length=1)], str] = {}
    severity_rules: list[SeverityRule] = []
    ownership_rules: list[OwnershipRule] = []


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

    @property
    def unmatched(self) -> tuple[Literal["severity", "ownership"], ...]:
        """The rule lists of which no rule matched: the defaults decided."""
        out: list[Literal["severity", "ownership"]] = []
        if self.severity_rule == DEFAULT_RULE:
            out.append("severity")
        if self.team_rule == DEFAULT_RULE:
            out.append("ownership")
        return tuple(out)


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    name: str
    result: str  # a severity or a team; DROP for a rule that drops
    matchers: tuple[Matcher, ...]
    conditions: tuple[NumericCondition, ...]
    drop: bool = False
    below_floor: bool = False

    def matches(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers) and all(
            c.holds(labels, annotations) for c in self.conditions
        )


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
        position: Callable[[Sequence[int | str]], tuple[int, int] | None] | None = None,
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
        self._classify_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(self._classify_key)

    def classify(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> Classification:
        """Severity and team of an alert with these labels and annotations."""
        # map() over dict.get: this runs for every alert of every new notification.
        return self._classify_cached(
            tuple(map(labels.get, self._label_keys)),
            tuple(map(annotations.get, self._annotation_keys)),
        )

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
        if floor is None:
            if chosen.drop:
                return Classification("", team, chosen.name, team_rule, dropped=True)
            return Classification(chosen.result, team, chosen.name, team_rule)
        below = chosen.drop or self._ranks[chosen.result] > self._ranks[floor]
        if not below:
            return Classification(chosen.result, team, chosen.name, team_rule, floor)
        if chosen.below_floor:
            if chosen.drop:
                return Classification(
                    "", team, chosen.name, team_rule, floor, below_floor=True, dropped=True
                )
            return Classification(
                chosen.result, team, chosen.name, team_rule, floor, below_floor=True
            )
        return Classification(floor, team, chosen.name, team_rule, floor, chosen.result)

    def problem(self, loc: Sequence[int | str], reason: str) -> ConfigProblem:
        """A problem at ``loc`` of this rules file, with its line when known."""
        pos = self._position(loc) if self._position is not None else None
        return ConfigProblem(
            self.source,
            format_loc(loc),
            reason,
            line=pos[0] if pos else None,
            column=pos[1] if pos else None,
        )

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
        for kind, compiled in (("severity", self._severity_rules), ("team", self._ownership_rules)):
            for rule in compiled:
                failed = [str(m) for m in rule.matchers if not m.matches(labels)] + [
                    str(c) for c in rule.conditions if not c.holds(labels, annotations)
                ]
                verdict = "matches" if not failed else "no: " + ", ".join(failed)
                may = " (below_floor)" if rule.below_floor else ""
                lines.append(f"{kind} rule {rule.name} -> {rule.result}{may}: {verdict}")
        value = labels.get(FLOOR_LABEL, "")
        floor = self.severity_floor.get(value)
        if floor is not None:
            lines.append(f'severity floor {FLOOR_LABEL}="{value}" -> {floor}')
        elif self.severity_floor:
            lines.append(f'severity floor {FLOOR_LABEL}="{value}": none')
        return lines


def parse_number(raw: str | None) -> float | None:
    """``"12.5"``, ``"12.5%"`` or ``"11x"`` as a finite float; ``None`` for anything else."""
    if raw is None:
        return None
    text = raw.strip()
    if text.endswith(("%", "x", "X")):
        text = text[:-1].rstrip()
    if not _NUMBER_RE.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def semantic_problems(data: Any) -> list[tuple[tuple[int | str, ...], str]]:
    """Cross-references pydantic cannot see: duplicates, undeclared severities or teams, floors.

    Works on the raw document so that these problems are reported together with
    the field errors, even when other parts of the file are invalid.
    """
    if not isinstance(data, Mapping):
        return []
    problems: list[tuple[tuple[int | str, ...], str]] = []
    severities = _declared(data, "severities", lambda item: _get(item, "name"), problems)
    teams = _declared(data, "teams", lambda item: item, problems)
    for key, declared, what in (
        ("default_severity", severities, "severity"),
        ("default_team", teams, "team"),
    ):
        value = data.get(key)
        if isinstance(value, str) and declared is not None and value not in declared:
            problems.append(((key,), f"{what} {value!r} is not declared in {_what_list(what)}"))
    problems += _floor_problems(data, severities)
    for section, field_name, declared, what in (
        ("severity_rules", "severity", severities, "severity"),
        ("ownership_rules", "team", teams, "team"),
    ):
        rules = data.get(section)
        if not isinstance(rules, list):
            continue
        seen: dict[str, int] = {}
        for index, rule in enumerate(rules):
            name = _get(rule, "name")
            if name == DEFAULT_RULE:
                problems.append(
                    (
                        (section, index, "name"),
                        f"the rule name {DEFAULT_RULE!r} is reserved: test-rules and "
                        "metrics use it for the defaults",
                    )
                )
            elif isinstance(name, str):
                if name in seen:
                    problems.append(
                        (
                            (section, index, "name"),
                            f"duplicate rule name {name!r}, first at {section}[{seen[name]}]",
                        )
                    )
                else:
                    seen[name] = index
            target = _get(rule, field_name)
            if isinstance(target, str) and declared is not None and target not in declared:
                problems.append(
                    (
                        (section, index, field_name),
                        f"{what} {target!r} is not declared in {_what_list(what)}",
                    )
                )
    return problems


def _floor_problems(
    data: Mapping[str, Any], severities: set[str] | None
) -> list[tuple[tuple[int | str, ...], str]]:
    """Each floor must be a declared severity, and a ``critical`` alert must page."""
    floors = data.get("severity_floor")
    items = data.get("severities")
    if not isinstance(floors, Mapping) or severities is None or not isinstance(items, list):
        return []
    paging = {_get(item, "name"): _get(item, "paging") for item in items}
    problems: list[tuple[tuple[int | str, ...], str]] = []
    for value, floor in floors.items():
        if not isinstance(floor, str):
            continue
        loc: tuple[int | str, ...] = ("severity_floor", str(value))
        if floor not in severities:
            problems.append((loc, f"severity {floor!r} is not declared in severities"))
        elif value == "critical" and paging.get(floor) != "page":
            problems.append(
                (
                    loc,
                    f"severity {floor!r} does not page (paging: {paging.get(floor)}): "
                    "the floor of a critical alert must be a severity whose paging is page",
                )
            )
    return problems


def _what_list(what: str) -> str:
    return "severities" if what == "severity" else "teams"


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else None


def _declared(
    data: Mapping[str, Any],
    section: str,
    name_of: Any,
    problems: list[tuple[tuple[int | str, ...], str]],
) -> set[str] | None:
    items = data.get(section)
    if not isinstance(items, list):
        return None
    names: dict[str, int] = {}
    for index, item in enumerate(items):
        name = name_of(item)
        if not isinstance(name, str):
            continue
        if name in names:
            loc: tuple[int | str, ...] = (section, index)
            if isinstance(item, Mapping):
                loc += ("name",)
            problems.append((loc, f"duplicate name {name!r}, first at {section}[{names[name]}]"))
        else:
            names[name] = index
    return set(names)


def parse_rules(data: Any, source: str = "<rules>", position: Any = None) -> RuleSet:
    """Validate a rules document already loaded from YAML; raise :class:`ConfigError`."""
    problems: list[ConfigProblem] = []
    spec: RulesFile | None = None
    try:
        spec = RulesFile.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, source, position))
    for loc, reason in semantic_problems(data):
        pos = position(loc) if position is not None else None
        problems.append(
            ConfigProblem(
                source,
                format_loc(loc),
                reason,
                line=pos[0] if pos else None,
                column=pos[1] if pos else None,
            )
        )
    if problems or spec is None:
        problems.sort(key=lambda p: (p.line or 0, p.column or 0))
        raise ConfigError(problems)
    return RuleSet(spec, source=source, position=position)


def load_rules(path: Path) -> RuleSet:
    """Load and validate a rules file, reporting every problem with its line."""
    document = load_yaml(path)
    return parse_rules(document.data, str(path), document.position)
