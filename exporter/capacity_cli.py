"""`whoasr-exporter capacity`: how many concurrent real-time voice sessions a whoAsr serves within an SLO.

It loads the server on purpose, so it refuses a target that is not on a loopback address unless --yes is
given, before opening any connection. Live progress goes to stderr; stdout carries only the table or the
JSON document. Ctrl-C (or SIGTERM) stops every session, each closing its socket, and prints what was
measured so far. Exit 0 when done, 2 on bad arguments or an unreachable target, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import ipaddress
import json
import signal
import sys
from pathlib import Path
from typing import Optional, TextIO
from urllib.parse import urlsplit

from exporter import logs
from exporter.capacity import PROBER_LATE_SECONDS, Level, Outcome, Plan, Slo, levels, measure
from exporter.client import TargetClient, new_session
from exporter.clips import Clip, ClipError, load_clip
from exporter.config import Config, TargetConfig, parse_duration
from exporter.health import parse_model_info
from exporter.probe_cli import UsageError, config_and_target, shown_target
from exporter.results import Failure

MAX_STREAMS = 1000
DEFAULT_STEP = 4
MAX_HOLD_SECONDS = 3600.0
PREFLIGHT_SECONDS = 5.0
PROGRESS_SECONDS = 1.0  # a terminal's status line is rewritten this often
PROGRESS_LINE_SECONDS = 10.0  # otherwise (a log, a pipe) one line this often, and one per level
UNREACHABLE = frozenset({"connect_error", "timeout", "tls_error"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, metavar="URL|NAME",
                        help="a whoAsr base URL (http://host:8000), or the name of a target in --config")
    parser.add_argument("--config", metavar="FILE",
                        help="exporter config: target, probes.stream settings, schedules.stream.timeout, thresholds")
    parser.add_argument("--max-streams", type=_count, default=64, metavar="N",
                        help="the highest level: concurrent sessions (default 64)")
    parser.add_argument("--step", type=_count, metavar="K",
                        help="levels K, 2K, ... N (default 4, or N if that is less)")
    parser.add_argument("--hold", type=_duration, default=30.0, metavar="DURATION",
                        help="how long each level runs, like 30s or 2m (default 30s)")
    parser.add_argument("--clip", metavar="PATH", help="audio file to stream instead of the configured clip")
    parser.add_argument("--transcript", metavar="TEXT", help="what --clip says (required with --clip)")
    parser.add_argument("--slo-first-result", type=_seconds, metavar="S",
                        help="first-result p95 bound in seconds (default: thresholds.stream_first_result_seconds)")
    parser.add_argument("--slo-lag", type=_seconds, default=1.0, metavar="S",
                        help="result-lag p95 bound in seconds (default 1)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="stdout format (default table)")
    parser.add_argument("--yes", action="store_true",
                        help="allow a target that is not on a loopback address (this loads it on purpose)")


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not 1 <= number <= MAX_STREAMS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_STREAMS}, got {value!r}")
    return number


def _duration(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds > MAX_HOLD_SECONDS:
        raise argparse.ArgumentTypeError(f"expected at most 1h, got {value!r}")
    return seconds


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 < seconds <= 600:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 600], got {value!r}")
    return seconds


def run(args: argparse.Namespace) -> int:
    logs.setup("console", "warning", stream=sys.stderr)  # stdout is for the table or the JSON document
    try:
        config, target, plan = prepare(args)
        if not args.yes and not is_loopback(target.url):
            from exporter.client import public_url

            raise UsageError(f"{public_url(target.url)} is not on a loopback address, and this command "
                             "loads a server on purpose: run it against production only with --yes")
        clip = _clip(config)
    except UsageError as exc:
        print(f"whoasr-exporter capacity: {exc}", file=sys.stderr)
        return 2
    gc.freeze()  # what start-up built is never garbage: full collections stop pausing the frame schedule
    try:
        # asyncio's own loop, not uvloop: uvloop's clock counts whole milliseconds, too coarse for pacing and lags
        outcome = asyncio.run(drive(config, target, plan, clip, sys.stderr))
    except UsageError as exc:
        print(f"whoasr-exporter capacity: {exc}", file=sys.stderr)
        return 2
    shown = shown_target(args.target, target)
    if args.format == "json":
        print(json.dumps(to_document(shown, clip, outcome), ensure_ascii=False, indent=2))
    else:
        print(render_table(shown, clip, outcome))
    return 130 if outcome.interrupted else 0


def prepare(args: argparse.Namespace) -> tuple[Config, TargetConfig, Plan]:
    config, target = config_and_target(args)
    step = args.step or min(DEFAULT_STEP, args.max_streams)
    if step > args.max_streams:
        raise UsageError(f"--step {step} is above --max-streams {args.max_streams}")
    slo = Slo(result_lag_seconds=args.slo_lag,
              first_result_seconds=args.slo_first_result or config.thresholds.stream_first_result_seconds)
    plan = Plan(levels=levels(step, args.max_streams), hold_seconds=args.hold,
                session_timeout=config.schedules.stream.timeout, slo=slo)
    return config, target, plan


def _clip(config: Config) -> Clip:
    """The stream probe's clip; it must fit in a session's deadline with room for the server to answer."""
    settings = config.probes.stream
    try:
        clip = load_clip(config, settings.clip)
    except ClipError as exc:
        raise UsageError(f"probes.stream.clip: {exc}") from None
    timeout = config.schedules.stream.timeout
    if clip.duration_seconds + 2.0 > timeout:
        raise UsageError(f"the clip lasts {clip.duration_seconds:.1f} s, too long for schedules.stream.timeout "
                         f"{timeout:g}s: use a shorter clip or raise the timeout")
    if settings.clip in config.clips:  # shown by its file's name (a --clip has a made-up config name)
        clip = dataclasses.replace(clip, name=Path(config.clips[settings.clip].path).name)
    return clip


def is_loopback(url: str) -> bool:
    """Whether the URL's host is a loopback address (127.0.0.0/8, ::1) or `localhost`; decided from the URL
    alone, without resolving or connecting."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the run ----------------------------------------------------------------------------------------
