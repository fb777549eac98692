"""Alertmanager label matchers (`=`, `!=`, `=~`, `!~`), parsed as its `pkg/labels` does.

The grammar, the escaping and the error messages follow Alertmanager's classic
parser (``pkg/labels/parse.go``, the one Alertmanager 0.25 uses for
``matchers:`` in its configuration), so a matcher copied from an Alertmanager
route behaves the same here. Regular expressions are fully anchored, as
``^(?:re)$`` in Go, and written in Go's RE2 syntax; they are translated once to
Python's :mod:`re` and syntax that RE2 rejects is rejected here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

MatchOp = Literal["=", "!=", "=~", "!~"]
OPS: tuple[MatchOp, ...] = ("=", "!=", "=~", "!~")

_LABEL_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Go's RE2 \s is [\t\n\f\r ] and its $ is the end of the text: spell both out.
_GO_SPACE = "[\t\n\f\r ]"
_MATCHER_RE = re.compile(
    rf"{_GO_SPACE}*([a-zA-Z_:][a-zA-Z0-9_:]*){_GO_SPACE}*(=~|=|!=|!~){_GO_SPACE}*(.*?){_GO_SPACE}*",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher; a label that is absent matches as the empty string."""

    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown match operator {self.op!r}: use =, !=, =~ or !~")
        if not _LABEL_NAME.fullmatch(self.name):
            raise ValueError(f"invalid label name {self.name!r}")
        if self.op in ("=~", "!~"):
            object.__setattr__(self, "_regex", compile_go_regex(self.value))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this matcher."""
        actual = labels.get(self.name, "")
        if self._regex is None:
            return (actual == self.value) is (self.op == "=")
        return (self._regex.fullmatch(actual) is not None) is (self.op == "=~")

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{_openmetrics_escape(self.value)}"'


def parse_matchers(text: str) -> list[Matcher]:
    """Parse ``{a="1", b=~"x|y"}`` (braces optional, a trailing comma allowed) into matchers."""
    body = text.removeprefix("{").removesuffix("}")
    tokens: list[str] = []
    token: list[str] = []
    inside_quotes = False
    escaped = False
    # A character-for-character port of ParseMatchers' splitter, quirks included
    # (an escaped state survives a comma inside quotes), so edge cases agree.
    for char in body:
        if char == ",":
            if not inside_quotes:
                tokens.append("".join(token))
                token = []
                continue
        elif char == '"':
            if not escaped:
                inside_quotes = not inside_quotes
            else:
                escaped = False
        elif char == "\\":
            escaped = not escaped
        else:
            escaped = False
        token.append(char)
    last = "".join(token).strip(" \t\n\r\f\v")
    if last:
        tokens.append(last)
    return [parse_matcher(t) for t in tokens]


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher such as ``severity=~"critical|warning"``."""
    found = _MATCHER_RE.fullmatch(text)
    if found is None:
        raise ValueError(f"bad matcher format: {text}")
    name, op, raw = found.group(1), cast(MatchOp, found.group(2)), found.group(3)
    quoted = raw.startswith('"')
    rest = raw[1:] if quoted else raw
    expect_trailing_quote = quoted
    value: list[str] = []
    escaped = False
    last = len(rest) - 1
    for index, char in enumerate(rest):
        if escaped:
            escaped = False
            if char == "n":
                value.append("\n")
            elif char in '"\\':
                value.append(char)
            else:
                value.append("\\" + char)
            continue
        if char == "\\":
            if index < last:
                escaped = True
            else:
                value.append("\\")
        elif char == '"':
            if not expect_trailing_quote or index < last:
                raise ValueError(f"matcher value contains unescaped double quote: {raw}")
            expect_trailing_quote = False
        else:
            value.append(char)
    if expect_trailing_quote:
        raise ValueError(f"matcher value contains unescaped double quote: {raw}")
    return Matcher(name, op, "".join(value))


def _openmetrics_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z]*(?:-[a-zA-Z]*)?)([:)])")


