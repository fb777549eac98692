"""Reading a rules file: parse, validate every field and cross-reference, then compile.

Every problem is reported at once, sorted by its line, so that one run of
``check-config`` or ``test-rules`` shows all there is to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sidecar.errors import ConfigError, ConfigProblem
from sidecar.rules.checks import semantic_problems
from sidecar.rules.engine import RuleSet
from sidecar.rules.model import RulesFile
from sidecar.yamlfile import Position, load_yaml, problem_at, problems_from_validation


def parse_rules(data: Any, source: str = "<rules>", position: Position | None = None) -> RuleSet:
    """Validate a rules document already loaded from YAML; raise :class:`ConfigError`."""
    problems: list[ConfigProblem] = []
    spec: RulesFile | None = None
    try:
        spec = RulesFile.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, source, position))
    for loc, reason in semantic_problems(data):
        problems.append(problem_at(source, loc, reason, position))
    if problems or spec is None:
        problems.sort(key=lambda p: (p.line or 0, p.column or 0))
        raise ConfigError(problems)
    return RuleSet(spec, source=source, position=position)


def load_rules(path: Path) -> RuleSet:
    """Load and validate a rules file, reporting every problem with its line."""
    document = load_yaml(path)
    return parse_rules(document.data, str(path), document.position)
