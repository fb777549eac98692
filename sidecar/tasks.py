"""Background tasks that are started with the service and cancelled and awaited at stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


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

    def start(self) -> None:
        """Start the coroutine (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._factory(), name=self.name)

    async def stop(self) -> None:
        """Cancel the coroutine and wait until it has ended."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
