"""How many real-time voice sessions a whoAsr serves: concurrency levels, their statistics, the knee.

Each level runs `streams` lanes for `hold` seconds; a lane runs the `stream` probe's session (the same
code, microphone pacing and closed reason set as the scheduled probe) back to back with fresh client ids,
so the level stays constant. Lanes start spread over one model stride, as users arriving independently
would, not in lockstep. A session that is still going when the hold ends is finished and counted.

A level is within the SLO when no session failed and the result-lag and first-result p95 are within
their bounds. The answer is the last level within the SLO before the first that is not, and which
limit that one broke. Levels stop early once one is clearly past the knee.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from exporter.client import TargetClient
from exporter.clips import Clip
from exporter.kinds import StreamProbe
from exporter.probes import ProbeContext, run_probe
from exporter.results import ProbeResult

STAGGER_SECONDS = 0.6  # lanes start spread over one whoAsr model stride
PAUSE_SECONDS = 1.0  # between levels: the server finishes what it queued before the next level starts
MAX_SAMPLES = 100_000  # per level and figure: beyond this a uniform sample is kept (bounded memory)
LIMITS = ("errors", "result_lag", "first_result")  # in the order limited_by names the first one broken
RECENT_LAGS = 2000
CLEARLY_PAST = 2.0  # a level whose lag or first result p95 is this many times its bound ends the run
PROBER_LATE_SECONDS = 0.005  # a session whose worst frame left later than this: the tool itself was slow


@dataclass(frozen=True)
class Slo:
    result_lag_seconds: float
    first_result_seconds: float


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    hold_seconds: float
    session_timeout: float  # each session's deadline, as the stream probe's schedule timeout
    slo: Slo


def levels(step: int, max_streams: int) -> tuple[int, ...]:
    """K, 2K, ... up to N; N itself is the last level even when it is no multiple of K."""
    found = list(range(step, max_streams + 1, step))
    if not found or found[-1] != max_streams:
        found.append(max_streams)
    return tuple(found)


class Samples:
    """Values of one figure at one level: all of them up to MAX_SAMPLES, then a uniform reservoir sample."""

    def __init__(self, seed: int = 0):
        self.values: list[float] = []
        self.seen = 0
        self.largest: Optional[float] = None  # exact, whatever the reservoir kept
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        self.largest = value if self.largest is None else max(self.largest, value)
        if len(self.values) < MAX_SAMPLES:
            self.values.append(value)
        else:
            slot = self._random.randrange(self.seen)
            if slot < MAX_SAMPLES:
                self.values[slot] = value

    def percentile(self, q: float) -> Optional[float]:
        """Nearest-rank percentile (q in 0..100); None without values."""
        if not self.values:
            return None
        ordered = sorted(self.values)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]


def result_lags(result: ProbeResult) -> list[float]:
    """Per-result lag of one session, as whoasr_stream_result_lag_seconds defines it."""
    return list(result.stream.result_lags) if result.stream is not None else []


@dataclass
class Level:
    """What one concurrency level measured."""

    streams: int
    sessions: int = 0
    errors: Counter = field(default_factory=Counter)
    first_result: Samples = field(default_factory=Samples)
    result_lag: Samples = field(default_factory=Samples)
    prober_lateness: Samples = field(default_factory=Samples)  # per session: its latest frame (this tool's own delay)
    character_errors: int = 0
    reference_characters: int = 0
    running: int = 0  # sessions in progress right now
    recent_lags: deque = field(default_factory=lambda: deque(maxlen=RECENT_LAGS))  # for live progress
    interrupted: bool = False

    def add(self, result: ProbeResult) -> None:
        self.sessions += 1
        if not result.success:
            self.errors[result.reason or "check_failed"] += 1
        if result.stream is not None:
            if result.stream.first_result_seconds is not None:
                self.first_result.add(result.stream.first_result_seconds)
            if result.stream.max_pacing_error_seconds is not None:
                self.prober_lateness.add(result.stream.max_pacing_error_seconds)
            for lag in result_lags(result):
                self.result_lag.add(lag)
                self.recent_lags.append(lag)
        if result.reference_characters and result.character_errors is not None:
            self.character_errors += result.character_errors
            self.reference_characters += result.reference_characters

    def recent_lag_p95(self) -> Optional[float]:
        """Over the latest RECENT_LAGS results only: cheap enough to show every second while a level runs."""
        if not self.recent_lags:
            return None
        ordered = sorted(self.recent_lags)
        return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]

    @property
    def cer(self) -> Optional[float]:
        """Over every session with a transcript: character errors / reference characters."""
        if not self.reference_characters:
            return None
        return self.character_errors / self.reference_characters

    def broken(self, slo: Slo) -> list[str]:
        """The limits this level broke, in LIMITS order; a level without a single session broke `errors`."""
        broke = []
        if sum(self.errors.values()) or not self.sessions:
            broke.append("errors")
        lag = self.result_lag.percentile(95)
        if lag is None or lag > slo.result_lag_seconds:
            broke.append("result_lag")
        first = self.first_result.percentile(95)
        if first is None or first > slo.first_result_seconds:
            broke.append("first_result")
        return broke

    def clearly_past(self, slo: Slo) -> bool:
        """Far enough beyond the SLO that higher levels would only load the server for nothing."""
        if self.sessions and sum(self.errors.values()) * 2 > self.sessions:
            return True
        lag, first = self.result_lag.percentile(95), self.first_result.percentile(95)
        return ((lag is not None and lag > CLEARLY_PAST * slo.result_lag_seconds)
                or (first is not None and first > CLEARLY_PAST * slo.first_result_seconds))

    def to_dict(self, slo: Slo) -> dict[str, Any]:
        broke = self.broken(slo)
        return {
            "streams": self.streams,
            "sessions": self.sessions,
            "errors": dict(sorted(self.errors.items())),
            "first_result_seconds": {"p50": _round(self.first_result.percentile(50)),
                                     "p95": _round(self.first_result.percentile(95))},
            "result_lag_seconds": {"p50": _round(self.result_lag.percentile(50)),
                                   "p95": _round(self.result_lag.percentile(95)),
                                   "max": _round(self.result_lag.largest)},
            "cer": _round(self.cer),
            "prober_lateness_seconds": {"p99": _round(self.prober_lateness.percentile(99)),
                                        "max": _round(self.prober_lateness.largest)},
            "within_slo": not broke,
            "broken": broke,
            "interrupted": self.interrupted,
        }


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


@dataclass
class Outcome:
    """The run so far: measured levels (the last may be interrupted) and the verdict on them."""

    plan: Plan
    levels: list[Level] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: bool = False

    def verdict(self) -> Verdict:
        """The last level within the SLO before the first that is not, and the first limit that one broke.
        An interrupted level counts only if it already broke a limit: a partial hold cannot prove it kept up."""
        best = 0
        for level in self.levels:
            broke = level.broken(self.plan.slo)
            if broke and (level.sessions or not level.interrupted):
                return Verdict(best, broke[0], level.streams)
            if level.interrupted:
                break
            best = level.streams
        return Verdict(best, None, None)


@dataclass(frozen=True)
class Verdict:
    max_streams_within_slo: int
    limited_by: Optional[str]  # None: no measured level broke the SLO
    broken_at: Optional[int]  # the level that broke it


async def stream_session(ctx: ProbeContext) -> ProbeResult:
    """One session of the `stream` probe, under run_probe's guard: a result whatever the target does."""
    return await run_probe("stream", ctx)


