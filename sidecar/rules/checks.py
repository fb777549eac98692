"""Cross-references of a rules file that pydantic cannot see field by field.

Names must be unique, every severity and team a rule, default or floor names
must be declared, the name ``default`` is reserved, the floor of a
``critical`` alert must page, and calendars, the time intervals they are made
of and the calendars SLA entries and escalation steps name must be declared.
The checks read the raw document, so that their problems are reported together
with the field errors even when other parts of the file are invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sidecar.rules.model import DEFAULT_RULE
from sidecar.yamlfile import Loc

Problems = list[tuple[Loc, str]]
"""Each problem's location in the document and its reason."""

_LISTS = {"severity": "severities", "team": "teams"}


def semantic_problems(data: Any) -> Problems:
    """Cross-references pydantic cannot see: duplicates, undeclared severities or teams, floors.

    Works on the raw document so that these problems are reported together with
    the field errors, even when other parts of the file are invalid.
    """
    if not isinstance(data, Mapping):
        return []
    problems: Problems = []
    declared = {
        "severity": _declared(data, "severities", lambda item: _get(item, "name"), problems),
        "team": _declared(data, "teams", lambda item: item, problems),
    }
    for key, what in (("default_severity", "severity"), ("default_team", "team")):
        problems += _undeclared((key,), data.get(key), what, declared[what])
    problems += _floor_problems(data, declared["severity"])
    problems += _calendar_problems(data)
    sections: tuple[tuple[str, str | None], ...] = (
        ("severity_rules", "severity"),
        ("ownership_rules", "team"),
        ("escalation_rules", None),
    )
    for section, target in sections:
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
            elif duplicate := _duplicate("rule name", section, index, name, seen):
                problems.append(((section, index, "name"), duplicate))
            if target is not None:
                value = _get(rule, target)
                problems += _undeclared((section, index, target), value, target, declared[target])
    return problems


def _floor_problems(data: Mapping[str, Any], severities: set[str] | None) -> Problems:
    """Each floor must be a declared severity, and a ``critical`` alert must page."""
    floors = data.get("severity_floor")
    items = data.get("severities")
    if not isinstance(floors, Mapping) or severities is None or not isinstance(items, list):
        return []
    paging = {_get(item, "name"): _get(item, "paging") for item in items}
    problems: Problems = []
    for value, floor in floors.items():
        if not isinstance(floor, str):
            continue
        loc: Loc = ("severity_floor", str(value))
        if undeclared := _undeclared(loc, floor, "severity", severities):
            problems += undeclared
        elif value == "critical" and paging.get(floor) != "page":
            problems.append(
                (
                    loc,
                    f"severity {floor!r} does not page (paging: {paging.get(floor)}): "
                    "the floor of a critical alert must be a severity whose paging is page",
                )
            )
    return problems


def _calendar_problems(data: Mapping[str, Any]) -> Problems:
    """Calendars name declared time intervals; SLA entries and steps name declared calendars."""
    problems: Problems = []
    intervals = _declared(data, "time_intervals", lambda item: _get(item, "name"), problems)
    calendars = _declared(data, "calendars", lambda item: _get(item, "name"), problems)
    for index, spec in enumerate(_list(data, "calendars")):
        for key in ("active_time_intervals", "mute_time_intervals"):
            for pos, name in enumerate(_list(spec, key)):
                if isinstance(name, str) and intervals is not None and name not in intervals:
                    problems.append(
                        (
                            ("calendars", index, key, pos),
                            f"time interval {name!r} is not declared in time_intervals",
                        )
                    )
    for index, policy in enumerate(_list(data, "severities")):
        sla = _get(policy, "sla")
        entries = sla.items() if isinstance(sla, Mapping) else ()
        refs: list[tuple[Loc, Any]] = [
            (("severities", index, "sla", key, "calendar"), _get(entry, "calendar"))
            for key, entry in entries
        ]
        refs += [
            (("severities", index, "escalation", pos, "calendar"), _get(step, "calendar"))
            for pos, step in enumerate(_list(policy, "escalation"))
        ]
        for loc, name in refs:
            if isinstance(name, str) and name not in (calendars or set()):
                problems.append((loc, f"calendar {name!r} is not declared in calendars"))
    return problems


def _list(item: Any, key: str) -> list[Any]:
    value = _get(item, key)
    return value if isinstance(value, list) else []


def _undeclared(loc: Loc, value: Any, what: str, declared: set[str] | None) -> Problems:
    """The problem when ``value`` names a ``what`` (severity or team) not declared."""
    if isinstance(value, str) and declared is not None and value not in declared:
        return [(loc, f"{what} {value!r} is not declared in {_LISTS[what]}")]
    return []


def _duplicate(what: str, section: str, index: int, name: Any, seen: dict[str, int]) -> str:
    """Why ``name`` at ``index`` repeats one ``seen`` earlier in ``section``; else remembers it."""
    if not isinstance(name, str):
        return ""
    if name in seen:
        return f"duplicate {what} {name!r}, first at {section}[{seen[name]}]"
    seen[name] = index
    return ""


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else None


def _declared(
    data: Mapping[str, Any],
    section: str,
    name_of: Callable[[Any], Any],
    problems: Problems,
) -> set[str] | None:
    """The names declared in ``section``, adding a problem for each repeated one."""
    items = data.get(section)
    if not isinstance(items, list):
        return None
    names: dict[str, int] = {}
    for index, item in enumerate(items):
        if duplicate := _duplicate("name", section, index, name_of(item), names):
            loc: Loc = (section, index, "name") if isinstance(item, Mapping) else (section, index)
            problems.append((loc, duplicate))
    return set(names)
