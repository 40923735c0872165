"""Keeps `/health` apart from everything else on one target.

whoAsr's `/health` samples CPU for a second inside its event loop, stalling every other request: two
health calls must never overlap, and a latency probe running meanwhile would measure the stall, not the
server. Probes share the gate; a health scrape takes it alone, and once it waits, new probes wait too.
Every wait is bounded by the run's own timeout (`wait`): past it, `GateBusy`, and the run is skipped.
On-demand (`/probe`) health scrapes of one target that arrive together share one run (exporter/coalesce.py)
rather than blocking the server once each, in a row.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional


class GateBusy(Exception):
    """The gate did not open within the wait allowed."""

from exporter.coalesce import SharedRuns


class TargetGate:
    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self.on_demand_health: SharedRuns = SharedRuns()

    @asynccontextmanager
    async def shared(self, wait: Optional[float] = None) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(wait):
                async with self._condition:
                    await self._condition.wait_for(lambda: not self._exclusive and not self._exclusive_waiting)
                    self._shared += 1
        except TimeoutError:
            raise GateBusy(f"a /health scrape of this target held it for more than {wait:g}s") from None
        try:
            yield
        finally:
            async with self._condition:
                self._shared -= 1
                self._condition.notify_all()

    @asynccontextmanager
    async def exclusive(self, wait: Optional[float] = None) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(wait):
                async with self._condition:
                    self._exclusive_waiting += 1
                    try:
                        await self._condition.wait_for(lambda: not self._exclusive and self._shared == 0)
                        self._exclusive = True
                    finally:
                        self._exclusive_waiting -= 1
                        self._condition.notify_all()  # probes held back by this wait may go on if it gave up
        except TimeoutError:
            raise GateBusy(f"probes of this target held it for more than {wait:g}s") from None
        try:
            yield
        finally:
            async with self._condition:
                self._exclusive = False
                self._condition.notify_all()
