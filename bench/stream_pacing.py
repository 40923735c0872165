"""Frame pacing of many concurrent real-time `stream` probes, as one exporter process runs them.

    python bench/stream_pacing.py [--sessions 50] [--frame-ms 100] [--api v2] [--stagger]

Starts a simulator on 127.0.0.1, runs N stream probes at once (real-time pace, the built-in 5.2 s clip)
from this process, and prints the lateness of every frame against its schedule (frame k leaves once its
audio has been recorded: start of speech + (k+1) * frame_ms) across all sessions, the spread of
first-result, result-lag and final latencies, and the CPU both processes used.
Target: pacing within 5 ms of schedule with 50 concurrent sessions on this 2-core machine.

By default every session starts at the same instant, so all of them have frames due at the same
moments: the worst case for one event loop. `--stagger` spreads the starts over one frame, as
independent schedules with jitter would. The simulator is stopped by pid whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bench.common import cpu_seconds, percentile, start_simulator  # noqa: E402
from exporter.client import TargetClient  # noqa: E402
from exporter.clips import builtin_clip  # noqa: E402
from exporter.config import TargetConfig  # noqa: E402
from exporter.kinds import StreamProbe  # noqa: E402
from exporter.probes import ProbeContext, stream  # noqa: E402
from exporter.probes.websocket import Pacing  # noqa: E402
from exporter.results import ProbeResult  # noqa: E402

PROBE_TIMEOUT = 30.0


async def one_session(client: TargetClient, settings: StreamProbe, delay: float) -> tuple[ProbeResult, Pacing]:
    await asyncio.sleep(delay)
    ctx = ProbeContext(client=client, settings=settings, timeout=PROBE_TIMEOUT, clip=builtin_clip())
    pacing = Pacing()
    async with asyncio.timeout(PROBE_TIMEOUT + 5):
        return await stream.run(ctx, pacing=pacing), pacing


async def ticker(lags: list[float], stop: asyncio.Event, period: float = 0.01) -> None:
    """How late the event loop wakes a plain 10 ms sleeper: the floor any frame schedule sits on."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + period
        await asyncio.sleep(period)
        lags.append(loop.time() - due)


async def run_sessions(url: str, count: int, frame_ms: int, stagger: bool,
                       loop_lags: list[float]) -> tuple[list, float]:
    # One session for all, like the daemon's, but without its per-host connection limit: here every
    # session goes to the same simulator, where in production they would go to different targets.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        client = TargetClient(session, TargetConfig(name="bench", url=url))
        settings = StreamProbe(frame_ms=frame_ms, pace="realtime")
        frame_s = frame_ms / 1000
        stop = asyncio.Event()
        canary = asyncio.create_task(ticker(loop_lags, stop))
        started = time.monotonic()
        try:
            runs = await asyncio.gather(*(one_session(client, settings, frame_s * i / count if stagger else 0.0)
                                          for i in range(count)))
        finally:
            stop.set()
            await canary
        return runs, time.monotonic() - started


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:7.2f}"


def report(runs: list[tuple[ProbeResult, Pacing]], wall: float, own_cpu: float, sim_cpu: float, loop_lags: list[float],
           load: tuple[float, float], args) -> None:
    results = [result for result, _ in runs]
    lateness = [late for _, pacing in runs for late in pacing.lateness]
    failed = [f"{r.reason}@{r.step}" for r in results if not r.success]
    firsts = [r.stream.first_result_seconds for r in results if r.stream.first_result_seconds is not None]
    finals = [r.stream.final_result_seconds for r in results if r.stream.final_result_seconds is not None]
    lags = [lag for r in results for lag in r.stream.result_lags]
    worst = [r.stream.max_pacing_error_seconds for r in results if r.stream.max_pacing_error_seconds is not None]
    outcome = f"{len(results) - len(failed)} passed" + (f", failed: {', '.join(failed)}" if failed else "")
    print(f"sessions {len(results)} ({outcome}), "
          f"frame {args.frame_ms} ms, {'staggered' if args.stagger else 'simultaneous'} starts, api {args.api}, "
          f"wall {wall:.2f} s")
    print(f"frame lateness over {len(lateness)} frames (ms):  p50 {ms(lateness, 50)}  p95 {ms(lateness, 95)}  "
          f"p99 {ms(lateness, 99)}  max {max(lateness) * 1000:7.2f}")
    print(f"per-session worst pacing error (ms):        p50 {ms(worst, 50)}  p95 {ms(worst, 95)}  "
          f"max {max(worst) * 1000:7.2f}")
    print(f"idle 10 ms ticker wake-up lag (ms):         p50 {ms(loop_lags, 50)}  p95 {ms(loop_lags, 95)}  "
          f"p99 {ms(loop_lags, 99)}  max {max(loop_lags) * 1000:7.2f}")
    print(f"first result (ms):  min {min(firsts) * 1000:7.1f}  p50 {ms(firsts, 50)}  p95 {ms(firsts, 95)}  "
          f"max {max(firsts) * 1000:7.1f}")
    print(f"result lag (ms):    min {min(lags) * 1000:7.1f}  p50 {ms(lags, 50)}  p95 {ms(lags, 95)}  "
          f"max {max(lags) * 1000:7.1f}  ({len(lags)} results)")
    print(f"final (ms):         min {min(finals) * 1000:7.1f}  p50 {ms(finals, 50)}  p95 {ms(finals, 95)}  "
          f"max {max(finals) * 1000:7.1f}")
    print(f"CPU: prober {own_cpu:.2f} s ({own_cpu / wall * 100:.0f}% of one core), "
          f"simulator {sim_cpu:.2f} s ({sim_cpu / wall * 100:.0f}% of one core); {os.cpu_count()} cores, "
          f"load average {load[0]:.2f} before, {load[1]:.2f} after")
    within = percentile(lateness, 99) <= 0.005
    print(f"target p99 lateness <= 5 ms: {'met' if within else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--frame-ms", type=int, default=100)
    parser.add_argument("--api", choices=("v1", "v2"), default="v2")
    parser.add_argument("--stagger", action="store_true", help="spread the session starts over one frame")
    args = parser.parse_args()
    simulator, url = start_simulator(args.api, "--health-delay", "0")
    try:
        load_before = os.getloadavg()[0]
        loop_lags: list[float] = []
        sim_cpu_before = cpu_seconds(simulator.pid)
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        runs, wall = asyncio.run(run_sessions(url, args.sessions, args.frame_ms, args.stagger, loop_lags))
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        sim_cpu = cpu_seconds(simulator.pid) - sim_cpu_before
    finally:
        simulator.stop()
    own_cpu = (own_after.ru_utime - own_before.ru_utime) + (own_after.ru_stime - own_before.ru_stime)
    report(runs, wall, own_cpu, sim_cpu, loop_lags, (load_before, os.getloadavg()[0]), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
