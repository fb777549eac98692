"""Three replicas on one PostgreSQL, duplicates everywhere: one incident, one page per group.

A real Alertmanager delivers every notification to all three replicas (three
webhook configs in one receiver), as an HA pair or a replicated Deployment
behind per-pod targets would; PagerDuty is the fake. Then one replica is
SIGKILLed in the middle of the run and the other two finish its work.

A burst of groups on one routing key, with PagerDuty's rate limit enforced by the
fake, shows that the replicas share one budget per key: each group gets one
trigger and one resolve, and hardly any send is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
import yaml

from tests.fakes.pagerduty import FakePagerDuty
from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess, record_only_preset
from tests.support.alertmanager import make_alert
from tests.support.fixtures import AlertmanagerFactory
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

ROUTING_KEY = "HAR0UT1NGKEYHAR0UT1NGKEYHAR0UT00"
TOKEN = "ha-webhook-token"


def group(n: int) -> str:
    return f'{{}}:{{alertname="HaDown{n}"}}'


def dedup(n: int) -> str:
    return hashlib.sha256(group(n).encode()).hexdigest()


def labels(n: int) -> dict[str, str]:
    # P0 by the LLM-Marketplace preset's explicit override: paged.
    return {"alertname": f"HaDown{n}", "service": "publishing", "incident_severity": "P0"}


def alertmanager_config(urls: list[str]) -> str:
    webhooks = [
        {
            "url": url,
            "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}},
        }
        for url in urls
    ]
    return yaml.safe_dump(
        {
            "route": {
                "receiver": "sidecars",
                "group_by": ["alertname"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "2s",  # repeats too
            },
            "receivers": [{"name": "sidecars", "webhook_configs": webhooks}],
        }
    )


async def rows(dsn: str) -> list[tuple[str, str]]:
    con = await asyncpg.connect(dsn)
    try:
        found = await con.fetch("SELECT key, state FROM incidents ORDER BY key")
    finally:
        await con.close()
    return [(r["key"], r["state"]) for r in found]


async def incident_ids(dsn: str) -> set[str]:
    con = await asyncpg.connect(dsn)
    try:
        return {r["id"] for r in await con.fetch("SELECT id FROM incidents")}
    finally:
        await con.close()


async def until(check: Any, limit: float = 40.0) -> None:
    async with asyncio.timeout(limit):
        while not await check():
            await asyncio.sleep(0.2)


async def metric_sum(
    http: aiohttp.ClientSession, replicas: list[SidecarProcess], name: str
) -> float:
    total = 0.0
    for proc in replicas:
        async with http.get(f"{proc.url}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith(name + "{") or line.startswith(name + " "):
                    total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def replicas(tmp_path: Path, postgres_database_dsn: str) -> Iterator[list[SidecarProcess]]:
    made: list[SidecarProcess] = []
    yield made
    for proc in made:
        proc.stop()


async def test_three_replicas_one_incident_and_one_page_per_group_and_a_killed_one_is_covered(
    tmp_path: Path,
    postgres_database_dsn: str,
    alertmanager_factory: AlertmanagerFactory,
    replicas: list[SidecarProcess],
) -> None:
    async with FakePagerDuty() as pd, aiohttp.ClientSession() as http:
        ports = [free_port() for _ in range(3)]
        am = alertmanager_factory(
            config_text=alertmanager_config(
                [f"http://127.0.0.1:{p}/webhook/alertmanager" for p in ports]
            ),
            start=False,
        )
        for i, port in enumerate(ports):
            replicas.append(
                SidecarProcess(
                    tmp_path / f"replica-{i}",
                    port=port,
                    webhook_token=TOKEN,
                    overrides={
                        "store": {"url": postgres_database_dsn},
                        # One page per group is under test; no escalation tier has a key.
                        "rules": {"file": str(record_only_preset("llm-marketplace", tmp_path))},
                        "pagerduty": {
                            "events_url": pd.events_url,
                            "routing_key": ROUTING_KEY,
                            "retry": {"initial": "100ms", "max": "1s"},
                        },
                    },
                )
            )
        for proc in replicas:
            await proc.astart()
        await asyncio.to_thread(am.start)

        starts = datetime.now(UTC) - timedelta(minutes=1)
        first = [make_alert(labels(n), starts_at=starts) for n in range(4)]
        await am.post_alerts(first)

        async def four_pages() -> bool:
            return len(pd.events) >= 4

        await until(four_pages)
        # Let repeats and duplicates pile up: every replica gets every notification.
        await until(lambda: _at_least(http, replicas, "incident_sla_webhook_requests_total", 24))
        assert [k for k, _ in await rows(postgres_database_dsn)] == sorted(
            group(n) for n in range(4)
        )

        # A replica dies in the middle: new groups fire, then everything resolves.
        second = [make_alert(labels(n), starts_at=starts) for n in range(4, 7)]
        await am.post_alerts(second)
        await asyncio.to_thread(replicas[1].kill)
        ends = datetime.now(UTC)
        await am.post_alerts([{**a, "endsAt": _iso(ends)} for a in first + second])

        async def all_resolved() -> bool:
            found = await rows(postgres_database_dsn)
            return len(found) == 7 and all(state == "resolved" for _, state in found)

        await until(all_resolved)

        async def all_delivered() -> bool:
            return all(
                [e.event_action for e in pd.events_for(dedup(n))] == ["trigger", "resolve"]
                for n in range(7)
            )

        await until(all_delivered)
        await until(lambda: outbox_drained(postgres_database_dsn))  # nothing more can go
        for n in range(7):
            assert [e.event_action for e in pd.events_for(dedup(n))] == ["trigger", "resolve"]
        assert len(pd.incidents) == 7
        # Each transition was made, and logged, by exactly one replica, the killed one included.
        events = [
            json.loads(line)
            for proc in replicas
            for line in proc.log_path.read_text().splitlines()
            if line.startswith("{")
        ]
        opened = [e["incident_id"] for e in events if e.get("event") == "incident_opened"]
        closed = [e["incident_id"] for e in events if e.get("event") == "incident_resolved"]
        ids = await incident_ids(postgres_database_dsn)
        # No transition twice. (A line can be missing: the killed replica may have
        # committed a batch and died before logging it; the rows above prove it.)
        assert len(opened) == len(set(opened))
        assert len(closed) == len(set(closed))
        assert set(opened) <= ids
        assert set(closed) <= ids
        survivors = {
            json.loads(line)["incident_id"]
            for proc in (replicas[0], replicas[2])
            for line in proc.log_path.read_text().splitlines()
            if '"event":"incident_resolved"' in line
        }
        # Everything resolved after the kill: the two survivors resolved all seven.
        assert survivors == ids
        # Counters add up: each live replica counted exactly the incidents it opened.
        for proc in (replicas[0], replicas[2]):
            own = [
                line
                for line in proc.log_path.read_text().splitlines()
                if '"event":"incident_opened"' in line
            ]
            assert await metric_sum(http, [proc], "incident_sla_incidents_total") == len(own)


# The burst, scaled down from PagerDuty's 120 events a minute and 300 groups: the same
# five windows' worth of events, in windows of seconds rather than a minute.
BURST_GROUPS = 100
BURST_WINDOW = 3.0  # seconds, in the fake and the sidecars alike
BURST_PER_MINUTE = 800  # 40 events per 3 s window and routing key
BURST_PER_WINDOW = int(BURST_PER_MINUTE * BURST_WINDOW / 60)


async def outbox_drained(dsn: str) -> bool:
    """True once no PagerDuty event waits: every one is delivered or dead."""
    con = await asyncpg.connect(dsn)
    try:
        return int(await con.fetchval("SELECT count(*) FROM outbox WHERE state = 'pending'")) == 0
    finally:
        await con.close()


def burst_notification(n: int, *, resolved: bool, external_url: str) -> bytes:
    """The firing or resolved notification of burst group ``n``, from one Alertmanager."""
    starts = datetime.now(UTC).timestamp() - 60
    payload = notification(
        alert(
            f"Burst{n}",
            fingerprint=f"{n:016x}",
            labels=labels(n) | {"alertname": f"Burst{n}"},
            starts=starts,
            status="resolved" if resolved else "firing",
            ends=starts + 30 if resolved else None,
        ),
        group_key=f'{{}}:{{alertname="Burst{n}"}}',
    )
    payload["externalURL"] = external_url
    return body(payload)


async def test_three_replicas_share_pagerdutys_rate_through_a_burst(
    tmp_path: Path, postgres_database_dsn: str, replicas: list[SidecarProcess]
) -> None:
    async with (
        FakePagerDuty(rate_limit_per_minute=BURST_PER_MINUTE, rate_limit_window=BURST_WINDOW) as pd,
        aiohttp.ClientSession() as http,
    ):
        for i in range(3):
            replicas.append(
                SidecarProcess(
                    tmp_path / f"replica-{i}",
                    webhook_token=TOKEN,
                    overrides={
                        "store": {"url": postgres_database_dsn},
                        "rules": {"file": str(record_only_preset("llm-marketplace", tmp_path))},
                        "pagerduty": {
                            "events_url": pd.events_url,
                            "routing_key": ROUTING_KEY,
                            "timeout": "2s",
                            "rate_limit_per_minute": BURST_PER_MINUTE,
                            "rate_limit_window": f"{BURST_WINDOW:g}s",
                            # PagerDuty's 30 s after a 429, scaled as the window is.
                            "retry": {"initial": "100ms", "max": "3s", "rate_limited": "1500ms"},
                        },
                    },
                )
            )
        await asyncio.gather(*(proc.astart() for proc in replicas))

        async def deliver(n: int, *, resolved: bool) -> None:
            # One Alertmanager's notification to one replica, its HA peer's duplicate
            # (another externalURL) to the next one.
            for peer in range(2):
                proc = replicas[(n + peer) % 3]
                async with http.post(
                    proc.webhook_url,
                    data=burst_notification(
                        n, resolved=resolved, external_url=f"http://alertmanager-{peer}:9093"
                    ),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    assert resp.status == 200, await resp.text()

        await asyncio.gather(*(deliver(n, resolved=False) for n in range(BURST_GROUPS)))
        await asyncio.gather(*(deliver(n, resolved=True) for n in range(BURST_GROUPS)))

        await until(lambda: outbox_drained(postgres_database_dsn), limit=120)
        # Stopped, so that nothing is in flight any more either: what the fake got is all.
        for proc in replicas:
            await asyncio.to_thread(proc.stop)

    for n in range(BURST_GROUPS):
        dedup_key = hashlib.sha256(f'{{}}:{{alertname="Burst{n}"}}'.encode()).hexdigest()
        assert [e.event_action for e in pd.events_for(dedup_key)] == ["trigger", "resolve"], n
    sends = [r for r in pd.requests if r.api == "events"]
    refused = [r for r in sends if r.status == 429]
    assert len(pd.events) == 2 * BURST_GROUPS
    assert len(refused) < 0.02 * len(sends), f"{len(refused)} of {len(sends)} sends got 429"
    # At PagerDuty's rate: never more than a window's worth in any window (the fake
    # refuses the rest), and not much slower either: the budget was the only brake.
    accepted = sorted(r.at for r in sends if r.status == 202)
    for i, at in enumerate(accepted):
        assert sum(1 for t in accepted[i:] if t < at + BURST_WINDOW) <= BURST_PER_WINDOW
    drain = accepted[-1] - accepted[0]
    ideal = (len(accepted) / BURST_PER_WINDOW - 1) * BURST_WINDOW
    assert drain <= 2 * ideal + BURST_WINDOW, f"{len(accepted)} events took {drain:.1f} s"


async def _at_least(
    http: aiohttp.ClientSession, replicas: list[SidecarProcess], name: str, value: float
) -> bool:
    total = 0.0
    for proc in replicas:
        async with http.get(f"{proc.url}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if (
                    line.startswith(name + "{")
                    and 'source="alertmanager"' in line
                    and 'code="200"' in line
                ):
                    total += float(line.rsplit(" ", 1)[1])
    return total >= value


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
