"""Turns benchmark results into ``latest.json`` and a Markdown report with tables and charts."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

KIB = 1024
TARGETS = {
    "metrics_seconds": 0.050,
    "latency_p99_seconds": 0.025,
    "postgres_latency_p99_seconds": 0.050,
    "postgres_restart_seconds": 5.0,
    "changed_vs_bare": 0.5,
    "new_group_vs_bare": 0.3,
    "bytes_per_incident": 2 * KIB,
    "restart_seconds": 3.0,
    "breach_seconds": 1.0,
}

# Frames every sample passes through; they say nothing about where time goes.
_ENTRY = (
    "<frozen runpy>",
    "sidecar/__main__.py",
    "sidecar/cli.py:main",
    "sidecar/cli.py:serve",
    "uvloop/__init__.py:run",
    "asyncio/runners.py",
    "threading.py",
    "futures/thread.py:_worker",
)
# Leaves py-spy counts as running that are waiting: an executor thread with no work.
_IDLE = {"futures/thread.py:_worker"}
# A leaf whose time is spent below Python, in C that py-spy cannot see into.
_C_LEAVES = {"asyncio/runners.py:Runner.run": "(uvloop's C event loop: socket I/O, callbacks)"}
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _site(frame: str) -> str:
    """``function (path:line)`` as ``short/path.py:function`` (lines folded together)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for anchor in ("site-packages/", "/lib/python3"):
        if anchor in path:
            path = path.split(anchor, 1)[1]
            break
    else:
        parts = Path(path).parts
        path = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{path}:{m.group('fn')}"


