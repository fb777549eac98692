"""``GET /metrics``: the registry's text exposition, each series' line prepared once.

prometheus_client's ``generate_latest`` builds a sample with a dict of labels
for every series, then validates, sorts and escapes those labels again, on
every scrape: with the llm-marketplace preset's 2,225 series that was some 45 ms
of CPU per scrape, whatever the number of open incidents. Here the label
values are bounded (configuration and fixed enums, see :mod:`sidecar.metrics`),
so each series' line up to its value is rendered the first time the series is
seen and kept; a scrape reads the values and formats them only.

The output is ``generate_latest``'s, byte for byte: the names, help lines,
types and label strings are made by prometheus_client's own functions, and
``tests/test_metrics.py`` compares the two on a registry with every kind of
value. Counters, gauges and histograms are read as prometheus_client lays them
out (its children, their values and buckets, the parts ``collect()`` reads); any
other collector is rendered by ``generate_latest`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as om
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# How the library writes a value (Go's float formatting: +Inf, 1e+06...), typed.
_go: Callable[[float], str] = floatToGoString


class Exposition:
    """The text of the collectors added, in the order added (the registry's order)."""

    def __init__(self) -> None:
        self._parts: list[_Family | _Other] = []

    def add(self, collector: Collector) -> None:
        """Export ``collector`` after the ones added before it."""
        if type(collector) in (Counter, Gauge, Histogram):
            self._parts.append(_Family(collector))
        else:
            self._parts.append(_Other(collector))

    def render(self) -> bytes:
        """The exposition, as ``generate_latest`` writes it for the same collectors."""
        out: list[str] = []
        for part in self._parts:
            part.render(out)
        return "".join(out).encode("utf-8")


class _Other:
    """A collector of another kind (a gauge computed at scrape time): left to the library."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def render(self, out: list[str]) -> None:
        out.append(generate_latest(self._collector).decode("utf-8"))


class _Family:
    """A counter, gauge or histogram family with the start of each series' line."""

    def __init__(self, family: Any) -> None:
        [metric] = family.describe()
        self._family = family
        self._histogram = isinstance(family, Histogram)
        # What generate_latest calls the family and its samples: a counter's
        # family is named without ``_total``, its samples and help lines with it.
        self._sample = metric.name + "_total" if metric.type == "counter" else metric.name
        name = om.escape_metric_name(self._sample)
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        self._head = f"# HELP {name} {help_text}\n# TYPE {name} {metric.type}\n"
        self._labelnames: tuple[str, ...] = tuple(family._labelnames)
        # Label values -> the start of each line of that series, up to its value.
        self._lines: dict[tuple[str, ...], list[str]] = {}

    def render(self, out: list[str]) -> None:
        out.append(self._head)
        family = self._family
        if self._labelnames:
            with family._lock:  # as the library does: children may be added meanwhile
                children = list(family._metrics.items())
        else:
            children = [((), family)]
        lines = self._lines
        for values, child in children:
            starts = lines.get(values)
            if starts is None:
                starts = lines[values] = self._starts(values, child)
            if not self._histogram:
                out += (starts[0], _go(child._value.get()), "\n")
                continue
            # Cumulative buckets, then _count (the last bucket's total) and _sum.
            buckets = child._buckets
            total = 0.0
            for start, bucket in zip(starts, buckets, strict=False):
                total += bucket.get()
                out += (start, _go(total), "\n")
            n = len(buckets)
            out += (starts[n], _go(total), "\n")
            if len(starts) > n + 1:
                out += (starts[n + 1], _go(child._sum.get()), "\n")

    def _starts(self, values: Sequence[str], child: Any) -> list[str]:
        labels = dict(zip(self._labelnames, values, strict=True))
        if not self._histogram:
            return [_start(self._sample, labels)]
        name = self._sample
        bounds = child._upper_bounds
        starts = [_start(f"{name}_bucket", {**labels, "le": _go(b)}) for b in bounds]
        starts.append(_start(f"{name}_count", labels))
        if bounds[0] >= 0:  # the library writes no _sum when a bucket is negative
            starts.append(_start(f"{name}_sum", labels))
        return starts


def _start(name: str, labels: dict[str, str]) -> str:
    """A sample line up to its value, as generate_latest writes it (labels sorted by name)."""
    pairs = ",".join(
        f'{om.escape_label_name(k)}="{om._escape(v, om.ALLOWUTF8, False)}"'  # type: ignore[arg-type]
        for k, v in sorted(labels.items())
    )
    name = om.escape_metric_name(name)
    return f"{name}{{{pairs}}} " if pairs else f"{name} "
