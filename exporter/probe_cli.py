"""`whoasr-exporter probe`: run probes once against one target and print the results, for people, cron
and CI. Exit 0 when every probe passed (not applicable counts as passed), 1 when any failed, 2 on usage
or config errors.

The runs go through the daemon's own `Runner` (same clips, same health gate, same probes), one after
the other: whoAsr's /health stalls the whole server, so nothing overlaps it. Each result goes to the
sinks of a one-off run: the log and this command's table.
stdout carries only the table (or the --json document); live progress goes to stderr when it is a
terminal, and --verbose prints every trace line there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Callable, Optional, TextIO

from pydantic import ValidationError

from exporter import logs
from exporter.client import TargetClient, new_session, public_url
from exporter.clips import ClipError, clip_from_file
from exporter.config import ClipConfig, Config, ConfigError, TargetConfig, TLSConfig, load_config
from exporter.kinds import MODULES, PROBE_KINDS, is_scrape
from exporter.results import ProbeResult, Trace
from exporter.runner import Runner
from exporter.sinks import LogSink, deliver

CHOICES = (*MODULES, "all")
CLI_CLIP = "probe-cli-clip"  # the name a --clip gets in the config the runs use
CLI_TARGET = "cli"


class UsageError(Exception):
    """Bad arguments or config: exit 2 with the message."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, metavar="URL|NAME",
                        help="a whoAsr base URL (http://host:8000), or the name of a target in --config")
    parser.add_argument("--config", metavar="FILE", help="exporter config: targets, probe settings, timeouts")
    parser.add_argument("--module", default="all", choices=CHOICES,
                        help="what to run (default all: health, then every probe that applies)")
    parser.add_argument("--clip", metavar="PATH", help="audio file to send instead of the configured clip")
    parser.add_argument("--transcript", metavar="TEXT", help="what --clip says (required with --clip)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--timeout", type=_seconds, metavar="S",
                        help="timeout of each probe in seconds (default: the configured schedule timeout)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print each run's trace (requests, statuses, messages, checks) on stderr")
    tls = parser.add_argument_group("TLS towards an https:// target (override the target's tls_config)")
    tls.add_argument("--ca-file", metavar="PEM", help="CA certificates to verify the server with")
    tls.add_argument("--cert-file", metavar="PEM", help="client certificate (mTLS), with --key-file")
    tls.add_argument("--key-file", metavar="PEM", help="the client certificate's private key")
    tls.add_argument("--server-name", metavar="NAME", help="name to send (SNI) and verify the certificate against")
    tls.add_argument("--insecure-skip-verify", action="store_true",
                     help="do not verify the server's certificate (testing only)")


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 3600], got {value!r}")
    return seconds


def run(args: argparse.Namespace) -> int:
    # structlog would print to stdout by default: keep stdout for the table or the JSON document.
    logs.setup("console", "warning", stream=sys.stderr)
    try:
        config, target, modules = prepare(args)
    except UsageError as exc:
        print(f"whoasr-exporter probe: {exc}", file=sys.stderr)
        return 2
    reporter = Reporter(sys.stderr, verbose=args.verbose)
    rows = asyncio.run(run_modules(config, target, modules, args.timeout, reporter))
    success = all(row.passed for row in rows)
    if args.json:
        document = {"target": shown_target(args.target, target), "results": [row.to_dict() for row in rows],
                    "success": success}
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        print(render_table(shown_target(args.target, target), rows))
    return 0 if success else 1


# --- arguments -> what to run ---------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> tuple[Config, TargetConfig, list[str]]:
    config, target = config_and_target(args)
    if args.module == "all":
        modules = ["health", *target.enabled_probes()]  # a URL target: DEFAULT_PROBES
    else:
        modules = [args.module]
    return config, target, modules


