"""Scheduling: own interval per job, at most one run in flight, skips counted, health kept apart."""

import asyncio
import time

from exporter.gate import TargetGate
from exporter.scheduler import Plan, Scheduler


async def test_slow_runs_are_skipped_not_piled_up():
    in_flight = {"now": 0, "max": 0}
    runs, skips, lags = [], [], []

    async def run(target, kind, timeout):
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        runs.append((target, kind))
        try:
            await asyncio.sleep(0.5)  # slower than the 0.1 s interval
        finally:
            in_flight["now"] -= 1

    scheduler = Scheduler(run, lambda t, k: skips.append((t, k)), lags.append)
    scheduler.start()
    scheduler.sync({("a", "batch"): Plan(interval=0.1, timeout=0.1)})
    await asyncio.sleep(1.6)
    await scheduler.shutdown(grace=1.0)
    assert in_flight["max"] == 1
    assert 2 <= len(runs) <= 4, runs
    assert len(skips) >= 5, skips  # every due time while a run was going
    assert lags and max(lags) < 0.5


async def test_sync_adds_changes_and_removes_jobs():
    seen = []

    async def run(target, kind, timeout):
        seen.append((target, kind, timeout))

    scheduler = Scheduler(run, lambda t, k: None)
    scheduler.start()
    scheduler.sync({("a", "health"): Plan(0.1, 0.05), ("b", "health"): Plan(0.1, 0.05)})
    await asyncio.sleep(0.5)
    scheduler.sync({("a", "health"): Plan(0.1, 0.07)})  # b removed, a changed
    seen.clear()
    await asyncio.sleep(0.5)
    await scheduler.shutdown(grace=1.0)
    assert seen and {s[0] for s in seen} == {"a"}
    assert {s[2] for s in seen} == {0.07}


async def test_shutdown_cancels_runs_past_the_grace():
    cancelled = asyncio.Event()

    async def run(target, kind, timeout):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    scheduler = Scheduler(run, lambda t, k: None)
    scheduler.start()
    scheduler.sync({("a", "stream"): Plan(0.05, 0.05)})
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await scheduler.shutdown(grace=0.2)
    assert time.monotonic() - started < 2.0
    assert cancelled.is_set()
    assert not scheduler.running


async def test_health_excludes_probes_and_other_health_calls():
    gate = TargetGate()
    log = []

    async def probe(name, hold):
        async with gate.shared():
            log.append(("start", name))
            await asyncio.sleep(hold)
            log.append(("end", name))

    async def health(name):
        async with gate.exclusive():
            log.append(("start", name))
            await asyncio.sleep(0.1)
            log.append(("end", name))

    await asyncio.wait_for(asyncio.gather(
        probe("p1", 0.2), probe("p2", 0.2), health("h1"), health("h2"), probe("p3", 0.05)), timeout=5)
    # while a health call holds the gate nothing else starts
    active = set()
    for event, name in log:
        if event == "start":
            if name.startswith("h"):
                assert not active, (name, active, log)
            else:
                assert not any(a.startswith("h") for a in active), (name, active, log)
            active.add(name)
        else:
            active.discard(name)
    # p3 arrived after the health calls were waiting: it runs after them (no health starvation)
    order = [name for event, name in log if event == "start"]
    assert order.index("p3") > order.index("h1")
