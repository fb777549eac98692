"""``incident-sla-sidecar backtest``: what the plan would have done with Prometheus' alert history.

Its arguments, the Alertmanager routing it emulates (a configuration file's
``route``, or grouping flags), the progress bar, and the errors it reports
in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TextIO

from sidecar.backtest.prometheus import (
    PrometheusError,
    Samples,
    active_since,
    episodes,
    fetch_alerts,
)
from sidecar.backtest.replay import AckAssumption, replay
from sidecar.backtest.report import Settings, markdown, summarize
from sidecar.durations import parse_duration
from sidecar.errors import ConfigError
from sidecar.simulate.alertmanager import Route, SimAlert, flat_route, parse_route
from sidecar.simulate.plan import plan_from_config
from sidecar.yamlfile import load_yaml

_RELATIVE = re.compile(r"^now(?:-(?P<ago>.+))?$")


class UsageError(Exception):
    """An argument the backtest cannot use; the message says why."""


def parse_time(value: str, now: float) -> float:
    """RFC 3339, epoch seconds, ``now`` or ``now-<duration>``."""
    text = value.strip()
    if (m := _RELATIVE.match(text)) is not None:
        ago = m["ago"]
        return now - (_duration(ago, f"time {value!r}") if ago else 0.0)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"invalid time {value!r}: use RFC 3339, epoch seconds or now-30d"
        ) from None
    if parsed.tzinfo is None:
        raise UsageError(f"time {value!r} needs a time zone, as in 2026-11-01T00:00:00Z")
    return parsed.timestamp()


def _duration(value: str, what: str) -> float:
    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None
    return seconds


def ack_assumption(values: Sequence[str]) -> AckAssumption:
    """``--ack-after`` values: a default delay (or ``never``) and ``SEV=D`` overrides."""
    default: float | None = None
    by: dict[str, float | None] = {}
    for value in values:
        sev, sep, delay = value.rpartition("=")
        seconds = None if delay == "never" else _duration(delay, "--ack-after")
        if sep:
            by[sev] = seconds
        else:
            default = seconds
    return AckAssumption(default, by)


def routing(args: argparse.Namespace) -> tuple[Route, str | None]:
    """The routing tree and the sidecar's receiver, from a configuration or the flags."""
    if args.alertmanager_config is None:
        by = [s.strip() for s in args.group_by.split(",") if s.strip()]
        route = flat_route(
            group_by=None if "..." in by else by,
            group_wait=timedelta(seconds=_duration(args.group_wait, "--group-wait")),
            group_interval=timedelta(seconds=_duration(args.group_interval, "--group-interval")),
            repeat_interval=timedelta(seconds=_duration(args.repeat_interval, "--repeat-interval")),
        )
        return route, None
    doc = load_yaml(args.alertmanager_config)
    data = doc.data if isinstance(doc.data, dict) else {}
    if not isinstance(data.get("route"), dict):
        raise UsageError(f"{args.alertmanager_config}: no route section")
    try:
        route = parse_route(data["route"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{args.alertmanager_config}: route: {exc}") from None
    receivers = route.receivers()
    if args.receiver is not None:
        if args.receiver not in receivers:
            raise UsageError(f"no route sends to receiver {args.receiver!r}")
        return route, args.receiver
    webhooks = [
        r.get("name")
        for r in data.get("receivers") or []
        if any(
            "/webhook/alertmanager" in str(w.get("url", "")) for w in r.get("webhook_configs") or []
        )
    ]
    if len(webhooks) == 1:
        return route, str(webhooks[0])
    if len(receivers) == 1:
        return route, None
    names = ", ".join(sorted(receivers))
    raise UsageError(f"name the sidecar's receiver with --receiver (routes send to {names})")


class Progress:
    """A one-line progress bar on a stream, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0

    def bar(self, label: str) -> Callable[[int, int], None]:
        """A callback ``(done, total)`` drawing ``label``'s bar."""

        def draw(done: int, total: int) -> None:
            now = time.monotonic()
            if not self.enabled or (done < total and now - self._last < 0.1):
                return
            self._last = now
            width = 30
            filled = width * done // max(total, 1)
            self.stream.write(
                f"\r{label:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
            )
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()

        return draw


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The backtest; 0 with the report printed, 1 with a one-line error."""
    try:
        report = _run(args, err)
    except (UsageError, PrometheusError) as exc:
        print(f"error: {exc}", file=err)
        return 1
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=err)
        return 1
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(markdown(report))
    return 0


def _run(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    now = time.time()
    start, end = parse_time(args.start, now), parse_time(args.end, now)
    if end <= start:
        raise UsageError("--to must be after --from")
    step = _duration(args.step, "--step")
    chunk = _duration(args.chunk, "--chunk")
    if step <= 0:
        raise UsageError("--step must be positive")
    ack = ack_assumption(args.ack_after)
    plan = plan_from_config(args.config)
    for sev in ack.by_severity:
        if sev not in {s.name for s in plan.rules.severities}:
            raise UsageError(f"--ack-after {sev}=...: no severity {sev} in the rules")
    route, receiver = routing(args)
    shown = args.progress if args.progress is not None else err.isatty()
    progress = Progress(err, shown)
    samples = asyncio.run(
        fetch_alerts(
            args.prometheus, start, end, step=step, chunk=chunk, progress=progress.bar("query")
        )
    )
    alerts = history(samples, step=step, end=end)
    if not alerts:
        raise UsageError(
            f"no firing alerts in ALERTS between {args.start} and {args.end}: "
            "is the range right, and does this Prometheus evaluate your alerting rules?"
        )
    sim = replay(
        plan,
        route,
        alerts,
        start=start,
        end=end,
        receiver=receiver,
        ack=ack,
        progress=progress.bar("replay"),
    )
    settings = Settings(start, end, step, ack.describe(), args.flap_threshold, args.top)
    return summarize(sim, alerts, plan.rules, settings)


def history(samples: Samples, *, step: float, end: float) -> list[SimAlert]:
    """Alert episodes: sent when they fire, started when they began pending."""
    alerts = []
    for labels, states in sorted(samples.items()):
        pending = sorted(states.get("pending", ()))
        for first, last in episodes(states.get("firing", set()), step=step, end=end):
            starts = active_since(pending, first, step=step)
            alerts.append(SimAlert(dict(labels), starts, last, sent_at=first))
    return alerts


def main(args: argparse.Namespace) -> int:
    """Entry point from the CLI."""
    return run(args, sys.stdout, sys.stderr)
