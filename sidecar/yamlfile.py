"""Load YAML safely and turn validation errors into ``file:line:col: location: reason`` problems.

Only :func:`yaml.safe_load`-level constructs are ever built: the node tree is
composed with the safe loader (libyaml's when PyYAML has it) so that each value
keeps its position, and the data is constructed from that same tree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sidecar.errors import ConfigError, ConfigProblem

Loc = tuple[int | str, ...]
Position = Callable[[Sequence[int | str]], tuple[int, int] | None]
"""Maps a location in a file to its line and column (:meth:`YamlDocument.position`)."""

# libyaml parses the config and rules several times faster (start time); the
# pure-Python loader builds the same safe constructs where it is missing.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlDocument:
    """A parsed YAML file: its data and where each value came from."""

    def __init__(self, path: Path, data: Any, marks: dict[Loc, tuple[int, int]]) -> None:
        self.path = path
        self.data = data
        self._marks = marks

    def position(self, loc: Sequence[int | str]) -> tuple[int, int] | None:
        """Line and column (1-based) of the deepest known node on ``loc``."""
        key: Loc = tuple(loc)
        while True:
            if key in self._marks:
                return self._marks[key]
            if not key:
                return None
            key = key[:-1]


def problems_from_validation(
    error: ValidationError,
    file: str,
    position: Position | None = None,
    prefix: Loc = (),
) -> list[ConfigProblem]:
    """One :class:`ConfigProblem` per pydantic error, located when ``position`` knows where."""
    out = []
    for item in error.errors(include_url=False):
        reason = str(item["msg"])
        if reason.startswith("Value error, "):
            reason = reason[len("Value error, ") :]
        out.append(problem_at(file, prefix + tuple(item["loc"]), reason, position))
    return out


def problem_at(
    file: str, loc: Sequence[int | str], reason: str, position: Position | None = None
) -> ConfigProblem:
    """A :class:`ConfigProblem` at ``loc`` of ``file``, with its line when ``position`` knows it."""
    pos = position(loc) if position is not None else None
    return ConfigProblem(
        file,
        format_loc(loc),
        reason,
        line=pos[0] if pos else None,
        column=pos[1] if pos else None,
    )


def format_loc(loc: Iterable[int | str]) -> str:
    """``("rules", 3, "match")`` -> ``rules[3].match``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def load_yaml(path: Path) -> YamlDocument:
    """Read and parse ``path``; raise :class:`ConfigError` naming the file and position."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), "", f"cannot read file: {exc.strerror}")]
        ) from exc
    try:
        loader = _SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = str(getattr(exc, "problem", None) or exc)
        raise ConfigError(
            [
                ConfigProblem(
                    str(path),
                    "",
                    f"invalid YAML: {reason}",
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            ]
        ) from exc
    marks: dict[Loc, tuple[int, int]] = {}
    if node is not None:
        _collect_marks(node, (), marks)
    return YamlDocument(path, {} if data is None else data, marks)


def _collect_marks(node: yaml.Node, loc: Loc, marks: dict[Loc, tuple[int, int]]) -> None:
    marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            _collect_marks(value_node, (*loc, key), marks)
            # The key's own position is the most useful place to point at.
            marks[(*loc, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_marks(item, (*loc, index), marks)
