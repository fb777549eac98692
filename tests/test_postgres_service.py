"""The whole service on PostgreSQL: webhooks committed there, open incidents kept across SIGKILL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess

pytestmark = pytest.mark.e2e

# Recent, so that the resolved incident is inside the deduplication window after the restart.
STARTS = time.time() - 3600


def group_key(n: int) -> str:
    """The Alertmanager group key of test group ``n``."""
    return f'{{}}:{{alertname="PgDown{n}"}}'


def payload(n: int, *, resolved: bool = False) -> bytes:
    """A notification of group ``n``, firing or resolved."""
    one = alert(
        f"PgDown{n}",
        fingerprint=f"{n:016x}",
        status="resolved" if resolved else "firing",
        starts=STARTS,
        ends=STARTS + 300 if resolved else None,
        labels={"service": "publishing"},
    )
    return body(notification(one, group_key=group_key(n)))


async def post(http: aiohttp.ClientSession, proc: SidecarProcess, data: bytes) -> Any:
    """Post one notification; returns the sidecar's JSON answer after checking for 200."""
    headers = {"Authorization": f"Bearer {proc.webhook_token}"}
    async with http.post(proc.webhook_url, data=data, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def get(http: aiohttp.ClientSession, proc: SidecarProcess, path: str) -> Any:
    """GET a JSON document of the sidecar's API."""
    headers = {"Authorization": f"Bearer {proc.api_token}"}
    async with http.get(f"{proc.url}{path}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def stored(dsn: str) -> dict[str, tuple[str, int]]:
    """Incident key -> (state, timeline length), straight from the database."""
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(
            "SELECT i.key, i.state, count(e.seq) AS events FROM incidents i "
            "LEFT JOIN events e ON e.incident_id = i.id GROUP BY i.id, i.key, i.state"
        )
    finally:
        await con.close()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), f"an incident was stored twice: {sorted(keys)}"
    return {r["key"]: (r["state"], r["events"]) for r in rows}


async def test_the_service_runs_on_postgresql_and_survives_sigkill(
    tmp_path: Path, postgres_database_dsn: str
) -> None:
    dsn = postgres_database_dsn
    proc = SidecarProcess(tmp_path / "sidecar", overrides={"store": {"url": dsn}})
    proc.start()
    try:
        async with aiohttp.ClientSession() as http:
            for n in range(3):
                answer = await post(http, proc, payload(n))
                assert [c["state"] for c in answer["changed"]] == ["triggered"]
            # A duplicate, as HA Alertmanager sends by design, opens nothing.
            assert (await post(http, proc, payload(0)))["changed"] == []
            resolved = await post(http, proc, payload(1, resolved=True))
            assert [c["state"] for c in resolved["changed"]] == ["resolved"]
            listed = await get(http, proc, "/api/v1/incidents?state=open")
            assert sorted(i["key"] for i in listed["incidents"]) == [group_key(0), group_key(2)]
    finally:
        proc.kill()
    assert not (tmp_path / "sidecar" / "data" / "sidecar.db").exists(), "SQLite was used"

    # Every 200 was committed to PostgreSQL before it was sent.
    rows = await stored(dsn)
    assert {k: state for k, (state, _) in rows.items()} == {
        group_key(0): "triggered",
        group_key(1): "resolved",
        group_key(2): "triggered",
    }
    assert all(events >= 1 for _, events in rows.values())

    again = SidecarProcess(tmp_path / "sidecar", overrides={"store": {"url": dsn}}, port=proc.port)
    again.start()
    try:
        async with aiohttp.ClientSession() as http:
            ready = await get(http, again, "/readyz")
            assert ready["open_incidents"] == 2
            # Redeliveries after the restart change nothing: the open incidents and the
            # recently closed one were restored from PostgreSQL.
            assert (await post(http, again, payload(2)))["changed"] == []
            assert (await post(http, again, payload(1, resolved=True)))["changed"] == []
            fresh = await post(http, again, payload(3))
            assert [c["state"] for c in fresh["changed"]] == ["triggered"]
            detail = await get(http, again, f"/api/v1/incidents/{fresh['changed'][0]['id']}")
            assert detail["key"] == group_key(3)
            assert detail["timeline"], detail
    finally:
        again.stop()
    rows = await stored(dsn)
    assert sorted(rows) == [group_key(n) for n in range(4)]
    assert rows[group_key(3)][0] == "triggered"
