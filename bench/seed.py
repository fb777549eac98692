"""Fill a store with open incidents through the sidecar's own book and store.

Opening 100,000 incidents over HTTP takes minutes; written here with
:class:`sidecar.incidents.IncidentBook` and :class:`sidecar.store.sqlite.SQLiteStore`
they are the same rows the service would have committed, in seconds. The
server then restores them at start, as after a restart.

Run as ``python bench/seed.py --db FILE|--dsn URL --rules FILE --open N [--due-at T ...]``
(``--dsn``: a PostgreSQL database); prints one JSON line: the ids of the incidents
whose deadlines were placed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.payloads import notification, render
from sidecar.alertmanager import parse_notification
from sidecar.incidents import Change, IncidentBook
from sidecar.rules import load_rules
from sidecar.store import PostgresStore, Store
from sidecar.store.base import WriteBatch, event_row, incident_row
from sidecar.store.sqlite import SQLiteStore

# Background incidents: severities whose first deadline (acknowledge, 1 h and
# more) lies beyond any benchmark run, so no deadline fires while measuring.
BACKGROUND_SEVERITIES = ("P2", "P3")
# Deadline-timed incidents are P1: acknowledge within 15 min, nothing earlier.
DUE_SEVERITY = "P1"
DUE_ACK_SECONDS = 15 * 60


def background_template(i: int, teams: Sequence[str], starts: float) -> Any:
    """Incident ``i`` of the background: a one-alert group, severities and teams in turn."""
    labels = {
        "incident_severity": BACKGROUND_SEVERITIES[i % len(BACKGROUND_SEVERITIES)],
        "team": teams[i % len(teams)],
    }
    return notification(1, labels=labels, starts=starts)


async def seed(
    db: Path | str,
    rules_file: Path,
    *,
    open_incidents: int,
    due_at: Sequence[float] = (),
    prefix: str = "seed",
    now: float | None = None,
    batch: int = 5000,
) -> dict[str, Any]:
    """Open ``open_incidents`` background incidents plus one P1 per ``due_at`` instant.

    Each P1 is triggered ``DUE_ACK_SECONDS`` before its instant, so its
    acknowledgment deadline passes exactly then. Returns {incident id: deadline}.
    """
    rules = load_rules(rules_file)
    book = IncidentBook(rules)
    store: Store = (
        PostgresStore(db) if isinstance(db, str) else SQLiteStore(db, synchronous="normal")
    )
    await store.open()
    t0 = time.time() if now is None else now
    write = WriteBatch()
    deadlines: dict[str, float] = {}

    async def flush() -> None:
        nonlocal write
        if write:
            await store.write(write)
        write = WriteBatch()

    def add(changes: list[Change], at: float) -> None:
        for change in changes:
            # What the scheduler would have done at once (e.g. a 0 s escalation step).
            settled = book.check_deadlines(change.incident.id, at)
            write.incidents.append(incident_row(change.incident, at))
            write.events.extend(event_row(e) for e in change.events)
            if settled is not None:
                write.events.extend(event_row(e) for e in settled.events)

    try:
        teams = list(rules.teams)
        # Started a minute before they were triggered: no SLA in breach.
        templates = [background_template(i, teams, t0 - 60) for i in range(len(teams) * 2)]
        for i in range(open_incidents):
            body = render(templates[i % len(templates)], f"{prefix}-{i}")
            add(book.apply_notification(parse_notification(body), t0), t0)
            if len(write.incidents) >= batch:
                await flush()
        for j, deadline in enumerate(due_at):
            triggered = deadline - DUE_ACK_SECONDS
            template = notification(
                1,
                starts=triggered,
                labels={"incident_severity": DUE_SEVERITY, "team": teams[j % len(teams)]},
            )
            changes = book.apply_notification(
                parse_notification(render(template, f"{prefix}-due-{j}")), triggered
            )
            add(changes, triggered)
            for change in changes:
                deadlines[change.incident.id] = deadline
            if len(write.incidents) >= batch:
                await flush()
        await flush()
    finally:
        await store.close()
    return deadlines


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: seed and print the deadline ids as JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", type=Path, help="a SQLite file")
    where.add_argument("--dsn", help="a PostgreSQL database")
    p.add_argument("--rules", type=Path, required=True)
    p.add_argument("--open", type=int, required=True, dest="open_incidents")
    p.add_argument("--due-at", type=float, nargs="*", default=[])
    p.add_argument("--prefix", default="seed")
    args = p.parse_args(argv)
    deadlines = asyncio.run(
        seed(
            args.db or args.dsn,
            args.rules,
            open_incidents=args.open_incidents,
            due_at=args.due_at,
            prefix=args.prefix,
        )
    )
    sys.stdout.write(orjson.dumps({"deadlines": deadlines}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
