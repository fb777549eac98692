"""``backtest`` against a real Prometheus serving a known alert history.

The history is written as OpenMetrics, turned into TSDB blocks by
``promtool tsdb create-blocks-from openmetrics`` and served by the real
Prometheus. Every figure the backtest reports is worked out here on its own,
from the history table and the LLM-Marketplace plan as its README states it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.backtest.command import UsageError, ack_assumption, parse_time
from sidecar.backtest.prometheus import active_since, chunks, episodes
from sidecar.cli import main
from tests.conftest import REPO
from tests.support.binaries import require_binary
from tests.support.ports import free_ports
from tests.support.prometheus import Prometheus, render_config

MINUTE = 60
HOUR = 3600
ACK_AFTER = 10 * MINUTE
GROUP_WAIT = 30


@dataclass(frozen=True)
class History:
    """One alert of the history: its labels, what the plan makes of it, when it fires (minutes)."""

    labels: dict[str, str]
    severity: str | None  # None: dropped by the rules
    team: str
    episodes: tuple[tuple[int, int], ...]
    defaults_only: bool = False
    pending: int = 0  # minutes its rule's `for` keeps it pending before each episode


HISTORY = [
    History(
        {"alertname": "ServiceDown", "service": "publishing", "scope": "total", "instance": "a"},
        "P0",
        "publishing",
        ((0, 90), (300, 320)),
    ),
    # Same group (alertname, service) as the one above, inside its first episode.
    History(
        {"alertname": "ServiceDown", "service": "publishing", "scope": "total", "instance": "b"},
        "P0",
        "publishing",
        ((10, 60),),
    ),
    History({"alertname": "HighErrorRate", "service": "discovery"}, "P2", "search", ((100, 880),)),
    History(
        {"alertname": "KubePodCrashLooping", "service": "admin", "severity": "warning"},
        "P2",
        "platform",
        ((60, 70), (120, 130), (180, 190), (240, 250)),
    ),
    History(
        {"alertname": "RedisDown", "service": "infrastructure", "scope": "total"},
        "P1",
        "devops",
        ((400, 550),),
    ),
    History({"alertname": "DiskAlmostFull", "instance": "n1"}, "P3", "devops", ((500, 530),), True),
    History(
        {
            "alertname": "ServiceDown",
            "service": "consumption",
            "scope": "total",
            "environment": "staging",
        },
        "P3",
        "api",
        ((600, 610),),
    ),
    History({"alertname": "Watchdog", "severity": "none"}, None, "devops", ((0, 24 * 60),)),
    # Pending for 10m before it fires (`for: 10m`): detected late.
    History(
        {"alertname": "ServiceDown", "service": "database", "scope": "total"},
        "P0",
        "database",
        ((710, 730),),
        pending=10,
    ),
]

# The plan (README: LLM-Marketplace preset): paging, SLAs in seconds, ladder (tier, after).
PAGES = {"P0": "critical", "P1": "error", "P2": "warning", "P3": None}
SLA = {
    "P0": {"detect": 5 * MINUTE, "acknowledge": 5 * MINUTE, "update": 15 * MINUTE, "resolve": HOUR},
    "P1": {
        "detect": 10 * MINUTE,
        "acknowledge": 15 * MINUTE,
        "update": 30 * MINUTE,
        "resolve": 4 * HOUR,
    },
    "P2": {"detect": 30 * MINUTE, "acknowledge": HOUR, "update": 2 * HOUR, "resolve": 24 * HOUR},
    "P3": {
        "detect": 2 * HOUR,
        "acknowledge": 4 * HOUR,
        "update": 24 * HOUR,
        "resolve": 7 * 24 * HOUR,
    },
}
LADDER = {
    "P0": ("vp-engineering", 0),
    "P1": ("engineering-manager", 2 * HOUR),
    "P2": ("team-lead", 12 * HOUR),
}


def group_of(h: History) -> tuple[str, str]:
    return (h.labels["alertname"], h.labels.get("service", ""))


def expected() -> dict[str, Any]:
    """The figures, from the table: incidents are the group's merged firing spans."""
    spans: dict[tuple[str, str], list[list[int]]] = {}
    info: dict[tuple[str, str], History] = {}
    for h in HISTORY:
        if h.severity is None:
            continue
        info[group_of(h)] = h
        spans.setdefault(group_of(h), []).extend([list(e) for e in h.episodes])
    incidents: Counter[tuple[str, str]] = Counter()
    pages: Counter[tuple[str, str]] = Counter()
    escalations: Counter[str] = Counter()
    breaches: dict[str, Counter[str]] = {}
    per_group: Counter[tuple[str, str]] = Counter()
    for group, items in spans.items():
        merged: list[list[int]] = []
        for start, end in sorted(items):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        h = info[group]
        for start, end in merged:
            per_group[group] += 1
            incidents[(h.severity or "", h.team)] += 1
            fires, ends = start * MINUTE, end * MINUTE
            started = fires - h.pending * MINUTE
            # Alertmanager notifies group_wait after the alert started, or at once if later.
            declared = max(fires, started + GROUP_WAIT)
            open_for = ends - declared
            pd_severity = PAGES[h.severity or ""]
            if pd_severity is not None:
                pages[("default", pd_severity)] += 1
            if h.severity in LADDER and pd_severity is not None:
                tier, after = LADDER[h.severity]
                if open_for > after:
                    pages[(f"tier:{tier}", pd_severity)] += 1
                    escalations[tier] += 1
            sla = SLA[h.severity or ""]
            counts = breaches.setdefault(h.severity or "", Counter())
            if declared - started > sla["detect"]:
                counts["detect"] += 1
            if open_for > ACK_AFTER > sla["acknowledge"]:
                counts["acknowledge"] += 1
            if open_for > sla["update"]:
                counts["update"] += 1
            if ends - started > sla["resolve"]:
                counts["resolve"] += 1
    episodes_by_name: Counter[str] = Counter()
    for h in HISTORY:
        if h.severity is not None:  # the plan drops the others: no noise for anyone
            episodes_by_name[h.labels["alertname"]] += len(h.episodes)
    return {
        "incidents": incidents,
        "pages": pages,
        "escalations": escalations,
        "breaches": {sev: dict(c) for sev, c in breaches.items() if c},
        "flapping": {g for g, n in per_group.items() if n >= 3},
        "defaults": {h.labels["alertname"] for h in HISTORY if h.defaults_only},
        "episodes": episodes_by_name,
    }


