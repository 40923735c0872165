"""A saturable model server for `simulate --stream-capacity N`: processor sharing of one compute budget.

A real whoAsr runs every stream's model calls on one GPU or CPU. Here a 600 ms stride costs 0.6/(N + 1/2)
seconds of that budget, and the calls in progress share it equally: k calls at once each advance at 1/k
speed. N concurrent real-time streams use N/(N + 1/2) of the budget (89 % for N = 4) and every stride is
done before the next one arrives; N + 1 streams need more than all of it, so each call takes longer than
the audio it covers and, since whoAsr handles a socket's messages one after the other, every stream's lag
grows for as long as the load lasts. The half stream puts the knee between N and N + 1 with equal margins.
"""

from __future__ import annotations

import asyncio
from typing import Optional

STRIDE_SECONDS = 0.6
_DONE = 1e-9  # remaining work below this is finished (float rounding)


class SharedCompute:
    """Processor sharing: `run(work)` returns once `work` seconds of exclusive compute have been served."""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self.capacity = capacity
        self._remaining: dict[asyncio.Future, float] = {}
        self._last = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None
        self.busiest = 0  # the most calls that were in progress at once (for tests and the admin view)

    def stride_work(self, samples: int, stride_samples: int) -> float:
        """Exclusive compute for a call on `samples` (a whole stride, or the rest of the buffer at stop)."""
        return STRIDE_SECONDS / (self.capacity + 0.5) * samples / stride_samples

    async def run(self, work: float) -> None:
        loop = asyncio.get_running_loop()
        self._advance(loop.time())
        done = loop.create_future()
        self._remaining[done] = work
        self.busiest = max(self.busiest, len(self._remaining))
        self._reschedule(loop)
        try:
            await done
        finally:
            if self._remaining.pop(done, None) is not None:  # cancelled (the client went): free its share
                self._reschedule(loop)

    @property
    def in_progress(self) -> int:
        return len(self._remaining)

    def _advance(self, now: float) -> None:
        """Serves each call in progress its share of the time since the last change."""
        if self._remaining:
            share = (now - self._last) / len(self._remaining)
            for done in self._remaining:
                self._remaining[done] -= share
        self._last = now

    def _reschedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._advance(loop.time())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._remaining:
            soonest = min(self._remaining.values())
            self._timer = loop.call_at(self._last + max(soonest, 0.0) * len(self._remaining), self._finish, loop)

    def _finish(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._advance(loop.time())
        for done, left in list(self._remaining.items()):
            if left <= _DONE:
                del self._remaining[done]
                if not done.done():
                    done.set_result(None)
        self._reschedule(loop)