def collapse(raw: str, top: int = 15) -> dict[str, Any]:
    """py-spy ``--format raw`` (collapsed stacks) to the top sites by own and by total time."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_site(f) for f in stack.split(";") if f]
        if not frames or frames[-1] in _IDLE:
            continue
        samples += n
        own[_C_LEAVES.get(frames[-1], frames[-1])] += n
        for site in set(frames):
            if not site.startswith(_ENTRY):
                total[site] += n

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[site, round(100 * n / samples, 1)] for site, n in c.most_common(top)]

    return {"samples": samples, "own": share(own) if samples else [], "total": share(total)}


def _fmt_spread(s: dict[str, float], scale: float = 1.0, digits: int = 0) -> str:
    med = f"{s['median'] * scale:,.{digits}f}"
    if s.get("runs", 1) > 1:
        return f"{med} ({s['min'] * scale:,.{digits}f}-{s['max'] * scale:,.{digits}f})"
    return med


def _rps(cell: dict[str, Any], mix: str, target: str) -> float | None:
    got = cell.get(mix, {}).get(target, {}).get("rps", {}).get("median")
    return float(got) if got is not None else None


def _ingest_row(
    r: dict[str, Any], body: str, mix: str, floor: float | None, versus_am: bool
) -> dict[str, Any] | None:
    """One mix of one body size: the sidecar against the baselines of the same run."""
    cell = r["ingest"][body]
    sc = _rps(cell, mix, "sidecar")
    if sc is None:
        return None
    bare, am = _rps(cell, mix, "bare aiohttp"), _rps(cell, mix, "alertmanager")
    alerts = r["bodies"][body]["alerts"]
    ratios, targets = [], []
    ok: bool | None = None if floor is None else True
    if bare:
        ratios.append(f"{sc / bare:.2f}x bare ({bare:,.0f}/s)")
    if floor is not None:
        targets.append(f">= {floor:g}x bare aiohttp")
        ok = bool(bare) and sc >= bare * floor
    if am:
        ratios.append(f"{sc / am:.2f}x Alertmanager ({am:,.0f}/s)")
    if versus_am:
        targets.append(">= Alertmanager")
        ok = bool(ok) and am is not None and sc >= am
    errors = cell[mix]["sidecar"]["errors"]
    return {
        "what": f"ingest, durable, {body}, {mix}",
        "measured": f"{_fmt_spread(cell[mix]['sidecar']['rps'])} req/s = "
        f"{sc * alerts:,.0f} alerts/s" + (f", {errors:.0f} errors" if errors else ""),
        "target": " and ".join(targets) or "(informative)",
        "ratio": "; ".join(ratios),
        "pass": None if ok is None else ok and not errors,
    }


def _latency_row(lat: dict[str, Any], what: str, target: float) -> dict[str, Any]:
    p99 = lat["p99_us"] / 1e6
    stolen = lat.get("others_on_server_cpu_s")
    return {
        "what": f"latency to 200, {what}, at half peak "
        f"({lat['target_rps']:,.0f}/s asked, {lat['rps']:,.0f}/s done)",
        "measured": f"p50 {lat['p50_us'] / 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"p99.9 {lat['p999_us'] / 1000:.1f} ms"
        + (f" (others took {stolen:.1f} s of its CPU)" if stolen is not None else ""),
        "target": f"p99 <= {target * 1000:g} ms",
        "ratio": "",
        "pass": p99 <= target and not lat["errors"],
    }


def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what was measured, the target, the baseline ratio, pass or fail."""
    rows: list[dict[str, Any]] = []
    ingest = r.get("ingest", {})
    for body in ("50-alert", "1-alert"):
        if body not in ingest:
            continue
        for mix, floor, versus_am in (
            ("changed", TARGETS["changed_vs_bare"], True),
            ("new group", TARGETS["new_group_vs_bare"], False),
            ("repeats", None, False),
        ):
            row = _ingest_row(r, body, mix, floor, versus_am)
            if row is not None:
                rows.append(row)
        lat = ingest[body].get("latency")
        if lat:
            rows.append(_latency_row(lat, f"{body}, changed", TARGETS["latency_p99_seconds"]))
    scale = r.get("scale")
    if scale:
        levels = scale["levels"]
        for n, lv in levels.items():
            t = lv["metrics_seconds"]["median"]
            rows.append(
                {
                    "what": f"`/metrics` at {int(n):,} open incidents",
                    "measured": f"{_fmt_spread(lv['metrics_seconds'], 1000, 1)} ms, "
                    f"{lv['series']} series",
                    "target": "<= 50 ms",
                    "ratio": "",
                    "pass": t <= TARGETS["metrics_seconds"],
                }
            )
        series = [lv["series"] for lv in levels.values()]
        first, last = next(iter(levels)), list(levels)[-1]
        rows.append(
            {
                "what": f"series count from {int(first):,} to {int(last):,} open incidents",
                "measured": " → ".join(str(s) for s in series),
                "target": "flat",
                "ratio": "",
                "pass": len(set(series)) == 1,
            }
        )
        top = levels[last]
        per = top["bytes_per_incident"]
        rows.append(
            {
                "what": f"memory per open incident ({int(last):,} open)",
                "measured": f"{per:,.0f} B (RSS {top['rss_kib']['median'] / KIB:,.0f} MiB, empty "
                f"{r['rss_empty_kib'] / KIB:,.0f} MiB; slope "
                f"{scale['bytes_per_incident_slope']:,.0f} B)",
                "target": "<= 2 KB",
                "ratio": "",
                "pass": per <= TARGETS["bytes_per_incident"],
            }
        )
        rows.append(
            {
                "what": f"restart to ready, {int(last):,} open incidents",
                "measured": f"{_fmt_spread(top['ready_seconds'], 1, 2)} s",
                "target": "<= 3 s",
                "ratio": "",
                "pass": top["ready_seconds"]["median"] <= TARGETS["restart_seconds"],
            }
        )
    b = r.get("breach")
    if b:
        rows.append(_breach_row(b, ""))
    rows += _postgres_rows(r.get("postgres") or {})
    return rows