SessionRunner = Callable[[ProbeContext], Awaitable[ProbeResult]]


async def measure(client: TargetClient, settings: StreamProbe, clip: Clip, outcome: Outcome,
                  stop: asyncio.Event, session: SessionRunner = stream_session) -> None:
    """Runs the plan's levels into `outcome` (readable while it runs, for progress) until the last, one
    clearly past the knee, or `stop` (Ctrl-C). `session` is for benchmarks that also record every frame."""
    plan = outcome.plan
    for index, streams in enumerate(plan.levels):
        level = Level(streams)
        outcome.levels.append(level)
        await run_level(client, settings, clip, plan, level, stop, session)
        if stop.is_set():
            level.interrupted = outcome.interrupted = True
            return
        if index + 1 == len(plan.levels):
            return
        if level.clearly_past(plan.slo):
            outcome.stopped_early = True
            return
        try:
            async with asyncio.timeout(PAUSE_SECONDS):
                await stop.wait()
        except TimeoutError:
            pass
        if stop.is_set():
            outcome.interrupted = True
            return


async def run_level(client: TargetClient, settings: StreamProbe, clip: Clip, plan: Plan, level: Level,
                    stop: asyncio.Event, session: SessionRunner = stream_session) -> None:
    """`level.streams` lanes for the hold; on `stop` every session is cancelled (each closes its own
    socket as it unwinds, within the session's close timeout) and the level keeps what had finished."""
    loop = asyncio.get_running_loop()
    hold_ends = loop.time() + plan.hold_seconds

    async def lane(number: int) -> None:
        await asyncio.sleep(STAGGER_SECONDS * number / level.streams)
        while loop.time() < hold_ends:
            ctx = ProbeContext(client=client, settings=settings, timeout=plan.session_timeout, clip=clip)
            level.running += 1
            try:
                result = await session(ctx)
            finally:
                level.running -= 1
            level.add(result)

    lanes = asyncio.gather(*(lane(number) for number in range(level.streams)))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([lanes, stopped], return_when=asyncio.FIRST_COMPLETED)
        if lanes.done():
            lanes.result()  # a bug in a lane is raised, not hidden in a short level
    finally:
        stopped.cancel()
        lanes.cancel()
        await asyncio.gather(lanes, stopped, return_exceptions=True)