def openmetrics(base: int) -> str:
    """Every firing sample of ALERTS, one per minute (the rule evaluation interval)."""
    lines = ["# HELP ALERTS Alerts of the history.", "# TYPE ALERTS gauge"]
    for h in HISTORY:
        labels = {**h.labels, "alertstate": "firing"}
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pending = text.replace('alertstate="firing"', 'alertstate="pending"')
        for start, end in h.episodes:
            for minute in range(start - h.pending, start):
                lines.append(f"ALERTS{{{pending}}} 1 {base + minute * MINUTE}")
            for minute in range(start, end):
                lines.append(f"ALERTS{{{text}}} 1 {base + minute * MINUTE}")
    return "\n".join([*lines, "# EOF", ""])


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real Prometheus serving the history; yields its URL and the history's start."""
    promtool = require_binary("promtool")
    binary = require_binary("prometheus")
    work = tmp_path_factory.mktemp("backtest")
    base = (int(time.time()) - 3 * 24 * HOUR) // HOUR * HOUR
    source = work / "alerts.om"
    source.write_text(openmetrics(base))
    blocks = work / "blocks"
    subprocess.run(
        [str(promtool), "tsdb", "create-blocks-from", "openmetrics", str(source), str(blocks)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = Prometheus(
        binary=binary,
        workdir=work / "prometheus",
        config_text=render_config([]),
        port=free_ports(1)[0],
    )
    shutil.copytree(blocks, work / "prometheus" / "data")
    server.start()
    try:
        yield server.url, base
    finally:
        server.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "server: {webhook_token: a, api_token: b}\n"
        f"rules: {{file: {REPO / 'rules' / 'llm-marketplace.yaml'}}}\n"
        "pagerduty:\n"
        "  routing_key: r\n"
        "  tier_routing_keys:\n"
        "    vp-engineering: {key: v}\n"
        "    engineering-manager: {key: m}\n"
        "    team-lead: {key: t}\n"
    )
    return path


def backtest(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["backtest", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def common(config: Path, url: str, base: int) -> list[str | Path]:
    return [
        "--config",
        config,
        "--prometheus",
        url,
        "--from",
        str(base),
        "--to",
        str(base + 24 * HOUR),
        "--group-by",
        "alertname,service",
        "--group-wait",
        "30s",
        "--group-interval",
        "5m",
        "--step",
        "1m",
        "--chunk",
        "6h",
        "--ack-after",
        "10m",
    ]


@pytest.mark.e2e
def test_the_backtest_counts_what_the_plan_would_have_done(
    history: tuple[str, int], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, base = history
    code, out, err = backtest(capsys, *common(config, url, base), "--json", "--no-progress")
    assert code == 0, err
    assert err == ""
    report = json.loads(out)
    want = expected()
    got = Counter(
        {(x["severity"], x["team"]): x["count"] for x in report["incidents"]["by_severity_team"]}
    )
    assert got == want["incidents"]
    assert report["incidents"]["total"] == sum(want["incidents"].values())
    pages = {(p["routing"], p["pagerduty_severity"]): p["count"] for p in report["pages"]}
    assert pages == dict(want["pages"])
    assert {t: c["paged"] for t, c in report["escalations"].items()} == dict(want["escalations"])
    assert report["breaches"] == want["breaches"]
    assert {d["alertname"] for d in report["default_rule_only"]} == want["defaults"]
    flapping = {
        (f["labels"]["alertname"], f["labels"].get("service", ""))
        for f in report["flapping_groups"]
    }
    assert flapping == want["flapping"]
    noisiest = {n["alertname"]: n["episodes"] for n in report["noisiest_alerts"]}
    assert noisiest == dict(want["episodes"])
    assert report["alerts"]["dropped_by_rules"] == 1  # Watchdog


@pytest.mark.e2e
def test_markdown_is_the_default_and_progress_goes_to_stderr(
    history: tuple[str, int], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, base = history
    code, out, err = backtest(capsys, *common(config, url, base), "--progress")
    assert code == 0, err
    assert out.startswith("# Backtest ")
    assert "## Incidents per severity and team" in out
    assert "| P2 | platform | 4 |" in out
    assert "| KubePodCrashLooping | 4 | 0.7 |" in out  # noisiest: 4 episodes of 10m
    assert "query " in err and "4/4" in err  # four 6h chunks
    assert "replay " in err


def test_an_unreachable_prometheus_is_one_clear_line(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = backtest(
        capsys,
        "--config",
        config,
        "--prometheus",
        f"http://127.0.0.1:{port}",
        "--from",
        "now-1d",
        "--no-progress",
    )
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: cannot reach Prometheus at http://127.0.0.1:{port}")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.e2e
def test_an_empty_range_is_one_clear_line(
    history: tuple[str, int], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, base = history
    code, out, err = backtest(
        capsys,
        "--config",
        config,
        "--prometheus",
        url,
        "--from",
        str(base - 2 * 24 * HOUR),
        "--to",
        str(base - 24 * HOUR),
        "--no-progress",
    )
    assert code == 1
    assert out == ""
    assert err.startswith("error: no firing alerts in ALERTS between")
    assert "Traceback" not in err


def test_chunks_cover_the_range_within_the_point_limit() -> None:
    pieces = chunks(0, 100_000, 1, 10**9)
    assert pieces[0] == (0, 10_000)
    assert pieces[-1][1] == 100_000
    assert all(b - a <= 10_000 for a, b in pieces)
    # Each chunk starts one step after the previous one ends: no step is lost or asked twice.
    assert all(a2 == b1 + 1 for (_, b1), (a2, _) in itertools.pairwise(pieces))


def test_episodes_split_on_a_missed_evaluation_and_end_one_step_later() -> None:
    times = {0.0, 60.0, 120.0, 300.0, 360.0}
    assert episodes(times, step=60, end=10_000) == [(0.0, 180.0), (300.0, 420.0)]
    assert episodes(times, step=60, end=400) == [(0.0, 180.0), (300.0, None)]


ALERTMANAGER_YML = """
route:
  receiver: default
  group_by: [alertname]
  routes:
    - receiver: sidecar
      group_by: [alertname, service]
      group_wait: 30s
      matchers: ['alertname!="Watchdog"']
      continue: true
    - receiver: tickets
      matchers: ['service="admin"']
receivers:
  - name: default
  - name: tickets
  - name: sidecar
    webhook_configs: [{url: "http://incident-sla-sidecar:9095/webhook/alertmanager"}]
"""


@pytest.mark.e2e
def test_the_grouping_comes_from_an_alertmanager_configuration(
    history: tuple[str, int], config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, base = history
    am = tmp_path / "alertmanager.yml"
    am.write_text(ALERTMANAGER_YML)
    args = [
        "--config",
        config,
        "--prometheus",
        url,
        "--from",
        str(base),
        "--to",
        str(base + 24 * HOUR),
        "--alertmanager-config",
        am,
        "--ack-after",
        "10m",
        "--json",
    ]
    code, out, err = backtest(capsys, *args)
    assert code == 0, err
    assert err == ""  # no progress bar unless stderr is a terminal
    report = json.loads(out)
    want = expected()
    got = Counter(
        {(x["severity"], x["team"]): x["count"] for x in report["incidents"]["by_severity_team"]}
    )
    # The sidecar's receiver (the one webhook to /webhook/alertmanager) groups as the flags did.
    assert got == want["incidents"]
    assert report["breaches"] == want["breaches"]


def test_an_alertmanager_configuration_with_no_receiver_to_pick_is_refused(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    am = tmp_path / "alertmanager.yml"
    am.write_text(ALERTMANAGER_YML.replace("/webhook/alertmanager", "/hook"))
    code, out, err = backtest(
        capsys,
        "--config",
        config,
        "--prometheus",
        "http://127.0.0.1:1",
        "--from",
        "now-1h",
        "--alertmanager-config",
        am,
    )
    assert code == 1
    assert out == ""
    assert err == (
        "error: name the sidecar's receiver with --receiver "
        "(routes send to default, sidecar, tickets)\n"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("now", 1_000_000.0),
        ("now-1h", 1_000_000.0 - 3600),
        ("1700000000", 1_700_000_000.0),
        ("2026-11-01T00:00:00Z", 1_793_491_200.0),
        ("2026-11-01T01:00:00+01:00", 1_793_491_200.0),
    ],
)
def test_times_are_rfc3339_epoch_or_relative_to_now(text: str, seconds: float) -> None:
    assert parse_time(text, 1_000_000.0) == seconds


@pytest.mark.parametrize("text", ["yesterday", "2026-11-01T00:00:00", "now-soon"])
def test_a_time_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_time(text, 1_000_000.0)


def test_the_acknowledgment_assumption_per_severity() -> None:
    ack = ack_assumption(["10m", "P0=2m", "P3=never"])
    assert (ack.delay("P0"), ack.delay("P1"), ack.delay("P3")) == (120.0, 600.0, None)
    assert ack.describe() == "10m after declaration; P0: 2m after declaration; P3: never"
    assert ack_assumption([]).delay("P0") is None


def test_an_alert_started_when_its_pending_run_right_before_firing_began() -> None:
    pending = [0.0, 60.0, 600.0, 660.0, 720.0]
    assert active_since(pending, 780.0, step=60) == 600.0
    assert active_since(pending, 2000.0, step=60) == 2000.0  # pending long before: not this one
    assert active_since([], 780.0, step=60) == 780.0
