"""SharedRuns: on-demand /health runs of one target never overlap, and callers that arrive during a run
share the next one (which starts after they asked)."""

from __future__ import annotations

import asyncio

import pytest

from exporter.coalesce import SharedRuns

pytestmark = pytest.mark.timeout(30)


class Runs:
    """A run that takes until its release event is set; records when each run started and how many overlap."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()

    async def run(self) -> int:
        number = len(self.started)
        self.started.append(asyncio.get_running_loop().time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.wait_for(self.release.wait(), 5)
            return number
        finally:
            self.in_flight -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_callers_during_a_run_share_the_next_run():
    shared, runs = SharedRuns[int](), Runs()
    first = asyncio.create_task(shared.run(runs.run))
    await settle()
    asked_at = asyncio.get_running_loop().time()
    waiting = [asyncio.create_task(shared.run(runs.run)) for _ in range(3)]
    await settle()
    assert len(runs.started) == 1, "nobody starts a second run while one is in flight"
    runs.release.set()
    assert await first == 0
    assert await asyncio.gather(*waiting) == [1, 1, 1], "the three share one run"
    assert len(runs.started) == 2 and runs.max_in_flight == 1
    assert runs.started[1] >= asked_at, "the shared run began after they asked"
    assert await shared.run(runs.run) == 2, "a caller after the batch gets a run of its own"


async def test_a_caller_that_gives_up_leaves_the_run_to_the_others():
    shared, runs = SharedRuns[int](), Runs()
    first = asyncio.create_task(shared.run(runs.run))
    await settle()
    impatient = asyncio.create_task(shared.run(runs.run))
    patient = asyncio.create_task(shared.run(runs.run))
    await settle()
    impatient.cancel()
    runs.release.set()
    assert await first == 0
    assert await patient == 1
    with pytest.raises(asyncio.CancelledError):
        await impatient
    first.cancel()  # the opener cancelling after the run ended changes nothing


async def test_an_error_reaches_every_sharer_and_the_next_call_runs_again():
    shared = SharedRuns[int]()
    gate = asyncio.Event()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("boom")

    tasks = [asyncio.create_task(shared.run(failing)) for _ in range(3)]
    await settle()
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and calls == 2

    async def fine() -> int:
        return 7

    assert await shared.run(fine) == 7
