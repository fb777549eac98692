"""Reading the alert history from Prometheus: ``ALERTS``, firing and pending, in chunks.

Firing samples say when Prometheus sent an alert; the pending ones just before
say when it started (``startsAt`` is when the rule first matched, before its
``for`` elapsed), which is what the detection SLA measures from. Each chunk is
one range query of ``timestamp(ALERTS)``:
``timestamp()`` answers with the time of the sample each step found, not the
step's own, so the distinct values are the rule evaluations at which the
alert was firing. A series that is no longer written shows the same old
timestamp for the lookback window (blocks without staleness markers, such as
backfilled ones, do this) and so adds nothing. A chunk holds at most 10,000
steps, within Prometheus' 11,000 points per series.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import aiohttp

QUERY = "timestamp(ALERTS)"
MAX_STEPS = 10_000
_DROPPED_LABELS = ("__name__", "alertstate")

Labels = tuple[tuple[str, str], ...]
Samples = dict[Labels, dict[str, set[float]]]
"""Sample times of each alert (its labels as sorted pairs) by state, firing or pending."""


class PrometheusError(Exception):
    """Prometheus could not be reached or refused the query; the message says which."""


def chunks(start: float, end: float, step: float, chunk: float) -> list[tuple[float, float]]:
    """``[start, end]`` cut into ranges of at most ``chunk`` (and ``MAX_STEPS`` steps)."""
    size = max(step, min(chunk, step * MAX_STEPS))
    out = []
    at = start
    while at <= end:
        stop = min(at + size, end)
        out.append((at, stop))
        at = stop + step
    return out


async def fetch_alerts(
    url: str,
    start: float,
    end: float,
    *,
    step: float,
    chunk: float,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    query_timeout: float = 60.0,
) -> Samples:
    """Every sample of ``ALERTS`` between ``start`` and ``end``; PrometheusError if not."""
    pieces = chunks(start, end, step, chunk)
    samples: Samples = {}
    endpoint = url.rstrip("/") + "/api/v1/query_range"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=query_timeout)) as session:
        for done, (lo, hi) in enumerate(pieces, 1):
            params = {"query": QUERY, "start": _num(lo), "end": _num(hi), "step": _num(step)}
            data = await _get(session, url, endpoint, params)
            for series in data.get("result", []):
                labels = tuple(
                    sorted((k, v) for k, v in series["metric"].items() if k not in _DROPPED_LABELS)
                )
                state = series["metric"].get("alertstate", "firing")
                times = samples.setdefault(labels, {}).setdefault(state, set())
                times.update(float(value) for _, value in series["values"])
            progress(done, len(pieces))
    return samples


async def _get(
    session: aiohttp.ClientSession, url: str, endpoint: str, params: dict[str, str]
) -> Any:
    try:
        async with session.get(endpoint, params=params) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            if resp.status != 200 or not isinstance(body, dict) or body.get("status") != "success":
                detail = body.get("error") if isinstance(body, dict) else None
                raise PrometheusError(
                    f"Prometheus at {url} answered {resp.status} to {QUERY}: "
                    f"{detail or 'not a Prometheus API answer'}"
                )
            return body["data"]
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise PrometheusError(f"cannot reach Prometheus at {url}: {reason}") from exc


def _num(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def episodes(times: set[float], *, step: float, end: float) -> list[tuple[float, float | None]]:
    """Firing episodes from sample times, ``step`` being the rule evaluation interval.

    Samples more than one and a half steps apart belong to two episodes (at
    least one evaluation found the alert not firing). An episode resolves one
    step after its last firing sample, at the evaluation that no longer found
    it firing; one still firing at ``end`` has no end.
    """
    ordered = sorted(t for t in times if math.isfinite(t))
    out: list[tuple[float, float | None]] = []
    if not ordered:
        return out
    gap = 1.5 * step
    first = last = ordered[0]
    for t in ordered[1:]:
        if t - last > gap:
            out.append((first, last + step))
            first = t
        last = t
    out.append((first, None if end - last <= gap else last + step))
    return out


def active_since(pending: list[float], firing_from: float, *, step: float) -> float:
    """When an alert that fires from ``firing_from`` started: the pending run right before it.

    ``pending`` is sorted; without pending samples just before, it started firing at once.
    """
    gap = 1.5 * step
    earliest = firing_from
    for t in reversed(pending):
        if t >= earliest:
            continue
        if earliest - t > gap:
            break
        earliest = t
    return earliest
