"""Can `whoasr-exporter capacity` itself drive hundreds of real-time sessions? Its own frame pacing at one level.

    python bench/capacity_driver.py [--sessions 200] [--hold 20]

Starts a simulator on 127.0.0.1 with no stream capacity limit (it keeps up with anything, so every delay
measured is the tool's or the machine's), runs one capacity level of N concurrent sessions for the hold
through the command's own driver (exporter.capacity.measure: lanes of stream-probe sessions restarted
back to back) in this one process and event loop, and prints how late every frame left against the
microphone schedule (start of speech + (k+1)·100 ms), and per session its worst frame. Target: 200
sessions from one core with frame lateness p99 under 5 ms. Also: the server-side figures (they should
stay flat), the CPU both processes used, an idle 10 ms ticker (the OS's scheduling noise floor) and the
load average.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, percentile, start_simulator  # noqa: E402
from bench.stream_pacing import ticker  # noqa: E402
from exporter.capacity import Outcome, Plan, Slo, measure  # noqa: E402
from exporter.client import TargetClient, new_session  # noqa: E402
from exporter.clips import builtin_clip  # noqa: E402
from exporter.config import TargetConfig  # noqa: E402
from exporter.kinds import StreamProbe  # noqa: E402
from exporter.probes import ProbeContext, stream  # noqa: E402
from exporter.probes.websocket import Pacing  # noqa: E402
from exporter.results import ProbeResult  # noqa: E402

SESSION_TIMEOUT = 30.0


async def one_level(url: str, sessions: int, hold: float, loop_lags: list[float], pacing: Pacing) -> Outcome:
    plan = Plan(levels=(sessions,), hold_seconds=hold, session_timeout=SESSION_TIMEOUT,
                slo=Slo(result_lag_seconds=1.0, first_result_seconds=2.0))
    outcome = Outcome(plan)
    stop, ticking = asyncio.Event(), asyncio.Event()
    async with new_session(limit=sessions + 10) as session:
        client = TargetClient(session, TargetConfig(name="bench", url=url))
        canary = asyncio.create_task(ticker(loop_lags, ticking))
        async def session_keeping_frames(ctx: ProbeContext) -> ProbeResult:
            return await stream.run(ctx, pacing=pacing)

        try:
            await measure(client, StreamProbe(), builtin_clip(), outcome, stop, session_keeping_frames)
        finally:
            ticking.set()
            await canary
    return outcome


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:7.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the level runs (default 20)")
    args = parser.parse_args()
    simulator, url = start_simulator("v2", "--health-delay", "0")
    try:
        load_before = os.getloadavg()[0]
        sim_before = cpu_seconds(simulator.pid)
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        loop_lags: list[float] = []
        pacing = Pacing()
        started = time.monotonic()
        gc.freeze()  # as the command does
        outcome = asyncio.run(one_level(url, args.sessions, args.hold, loop_lags, pacing))
        wall = time.monotonic() - started
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        sim_cpu = cpu_seconds(simulator.pid) - sim_before
        load_after = os.getloadavg()[0]
    finally:
        simulator.stop()
    own_cpu = (own_after.ru_utime - own_before.ru_utime) + (own_after.ru_stime - own_before.ru_stime)
    (level,) = outcome.levels
    worst = level.prober_lateness.values
    lags = level.result_lag.values
    firsts = level.first_result.values
    errors = ", ".join(f"{reason} {count}" for reason, count in sorted(level.errors.items())) or "none"
    print(f"{level.streams} concurrent sessions for {args.hold:g} s, built-in {builtin_clip().duration_seconds:.1f} s "
          f"clip, 100 ms frames: {level.sessions} sessions, errors: {errors}, wall {wall:.1f} s")
    frames = pacing.lateness
    print(f"frame lateness over {len(frames)} frames (ms): p50 {ms(frames, 50)}  p95 {ms(frames, 95)}  "
          f"p99 {ms(frames, 99)}  max {max(frames) * 1000:7.2f}")
    print(f"per-session worst frame lateness (ms): p50 {ms(worst, 50)}  p95 {ms(worst, 95)}  p99 {ms(worst, 99)}  "
          f"max {max(worst) * 1000:7.2f}")
    print(f"idle 10 ms ticker wake-up lag (ms):    p50 {ms(loop_lags, 50)}  p95 {ms(loop_lags, 95)}  "
          f"p99 {ms(loop_lags, 99)}  max {max(loop_lags) * 1000:7.2f}")
    print(f"server: first result p50 {ms(firsts, 50)} ms  p95 {ms(firsts, 95)} ms; result lag p50 {ms(lags, 50)} ms  "
          f"p95 {ms(lags, 95)} ms  max {max(lags) * 1000:7.2f} ms")
    print(f"CPU: this tool {own_cpu:.1f} s ({own_cpu / wall * 100:.0f}% of one core), simulator {sim_cpu:.1f} s "
          f"({sim_cpu / wall * 100:.0f}% of one core); {os.cpu_count()} cores, load average {load_before:.2f} "
          f"before, {load_after:.2f} after")
    met = percentile(frames, 99) < 0.005
    print(f"target: frame lateness p99 < 5 ms at {level.streams} sessions: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