async def drive(config: Config, target: TargetConfig, plan: Plan, clip: Clip, stream: TextIO) -> Outcome:
    """Checks the target answers and has its streaming model, then measures until done or a signal."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    settings = config.probes.stream.model_copy(update={"pace": "realtime"})  # load is measured at a talker's pace
    outcome = Outcome(plan)
    try:
        async with new_session(limit=MAX_STREAMS + 10) as session:
            client = TargetClient(session, target)
            await preflight(client, target)
            progress = Progress(stream, outcome)
            shower = asyncio.create_task(progress.show())
            try:
                await measure(client, settings, clip, outcome, stop)
            finally:
                shower.cancel()
                await asyncio.gather(shower, return_exceptions=True)
                progress.finish()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return outcome


async def preflight(client: TargetClient, target: TargetConfig) -> None:
    """One cheap request (/model/info answers in about a millisecond; /health would block the server for a
    second): an unreachable target, or one whose streaming model is not loaded, ends the run (exit 2)."""
    try:
        _, document = await client.get_json("/model/info", PREFLIGHT_SECONDS)
    except Failure as failure:
        if failure.reason in UNREACHABLE:
            raise UsageError(f"target unreachable: {failure.reason}: {failure.detail}") from None
        return  # it answers, if oddly: the sessions will show what goes wrong
    try:
        loaded = parse_model_info(document).models_loaded.get("streaming_asr")
    except Failure:
        return
    if loaded is False:
        raise UsageError("the target's streaming_asr model is not loaded, so every session would fail: load it "
                         "first (POST /model/load with model_type=streaming_asr); this command never loads models")


class Progress:
    """Live progress on stderr: a rewritten status line in a terminal, else a line now and then."""

    def __init__(self, stream: TextIO, outcome: Outcome):
        self.stream = stream
        self.outcome = outcome
        self.live = stream.isatty()
        self.reported = 0  # levels whose summary line has been written

    async def show(self) -> None:
        waited = 0.0
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            waited += PROGRESS_SECONDS
            self._level_lines()
            if self.live:
                self._write("\r\x1b[K" + self._status())
            elif waited >= PROGRESS_LINE_SECONDS:
                waited = 0.0
                self._write(self._status() + "\n")

    def finish(self) -> None:
        if self.live:
            self._write("\r\x1b[K")
        self._level_lines(all_levels=True)
        if self.outcome.stopped_early:
            self._write("stopped early: the last level is clearly past the knee\n")
        if self.outcome.interrupted:
            self._write("interrupted: every session stopped; printing what was measured\n")

    def _level_lines(self, all_levels: bool = False) -> None:
        done = len(self.outcome.levels) if all_levels else len(self.outcome.levels) - 1
        while self.reported < done:
            level = self.outcome.levels[self.reported]
            self.reported += 1
            if self.live:
                self._write("\r\x1b[K")
            self._write(f"level {self.reported}/{len(self.outcome.plan.levels)} done: "
                        f"{_summary(level)}{_slo_note(level, self.outcome.plan.slo)}\n")

    def _status(self) -> str:
        if not self.outcome.levels:
            return "starting"
        level = self.outcome.levels[-1]
        return (f"level {len(self.outcome.levels)}/{len(self.outcome.plan.levels)}: {level.streams} streams, "
                f"{level.running} sessions running, {_summary(level)}")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _summary(level: Level) -> str:
    errors = sum(level.errors.values())
    lag = level.recent_lag_p95()
    lag_text = f"result lag p95 {lag:.2f} s, max {level.result_lag.largest:.2f} s" if lag is not None else "no lag yet"
    return f"{level.sessions} sessions done, {errors} errors, {lag_text}"


def _slo_note(level: Level, slo: Slo) -> str:
    broke = level.broken(slo)
    return f" (over the SLO: {', '.join(broke)})" if broke else " (within the SLO)"


# --- output -----------------------------------------------------------------------------------------
def to_document(target: str, clip: Clip, outcome: Outcome) -> dict:
    plan = outcome.plan
    verdict = outcome.verdict()
    return {
        "target": target,
        "clip": {"name": clip.name, "seconds": round(clip.duration_seconds, 3)},
        "hold_seconds": plan.hold_seconds,
        "slo": {"result_lag_p95_seconds": plan.slo.result_lag_seconds,
                "first_result_p95_seconds": plan.slo.first_result_seconds},
        "levels": [level.to_dict(plan.slo) for level in outcome.levels],
        "max_streams_within_slo": verdict.max_streams_within_slo,
        "limited_by": verdict.limited_by,
        "stopped_early": outcome.stopped_early,
        "interrupted": outcome.interrupted,
    }


def _seconds_cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}s"


def render_table(target: str, clip: Clip, outcome: Outcome) -> str:
    plan = outcome.plan
    slo = plan.slo
    header = ("STREAMS", "SESSIONS", "ERRORS", "FIRST p50", "FIRST p95", "LAG p50", "LAG p95", "LAG max", "CER", "SLO")
    rows = [header]
    for level in outcome.levels:
        broke = level.broken(slo)
        errors = ", ".join(f"{reason} {count}" for reason, count in sorted(level.errors.items())) or "0"
        rows.append((
            str(level.streams) + ("*" if level.interrupted else ""),
            str(level.sessions),
            errors,
            _seconds_cell(level.first_result.percentile(50)),
            _seconds_cell(level.first_result.percentile(95)),
            _seconds_cell(level.result_lag.percentile(50)),
            _seconds_cell(level.result_lag.percentile(95)),
            _seconds_cell(level.result_lag.largest),
            "-" if level.cer is None else f"{level.cer:.3f}",
            "ok" if not broke else "over: " + ", ".join(broke),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"whoAsr capacity of {target}: clip {clip.name!r} ({clip.duration_seconds:.1f} s), hold "
             f"{plan.hold_seconds:g} s per level; SLO: no errors, result lag p95 <= {slo.result_lag_seconds:g} s, "
             f"first result p95 <= {slo.first_result_seconds:g} s", ""]
    for row in rows:
        lines.append("  ".join(cell.rjust(width) if i not in (2, 9) else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))).rstrip())
    verdict = outcome.verdict()
    best = verdict.max_streams_within_slo
    lines.append("")
    if verdict.limited_by is not None:
        lines.append(f"max streams within SLO: {best} (limited by {verdict.limited_by} at {verdict.broken_at} streams)")
    elif outcome.levels and not outcome.interrupted:
        lines.append(f"max streams within SLO: {best} (no limit reached: raise --max-streams to find the knee)")
    else:
        lines.append(f"max streams within SLO: {best}")
    if outcome.stopped_early:
        lines.append("stopped early: the last level is clearly past the knee")
    if outcome.interrupted:
        lines.append("interrupted (*: a level cut short)")
    for level in outcome.levels:
        late = level.prober_lateness.percentile(99)
        if late is not None and late > PROBER_LATE_SECONDS:
            lines.append(f"note: at {level.streams} streams this tool sent frames up to {late * 1000:.0f} ms late "
                         "(p99 of each session's worst frame): its machine is busy, so the lags include its delay")
    return "\n".join(lines)
