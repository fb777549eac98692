"""SIGKILL during a stream of notifications: every notification that got a 200 survives."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.payloads import alert, body, notification
from tests.sidecar_process import SidecarProcess

pytestmark = pytest.mark.e2e

TOTAL = 600
CONCURRENCY = 16


async def stream(proc: SidecarProcess, kill_after: int) -> tuple[set[str], int]:
    """Post TOTAL distinct notifications; SIGKILL the sidecar after ``kill_after`` 200s."""
    acked: set[str] = set()
    failed = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(TOTAL):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {proc.webhook_token}"}

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal failed
        while not queue.empty():
            i = queue.get_nowait()
            key = f'{{}}:{{alertname="Crash{i}"}}'
            payload = body(
                notification(
                    alert(f"Crash{i}", fingerprint=f"{i:016x}", labels={"service": "publishing"}),
                    group_key=key,
                )
            )
            try:
                async with http.post(proc.webhook_url, data=payload, headers=headers) as resp:
                    if resp.status == 200:
                        acked.add(key)
                        if len(acked) == kill_after:
                            proc.kill()
                    else:
                        failed += 1
            except aiohttp.ClientError:
                failed += 1

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    return acked, failed


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_acknowledged_notification_survives_sigkill(tmp_path: Path, seed: int) -> None:
    kill_after = random.Random(seed).randint(50, 400)
    proc = SidecarProcess(tmp_path / "sidecar")
    proc.start()
    try:
        acked, failed = await stream(proc, kill_after)
    finally:
        proc.kill()
    assert len(acked) >= kill_after
    assert failed > 0, "the kill happened after the stream ended: nothing was tested"

    # Straight from the database file, before the sidecar touches it again.
    with sqlite3.connect(proc.db_path) as con:
        rows = con.execute("SELECT key FROM incidents").fetchall()
    stored = [r[0] for r in rows]
    assert acked <= set(stored), f"lost {len(acked - set(stored))} acknowledged notifications"
    assert len(stored) == len(set(stored)), "an incident was stored twice"

    # And the restarted sidecar restores every one of them as open.
    again = SidecarProcess(tmp_path / "sidecar", port=proc.port)
    again.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{again.url}/readyz") as resp,
        ):
            ready = await resp.json()
        assert ready["open_incidents"] == len(stored)
        # A redelivery of an acknowledged notification after restart opens nothing new.
        key = sorted(acked)[0]
        i = int(key.split("Crash")[1].split('"')[0])
        payload = body(
            notification(
                alert(f"Crash{i}", fingerprint=f"{i:016x}", labels={"service": "publishing"}),
                group_key=key,
            )
        )
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                again.webhook_url,
                data=payload,
                headers={"Authorization": f"Bearer {again.webhook_token}"},
            ) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["changed"] == []
    finally:
        again.stop()
