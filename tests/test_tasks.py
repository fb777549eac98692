"""Background tasks stop when asked, even when asked as they are woken."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.tasks import BackgroundTask, wait_event


async def test_wait_event_reports_a_set_event_and_a_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.001) is False
    event.set()
    assert await wait_event(event, 3600) is True


async def test_a_stop_that_coincides_with_a_wake_still_stops_the_loop() -> None:
    # The outbox sets its wake event when a send finishes, which can be the very
    # moment it is stopped; asyncio.wait_for on 3.11 then swallowed the
    # cancellation and the loop waited forever (a hang at shutdown).
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await wait_event(event, 3600)
            event.clear()
            rounds += 1

    task = BackgroundTask("wakes", loop)
    task.start()
    await asyncio.sleep(0)  # the loop now waits for its event
    event.set()
    stopping = asyncio.ensure_future(task.stop())
    # Bounded only so that a regression fails instead of hanging the suite.
    done, _ = await asyncio.wait({stopping}, timeout=30)
    assert stopping in done, "the loop swallowed its cancellation"
    assert not task.running
    assert rounds <= 1


@pytest.mark.parametrize("seconds", [0.0, 0.001])
async def test_wait_event_with_no_time_left_returns_at_once(seconds: float) -> None:
    assert await wait_event(asyncio.Event(), seconds) is False