def compile_go_regex(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 (Go) pattern for full-string matching, or raise ``ValueError``."""
    try:
        translated = _GoRegexTranslator(pattern).translate()
        # re.ASCII: RE2's \d, \w, \s and \b are ASCII-only.
        return re.compile(f"(?:{translated})", re.ASCII)
    except (re.error, ValueError) as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


class _GoRegexTranslator:
    """Rewrites the RE2 constructs that Python spells differently, rejects the ones RE2 lacks."""

    def __init__(self, pattern: str) -> None:
        self.src = pattern
        self.pos = 0
        self.out: list[str] = []
        # Per open group: the inline flag sets ``(?i)`` still in force, which RE2
        # keeps until the group closes, across ``|``; Python only has ``(?i:...)``.
        self.scopes: list[list[str]] = [[]]
        self.multiline = "m" in "".join(m.group(1) for m in _FLAG_GROUP.finditer(pattern))

    def translate(self) -> str:
        while self.pos < len(self.src):
            char = self.src[self.pos]
            if char == "\\":
                self._escape()
            elif char == "[":
                self._char_class()
            elif char == "(":
                self._open_group()
            elif char == ")":
                if len(self.scopes) == 1:
                    raise ValueError("unexpected )")
                self.out.append(")" * len(self.scopes.pop()) + ")")
                self.pos += 1
            elif char == "|":
                flags = self.scopes[-1]
                self.out.append(")" * len(flags) + "|" + "".join(f"(?{f}:" for f in flags))
                self.pos += 1
            elif char == "$" and not self.multiline:
                self.out.append("\\Z")
                self.pos += 1
            else:
                self.out.append(char)
                self.pos += 1
        if len(self.scopes) != 1:
            raise ValueError("missing closing )")
        self.out.append(")" * len(self.scopes[0]))
        return "".join(self.out)

    def _escape(self) -> None:
        src, pos = self.src, self.pos
        if pos + 1 >= len(src):
            raise ValueError("trailing backslash at end of expression")
        nxt = src[pos + 1]
        if nxt == "Q":
            end = src.find("\\E", pos + 2)
            literal = src[pos + 2 :] if end < 0 else src[pos + 2 : end]
            self.out.append(re.escape(literal))
            self.pos = len(src) if end < 0 else end + 2
            return
        self.out.append(self._escape_token(nxt))
        self.pos += 2
        if nxt == "x" and self.out[-1].startswith("\\U"):
            self.pos = src.index("}", pos) + 1

    def _escape_token(self, nxt: str) -> str:
        if nxt == "z":
            return "\\Z"
        if nxt in "pP":
            raise ValueError("Unicode classes (\\p, \\P) are not supported")
        if nxt in "123456789":
            raise ValueError("backreferences are not supported")
        if nxt.isalpha() and nxt not in "aftnrvdDsSwWbBAx":
            raise ValueError(f"invalid escape sequence \\{nxt}")
        if nxt == "x" and self.src.startswith("{", self.pos + 2):
            end = self.src.find("}", self.pos)
            if end < 0:
                raise ValueError("invalid escape sequence \\x{")
            return f"\\U{int(self.src[self.pos + 3 : end], 16):08x}"
        return "\\" + nxt

    def _open_group(self) -> None:
        src, pos = self.src, self.pos
        if not src.startswith("(?", pos):
            self.out.append("(")
            self.scopes.append([])
            self.pos += 1
            return
        flag_group = _FLAG_GROUP.match(src, pos)
        if flag_group is not None and set(flag_group.group(1)) <= set("imsU-"):
            flags = flag_group.group(1)
            if flags.endswith("-") or (not flags and flag_group.group(2) == ")"):
                raise ValueError(f"invalid or unsupported Perl syntax {flag_group.group(0)!r}")
            # Ungreedy (U) only changes what a match captures, never whether the
            # whole value matches, so it can be dropped.
            on, _, off = flags.replace("U", "").partition("-")
            flags = on + (f"-{off}" if off else "")
            if flag_group.group(2) == ":":
                self.out.append(f"(?{flags}:")
                self.scopes.append([])
            elif flags:
                self.out.append(f"(?{flags}:")
                self.scopes[-1].append(flags)
            self.pos = flag_group.end()
            return
        named = re.compile(r"\(\?P?<([A-Za-z0-9_]+)>").match(src, pos)
        if named is not None:
            self.out.append(f"(?P<{named.group(1)}>")
            self.scopes.append([])
            self.pos = named.end()
            return
        raise ValueError(f"invalid or unsupported Perl syntax {src[pos : pos + 3]!r}")

    def _char_class(self) -> None:
        src = self.src
        pos = self.pos + 1
        parts = ["["]
        if src.startswith("^", pos):
            parts.append("^")
            pos += 1
        first = True
        while True:
            if pos >= len(src):
                raise ValueError("missing closing ]")
            char = src[pos]
            if char == "]" and not first:
                break
            first = False
            if char == "[" and src.startswith("[:", pos):
                end = src.find(":]", pos + 2)
                name = src[pos + 2 : end] if end >= 0 else ""
                if name.startswith("^"):
                    raise ValueError("negated POSIX classes are not supported")
                if name not in _POSIX_CLASSES:
                    raise ValueError(f"invalid character class range {src[pos : end + 2]!r}")
                parts.append(_POSIX_CLASSES[name])
                pos = end + 2
                continue
            if char == "\\":
                if pos + 1 >= len(src):
                    raise ValueError("missing closing ]")
                nxt = src[pos + 1]
                self.pos = pos
                parts.append(self._escape_token(nxt))
                pos = self.pos + 2 if not parts[-1].startswith("\\U") else src.index("}", pos) + 1
                continue
            # Python reserves these doubled in a class for future set operations.
            parts.append("\\" + char if char in "[&~|" else char)
            pos += 1
        parts.append("]")
        self.out.append("".join(parts))
        self.pos = pos + 1
