"""The ``backtest`` subcommand's arguments, apart from the command so that ``serve`` stays light.

``sidecar.cli`` builds every subcommand's parser at start; importing the
backtest itself would load the simulation and every integration (about 0.9 s)
for a ``serve`` that never replays anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``backtest`` subcommand's arguments."""
    p.add_argument("--config", type=Path, required=True, help="the sidecar configuration")
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    p.add_argument(
        "--from", dest="start", required=True, metavar="T", help="RFC 3339, epoch, now-30d"
    )
    p.add_argument("--to", dest="end", default="now", metavar="T", help="likewise (default now)")
    p.add_argument(
        "--alertmanager-config",
        type=Path,
        metavar="FILE",
        help="take the routing tree and grouping from this Alertmanager configuration",
    )
    p.add_argument("--receiver", help="the sidecar's receiver in that configuration")
    p.add_argument(
        "--group-by",
        default="alertname",
        metavar="L,L",
        help="grouping labels without a configuration ('...' for all)",
    )
    p.add_argument("--group-wait", default="30s", metavar="D")
    p.add_argument("--group-interval", default="5m", metavar="D")
    p.add_argument("--repeat-interval", default="4h", metavar="D")
    p.add_argument(
        "--ack-after",
        action="append",
        default=[],
        metavar="D|SEV=D",
        help="assumed acknowledgment delay ('never', the default), per severity if SEV=D",
    )
    p.add_argument("--step", default="1m", metavar="D", help="the rule evaluation interval")
    p.add_argument("--chunk", default="1d", metavar="D", help="range of one query")
    p.add_argument(
        "--flap-threshold",
        type=int,
        default=3,
        metavar="N",
        help="a group that opens at least N incidents is flapping",
    )
    p.add_argument("--top", type=int, default=10, metavar="N", help="noisiest alerts shown")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
