"""Draining every integration's outbox, so that what a fake received is final."""

from __future__ import annotations

import asyncio

from sidecar.runtime import Components


async def drain_all(components: Components, limit: float = 30.0) -> None:
    """Deliver until no integration has anything pending: every outcome recorded.

    A check that something did not arrive can then fail, rather than pass
    because it had not arrived yet. Items waiting for a retry are waited for.
    """
    async with asyncio.timeout(limit):
        while True:
            for worker in components.outboxes:
                await worker.drain()
            pending = 0
            for worker in components.outboxes:
                pending += await components.store.outbox_pending(worker.sender.name)
            if pending == 0:
                return
            await asyncio.sleep(0.02)