def _breach_row(b: dict[str, Any], where: str) -> dict[str, Any]:
    ok = (
        "max" in b
        and b["max"] <= TARGETS["breach_seconds"]
        and b["logged_on_time"] == b["deadlines"] - b["passed_before_ready"]
        and b["counted_in_metrics"] >= b["deadlines"]
    )
    return {
        "what": f"breach detection{where}, {b['open_incidents']:,} open incidents "
        f"({b['spread']} deadlines over 8 s + {b['burst']} at one instant)",
        "measured": (
            f"max {b['max']:.3f} s, p99 {b['p99']:.3f} s, p50 {b['p50']:.3f} s; "
            f"{b['logged_on_time']}/{b['deadlines']} logged, "
            f"{b['counted_in_metrics']:.0f} counted"
            if "max" in b
            else "no breach seen"
        ),
        "target": "<= 1 s",
        "ratio": "",
        "pass": ok,
    }


def _postgres_rows(pg: dict[str, Any]) -> list[dict[str, Any]]:
    """PostgreSQL: one replica against three on the changed mix, latency, restart, breaches."""
    rows: list[dict[str, Any]] = []
    for body in ("50-alert", "1-alert"):
        cell = pg.get(body)
        if not cell:
            continue
        one, three = cell.get("1 replica"), cell.get("3 replicas")
        if one and three:
            a, b = one["rps"]["median"], three["rps"]["median"]
            errors = one.get("errors", 0) + three.get("errors", 0)
            rows.append(
                {
                    "what": f"PostgreSQL ingest, {body}, changed, 3 replicas against 1",
                    "measured": f"1 replica {_fmt_spread(one['rps'])} req/s, 3 replicas "
                    f"{_fmt_spread(three['rps'])} req/s"
                    + (f", {errors:.0f} errors" if errors else ""),
                    "target": "3 replicas >= 1 replica",
                    "ratio": f"{b / a:.2f}x" if a else "",
                    "pass": bool(a) and b >= a and not errors,
                }
            )
        if cell.get("latency"):
            rows.append(
                _latency_row(
                    cell["latency"],
                    f"PostgreSQL, {body}, changed, 1 replica",
                    TARGETS["postgres_latency_p99_seconds"],
                )
            )
    restart = pg.get("restart")
    if restart:
        rows.append(
            {
                "what": "PostgreSQL restart to ready, "
                f"{restart['open_incidents']:,} open incidents",
                "measured": f"{_fmt_spread(restart['ready_seconds'], 1, 2)} s",
                "target": f"<= {TARGETS['postgres_restart_seconds']:g} s",
                "ratio": "",
                "pass": restart["ready_seconds"]["median"] <= TARGETS["postgres_restart_seconds"],
            }
        )
    if pg.get("breach"):
        rows.append(_breach_row(pg["breach"], " on PostgreSQL"))
    return rows


