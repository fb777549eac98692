"""Background tasks that are started with the service and cancelled and awaited at stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; True when it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that
    arrives as the event is set (CPython gh-86296), and a loop that sets its own
    wake event as it is stopped would then never end. ``asyncio.timeout``
    tells its own cancellation from the caller's.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class BackgroundTask:
    """One named long-running coroutine; ``stop`` cancels it and waits for it to end."""

    def __init__(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._factory = factory
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the coroutine runs."""
        return self._task is not None and not self._task.done()

    @property
    def died(self) -> bool:
        """True when the coroutine ended by an exception rather than by ``stop``.

        Every loop here is meant to run until stopped: one that died is a
        sidecar that looks alive and does nothing, which liveness must report.
        """
        task = self._task
        return (
            task is not None
            and task.done()
            and not task.cancelled()
            and (task.exception() is not None)
        )

    def start(self) -> None:
        """Start the coroutine (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._factory(), name=self.name)

    async def stop(self) -> None:
        """Cancel the coroutine and wait until it has ended."""
        if self._task is not None:
            self._task.cancel()
            # A task that died has logged why; stopping it must not raise it again.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