def config_and_target(args: argparse.Namespace) -> tuple[Config, TargetConfig]:
    """--config, --target and --clip/--transcript (shared with `capacity`): the config to run with and
    the target, a configured one by name or a URL."""
    if bool(args.clip) != bool(args.transcript):
        raise UsageError("--clip and --transcript go together (the transcript is what the clip says)")
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    else:
        config = Config()
    target = config.target(args.target)
    if target is None:
        if "://" not in args.target:
            where = f"in {args.config}" if args.config else "without --config"
            raise UsageError(f"unknown target {args.target!r} {where}: give a URL (http://host:port) or the name "
                             "of a target in --config")
        try:
            target = TargetConfig(name=CLI_TARGET, url=args.target)
        except ValidationError as exc:
            raise UsageError(f"--target: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    target = with_tls_flags(target, args)
    if args.clip:
        config = with_clip(config, args.clip, args.transcript)
    return config, target


TLS_FLAGS = {"ca_file": "--ca-file", "cert_file": "--cert-file", "key_file": "--key-file",
             "server_name": "--server-name"}


def with_tls_flags(target: TargetConfig, args: argparse.Namespace) -> TargetConfig:
    """The target with the TLS flags given laid over its tls_config; files checked now (exit 2)."""
    from exporter.tls import TLSFileError, client_context

    given = {key: str(Path(value).resolve()) if key.endswith("_file") else value
             for key in TLS_FLAGS if (value := getattr(args, key, None))}
    if getattr(args, "insecure_skip_verify", False):
        given["insecure_skip_verify"] = True
    if not given:
        return target
    if not target.url.startswith("https://"):
        raise UsageError(f"{', '.join(TLS_FLAGS.get(key, '--insecure-skip-verify') for key in given)}: "
                         "the target is not an https:// URL")
    base = target.tls_config.model_dump() if target.tls_config else {}
    try:
        tls = TLSConfig(**{**base, **given})
    except ValidationError as exc:
        raise UsageError(exc.errors()[0]["msg"].removeprefix("Value error, ")
                         .replace("cert_file", "--cert-file").replace("key_file", "--key-file")) from None
    try:
        client_context(tls)
    except TLSFileError as exc:
        raise UsageError(f"{TLS_FLAGS.get(exc.field, exc.field)}: {exc}") from None
    return target.model_copy(update={"tls_config": tls})


def with_clip(config: Config, path: str, transcript: str) -> Config:
    """The config with every probe that sends audio using the given clip instead of its own."""
    try:
        clip_from_file(path, transcript)  # fail now (exit 2), not as a failed probe
    except ClipError as exc:
        raise UsageError(f"--clip: {exc}") from None
    clips = {**config.clips, CLI_CLIP: ClipConfig(path=str(Path(path).resolve()), transcript=transcript)}
    probes = config.probes.model_copy(update={
        kind: config.probes.for_kind(kind).model_copy(update={"clip": CLI_CLIP})
        for kind in PROBE_KINDS if hasattr(config.probes.for_kind(kind), "clip")
    })
    return config.model_copy(update={"clips": clips, "probes": probes})


def shown_target(given: str, target: TargetConfig) -> str:
    return given if target.name == given else public_url(target.url)


# --- the runs -------------------------------------------------------------------------------------
class Row:
    """One run as the CLI shows it."""

    def __init__(self, result: ProbeResult):
        self.result = result

    @property
    def api(self) -> Optional[str]:
        return self.result.api

    @property
    def models(self) -> Optional[dict[str, bool]]:
        return self.result.models_loaded()

    @property
    def passed(self) -> bool:
        return self.result.success or not self.result.applicable

    def to_dict(self) -> dict:
        return self.result.to_dict()


async def run_modules(config: Config, target: TargetConfig, modules: list[str], timeout: Optional[float],
                      reporter: "Reporter") -> list[Row]:
    runner = Runner(config)  # no cached model state: each probe reads it afresh
    sinks = [LogSink(on_demand=True), reporter]
    session = new_session()
    try:
        client = TargetClient(session, target)
        for kind in modules:
            budget = timeout or config.schedules.for_kind(kind).timeout
            trace = reporter.start(kind)
            result = await runner.run(client, kind, budget, trace, progress=reporter.progress)
            deliver(result, sinks, runner.errors)
    finally:
        await session.close()
    return reporter.rows


class LiveTrace(Trace):
    """A trace that also hands each line to a sink as it is written (live progress)."""

    def __init__(self, sink: Callable[[str], None]):
        super().__init__()
        self._sink = sink

    def __call__(self, message: str) -> str:
        line = super().__call__(message)
        self._sink(line)
        return line


class Reporter:
    """Progress on stderr: one rewritten status line in a terminal; every trace line with --verbose."""

    def __init__(self, stream: TextIO, verbose: bool = False):
        self.stream = stream
        self.verbose = verbose
        self.live = stream.isatty() and not verbose
        self.kind = ""
        self.rows: list[Row] = []

    def start(self, kind: str) -> Trace:
        self.kind = kind
        if self.verbose:
            self.stream.write(f"--- {kind}\n")
        return LiveTrace(self._line)

    def _line(self, line: str) -> None:
        if self.verbose:
            self.stream.write(f"[{self.kind}] {line}\n")
            self.stream.flush()
        elif self.live:
            self._status(line.strip())

    def progress(self, note: str) -> None:
        """ProbeContext.progress: what a streaming session has received so far."""
        if self.live:
            self._status(note)

    def _status(self, text: str) -> None:
        self.stream.write(f"\r\x1b[K{self.kind}: {text[:100]}")
        self.stream.flush()

    def record(self, result: ProbeResult) -> None:
        """The CLI's sink: a row of the table, and the verdict on the status line."""
        row = Row(result)
        self.rows.append(row)
        if self.live:
            self.stream.write(f"\r\x1b[K{self.kind}: {_verdict(row)}\n")
            self.stream.flush()


# --- the table ------------------------------------------------------------------------------------
def _verdict(row: Row) -> str:
    if not row.result.applicable:
        return "N/A"
    return "PASS" if row.result.success else "FAIL"


def _figures(row: Row) -> str:
    """Latency and other figures worth a glance, per kind."""
    result = row.result
    if is_scrape(result.probe):
        parts = [f"api {row.api}"] if row.api else []
        if row.models:
            parts.append(f"{sum(row.models.values())}/{len(row.models)} models loaded")
        return ", ".join(parts)
    stream = result.stream
    if stream is not None and stream.connect_seconds is not None:
        parts = [f"connect {_ms(stream.connect_seconds)}"]
        if stream.first_result_seconds is not None:
            parts.append(f"first result {_ms(stream.first_result_seconds)}")
        if stream.result_lags:
            parts.append(f"lag max {_ms(max(stream.result_lags))}")
        if stream.final_result_seconds is not None:
            parts.append(f"final {_ms(stream.final_result_seconds)}")
        parts.append(f"{stream.partial_results} partials")
        return ", ".join(parts)
    if result.processing_seconds is not None:
        rtf = result.real_time_factor
        return f"server {_ms(result.processing_seconds)}" + (f", RTF {rtf:.3f}" if rtf is not None else "")
    return ""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def render_table(target: str, rows: list[Row]) -> str:
    header = ("PROBE", "RESULT", "REASON", "TIME", "CER", "FIGURES", "TRANSCRIPT")
    table = [header]
    for row in rows:
        result = row.result
        table.append((
            result.probe,
            _verdict(row),
            result.reason or "-",
            f"{result.duration_seconds:.3f}s",
            f"{result.cer:.3f}" if result.cer is not None else "-",
            _figures(row) or "-",
            result.transcript if result.transcript is not None else "-",
        ))
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    lines = [f"whoAsr probe of {target}", ""]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths)]
        lines.append("  ".join([*cells, line[-1]]).rstrip())
    notes = []
    for row in rows:
        result = row.result
        if not result.applicable:
            notes.append(f"{result.probe}: not applicable: {result.detail}")
        elif not result.success:
            step = f" at {result.step}" if result.step else ""
            notes.append(f"{result.probe}: {result.reason}{step}: {result.detail}")
            notes.extend(f"  check {check.name} failed: {check.detail}" for check in result.checks
                         if not check.ok and check.detail != result.detail)
    if notes:
        lines += ["", *notes]
    passed = sum(1 for row in rows if row.result.success)
    failed = sum(1 for row in rows if not row.passed)
    not_applicable = sum(1 for row in rows if not row.result.applicable)
    lines += ["", f"{passed} passed, {failed} failed, {not_applicable} not applicable"]
    return "\n".join(lines)