def markdown(r: dict[str, Any]) -> str:
    """The results as a Markdown document."""
    m = r.get("machine", {})
    out = ["# Benchmark results", ""]
    out.append(
        f"`{m.get('command', '')}` on {m.get('date', '')}: {m.get('nproc')} CPUs "
        f"({m.get('cpu', '')}), Python {m.get('python', '')}, {m.get('wrk', '')}; server on "
        f"CPU {m.get('server_cpu')}, wrk on CPU {m.get('load_cpu')}. Load average "
        f"{_load(m.get('loadavg_start'))} at start, {_load(m.get('loadavg_end'))} at end "
        "(other users of the machine show there)."
    )
    if "seconds" in m:
        out.append(f"Took {m['seconds']:.0f} s.")
    out += ["", "| what | measured | target | vs baseline | result |", "|---|---|---|---|---|"]
    for row in verdicts(r):
        res = {True: "**pass**", False: "**FAIL**", None: ""}[row["pass"]]
        out.append(
            f"| {row['what']} | {row['measured']} | {row['target']} | {row['ratio']} | {res} |"
        )
    ingest = r.get("ingest")
    if ingest:
        out += [
            "",
            "## Ingest, requests/s (median, min-max of the runs)",
            "",
            "| body | mix | server | req/s | alerts/s | errors | others' CPU s on its core |",
            "|---|---|---|---|---|---|---|",
        ]
        for body, cell in ingest.items():
            alerts = r["bodies"][body]["alerts"]
            for mix, servers in cell.items():
                if mix in ("latency", "profile") or not isinstance(servers, dict):
                    continue
                for target, v in servers.items():
                    stolen = [x.get("others_on_server_cpu_s") for x in v.get("runs", [])]
                    known = [x for x in stolen if x is not None]
                    other = " / ".join(f"{x:.1f}" for x in known) if known else "n/a"
                    out.append(
                        f"| {body} ({r['bodies'][body]['webhook_bytes']:,} B) | {mix} | "
                        f"{target} | {_fmt_spread(v['rps'])} | "
                        f"{v['rps']['median'] * alerts:,.0f} | {v['errors']:.0f} | {other} |"
                    )
        out += charts(r)
        profiles = [(b, c["profile"]) for b, c in ingest.items() if c.get("profile")]
        for body, prof in profiles:
            out += [
                "",
                f"## Profile of the sidecar, {body}, changed mix "
                f"({prof['samples']} samples, `{prof['file']}`)",
                "",
                "| own time | % | total time | % |",
                "|---|---|---|---|",
            ]
            for own, tot in zip(prof["own"], prof["total"], strict=False):
                out.append(f"| `{own[0]}` | {own[1]} | `{tot[0]}` | {tot[1]} |")
    scale = r.get("scale")
    if scale:
        out += [
            "",
            "## Open incidents",
            "",
            "| open | seeded in | ready in | `/metrics` ms | series | bytes | RSS MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, lv in scale["levels"].items():
            out.append(
                f"| {int(n):,} | {lv['seed_seconds']:.1f} s | "
                f"{_fmt_spread(lv['ready_seconds'], 1, 2)} s | "
                f"{_fmt_spread(lv['metrics_seconds'], 1000, 1)} | {lv['series']} | "
                f"{lv['metrics_bytes']:,} | {lv['rss_kib']['median'] / KIB:,.0f} |"
            )
    notes = r.get("notes")
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _load(v: Any) -> str:
    return "/".join(f"{x:.2f}" for x in v) if v else "?"


def charts(r: dict[str, Any]) -> list[str]:
    """Ingest throughput per mix as Mermaid bar charts, with the half-bare target as a line.

    Per body size, one bar per mix and server: the bare handler, Alertmanager and
    the sidecar side by side for each mix. Mermaid, not an image: GitHub draws it
    in the README and ``latest.md``, and it needs no plotting library and no
    binary file in the repository.
    """
    out: list[str] = []
    for body, cell in (r.get("ingest") or {}).items():
        names: list[str] = []
        med: list[float] = []
        for mix, servers in cell.items():
            if mix in ("latency", "profile") or not isinstance(servers, dict):
                continue
            for target, v in servers.items():
                names.append(f"{target}, {mix}")
                med.append(v["rps"]["median"])
        if not names:
            continue
        top = max(med)
        bare = _rps(cell, "changed", "bare aiohttp")
        labels = ", ".join(f'"{n}"' for n in names)
        out += [
            "",
            "```mermaid",
            "xychart-beta",
            f'    title "{body} notifications: requests/s, median of the runs"',
            f"    x-axis [{labels}]",
            f'    y-axis "requests/s" 0 --> {math.ceil(top * 1.1 / 1000) * 1000}',
            f"    bar [{', '.join(f'{m:.0f}' for m in med)}]",
        ]
        if bare is not None:  # the headline target: half of the bare handler
            out.append(f"    line [{', '.join(f'{bare / 2:.0f}' for _ in names)}]")
        out.append("```")
    return out


def write(r: dict[str, Any], out: Path, *, name: str | None = None) -> None:
    """``latest.json`` and ``latest.md`` in ``out``.

    With ``name``, also ``<name>.json`` and ``<name>.md``, so a quick run does not
    hide the last full one.
    """
    out.mkdir(parents=True, exist_ok=True)
    r = dict(r)
    r["verdicts"] = verdicts(r)
    text = json.dumps(r, indent=2, default=str) + "\n"
    md = markdown(r)
    for stem in ["latest"] + ([name] if name else []):
        (out / f"{stem}.json").write_text(text)
        (out / f"{stem}.md").write_text(md)
