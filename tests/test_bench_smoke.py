"""Smoke test of the benchmark harness (``bench/``), so it cannot rot silently.

It measures nothing and asserts no time: it checks that the bodies the
benchmark sends are valid webhooks, that the profile summary reads py-spy's
format, and that ``bench/run.py --self-test`` seeds a store, starts the real
sidecar on it, scrapes it and writes the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.payloads import api_alerts, notification, render
from sidecar.alertmanager import parse_notification

REPO = Path(__file__).parent.parent


def test_bench_bodies_are_valid_webhooks_of_the_sizes_measured() -> None:
    for size in (1, 50):
        n = parse_notification(render(notification(size), "g-7", "41.5"))
        assert n.alerts[0].annotations["value"] == "41.5"
        assert len(n.alerts) == size
        assert n.group_key == '{}:{bench_group="g-7"}'
        assert {a.labels["bench_group"] for a in n.alerts} == {"g-7"}
        assert len({a.fingerprint for a in n.alerts}) == size
        alerts = orjson.loads(render(api_alerts(size), "g-7"))
        assert [a["labels"] for a in alerts] == [a.labels for a in n.alerts]
        assert set(alerts[0]) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}


def test_profile_summary_reads_collapsed_stacks() -> None:
    raw = (
        "main (sidecar/__main__.py:5);handle (sidecar/web/webhooks.py:20);"
        "parse (sidecar/alertmanager.py:80) 30\n"
        "main (sidecar/__main__.py:5);handle (sidecar/web/webhooks.py:21) 10\n"
    )
    top = report.collapse(raw)
    assert top["samples"] == 40
    assert top["own"][0] == ["sidecar/alertmanager.py:parse", 75.0]
    assert ["web/webhooks.py:handle", 100.0] in top["total"]
    assert all(not site.startswith("sidecar/__main__.py") for site, _ in top["total"])


def _servers(bare: float, am: float, sidecar: float) -> dict[str, Any]:
    def one(rps: float) -> dict[str, Any]:
        return {"rps": {"median": rps, "min": rps, "max": rps}, "errors": 0}

    return {"bare aiohttp": one(bare), "alertmanager": one(am), "sidecar": one(sidecar)}


def test_verdicts_compare_each_mix_against_the_baselines_of_the_same_run() -> None:
    cell = {
        "changed": _servers(1000.0, 300.0, 400.0),
        "repeats": _servers(1000.0, 300.0, 900.0),
        "new group": _servers(1000.0, 300.0, 290.0),
    }
    results = {
        "bodies": {"50-alert": {"alerts": 50, "webhook_bytes": 1}},
        "ingest": {"50-alert": cell},
    }
    changed, new, repeats = report.verdicts(results)
    # The headline first: above Alertmanager but under half of bare aiohttp.
    assert changed["what"].endswith("changed")
    assert changed["pass"] is False
    assert new["pass"] is False  # 0.29x bare, under 0.3x
    assert repeats["pass"] is None  # reported, not a target
    cell["changed"]["sidecar"]["rps"]["median"] = 600.0
    cell["new group"]["sidecar"]["rps"]["median"] = 300.0
    changed, new, _ = report.verdicts(results)
    assert changed["pass"] is True
    assert new["pass"] is True
    cell["changed"]["alertmanager"]["rps"]["median"] = 700.0
    changed, _, _ = report.verdicts(results)
    assert changed["pass"] is False  # half of bare, but under Alertmanager


def test_postgres_verdicts_hold_three_replicas_to_one() -> None:
    results = {
        "bodies": {"1-alert": {"alerts": 1, "webhook_bytes": 1}},
        "postgres": {
            "1-alert": {
                "1 replica": {"rps": {"median": 1000.0, "min": 1000.0, "max": 1000.0}},
                "3 replicas": {"rps": {"median": 900.0, "min": 900.0, "max": 900.0}},
            }
        },
    }
    (row,) = report.verdicts(results)
    assert row["pass"] is False
    results["postgres"]["1-alert"]["3 replicas"]["rps"]["median"] = 1000.0
    (row,) = report.verdicts(results)
    assert row["pass"] is True


def test_charts_draw_each_mix_and_server_and_the_half_bare_target() -> None:
    spread = {"median": 0.0, "min": 0.0, "max": 0.0}
    cell = {
        "changed": {
            "bare aiohttp": {"rps": {**spread, "median": 1000.0}, "errors": 0},
            "sidecar": {"rps": {**spread, "median": 520.0}, "errors": 0},
        },
        "new group": {"sidecar": {"rps": {**spread, "median": 120.4}, "errors": 0}},
        "latency": {"p99_us": 1.0},
    }
    lines = report.charts({"ingest": {"1-alert": cell}})
    assert lines[1:3] == ["```mermaid", "xychart-beta"]
    assert '    x-axis ["bare aiohttp, changed", "sidecar, changed", "sidecar, new group"]' in lines
    assert "    bar [1000, 520, 120]" in lines
    assert "    line [500, 500, 500]" in lines
    assert '    y-axis "requests/s" 0 --> 2000' in lines
    assert lines[-1] == "```"


def test_self_test_runs_the_sidecar_and_writes_the_report(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--self-test", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "latest.json").read_text())
    (level,) = results["scale"]["levels"].values()
    assert level["open_incidents"] == 20
    assert level["series"] > 0
    assert level["ready_seconds"]["median"] > 0
    md = (tmp_path / "latest.md").read_text()
    assert "`/metrics` at 20 open incidents" in md
    assert "restart to ready, 20 open incidents" in md
