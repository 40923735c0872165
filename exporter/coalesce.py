"""Concurrent on-demand /health runs of one target share the next run instead of queueing one by one.

whoAsr's /health blocks the whole server for about a second, so the exporter never runs two at once
against one target (the health gate). Without sharing, N Prometheus scrapes of `/probe?module=health`
arriving together would block that server N times in a row, and the last would wait N seconds. Here a
request that arrives while a run is in flight waits for it to end and then shares the one run that starts
next with every other request that arrived meanwhile: each still gets a run that began after it asked,
and the server is called once per batch.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class SharedRuns(Generic[T]):
    """One run at a time; callers arriving during a run share the next one."""

    def __init__(self) -> None:
        self._running: Optional[asyncio.Task] = None
        self._next: Optional[asyncio.Future] = None  # the shared next run, resolved to its task

    async def run(self, start: Callable[[], Awaitable[T]]) -> T:
        """`start()` makes the run's coroutine; the caller that opens a run (or a batch) supplies it."""
        if self._next is None and self._running is None:
            task = self._start(start)
        else:
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
                asyncio.ensure_future(self._after(self._running, self._next, start))
            # Shielded: a caller that gives up (its deadline, a closed connection) leaves the run to the others.
            task = await asyncio.shield(self._next)
        return await asyncio.shield(task)

    def _start(self, start: Callable[[], Awaitable[T]]) -> asyncio.Task:
        task = asyncio.ensure_future(start())
        self._running = task
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        if self._running is task:
            self._running = None
        if not task.cancelled():
            task.exception()  # retrieved here, so an abandoned run's error is not reported as never retrieved

    async def _after(self, previous: Optional[asyncio.Task], batch: asyncio.Future,
                     start: Callable[[], Awaitable[T]]) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        self._next = None
        if not batch.cancelled():
            batch.set_result(self._start(start))
