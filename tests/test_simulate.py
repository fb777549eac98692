"""The emulated Alertmanager: its timers and deduplication, table by table, and its
identities (fingerprint, groupKey, labels) checked against the real Alertmanager 0.25."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from aiohttp import web

from sidecar.alertmanager import Notification, notification_from
from sidecar.simulate.alertmanager import (
    Dispatcher,
    SimAlert,
    fingerprint,
    flat_route,
    parse_route,
)
from tests.support.fixtures import AlertmanagerFactory
from tests.support.ports import LOOPBACK, free_ports


def flushes(
    dispatcher: Dispatcher,
    alerts: list[SimAlert],
    until: float,
    muted: Any = None,
) -> list[tuple[float, Notification]]:
    """Every notification up to ``until``: alerts inserted when they start, flushes when due."""
    pending = sorted(alerts, key=lambda a: a.starts_at)
    out = []
    while True:
        times = [
            t
            for t in (dispatcher.next_flush(), pending[0].starts_at if pending else None)
            if t is not None
        ]
        if not times or min(times) > until:
            return out
        now = min(times)
        while pending and pending[0].starts_at <= now:
            dispatcher.insert(pending.pop(0), now)
        out += [(now, n) for n in dispatcher.flush_due(now, muted)]


def summary(found: list[tuple[float, Notification]]) -> list[tuple[float, str, int]]:
    return [(at, n.status, len(n.alerts)) for at, n in found]


A = {"alertname": "A", "instance": "1"}
A2 = {"alertname": "A", "instance": "2"}


@pytest.mark.parametrize(
    ("alerts", "until", "want"),
    [
        # The first notification waits group_wait.
        ([SimAlert(A, 0)], 29, []),
        ([SimAlert(A, 0)], 30, [(30, "firing", 1)]),
        # A new alert joins at the next group_interval tick, not at once.
        ([SimAlert(A, 0), SimAlert(A2, 100)], 400, [(30, "firing", 1), (330, "firing", 2)]),
        # Long after the group went quiet, a new alert still waits for the group's next tick.
        ([SimAlert(A, 0), SimAlert(A2, 5000)], 6000, [(30, "firing", 1), (5130, "firing", 2)]),
        # Nothing new: only the repeat interval sends again (4h after the last one).
        ([SimAlert(A, 0)], 15_000, [(30, "firing", 1), (14_730, "firing", 1)]),
        # Resolved at the next tick; the group is gone, and a re-fire waits group_wait again.
        (
            [SimAlert(A, 0, 500), SimAlert(A, 1000)],
            1100,
            [(30, "firing", 1), (630, "resolved", 1), (1030, "firing", 1)],
        ),
        # Fired and resolved within group_wait: nothing at all.
        ([SimAlert(A, 0, 20)], 1000, []),
        # One of two resolves: a firing notification that carries the resolved one.
        (
            [SimAlert(A, 0, 100), SimAlert(A2, 0)],
            400,
            [(30, "firing", 2), (330, "firing", 2)],
        ),
    ],
)
def test_the_timers_and_deduplication_of_alertmanager(
    alerts: list[SimAlert], until: float, want: list[tuple[float, str, int]]
) -> None:
    assert summary(flushes(Dispatcher(flat_route()), alerts, until)) == want


def test_silenced_alerts_notify_nothing_not_even_resolved() -> None:
    def muted(alert: SimAlert, now: float) -> bool:
        return 100 <= now < 10_000

    found = flushes(Dispatcher(flat_route()), [SimAlert(A, 0, 1000)], 2000, muted)
    assert summary(found) == [(30, "firing", 1)]


def test_routes_continue_group_and_key_as_alertmanager_does() -> None:
    route = parse_route(
        {
            "receiver": "default",
            "group_by": ["alertname"],
            "routes": [
                {
                    "matchers": ['team="db"'],
                    "receiver": "sidecar",
                    "group_by": ["alertname", "team"],
                    "continue": True,
                    "group_wait": "10s",
                },
                {"match": {"team": "db"}, "receiver": "other"},
            ],
        }
    )
    labels = {"alertname": "X", "team": "db"}
    assert [r.opts.receiver for r in route.match(labels)] == ["sidecar", "other"]
    assert [r.opts.receiver for r in route.match({"alertname": "X"})] == ["default"]
    dispatcher = Dispatcher(route, receiver="sidecar")
    found = flushes(dispatcher, [SimAlert(labels, 0)], 100)
    assert [(at, n.group_key, n.group_labels) for at, n in found] == [
        (10, '{}/{team="db"}:{alertname="X", team="db"}', {"alertname": "X", "team": "db"})
    ]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on loopback collecting every notification body."""
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/webhook/alertmanager", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        yield f"http://{LOOPBACK}:{port}/webhook/alertmanager", bodies
    finally:
        await runner.cleanup()


@pytest.mark.e2e
async def test_the_emulation_names_and_groups_alerts_as_the_real_alertmanager(
    alertmanager_factory: AlertmanagerFactory, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = receiver
    config = {
        "route": {
            "receiver": "default",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "routes": [
                {
                    "matchers": ['team=~"db|storage"', 'env!="dev"'],
                    "receiver": "sidecar",
                    "group_by": ["alertname", "team"],
                },
            ],
        },
        "receivers": [
            {"name": "default"},
            {"name": "sidecar", "webhook_configs": [{"url": url, "send_resolved": True}]},
        ],
    }
    manager = alertmanager_factory(config_text=yaml.safe_dump(config), start=False)
    await manager.astart()
    labels = [
        {"alertname": "DiskFull", "team": "db", "instance": "a:9100", "quote": 'say "hi"\\'},
        {"alertname": "DiskFull", "team": "db", "instance": "b:9100"},
    ]
    starts = datetime.now(UTC) - timedelta(seconds=5)
    await manager.post_alerts(
        [
            {
                "labels": lab,
                "annotations": {"summary": "full"},
                "startsAt": starts.isoformat().replace("+00:00", "Z"),
            }
            for lab in labels
        ]
    )

    # An alert that started over group_wait ago flushes its group at once, which
    # may be before the second alert joined: compare with the notification of both.
    def both() -> list[dict[str, Any]]:
        return [b for b in bodies if len(b["alerts"]) == len(labels)]

    deadline = time.monotonic() + 30
    while not both() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert both(), f"Alertmanager sent no notification of both alerts: {bodies}"
    real = notification_from(both()[0])

    dispatcher = Dispatcher(parse_route(config["route"]), receiver="sidecar")
    start = starts.timestamp()
    for lab in labels:
        dispatcher.insert(SimAlert(lab, start, annotations={"summary": "full"}), start)
    (emulated,) = dispatcher.flush_due(start + 1)
    assert emulated.group_key == real.group_key
    assert emulated.group_labels == real.group_labels
    assert emulated.common_labels == real.common_labels
    assert emulated.common_annotations == real.common_annotations
    assert emulated.status == real.status == "firing"
    assert emulated.receiver == real.receiver
    assert [(a.fingerprint, a.labels) for a in emulated.alerts] == [
        (a.fingerprint, a.labels) for a in real.alerts
    ]
    assert {a.fingerprint for a in real.alerts} == {fingerprint(lab) for lab in labels}
