"""Tests of sidecar.matchers: Alertmanager's parse cases, matching, RE2, parity with amtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sidecar.matchers import OPS, Matcher, compile_go_regex, parse_matcher, parse_matchers
from tests.support.binaries import require_binary

# (input, expected (name, op, value) triples). Inputs follow the cases of
# Alertmanager's pkg/labels/parse_test.go, written out here as our own table.
PARSE_OK = [
    ("{}", []),
    ("{foo='}", [("foo", "=", "'")]),
    ("{foo=`}", [("foo", "=", "`")]),
    ('{foo=\\"}', [("foo", "=", '"')]),
    ("{foo=bar}", [("foo", "=", "bar")]),
    ('{foo="bar"}', [("foo", "=", "bar")]),
    ("{foo=~bar.*}", [("foo", "=~", "bar.*")]),
    ('{foo=~"bar.*"}', [("foo", "=~", "bar.*")]),
    ("{foo!=bar}", [("foo", "!=", "bar")]),
    ('{foo!="bar"}', [("foo", "!=", "bar")]),
    ("{foo!~bar.*}", [("foo", "!~", "bar.*")]),
    ('{foo!~"bar.*"}', [("foo", "!~", "bar.*")]),
    ('{foo="bar", baz!="quux"}', [("foo", "=", "bar"), ("baz", "!=", "quux")]),
    ('{foo="bar", baz!~"quux.*"}', [("foo", "=", "bar"), ("baz", "!~", "quux.*")]),
    (
        '{foo="bar",baz!~".*quux", derp="wat"}',
        [("foo", "=", "bar"), ("baz", "!~", ".*quux"), ("derp", "=", "wat")],
    ),
    (
        '{foo="bar", instance=~"some-api.*"}',
        [("foo", "=", "bar"), ("instance", "=~", "some-api.*")],
    ),
    ('{foo=""}', [("foo", "=", "")]),
    ('{foo="bar,quux", job="job1"}', [("foo", "=", "bar,quux"), ("job", "=", "job1")]),
    ('{foo = "bar", dings != "bums", }', [("foo", "=", "bar"), ("dings", "!=", "bums")]),
    ("foo=bar,dings!=bums", [("foo", "=", "bar"), ("dings", "!=", "bums")]),
    (
        '{quote="She said: \\"Hi, ladies! That\'s gender-neutral…\\""}',
        [("quote", "=", 'She said: "Hi, ladies! That\'s gender-neutral…"')],
    ),
    ('statuscode=~"5.."', [("statuscode", "=~", "5..")]),
    ("tricky=~~~", [("tricky", "=~", "~~")]),
    ('trickier==\\\\=\\=\\"', [("trickier", "=", '=\\=\\="')]),
    (
        'contains_quote != "\\"" , contains_comma !~ "foo,bar" , ',
        [("contains_quote", "!=", '"'), ("contains_comma", "!~", "foo,bar")],
    ),
    ("{foo=bar}}", [("foo", "=", "bar}")]),
    ("{foo=bar}},}", [("foo", "=", "bar}}")]),
    ("{foo=,bar=}}", [("foo", "=", ""), ("bar", "=", "}")]),
    ("{foo=bar\\t}", [("foo", "=", "bar\\t")]),
    ("{foo=bar\\n}", [("foo", "=", "bar\n")]),
    ("{foo=bar\\}", [("foo", "=", "bar\\")]),
    ("{foo=bar\\\\}", [("foo", "=", "bar\\")]),
    ('{foo=bar\\"}', [("foo", "=", 'bar"')]),
    ("job=", [("job", "=", "")]),
    ("{foo=", [("foo", "=", "")]),
    ("{foo=}b", [("foo", "=", "}b")]),
    # Beyond Alertmanager's table: label names with colons, surrounding space.
    ('  a:b_c1 =~ "x|y"  ', [("a:b_c1", "=~", "x|y")]),
    ('alertname="HighErrorRate"', [("alertname", "=", "HighErrorRate")]),
]

# (input, expected error message, verbatim as Alertmanager words it where it can).
PARSE_ERRORS = [
    (",", "bad matcher format: "),
    ("{,}", "bad matcher format: "),
    ('job="value', 'matcher value contains unescaped double quote: "value'),
    ('job=value"', 'matcher value contains unescaped double quote: value"'),
    ('trickier==\\\\=\\=\\""', 'matcher value contains unescaped double quote: =\\\\=\\=\\""'),
    (
        'contains_unescaped_quote = foo"bar',
        'matcher value contains unescaped double quote: foo"bar',
    ),
    ('{invalid-name = "valid label"}', 'bad matcher format: invalid-name = "valid label"'),
    ('{foo=~"invalid[regexp"}', "invalid regular expression 'invalid[regexp': missing closing ]"),
    ('"{foo=\\"bar"}', 'bad matcher format: "{foo=\\"bar"'),
    ('"foo=\\"bar"', 'bad matcher format: "foo=\\"bar"'),
    ('"foo=\\"bar\\""', 'bad matcher format: "foo=\\"bar\\""'),
    ('"foo=\\"bar\\"', 'bad matcher format: "foo=\\"bar\\"'),
    ('"{foo=\\"bar\\"}"', 'bad matcher format: "{foo=\\"bar\\"}"'),
    ('"foo="bar""', 'bad matcher format: "foo="bar""'),
    ("{{foo=", "bad matcher format: {foo="),
    ("foo", "bad matcher format: foo"),
    ('1abc="x"', 'bad matcher format: 1abc="x"'),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_OK, ids=[c[0] for c in PARSE_OK])
def test_parse_matchers(text: str, expected: list[tuple[str, str, str]]) -> None:
    got = parse_matchers(text)
    assert [(m.name, m.op, m.value) for m in got] == expected


@pytest.mark.parametrize(("text", "message"), PARSE_ERRORS, ids=[c[0] for c in PARSE_ERRORS])
def test_parse_matchers_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_matchers(text)
    assert str(info.value) == message


def test_parse_matcher_takes_exactly_one() -> None:
    assert parse_matcher('severity=~"critical|warning"') == Matcher(
        "severity", "=~", "critical|warning"
    )
    with pytest.raises(ValueError, match="bad matcher format"):
        parse_matcher("")


@pytest.mark.parametrize(
    ("name", "op", "value", "reason"),
    [
        ("foo", "==", "x", "unknown match operator"),
        ("bad-name", "=", "x", "invalid label name"),
        ("", "=", "x", "invalid label name"),
        ("foo", "=~", "(", "invalid regular expression"),
    ],
)
def test_matcher_validates(name: str, op: str, value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Matcher(name, op, value)  # type: ignore[arg-type]


# (matcher text, labels, expected match).
MATCH_CASES = [
    ('job="api"', {"job": "api"}, True),
    ('job="api"', {"job": "api2"}, False),
    ('job="api"', {}, False),
    ('job=""', {}, True),
    ('job=""', {"job": ""}, True),
    ('job!=""', {}, False),
    ('job!="api"', {}, True),
    ('job!="api"', {"job": "api"}, False),
    ('job=~"api|web"', {"job": "web"}, True),
    # Anchored on both ends, as ^(?:re)$.
    ('job=~"api"', {"job": "api-server"}, False),
    ('job=~"api|web"', {"job": "xweb"}, False),
    ('job=~"a.*"', {"job": "abc"}, True),
    ('job=~".*"', {}, True),
    ('job=~".+"', {}, False),
    ('job!~".+"', {}, True),
    ('job!~"api|web"', {"job": "api"}, False),
    ('job!~"api|web"', {"job": "db"}, True),
    ('code=~"5.."', {"code": "503"}, True),
    ('code=~"5.."', {"code": "5030"}, False),
    ('msg="a\\nb"', {"msg": "a\nb"}, True),
    ('msg=~"a.b"', {"msg": "a\nb"}, False),
    ('msg=~"(?s)a.b"', {"msg": "a\nb"}, True),
    # RE2's $ is the end of the text, Python's also matches before a final newline.
    ('msg=~"a$"', {"msg": "a\n"}, False),
    ('msg=~"(?m)a$\\n"', {"msg": "a\n"}, True),
    # Inline flags, which Python only accepts at the very start.
    ('svc=~"(?i)api"', {"svc": "API"}, True),
    ('svc=~"x(?i)api"', {"svc": "xAPI"}, True),
    ('svc=~"x(?i)api"', {"svc": "XAPI"}, False),
    ('svc=~"a(?i)b|c"', {"svc": "C"}, True),
    ('svc=~"a(?i)b|c"', {"svc": "aB"}, True),
    ('svc=~"(a(?i)b)c"', {"svc": "aBc"}, True),
    ('svc=~"(a(?i)b)c"', {"svc": "aBC"}, False),
    ('svc=~"(?i:A)b"', {"svc": "aB"}, False),
    # Ungreedy only changes captures, never whether the whole value matches.
    ('svc=~"(?U)a+b"', {"svc": "aab"}, True),
    ('svc=~"(?i)(?-iU)a"', {"svc": "A"}, False),
    # ASCII-only classes, POSIX classes, \z, \Q...\E, \x{...}.
    ('n=~"\\\\d+"', {"n": "42"}, True),
    ('n=~"\\\\d+"', {"n": "٤٢"}, False),
    ('n=~"[[:digit:]]+[[:alpha:]]"', {"n": "42a"}, True),
    ('n=~"x\\\\z"', {"n": "x"}, True),
    ('n=~"\\\\Qa.b\\\\E"', {"n": "axb"}, False),
    ('n=~"\\\\Qa.b\\\\E"', {"n": "a.b"}, True),
    ('n=~"\\\\x{41}"', {"n": "A"}, True),
    ('n=~"[&|~]+"', {"n": "&|~"}, True),
    ('n=~"(?P<x>a)b"', {"n": "ab"}, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCH_CASES)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_matcher(text).matches(labels) is expected


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(?=x)", "unsupported Perl syntax"),
        ("(?<=x)y", "unsupported Perl syntax"),
        ("(?#note)", "unsupported Perl syntax"),
        ("(a)\\1", "backreferences"),
        ("\\pL", "Unicode classes"),
        ("(?)", "unsupported Perl syntax"),
        ("(?i-)a", "unsupported Perl syntax"),
        ("a)", "unexpected \\)"),
        ("(a", "missing closing \\)"),
        ("[a", "missing closing \\]"),
        ("\\Z", "invalid escape"),
        ("a\\", "trailing backslash"),
        ("[[:nope:]]", "invalid character class"),
        ("a**", "multiple repeat"),
    ],
)
def test_go_regex_rejects(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        compile_go_regex(pattern)


@pytest.mark.parametrize(
    ("matcher", "text"),
    [
        (Matcher("a", "=", "b"), 'a="b"'),
        (Matcher("a", "!=", ""), 'a!=""'),
        (Matcher("a", "=~", "x|y"), 'a=~"x|y"'),
        (Matcher("a", "!~", "x"), 'a!~"x"'),
        (Matcher("q", "=", 'say "hi"\\\n'), 'q="say \\"hi\\"\\\\\\n"'),
    ],
)
def test_str_renders_alertmanager_syntax(matcher: Matcher, text: str) -> None:
    assert str(matcher) == text


@given(
    name=st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,10}", fullmatch=True),
    op=st.sampled_from(["=", "!="]),
    value=st.text(max_size=30),
)
def test_str_round_trips(name: str, op: str, value: str) -> None:
    matcher = Matcher(name, op, value)  # type: ignore[arg-type]
    assert parse_matcher(str(matcher)) == matcher
    assert parse_matchers("{" + str(matcher) + "," + str(matcher) + "}") == [matcher, matcher]


def test_regex_is_compiled_once() -> None:
    matcher = parse_matcher('a=~"x+"')
    assert matcher._regex is not None
    assert matcher._regex is matcher._regex
    assert isinstance(matcher._regex, re.Pattern)
    assert parse_matcher('a="x+"')._regex is None


# ---------------------------------------------------------------------------
# Parity with the real Alertmanager: amtool parses and routes the same matchers.
# ---------------------------------------------------------------------------

AMTOOL_MATCHERS = [
    'job="api"',
    'job!="api"',
    'job=~"api|web"',
    'job!~"api|web"',
    'job=""',
    'job=~".+"',
    'code=~"5.."',
    'svc=~"(?i)api"',
    'svc=~"a(?i)b|c"',
    'svc=~"(a(?i)b)c"',
    'msg=~"a$"',
    'msg=~"(?s)a.b"',
    'svc=~"(?U)a+(?-U:b+?)(?-iU)C"',
    'svc=~"(?iU:A)b"',
    'n=~"[[:digit:]]+[[:alpha:]]"',
    'n=~"\\\\d+"',
    'n=~"\\\\Qa.b\\\\E"',
    'n=~"\\\\x{41}[&|~]"',
    '{foo="bar,quux", job="api"}',
    'quote="She said: \\"Hi\\""',
    "tricky=~~~",
    "{foo=bar}}",
]
AMTOOL_LABEL_SETS = [
    {},
    {"job": "api"},
    {"job": "web", "code": "503"},
    {"job": "db", "code": "5030"},
    {"svc": "API"},
    {"svc": "C", "msg": "a"},
    {"svc": "aabbC"},
    {"svc": "Ab"},
    {"svc": "aabbc"},
    {"svc": "aBc", "msg": "a\n"},
    {"svc": "aBC", "msg": "a\nb"},
    {"n": "42a", "tricky": "~~"},
    {"n": "٤٢"},
    {"n": "A|"},
    {"n": "a.b", "foo": "bar,quux", "job": "api"},
    {"n": "axb", "foo": "bar}"},
    {"quote": 'She said: "Hi"'},
]
AMTOOL_INVALID = [
    'job="value',
    '{invalid-name = "x"}',
    'a=~"(?=x)"',
    'a=~"(a)\\\\1"',
    'a=~"["',
    ",",
]


@pytest.fixture(scope="module")
def amtool() -> str:
    return str(require_binary("amtool"))


def _write_config(path: Path, matcher_lines: list[str]) -> None:
    routes = [
        {"receiver": f"r{i}", "matchers": [line], "continue": True}
        for i, line in enumerate(matcher_lines)
    ]
    receivers = [{"name": "default"}] + [{"name": f"r{i}"} for i in range(len(matcher_lines))]
    config = {"route": {"receiver": "default", "routes": routes}, "receivers": receivers}
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")


def _run(amtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([amtool, *args], capture_output=True, text=True, timeout=30, check=False)


def test_rendering_matches_amtool(amtool: str, tmp_path: Path) -> None:
    config = tmp_path / "alertmanager.yml"
    _write_config(config, AMTOOL_MATCHERS)
    result = _run(amtool, "config", "routes", "show", f"--config.file={config}")
    assert result.returncode == 0, result.stderr
    shown = {
        m.group(2): m.group(1)
        for m in re.finditer(
            r"(\{.*\})  continue: true  receiver: (r\d+)$", result.stdout, re.MULTILINE
        )
    }
    assert len(shown) == len(AMTOOL_MATCHERS)
    for i, line in enumerate(AMTOOL_MATCHERS):
        # Alertmanager sorts a route's matchers by name, value, then operator.
        ours = sorted(parse_matchers(line), key=lambda m: (m.name, m.value, OPS.index(m.op)))
        assert shown[f"r{i}"] == "{" + ",".join(str(m) for m in ours) + "}", line


@pytest.mark.parametrize("labels", AMTOOL_LABEL_SETS, ids=str)
def test_matching_agrees_with_amtool(amtool: str, tmp_path: Path, labels: dict[str, str]) -> None:
    config = tmp_path / "alertmanager.yml"
    _write_config(config, AMTOOL_MATCHERS)
    args = [str(Matcher(name, "=", value)) for name, value in labels.items()]
    result = _run(amtool, "config", "routes", "test", f"--config.file={config}", *args)
    assert result.returncode == 0, result.stderr
    theirs = set(result.stdout.strip().split(","))
    ours = {
        f"r{i}"
        for i, line in enumerate(AMTOOL_MATCHERS)
        if all(m.matches(labels) for m in parse_matchers(line))
    } or {"default"}
    assert ours == theirs


@pytest.mark.parametrize("line", AMTOOL_INVALID)
def test_invalid_agrees_with_amtool(amtool: str, tmp_path: Path, line: str) -> None:
    config = tmp_path / "alertmanager.yml"
    _write_config(config, [line])
    result = _run(amtool, "check-config", str(config))
    assert result.returncode != 0, result.stdout
    with pytest.raises(ValueError):
        parse_matchers(line)
